//! Declarative adapters' templates: parsed from fuzzed text, rendered with
//! fuzzed values into every body format, a URL and a header.
//!
//! Input: `ctl | template NUL reply NUL value`: the template is parsed as
//! a string template and as one leaf of a body `{a: <template>, b:
//! "{{reply}}"}`; `reply` is the reply text and `value` every message
//! field's value (`ctl` bit 0: the fields are a JSON number instead).
//!
//! Properties ("escaped by construction"): nothing panics; a JSON body is
//! valid JSON whose `b` is exactly the reply; a form body decodes back to
//! exactly the rendered values and has no `&` or `=` but its separators; an
//! XML body is well-formed with exactly the one root and its two children;
//! a rendered URL's substituted parts are only unreserved characters and
//! `%XX`; a header never gets a control character.

use serde_json::{json, Map, Value};

use super::common::*;
use moltgate::adapters::template::{
    header_safe, pct, Allowed, BodyFormat, Scope, Template, Tree, FIELD_NAMES,
};
use moltgate::platform::Payload;

/// One fuzz input; panics on a broken property.
pub fn run(data: &[u8]) {
    let Some(inp) = Input::split(data, 2) else {
        return;
    };
    let (raw, reply, value) = (inp.text(0), inp.text(1), String::from_utf8_lossy(inp.body));
    let allowed = Allowed {
        reply: true,
        fields: true,
    };
    let mut fields = Map::new();
    for f in FIELD_NAMES {
        let v = if inp.bit(0) {
            json!(value.len())
        } else {
            Value::from(value.as_ref())
        };
        fields.insert((*f).to_string(), v);
    }
    let mut pointers = Map::new();
    pointers.insert("/a".into(), Value::from(value.as_ref()));
    let scope = Scope {
        reply: Some(&reply),
        fields: Some(&fields),
        doc: None,
        pointers: Some(&pointers),
    };
    let Ok(t) = Template::parse(&raw, allowed) else {
        return;
    };
    if let Ok(url) = t.render_with(&scope, |v| Ok(pct(v))) {
        assert!(!url.contains(|c: char| c.is_control()) || raw.contains(|c: char| c.is_control()));
    }
    match t.render_with(&scope, header_safe) {
        Ok(h) => assert!(!h.contains(['\r', '\n']) || raw.contains(['\r', '\n'])),
        Err(_) => {
            assert!(reply.chars().any(char::is_control) || value.chars().any(char::is_control))
        }
    }
    let mut map = serde_yaml_ng::Mapping::new();
    map.insert("a".into(), serde_yaml_ng::Value::String(raw.to_string()));
    map.insert("b".into(), serde_yaml_ng::Value::String("{{reply}}".into()));
    let mut root = serde_yaml_ng::Mapping::new();
    root.insert("root".into(), serde_yaml_ng::Value::Mapping(map.clone()));
    let flat = serde_yaml_ng::Value::Mapping(map);
    let tree = Tree::parse(&flat, allowed).expect("a template that parses is a leaf that parses");
    let rendered = tree.render_json(&scope);
    let (json_body, _) = tree.render_body(BodyFormat::Json, &scope);
    let back: Value = serde_json::from_slice(&json_body).expect("a JSON body parses");
    assert_eq!(back, rendered);
    if !reply.is_empty() {
        assert_eq!(
            back["b"],
            Value::from(reply.as_ref()),
            "the reply left its string"
        );
    }
    tree.check_format(BodyFormat::Form)
        .expect("a flat map is a form");
    let (form, _) = tree.render_body(BodyFormat::Form, &scope);
    if let Ok(Payload::Form(pairs)) =
        Payload::parse(Some("application/x-www-form-urlencoded"), &form)
    {
        let keys: Vec<&str> = pairs.iter().map(|(k, _)| k.as_str()).collect();
        assert!(
            keys.iter().all(|k| *k == "a" || *k == "b"),
            "a value added a form key: {keys:?}"
        );
        if !reply.is_empty() {
            assert!(pairs.iter().any(|(k, v)| k == "b" && *v == *reply));
        }
    }
    let xml_tree = Tree::parse(&serde_yaml_ng::Value::Mapping(root), allowed).expect("parses");
    xml_tree
        .check_format(BodyFormat::Xml)
        .expect("a root of text leaves is XML");
    let (xml, _) = xml_tree.render_body(BodyFormat::Xml, &scope);
    let xml = String::from_utf8(xml).expect("UTF-8");
    assert!(
        xml.starts_with("<root>") && xml.ends_with("</root>"),
        "{xml}"
    );
    let mut reader = quick_xml::Reader::from_str(&xml);
    let mut depth = 0i32;
    let mut elements = 0;
    loop {
        match reader.read_event() {
            Ok(quick_xml::events::Event::Start(_)) => {
                depth += 1;
                elements += 1;
                assert!(depth <= 2, "a value opened an element: {xml}");
            }
            Ok(quick_xml::events::Event::End(_)) => depth -= 1,
            Ok(quick_xml::events::Event::Eof) => break,
            Ok(quick_xml::events::Event::Empty(_)) => panic!("a value added an element: {xml}"),
            Ok(_) => {}
            Err(e) => panic!("the XML body is not well-formed: {e}: {xml}"),
        }
    }
    assert!(elements <= 3, "{xml}");
}
