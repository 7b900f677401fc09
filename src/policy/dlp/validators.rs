//! Checksums that separate real identifiers from number-shaped noise.
//!
//! A regex alone flags every 16-digit order number as a card and every
//! 18-digit tracking number as an ID; the check digit is what makes a DLP
//! finding trustworthy enough to block or mask on.

use serde::Deserialize;

/// A checksum a pattern's match must pass before it counts as a finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Validator {
    /// Payment card numbers (ISO/IEC 7812 Luhn mod 10).
    Luhn,
    /// Chinese resident ID numbers (GB 11643-1999, ISO 7064 MOD 11-2).
    Gb11643,
    /// International bank account numbers (ISO 13616, mod 97).
    Iban,
    /// Chinese unified social credit codes (GB 32100-2015, mod 31).
    Uscc,
}

impl Validator {
    /// Whether `candidate` (the matched text, separators included) passes.
    pub fn check(self, candidate: &str) -> bool {
        match self {
            Validator::Luhn => luhn(candidate),
            Validator::Gb11643 => gb11643(candidate),
            Validator::Iban => iban(candidate),
            Validator::Uscc => uscc(candidate),
        }
    }
}

/// Separators written between the digits of a card number: space, tab,
/// `-`, `.`, and the Unicode dashes NFKC leaves alone (U+2010..U+2015, U+2212).
fn is_separator(c: char) -> bool {
    matches!(
        c,
        ' ' | '-' | '.' | '\t' | '\u{2010}'..='\u{2015}' | '\u{2212}'
    )
}

/// Luhn over the ASCII digits, skipping separators. A run of one repeated
/// digit (`0000 0000 0000 0000`) passes Luhn but is never a real card.
pub fn luhn(candidate: &str) -> bool {
    let (mut count, mut sum, mut first, mut same) = (0usize, 0u32, None, true);
    for c in candidate.chars().rev() {
        let Some(d) = c.to_digit(10).filter(|_| c.is_ascii_digit()) else {
            if is_separator(c) {
                continue;
            }
            return false;
        };
        same &= *first.get_or_insert(d) == d;
        sum += if count % 2 == 1 {
            let x = d * 2;
            if x > 9 {
                x - 9
            } else {
                x
            }
        } else {
            d
        };
        count += 1;
    }
    (12..=19).contains(&count) && !same && sum % 10 == 0
}

/// GB 11643: 17 digits weighted by 2^(17-i) mod 11, then a check character
/// from `10X98765432`.
pub fn gb11643(candidate: &str) -> bool {
    const WEIGHTS: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
    const CHECK: &[u8; 11] = b"10X98765432";
    let bytes = candidate.as_bytes();
    if bytes.len() != 18 || !bytes[..17].iter().all(u8::is_ascii_digit) {
        return false;
    }
    let sum: u32 = bytes[..17]
        .iter()
        .zip(WEIGHTS)
        .map(|(&b, w)| u32::from(b - b'0') * w)
        .sum();
    CHECK[(sum % 11) as usize] == bytes[17].to_ascii_uppercase()
}

/// ISO 13616: move the first four characters to the end, letters become
/// 10..35, and the number mod 97 must be 1.
pub fn iban(candidate: &str) -> bool {
    let chars: Vec<u8> = candidate
        .bytes()
        .filter(|&b| b != b' ')
        .map(|b| b.to_ascii_uppercase())
        .collect();
    if !(15..=34).contains(&chars.len())
        || !chars[..2].iter().all(u8::is_ascii_uppercase)
        || !chars[2..4].iter().all(u8::is_ascii_digit)
        || !chars.iter().all(u8::is_ascii_alphanumeric)
    {
        return false;
    }
    let mut rem: u32 = 0;
    for &b in chars[4..].iter().chain(&chars[..4]) {
        let v = if b.is_ascii_digit() {
            u32::from(b - b'0')
        } else {
            u32::from(b - b'A') + 10
        };
        rem = if v >= 10 {
            (rem * 100 + v) % 97
        } else {
            (rem * 10 + v) % 97
        };
    }
    rem == 1
}

/// GB 32100: 17 characters over a 31-symbol alphabet weighted by 3^i mod 31,
/// then a check symbol.
pub fn uscc(candidate: &str) -> bool {
    const ALPHABET: &[u8; 31] = b"0123456789ABCDEFGHJKLMNPQRTUWXY";
    const WEIGHTS: [usize; 17] = [
        1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28,
    ];
    let bytes = candidate.as_bytes();
    if bytes.len() != 18 {
        return false;
    }
    let mut values = [0usize; 18];
    for (slot, &b) in values.iter_mut().zip(bytes) {
        match ALPHABET.iter().position(|&a| a == b.to_ascii_uppercase()) {
            Some(v) => *slot = v,
            None => return false,
        }
    }
    let sum: usize = values[..17].iter().zip(WEIGHTS).map(|(v, w)| v * w).sum();
    (31 - sum % 31) % 31 == values[17]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn luhn_accepts_test_cards_and_rejects_noise() {
        for ok in [
            "4111111111111111",
            "4111 1111 1111 1111",
            "5500-0000-0000-0004",
            "378282246310005",
            "6212345678901232",
            "4111.1111.1111.1111",
            "4111\u{2013}1111\u{2013}1111\u{2013}1111",
        ] {
            assert!(luhn(ok), "{ok}");
        }
        for bad in [
            "4111111111111112",
            "2023112412345678",
            "0000000000000000",
            "12345",
            "4111a11111111111",
        ] {
            assert!(!luhn(bad), "{bad}");
        }
    }

    #[test]
    fn gb11643_checks_the_mod_11_2_digit() {
        assert!(gb11643("11010519491231002X"));
        assert!(gb11643("11010519491231002x"));
        assert!(gb11643("440524188001010014"));
        assert!(!gb11643("110105194912310021"));
        assert!(!gb11643("11010519491231002"));
    }

    #[test]
    fn iban_mod_97() {
        assert!(iban("GB82WEST12345698765432"));
        assert!(iban("GB82 WEST 1234 5698 7654 32"));
        assert!(!iban("GB83WEST12345698765432"));
    }

    #[test]
    fn uscc_mod_31() {
        assert!(uscc("91350100M000100Y43"));
        assert!(!uscc("91350100M000100Y44"));
        assert!(!uscc("91350100M000100Y4"));
    }

    #[test]
    fn validator_names_parse() {
        let v: Vec<Validator> = serde_yaml_ng::from_str("[luhn, gb11643, iban, uscc]").unwrap();
        assert_eq!(
            v,
            [
                Validator::Luhn,
                Validator::Gb11643,
                Validator::Iban,
                Validator::Uscc
            ]
        );
    }
}
