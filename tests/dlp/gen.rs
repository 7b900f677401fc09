//! A deterministic generator of labelled DLP samples: checksum-valid values
//! of every type the shipped `policies/dlp.yaml` covers, decoys that look
//! like them but are not, and the evasions of issue 10 item 4, mixed into
//! English and Chinese sentences.
//!
//! Labels are exact byte ranges in the generated text, worked out as the
//! text is built, never by running the detector. Whether a decoy is a decoy
//! is decided by the type's own definition (issuer prefix, length and Luhn
//! for cards; region, date and GB 11643 for ID numbers; the 1[3-9] prefix
//! and 11 digits for mobiles), implemented here independently of moltgate.

/// xorshift64*: small, fast, and the same sequence on every machine.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }

    pub fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }

    /// A copy of one of `xs`.
    pub fn one_of<T: Copy>(&mut self, xs: &[T]) -> T {
        *self.pick(xs)
    }

    pub fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    pub fn digits(&mut self, n: usize) -> String {
        (0..n)
            .map(|_| char::from(b'0' + self.below(10) as u8))
            .collect()
    }

    pub fn string_of(&mut self, alphabet: &[u8], n: usize) -> String {
        (0..n).map(|_| char::from(*self.pick(alphabet))).collect()
    }

    /// Between `lo` and `hi` characters of `alphabet`.
    pub fn string_in(&mut self, alphabet: &[u8], lo: usize, hi: usize) -> String {
        let n = self.range(lo, hi);
        self.string_of(alphabet, n)
    }

    /// Between `lo` and `hi` digits.
    pub fn digits_in(&mut self, lo: usize, hi: usize) -> String {
        let n = self.range(lo, hi);
        self.digits(n)
    }
}

const UPPER_DIGITS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
const ALNUM_UNDERSCORE: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_";
const ALNUM_DASH: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-";
const BASE64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

// ---- checksums and definitions (independent of moltgate) ----

pub fn luhn_sum(digits: &[u8]) -> u32 {
    digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            let d = u32::from(d - b'0');
            if i % 2 == 1 {
                let x = d * 2;
                if x > 9 {
                    x - 9
                } else {
                    x
                }
            } else {
                d
            }
        })
        .sum()
}

pub fn luhn_ok(digits: &str) -> bool {
    let d: Vec<u8> = digits.bytes().filter(u8::is_ascii_digit).collect();
    luhn_sum(&d) % 10 == 0
}

/// `body` plus the Luhn check digit.
pub fn luhn_complete(body: &str) -> String {
    for check in b'0'..=b'9' {
        let candidate = format!("{body}{}", char::from(check));
        if luhn_ok(&candidate) {
            return candidate;
        }
    }
    unreachable!()
}

/// A payment card by its scheme's definition: issuer prefix, the scheme's
/// lengths, Luhn. Visa (4; 13, 16, 19), Mastercard (51-55, 2221-2720; 16),
/// Amex (34, 37; 15), Diners (36; 14-19), and Diners 300-305/38/39, JCB
/// 3528-3589, Discover 6011/644-649/65, UnionPay 62 (16-19).
pub fn is_card(digits: &str) -> bool {
    let n = digits.len();
    let p = |k: usize| -> u32 { digits.get(..k).and_then(|s| s.parse().ok()).unwrap_or(0) };
    let lengths: &[usize] = if digits.starts_with('4') {
        &[13, 16, 19]
    } else if (51..=55).contains(&p(2)) || (2221..=2720).contains(&p(4)) {
        &[16]
    } else if p(2) == 34 || p(2) == 37 {
        &[15]
    } else if p(2) == 36 {
        &[14, 15, 16, 17, 18, 19]
    } else if (300..=305).contains(&p(3))
        || p(2) == 38
        || p(2) == 39
        || (3528..=3589).contains(&p(4))
        || p(4) == 6011
        || (644..=649).contains(&p(3))
        || p(2) == 65
        || p(2) == 62
    {
        &[16, 17, 18, 19]
    } else {
        &[]
    };
    lengths.contains(&n)
        && digits.bytes().all(|b| b.is_ascii_digit())
        && luhn_ok(digits)
        && digits.bytes().any(|b| b != digits.as_bytes()[0])
}

pub fn gb11643_check(first17: &str) -> char {
    const W: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
    let sum: u32 = first17
        .bytes()
        .zip(W)
        .map(|(b, w)| u32::from(b - b'0') * w)
        .sum();
    char::from(b"10X98765432"[(sum % 11) as usize])
}

/// A resident ID by its definition: 6-digit region, a real date between
/// 1800 and 2099, 3-digit sequence, GB 11643 check character.
pub fn is_id(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() != 18 || !b[..17].iter().all(u8::is_ascii_digit) || b[0] == b'0' {
        return false;
    }
    let year: u32 = s[6..10].parse().unwrap_or(0);
    let month: u32 = s[10..12].parse().unwrap_or(0);
    let day: u32 = s[12..14].parse().unwrap_or(0);
    (1800..=2099).contains(&year)
        && (1..=12).contains(&month)
        && (1..=31).contains(&day)
        && gb11643_check(&s[..17]) == char::from(b[17]).to_ascii_uppercase()
}

pub fn is_mobile(digits: &str) -> bool {
    let b = digits.as_bytes();
    b.len() == 11 && b[0] == b'1' && (b'3'..=b'9').contains(&b[1])
}

// ---- values ----

pub fn card(rng: &mut Rng) -> (String, &'static str) {
    let (prefix, len, issuer): (String, usize, &str) = match rng.below(8) {
        0 => ("4".into(), *rng.pick(&[16, 16, 16, 13, 19]), "visa"),
        1 => (format!("5{}", rng.range(1, 5)), 16, "mastercard"),
        2 => (format!("{}", rng.range(2221, 2720)), 16, "mastercard-2"),
        3 => (rng.pick(&["34", "37"]).to_string(), 15, "amex"),
        4 => ("6011".into(), 16, "discover"),
        5 => (format!("{}", rng.range(3528, 3589)), 16, "jcb"),
        6 => ("62".into(), *rng.pick(&[16, 16, 19]), "unionpay"),
        _ => ("36".into(), 14, "diners"),
    };
    let body = format!("{prefix}{}", rng.digits(len - 1 - prefix.len()));
    (luhn_complete(&body), issuer)
}

/// Digit groups as cards are printed: 4-6-5 for Amex, 4-6-4 for Diners,
/// else fours.
pub fn card_groups(digits: &str) -> Vec<&str> {
    let sizes: &[usize] = match digits.len() {
        15 => &[4, 6, 5],
        14 => &[4, 6, 4],
        _ => &[4, 4, 4, 4, 4],
    };
    let mut out = Vec::new();
    let mut at = 0;
    for &s in sizes {
        if at >= digits.len() {
            break;
        }
        let end = (at + s).min(digits.len());
        out.push(&digits[at..end]);
        at = end;
    }
    out
}

const REGIONS: &[&str] = &[
    "110101", "110105", "120103", "310104", "310115", "320102", "330106", "340104", "350203",
    "370202", "410105", "420102", "430104", "440305", "440106", "450103", "500103", "510107",
    "530102", "610113", "620102", "650102",
];

pub fn id_number(rng: &mut Rng) -> String {
    let year = rng.range(1950, 2006);
    let month = rng.range(1, 12);
    let day = rng.range(1, 28);
    let s17 = format!(
        "{}{year:04}{month:02}{day:02}{}",
        rng.pick(REGIONS),
        rng.digits(3)
    );
    let check = gb11643_check(&s17);
    let check = if check == 'X' && rng.chance(30) {
        'x'
    } else {
        check
    };
    format!("{s17}{check}")
}

pub fn mobile(rng: &mut Rng) -> String {
    format!("1{}{}", rng.range(3, 9), rng.digits(9))
}

pub fn email(rng: &mut Rng) -> String {
    const FIRST: &[&str] = &[
        "alice", "bob", "carol", "wei", "li.na", "zhang", "j", "m.chen", "ops", "hr", "yuki",
        "omar",
    ];
    const LAST: &[&str] = &["smith", "wang", "liu", "ng", "garcia", "chen", "kim", "x"];
    const DOMAINS: &[&str] = &[
        "example.com",
        "corp.example.cn",
        "qq.com",
        "163.com",
        "gmail.com",
        "mail.co.uk",
        "company.com.cn",
        "foo-bar.io",
        "uni.edu",
        "sub.domain.org",
    ];
    let local = match rng.below(5) {
        0 => rng.pick(FIRST).to_string(),
        1 => format!("{}.{}", rng.pick(FIRST), rng.pick(LAST)),
        2 => format!("{}_{}{}", rng.pick(FIRST), rng.pick(LAST), rng.digits(2)),
        3 => format!("{}+{}", rng.pick(FIRST), rng.pick(&["news", "tag", "dlp"])),
        _ => format!("{}{}", rng.pick(LAST), rng.digits_in(1, 4)),
    };
    format!("{local}@{}", rng.pick(DOMAINS))
}

pub fn aws_key(rng: &mut Rng) -> String {
    format!(
        "{}{}",
        rng.pick(&["AKIA", "ASIA", "ABIA", "ACCA"]),
        rng.string_of(UPPER_DIGITS, 16)
    )
}

pub fn github_token(rng: &mut Rng) -> String {
    if rng.chance(70) {
        format!(
            "gh{}_{}",
            rng.pick(&["p", "o", "u", "s", "r"]),
            rng.string_of(ALNUM, 36)
        )
    } else {
        format!("github_pat_{}", rng.string_in(ALNUM_UNDERSCORE, 22, 82))
    }
}

pub fn slack_token(rng: &mut Rng) -> String {
    format!(
        "xox{}-{}-{}-{}",
        rng.pick(&["b", "p", "a", "e", "o", "r", "s"]),
        rng.digits_in(10, 13),
        rng.digits(13),
        rng.string_of(ALNUM, 24)
    )
}

pub fn openai_key(rng: &mut Rng) -> String {
    if rng.chance(50) {
        format!("sk-{}", rng.string_in(ALNUM, 32, 51))
    } else {
        let kind = rng.pick(&["proj", "svcacct", "admin", "ant"]);
        // Ends with a letter or digit: a trailing `-` or `_` would be read as
        // part of the surrounding text by any reader too.
        format!(
            "sk-{kind}-{}{}",
            rng.string_in(ALNUM_DASH, 20, 60),
            rng.string_of(ALNUM, 1)
        )
    }
}

pub fn stripe_key(rng: &mut Rng) -> String {
    format!(
        "{}_live_{}",
        rng.pick(&["sk", "rk"]),
        rng.string_in(ALNUM, 16, 40)
    )
}

pub fn google_key(rng: &mut Rng) -> String {
    format!(
        "AIza{}{}",
        rng.string_of(ALNUM_DASH, 34),
        rng.string_of(ALNUM, 1)
    )
}

pub fn private_key(rng: &mut Rng) -> (String, Option<usize>) {
    let kind = rng.pick(&["RSA ", "EC ", "OPENSSH ", "", "DSA ", "ENCRYPTED "]);
    let begin = format!("-----BEGIN {kind}PRIVATE KEY-----");
    let mut body = String::new();
    for _ in 0..rng.range(2, 5) {
        body.push('\n');
        body.push_str(&rng.string_of(BASE64, 64));
    }
    if rng.chance(20) {
        // Truncated paste: no END line. The rule still blocks the BEGIN line.
        let header_len = begin.len();
        (format!("{begin}{body}"), Some(header_len))
    } else {
        (
            format!("{begin}{body}\n-----END {kind}PRIVATE KEY-----"),
            None,
        )
    }
}

pub fn keyword(rng: &mut Rng) -> String {
    let word = *rng.pick(&[
        "机密",
        "内部资料",
        "confidential",
        "绝密",
        "内部使用",
        "internal only",
        "do not distribute",
    ]);
    match rng.below(4) {
        0 => word.to_uppercase(),
        1 => {
            let mut c = word.chars();
            c.next()
                .map(|f| f.to_uppercase().chain(c).collect())
                .unwrap_or_default()
        }
        _ => word.to_string(),
    }
}

// ---- evasions ----

/// Zero-width and other format characters (Unicode Cf).
pub const FORMAT_CHARS: &[char] = &[
    '\u{200B}', '\u{200C}', '\u{200D}', '\u{2060}', '\u{FEFF}', '\u{00AD}', '\u{180E}', '\u{2062}',
];

/// Full-width form (NFKC folds it back): ASCII graphic characters to
/// U+FF01..U+FF5E, spaces to the ideographic space. `share` in percent.
pub fn full_width(rng: &mut Rng, s: &str, share: usize) -> String {
    s.chars()
        .map(|c| {
            if !rng.chance(share) {
                c
            } else if c.is_ascii_graphic() {
                char::from_u32(c as u32 + 0xFEE0).unwrap_or(c)
            } else if c == ' ' {
                '\u{3000}'
            } else {
                c
            }
        })
        .collect()
}

/// Inserts `n` format characters between characters of `s` (never at the
/// edges, never next to a line break).
pub fn zero_width(rng: &mut Rng, s: &str, n: usize) -> String {
    let chars: Vec<char> = s.chars().collect();
    let mut out = String::new();
    let mut slots: Vec<usize> = (1..chars.len())
        .filter(|&i| chars[i] != '\n' && chars[i - 1] != '\n')
        .collect();
    let mut chosen = Vec::new();
    for _ in 0..n.min(slots.len()) {
        chosen.push(slots.remove(rng.below(slots.len())));
    }
    for (i, c) in chars.iter().enumerate() {
        if chosen.contains(&i) {
            out.push(*rng.pick(FORMAT_CHARS));
        }
        out.push(*c);
    }
    out
}

// ---- samples ----

/// One labelled value: the rule that must find it, its byte range, and the
/// evasion it was written with.
#[derive(Debug, Clone)]
pub struct Label {
    pub rule: &'static str,
    pub start: usize,
    pub end: usize,
    pub evasion: &'static str,
}

#[derive(Debug, Clone, Default)]
pub struct Sample {
    pub text: String,
    pub labels: Vec<Label>,
}

impl Sample {
    pub fn lit(&mut self, s: &str) {
        self.text.push_str(s);
    }

    pub fn value(&mut self, rule: &'static str, s: &str, evasion: &'static str) {
        let start = self.text.len();
        self.text.push_str(s);
        self.labels.push(Label {
            rule,
            start,
            end: self.text.len(),
            evasion,
        });
    }

    /// A value whose labelled part is only its first `len` bytes (a
    /// truncated private key: the rule finds the BEGIN line).
    pub fn value_prefix(&mut self, rule: &'static str, s: &str, len: usize, evasion: &'static str) {
        let start = self.text.len();
        self.text.push_str(s);
        self.labels.push(Label {
            rule,
            start,
            end: start + len,
            evasion,
        });
    }
}
