//! The request body as one document that paths address, whatever its
//! format: JSON as it is, a form as a flat object (first value of a key
//! wins), XML as nested objects (`/root/child`, attributes as `@name`,
//! repeated elements as arrays). One shape means one path syntax (JSON
//! pointers) and one condition and field evaluator for every format.
//!
//! XML is read safely: a DOCTYPE (and with it every entity definition) is
//! refused, only the five predefined entities and character references
//! are resolved, and depth and element count are bounded.

use quick_xml::events::{BytesStart, Event};
use quick_xml::Reader;
use serde_json::{Map, Value};

use super::super::{Payload, Rejection};
use crate::adapters::DocFormat;

/// XML deeper than this is refused.
const MAX_XML_DEPTH: usize = 32;
/// XML with more elements than this is refused.
const MAX_XML_ELEMENTS: usize = 4096;

/// Parses `body` as `format` into the document paths address.
pub fn parse(format: DocFormat, body: &[u8]) -> Result<Value, Rejection> {
    match format {
        DocFormat::Json => serde_json::from_slice(body)
            .map_err(|e| Rejection::Malformed(format!("body is not JSON: {e}"))),
        DocFormat::Form => match Payload::parse(Some("application/x-www-form-urlencoded"), body)? {
            Payload::Form(pairs) => {
                let mut m = Map::new();
                for (k, v) in pairs {
                    m.entry(k).or_insert(Value::String(v));
                }
                Ok(Value::Object(m))
            }
            _ => Ok(Value::Object(Map::new())),
        },
        DocFormat::Xml => {
            let text = std::str::from_utf8(body)
                .map_err(|_| Rejection::Malformed("body is not UTF-8".into()))?;
            parse_xml(text)
        }
    }
}

fn xml_err(what: &str) -> Rejection {
    Rejection::Malformed(format!("xml: {what}"))
}

/// One open element: its name, children and text so far.
struct Frame {
    name: String,
    children: Map<String, Value>,
    text: String,
}

impl Frame {
    fn open(e: &BytesStart<'_>) -> Result<Frame, Rejection> {
        let name = std::str::from_utf8(e.name().as_ref())
            .map_err(|_| xml_err("name is not UTF-8"))?
            .to_string();
        let mut children = Map::new();
        for a in e.attributes() {
            let a = a.map_err(|_| xml_err("bad attribute"))?;
            let key = std::str::from_utf8(a.key.as_ref())
                .map_err(|_| xml_err("attribute name is not UTF-8"))?;
            let value = a
                .unescape_value()
                .map_err(|_| xml_err("bad attribute value"))?;
            children.insert(format!("@{key}"), Value::String(value.into_owned()));
        }
        Ok(Frame {
            name,
            children,
            text: String::new(),
        })
    }

    /// The element's value: its text when it has no children, else its children.
    fn close(self) -> (String, Value) {
        let value = if self.children.is_empty() {
            Value::String(self.text)
        } else {
            Value::Object(self.children)
        };
        (self.name, value)
    }
}

/// Adds a child; a repeated name becomes an array.
fn add_child(m: &mut Map<String, Value>, name: String, value: Value) {
    match m.get_mut(&name) {
        None => {
            m.insert(name, value);
        }
        Some(Value::Array(list)) => list.push(value),
        Some(existing) => {
            let first = existing.take();
            *existing = Value::Array(vec![first, value]);
        }
    }
}

/// Reads XML into `{root: {child: text, …}}`.
fn parse_xml(xml: &str) -> Result<Value, Rejection> {
    let mut reader = Reader::from_str(xml);
    let mut stack: Vec<Frame> = Vec::new();
    let mut root = Map::new();
    let mut elements = 0usize;
    loop {
        let event = reader
            .read_event()
            .map_err(|_| xml_err("not well-formed"))?;
        let text = match event {
            Event::DocType(_) => return Err(xml_err("DOCTYPE is not allowed")),
            Event::Start(e) | Event::Empty(e)
                if stack.len() >= MAX_XML_DEPTH || elements >= MAX_XML_ELEMENTS =>
            {
                let _ = e;
                return Err(xml_err("too deep or too many elements"));
            }
            Event::Start(e) => {
                elements += 1;
                if stack.is_empty() && !root.is_empty() {
                    return Err(xml_err("more than one root element"));
                }
                stack.push(Frame::open(&e)?);
                continue;
            }
            Event::Empty(e) => {
                elements += 1;
                let (name, value) = Frame::open(&e)?.close();
                match stack.last_mut() {
                    Some(parent) => add_child(&mut parent.children, name, value),
                    None if root.is_empty() => add_child(&mut root, name, value),
                    None => return Err(xml_err("more than one root element")),
                }
                continue;
            }
            Event::End(_) => {
                let frame = stack.pop().ok_or_else(|| xml_err("unbalanced end tag"))?;
                let (name, value) = frame.close();
                match stack.last_mut() {
                    Some(parent) => add_child(&mut parent.children, name, value),
                    None => add_child(&mut root, name, value),
                }
                continue;
            }
            Event::Text(t) => t
                .decode()
                .map_err(|_| xml_err("text is not UTF-8"))?
                .into_owned(),
            Event::CData(c) => c
                .decode()
                .map_err(|_| xml_err("CDATA is not UTF-8"))?
                .into_owned(),
            Event::GeneralRef(r) => crate::platform::xml::resolve_ref(&r)?.to_string(),
            Event::Decl(_) | Event::Comment(_) | Event::PI(_) => continue,
            Event::Eof => break,
        };
        match stack.last_mut() {
            Some(frame) => frame.text.push_str(&text),
            None if text.trim().is_empty() => {}
            None => return Err(xml_err("text outside the root element")),
        }
    }
    if !stack.is_empty() || root.is_empty() {
        return Err(xml_err("no complete root element"));
    }
    Ok(Value::Object(root))
}
