//! WeCom XML: `wecom::parse_xml` on any UTF-8 text.
//!
//! Besides not panicking, every field's span must lie inside the source on
//! char boundaries (it is documented as the byte range used for in-place
//! rewrites), and a successful parse of a rewritten document must not panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use moltgate::platform::wecom;

fuzz_target!(|data: &[u8]| {
    let Ok(xml) = std::str::from_utf8(data) else {
        return;
    };
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
        assert!(xml.get(f.span.clone()).is_some(), "span {:?} not on char boundaries", f.span);
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
});
