//! XML from the network, read safely: WeCom's callbacks and passive replies.
//!
//! Two readers share one set of refusals: a DOCTYPE (and with it every entity
//! definition) is refused, and so is any entity other than the five
//! predefined ones and character references. [`parse_xml`] gives the flat
//! view the WeCom adapter maps; [`rewrite_texts`] lets passthrough DLP scan
//! and mask every text node, CDATA section and attribute value of a
//! document, rebuilding it with correct escaping.

use std::ops::Range;

use quick_xml::events::{BytesRef, BytesStart, Event};
use quick_xml::Reader;

use super::rejection::Rejection;

/// Nesting deeper than any WeCom message is refused rather than walked.
const MAX_XML_DEPTH: usize = 16;
/// Bounds the work a hostile document can cause.
const MAX_XML_ELEMENTS: usize = 512;

/// One direct child of an XML document's root element.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XmlField {
    /// Element name.
    pub name: String,
    /// Its text and CDATA content, entities resolved (nested elements ignored).
    pub text: String,
    /// Byte range of the element's content in the source, for in-place rewrites.
    pub span: Range<usize>,
}

/// A flat view of a WeCom XML document: the root's direct children, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct XmlFields(pub Vec<XmlField>);

impl XmlFields {
    /// The text of the first child named `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.field(name).map(|f| f.text.as_str())
    }

    /// The first child named `name`.
    pub fn field(&self, name: &str) -> Option<&XmlField> {
        self.0.iter().find(|f| f.name == name)
    }
}

fn xml_err(what: &str) -> Rejection {
    Rejection::Malformed(format!("xml: {what}"))
}

fn pos(r: &Reader<&[u8]>) -> usize {
    usize::try_from(r.buffer_position()).unwrap_or(usize::MAX)
}

/// The character a reference stands for: a character reference or one of
/// the five predefined entities. Anything else is refused.
pub(crate) fn resolve_ref(r: &BytesRef<'_>) -> Result<char, Rejection> {
    if let Some(ch) = r
        .resolve_char_ref()
        .map_err(|_| xml_err("bad character reference"))?
    {
        return Ok(ch);
    }
    match &**r {
        b"lt" => Ok('<'),
        b"gt" => Ok('>'),
        b"amp" => Ok('&'),
        b"apos" => Ok('\''),
        b"quot" => Ok('"'),
        _ => Err(xml_err("entities are not allowed")),
    }
}

fn name_of(e: &BytesStart<'_>) -> Result<String, Rejection> {
    std::str::from_utf8(e.name().as_ref())
        .map(str::to_string)
        .map_err(|_| xml_err("name is not UTF-8"))
}

/// The state of [`parse_xml`]: which root child is open, and the limits.
#[derive(Default)]
struct FieldsParser {
    fields: Vec<XmlField>,
    depth: usize,
    elements: usize,
    root_seen: bool,
    /// The open root child: name, text so far, content start.
    current: Option<(String, String, usize)>,
}

impl FieldsParser {
    fn element(&mut self) -> Result<(), Rejection> {
        if self.depth == 0 && self.root_seen {
            return Err(xml_err("more than one root element"));
        }
        self.elements += 1;
        if self.elements > MAX_XML_ELEMENTS || self.depth >= MAX_XML_DEPTH {
            return Err(xml_err("too large"));
        }
        self.root_seen = true;
        Ok(())
    }

    fn start(&mut self, e: &BytesStart<'_>, at: usize) -> Result<(), Rejection> {
        self.element()?;
        if self.depth == 1 {
            self.current = Some((name_of(e)?, String::new(), at));
        }
        self.depth += 1;
        Ok(())
    }

    fn empty(&mut self, e: &BytesStart<'_>, at: usize) -> Result<(), Rejection> {
        self.element()?;
        if self.depth == 1 {
            self.fields.push(XmlField {
                name: name_of(e)?,
                text: String::new(),
                span: at..at,
            });
        }
        Ok(())
    }

    fn end(&mut self, before: usize) -> Result<(), Rejection> {
        self.depth = self
            .depth
            .checked_sub(1)
            .ok_or_else(|| xml_err("unbalanced"))?;
        if self.depth == 1 {
            if let Some((name, text, start)) = self.current.take() {
                self.fields.push(XmlField {
                    name,
                    text,
                    span: start..before,
                });
            }
        }
        Ok(())
    }

    /// Text, CDATA or a resolved reference; `blank` says whether it may
    /// stand outside the root element (whitespace between the prolog and it).
    fn text(&mut self, text: &str, blank: bool, what: &str) -> Result<(), Rejection> {
        if self.depth == 0 && !blank {
            return Err(xml_err(what));
        }
        if self.depth == 2 {
            if let Some((_, buf, _)) = self.current.as_mut() {
                buf.push_str(text);
            }
        }
        Ok(())
    }
}

/// Parses WeCom XML into its root's children. Refuses DOCTYPE (and with it
/// every entity definition) and any entity other than the five predefined
/// ones and character references.
pub fn parse_xml(xml: &str) -> Result<XmlFields, Rejection> {
    let mut reader = Reader::from_str(xml);
    let mut p = FieldsParser::default();
    loop {
        let before = pos(&reader);
        let event = reader
            .read_event()
            .map_err(|_| xml_err("not well-formed"))?;
        match event {
            Event::DocType(_) => return Err(xml_err("DOCTYPE is not allowed")),
            Event::Start(e) => p.start(&e, pos(&reader))?,
            Event::Empty(e) => p.empty(&e, pos(&reader))?,
            Event::End(_) => p.end(before)?,
            Event::Text(t) => {
                let text = t.decode().map_err(|_| xml_err("text is not UTF-8"))?;
                p.text(
                    &text,
                    text.trim().is_empty(),
                    "text outside the root element",
                )?;
            }
            Event::CData(c) => {
                let text = c.decode().map_err(|_| xml_err("CDATA is not UTF-8"))?;
                p.text(&text, false, "CDATA outside the root element")?;
            }
            Event::GeneralRef(r) => {
                let ch = resolve_ref(&r)?;
                p.text(
                    ch.encode_utf8(&mut [0; 4]),
                    false,
                    "text outside the root element",
                )?;
            }
            Event::Decl(_) | Event::Comment(_) | Event::PI(_) => {}
            Event::Eof => break,
        }
    }
    if !p.root_seen || p.depth != 0 {
        return Err(xml_err("no complete root element"));
    }
    Ok(XmlFields(p.fields))
}

/// Wraps `text` in CDATA, splitting any `]]>` so the text cannot end the section.
pub fn cdata(text: &str) -> String {
    format!("<![CDATA[{}]]>", text.replace("]]>", "]]]]><![CDATA[>"))
}

/// Escapes text for element content or a double-quoted attribute value.
fn escape(text: &str) -> String {
    quick_xml::escape::escape(text).into_owned()
}

/// Consecutive text, references and CDATA: one logical string.
struct Run {
    span: Range<usize>,
    text: String,
    cdata: bool,
}

/// The state of [`rewrite_texts`]: the output so far and where the walk is.
struct Rewriter<'x, 'f> {
    xml: &'x str,
    out: String,
    /// Source bytes before this offset are already in `out`.
    copied: usize,
    depth: usize,
    root_seen: bool,
    /// Depth at which an opaque element was entered; its subtree is skipped.
    opaque_from: Option<usize>,
    opaque: &'x [&'x str],
    decoder: quick_xml::encoding::Decoder,
    run: Option<Run>,
    f: &'f mut dyn FnMut(&mut String),
}

impl Rewriter<'_, '_> {
    fn is_opaque(&self, e: &BytesStart<'_>) -> bool {
        let name = e.name();
        let local = e.local_name();
        self.opaque
            .iter()
            .any(|o| o.as_bytes() == name.as_ref() || o.as_bytes() == local.as_ref())
    }

    fn skipping(&self) -> bool {
        self.opaque_from.is_some() || self.depth == 0
    }

    /// Replaces source `span` with `with`.
    fn replace(&mut self, span: Range<usize>, with: &str) -> Result<(), Rejection> {
        let before = self
            .xml
            .get(self.copied..span.start)
            .ok_or_else(|| xml_err("bad offsets"))?;
        self.out.push_str(before);
        self.out.push_str(with);
        self.copied = span.end;
        Ok(())
    }

    fn push_text(&mut self, span: Range<usize>, text: &str, cdata: bool) -> Result<(), Rejection> {
        if self.depth == 0 && (cdata || !text.trim().is_empty()) {
            return Err(xml_err("text outside the root element"));
        }
        match self.run.as_mut() {
            Some(run) => {
                run.span.end = span.end;
                run.text.push_str(text);
                run.cdata |= cdata;
            }
            None => {
                self.run = Some(Run {
                    span,
                    text: text.to_string(),
                    cdata,
                })
            }
        }
        Ok(())
    }

    /// Hands a finished run to `f` (unless it is opaque or blank) and writes
    /// it back when `f` changed it: as CDATA if it had any, else escaped.
    fn flush(&mut self) -> Result<(), Rejection> {
        let Some(run) = self.run.take() else {
            return Ok(());
        };
        if self.skipping() || run.text.trim().is_empty() {
            return Ok(());
        }
        let mut text = run.text.clone();
        (self.f)(&mut text);
        if text == run.text {
            return Ok(());
        }
        let encoded = if run.cdata {
            cdata(&text)
        } else {
            escape(&text)
        };
        self.replace(run.span, &encoded)
    }

    /// Scans a tag's attribute values; rebuilds the tag when one changed.
    fn attributes(
        &mut self,
        e: &BytesStart<'_>,
        span: Range<usize>,
        empty: bool,
    ) -> Result<(), Rejection> {
        let mut values = Vec::new();
        let mut changed = false;
        for attr in e.attributes() {
            let attr = attr.map_err(|_| xml_err("bad attribute"))?;
            let key = std::str::from_utf8(attr.key.as_ref())
                .map_err(|_| xml_err("name is not UTF-8"))?
                .to_string();
            let value = attr
                .decode_and_unescape_value(self.decoder)
                .map_err(|_| xml_err("entities are not allowed"))?
                .into_owned();
            let mut new = value.clone();
            if !self.opaque.contains(&key.as_str()) && !value.trim().is_empty() {
                (self.f)(&mut new);
            }
            changed |= new != value;
            values.push((key, new));
        }
        if !changed {
            return Ok(());
        }
        let mut tag = format!("<{}", name_of(e)?);
        for (k, v) in values {
            tag.push_str(&format!(" {k}=\"{}\"", escape(&v)));
        }
        tag.push_str(if empty { "/>" } else { ">" });
        self.replace(span, &tag)
    }

    fn start(
        &mut self,
        e: &BytesStart<'_>,
        span: Range<usize>,
        empty: bool,
    ) -> Result<(), Rejection> {
        if self.depth == 0 && self.root_seen {
            return Err(xml_err("more than one root element"));
        }
        self.root_seen = true;
        let opaque = self.opaque_from.is_some() || self.is_opaque(e);
        if !opaque {
            self.attributes(e, span, empty)?;
        }
        if !empty {
            self.depth += 1;
            if opaque && self.opaque_from.is_none() {
                self.opaque_from = Some(self.depth);
            }
        }
        Ok(())
    }

    fn end(&mut self) -> Result<(), Rejection> {
        if self.opaque_from == Some(self.depth) {
            self.opaque_from = None;
        }
        self.depth = self
            .depth
            .checked_sub(1)
            .ok_or_else(|| xml_err("unbalanced"))?;
        Ok(())
    }

    fn event(&mut self, event: Event<'_>, span: Range<usize>) -> Result<bool, Rejection> {
        match event {
            Event::Text(t) => {
                let text = t.decode().map_err(|_| xml_err("text is not UTF-8"))?;
                return self.push_text(span, &text, false).map(|_| true);
            }
            Event::CData(c) => {
                let text = c.decode().map_err(|_| xml_err("CDATA is not UTF-8"))?;
                return self.push_text(span, &text, true).map(|_| true);
            }
            Event::GeneralRef(r) => {
                let ch = resolve_ref(&r)?;
                return self
                    .push_text(span, ch.encode_utf8(&mut [0; 4]), false)
                    .map(|_| true);
            }
            _ => {}
        }
        self.flush()?;
        match event {
            Event::DocType(_) => return Err(xml_err("DOCTYPE is not allowed")),
            Event::Start(e) => self.start(&e, span, false)?,
            Event::Empty(e) => self.start(&e, span, true)?,
            Event::End(_) => self.end()?,
            Event::Eof => return Ok(false),
            _ => {}
        }
        Ok(true)
    }
}

/// Calls `f` on every text value of `xml` (text and CDATA content, each
/// contiguous run as one string, and attribute values) outside elements and
/// attributes named in `opaque`, and returns the document with the values
/// `f` changed written back, correctly escaped. Unchanged parts keep their
/// exact bytes. Blank text is not visited. Refuses DOCTYPE, entities and
/// documents that are not one well-formed element.
pub fn rewrite_texts(
    xml: &str,
    opaque: &[&str],
    f: &mut dyn FnMut(&mut String),
) -> Result<String, Rejection> {
    let mut reader = Reader::from_str(xml);
    let mut w = Rewriter {
        xml,
        out: String::with_capacity(xml.len()),
        copied: 0,
        depth: 0,
        root_seen: false,
        opaque_from: None,
        opaque,
        decoder: reader.decoder(),
        run: None,
        f,
    };
    loop {
        let start = pos(&reader);
        let event = reader
            .read_event()
            .map_err(|_| xml_err("not well-formed"))?;
        if !w.event(event, start..pos(&reader))? {
            break;
        }
    }
    if !w.root_seen || w.depth != 0 {
        return Err(xml_err("no complete root element"));
    }
    let rest = xml.get(w.copied..).ok_or_else(|| xml_err("bad offsets"))?;
    w.out.push_str(rest);
    Ok(w.out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upper(xml: &str, opaque: &[&str]) -> Result<String, Rejection> {
        rewrite_texts(xml, opaque, &mut |s: &mut String| *s = s.to_uppercase())
    }

    #[test]
    fn parse_refuses_doctype_and_entities() {
        let bomb = r#"<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;">]><xml><Content>&lol2;</Content></xml>"#;
        assert_eq!(parse_xml(bomb).unwrap_err().kind(), "malformed");
        assert!(parse_xml("<xml><Content>&e;</Content></xml>").is_err());
        let ok = parse_xml("<xml><C>a &lt;&#x4e2d;<![CDATA[<b>]]></C></xml>").unwrap();
        assert_eq!(ok.get("C"), Some("a <中<b>"));
    }

    #[test]
    fn rewrite_visits_text_cdata_and_attributes() {
        let xml = "<?xml version=\"1.0\"?>\n<xml>\n <A>a &amp; b</A><B><![CDATA[x]]></B><Id>keep</Id><N k=\"v &lt;\" id=\"i\"><Id><i>deep</i></Id><i>y</i></N><E t=\"z\"/></xml>\n";
        let got = upper(xml, &["Id", "id"]).unwrap();
        assert_eq!(
            got,
            "<?xml version=\"1.0\"?>\n<xml>\n <A>A &amp; B</A><B><![CDATA[X]]></B><Id>keep</Id><N k=\"V &lt;\" id=\"i\"><Id><i>deep</i></Id><i>Y</i></N><E t=\"Z\"/></xml>\n"
        );
        // What f saw: each run once, entities resolved; blank runs skipped.
        let mut seen = Vec::new();
        let same = rewrite_texts(xml, &["Id", "id"], &mut |s: &mut String| {
            seen.push(s.clone())
        })
        .unwrap();
        assert_eq!(same, xml, "unchanged documents keep their bytes");
        assert_eq!(seen, ["a & b", "x", "v <", "y", "z"]);
    }

    #[test]
    fn rewrite_escapes_what_it_writes() {
        let xml = "<xml><T>plain</T><C><![CDATA[cd]]></C></xml>";
        let got = rewrite_texts(xml, &[], &mut |s: &mut String| {
            *s = format!("<{s}> & ]]> \"q\"")
        })
        .unwrap();
        let f = parse_xml(&got).unwrap();
        assert_eq!(f.get("T"), Some("<plain> & ]]> \"q\""));
        assert_eq!(f.get("C"), Some("<cd> & ]]> \"q\""));
        assert!(got.contains("<![CDATA["), "CDATA stays CDATA: {got}");
        // A mixed run (text, reference, CDATA) is one string, written as CDATA.
        let got = upper("<xml><M>a&lt;<![CDATA[b]]>c</M></xml>", &[]).unwrap();
        assert_eq!(parse_xml(&got).unwrap().get("M"), Some("A<BC"));
    }

    #[test]
    fn rewrite_refuses_what_parse_refuses() {
        for bad in [
            r#"<!DOCTYPE x [<!ENTITY e "e">]><xml>&e;</xml>"#,
            "<xml>&e;</xml>",
            "<xml a=\"&e;\"/>",
            "",
            "text",
            "<xml>",
            "<xml></other>",
            "<a/><b/>",
            "<xml/>trailing",
            "<xml/><![CDATA[x]]>",
        ] {
            assert!(upper(bad, &[]).is_err(), "{bad:?}");
        }
    }
}
