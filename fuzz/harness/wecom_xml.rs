//! WeCom XML: `wecom::parse_xml` and `xml::rewrite_texts` on any UTF-8 text.
//!
//! Besides not panicking, every field's span must lie inside the source on
//! char boundaries (it is documented as the byte range used for in-place
//! rewrites), and a successful parse of a rewritten document must not panic.
//! `rewrite_texts` must leave a document byte-identical when nothing
//! changes, and a document it rewrote must still parse, with the rewrite
//! visible in the parsed text.

use moltgate::platform::{wecom, xml};

/// One fuzz input; panics on a broken property.
pub fn run(data: &[u8]) {
    let Ok(xml) = std::str::from_utf8(data) else {
        return;
    };
    rewrite(xml);
    let Ok(fields) = wecom::parse_xml(xml) else {
        return;
    };
    for f in &fields.0 {
        assert!(
            f.span.start <= f.span.end && f.span.end <= xml.len(),
            "span {:?} outside a {}-byte document",
            f.span,
            xml.len()
        );
        assert!(
            xml.get(f.span.clone()).is_some(),
            "span {:?} not on char boundaries",
            f.span
        );
    }
    // Rewrite the first field the way reseal does and parse the result again.
    if let Some(f) = fields.0.first() {
        let rewritten = format!(
            "{}{}{}",
            &xml[..f.span.start],
            wecom::cdata("x]]>y"),
            &xml[f.span.end..]
        );
        let _ = wecom::parse_xml(&rewritten);
    }
}

/// `xml::rewrite_texts`: identity keeps the bytes; a rewrite still parses
/// (when the original did) and shows the rewritten text in every field that
/// had any. Opaque elements are exercised for panics only (an opaque root or
/// prefixed name would hide fields from the property).
fn rewrite(xml: &str) {
    let _ = xml::rewrite_texts(xml, &["MsgId", "xml"], &mut |s: &mut String| s.push('x'));
    let Ok(same) = xml::rewrite_texts(xml, &[], &mut |_| {}) else {
        return;
    };
    assert_eq!(same, xml, "an unchanged document keeps its bytes");
    let Ok(out) = xml::rewrite_texts(xml, &[], &mut |s: &mut String| {
        s.push_str("]]>&<\"'");
    }) else {
        panic!("a document accepted once is accepted again");
    };
    if let Ok(before) = wecom::parse_xml(xml) {
        let after = wecom::parse_xml(&out).expect("a rewritten document parses");
        assert_eq!(before.0.len(), after.0.len());
        for (b, a) in before.0.iter().zip(&after.0) {
            assert_eq!(b.name, a.name);
            if !b.text.trim().is_empty() {
                assert!(a.text.contains("]]>&<\"'"), "{:?} -> {:?}", b.text, a.text);
            }
        }
    }
}
