//! Percent-encoding of URL and form values: every byte but RFC 3986's
//! unreserved characters (`A-Z a-z 0-9 - _ . ~`) becomes `%XX`. One
//! implementation for the platforms' signed queries, writeback's token
//! parameters and adapter templates (decoding is
//! `platform::payload::percent_decode`).

/// `s` percent-encoded.
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_unreserved_characters_stay() {
        assert_eq!(super::encode("a-Z_0.~"), "a-Z_0.~");
        assert_eq!(super::encode("a b/c?d=é"), "a%20b%2Fc%3Fd%3D%C3%A9");
    }
}
