//! Compiling one adapter file: its text read by the shared YAML loader
//! (unknown keys, `${VAR}`, durations, `file:line:col`), then every path,
//! condition, template and scheme key checked and turned into the runtime
//! form. Every problem found is reported, each located in the file.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::Method;
use ipnet::IpNet;

use super::adapter::{
    Answer, Api, Attachments, Condition, DeclarativeAdapter, Field, Fields, Inline, Reply, Rule,
    Test,
};
use super::file::{
    AdapterFile, ApiFile, BodyFile, ConditionFile, DocFormat, FieldFile, FieldsFile, RouteFile,
    SchemeName,
};
use super::template::{check_pointer, Allowed, Source, Template, TemplateError, Tree};
use super::{intern, is_reserved, verify, CompiledAdapter, RouteSpec};
use crate::config::yaml::{self, locate_after_key, locate_key, FileError};

/// The deadline when a route sets none.
const DEFAULT_DEADLINE: Duration = Duration::from_secs(3);
/// Dedupe memory when a file sets none.
const DEFAULT_DEDUPE_TTL: Duration = Duration::from_secs(24 * 3600);

/// Errors of one file, each located.
struct Ctx<'a> {
    path: &'a Path,
    text: &'a str,
    errors: Vec<FileError>,
}

impl Ctx<'_> {
    /// An error at `needle` inside the section `key` (or at `key`).
    fn err(&mut self, key: &str, needle: Option<&str>, message: impl Into<String>) {
        let pos = match needle {
            Some(n) if !n.is_empty() => locate_after_key(self.text, key, n),
            _ => locate_key(self.text, key),
        }
        .or_else(|| locate_key(self.text, key));
        self.errors.push(FileError::at(self.path, pos, message));
    }

    fn template_err(&mut self, section: &str, e: &TemplateError) {
        let needle = match e {
            TemplateError::Unknown { name, .. } => Some(name.clone()),
            TemplateError::BadPointer(p) => Some(p.clone()),
            _ => None,
        };
        self.err(section, needle.as_deref(), e.to_string());
    }

    /// Checks a document path for `format`.
    fn path(&mut self, section: &str, p: &str, format: DocFormat) -> bool {
        if let Err(e) = check_pointer(p) {
            self.err(section, Some(p), e.to_string());
            return false;
        }
        if format == DocFormat::Form && p[1..].contains('/') {
            self.err(
                section,
                Some(p),
                format!("'{p}': a form path is one key, like /text"),
            );
            return false;
        }
        true
    }
}

/// Compiles one adapter file's text.
pub fn compile(path: &Path, text: &str) -> Result<CompiledAdapter, FileError> {
    let file: AdapterFile = yaml::parse_str(path, text)?;
    let mut cx = Ctx {
        path,
        text,
        errors: Vec::new(),
    };
    let name = check_name(&mut cx, &file.name);
    let route = file.route.as_ref().and_then(|r| route(&mut cx, r));
    let scheme = match verify::build(&file.verify) {
        Ok(s) => Some(s),
        Err((key, message)) => {
            cx.err("verify", Some(&format!("{key}:")), message);
            None
        }
    };
    if file.verify.scheme == SchemeName::None
        && file.route.as_ref().is_some_and(|r| r.ip_allow.is_empty())
    {
        cx.err("verify", Some("none"), "scheme none needs `route.ip_allow`: without a signature, only the listed networks may call this route");
    }
    if file.verify.scheme == SchemeName::Jwt
        && (file.fields.sender.is_some() || file.fields.tenant.is_some())
    {
        cx.err("fields", Some(if file.fields.sender.is_some() { "sender:" } else { "tenant:" }),
            "with scheme jwt the sender and tenant are the token's `sub` and `tenant`: remove this field");
    }
    let format = file.format;
    let answers = answers(&mut cx, &file, format);
    let ignore = ignore(&mut cx, &file.ignore, format);
    let fields = fields(&mut cx, &file.fields, format);
    let attributes = attributes(&mut cx, &file.attributes, format);
    let api_base = route.as_ref().and_then(|r: &RouteSpec| r.api_base.clone());
    let reply = reply(&mut cx, &file, api_base.as_deref());
    FileError::check(std::mem::take(&mut cx.errors))?;
    let (Some(name), Some(scheme), Some(reply)) = (name, scheme, reply) else {
        return Err(FileError::whole(path, "the adapter did not compile"));
    };
    let captured = captured(&reply);
    let adapter = DeclarativeAdapter {
        name,
        format,
        scheme,
        answers,
        ignore,
        fields,
        attributes,
        reply,
        captured,
        deadline: route
            .as_ref()
            .and_then(|r| r.deadline)
            .unwrap_or(DEFAULT_DEADLINE),
        dedupe_ttl: file.dedupe_ttl.map_or(DEFAULT_DEDUPE_TTL, |d| d.0),
    };
    Ok(CompiledAdapter {
        name,
        file: path.to_path_buf(),
        route,
        adapter: Arc::new(adapter),
    })
}

fn check_name(cx: &mut Ctx<'_>, name: &str) -> Option<&'static str> {
    let ok = !name.is_empty()
        && name.len() <= 32
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if !ok {
        cx.err(
            "name",
            None,
            format!(
                "adapter name {:?} must be 1-32 of a-z 0-9 _ -",
                name.chars().take(40).collect::<String>()
            ),
        );
        return None;
    }
    if is_reserved(name) {
        cx.err("name", None, format!("'{name}' is a built-in platform; name the adapter something else (e.g. {name}_yaml)"));
        return None;
    }
    label(cx, "name", name)
}

/// Interns a label (name, reason, event); an error when the interner is full.
fn label(cx: &mut Ctx<'_>, key: &str, s: &str) -> Option<&'static str> {
    let l = intern(s);
    if l.is_none() {
        cx.err(
            key,
            Some(s),
            "too many distinct adapter labels since start; restart moltgate to load more",
        );
    }
    l
}

fn route(cx: &mut Ctx<'_>, r: &RouteFile) -> Option<RouteSpec> {
    let n = cx.errors.len();
    if !r.path.starts_with('/')
        || r.path
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '?' || c == '#')
    {
        cx.err(
            "route",
            Some("path:"),
            format!(
                "route path {:?} must start with / and have no spaces, ? or #",
                r.path
            ),
        );
    }
    if r.upstream.trim().is_empty() {
        cx.err(
            "route",
            Some("upstream:"),
            "route.upstream names an upstream of moltgate.yaml",
        );
    }
    if r.body_limit == Some(0) {
        cx.err(
            "route",
            Some("body_limit:"),
            "body_limit must be at least 1 byte",
        );
    }
    let mut ip_allow = Vec::new();
    for s in &r.ip_allow {
        match s
            .parse::<IpNet>()
            .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        {
            Ok(net) => ip_allow.push(net),
            Err(_) => cx.err(
                "ip_allow",
                Some(s),
                format!("'{s}' is not an IP address or CIDR network like 10.0.0.0/8"),
            ),
        }
    }
    let api_base = r
        .api_base
        .as_ref()
        .map(|b| b.0.trim_end_matches('/').to_string());
    if let Some(b) = &api_base {
        if !origin_ok(b) {
            cx.err(
                "route",
                Some("api_base:"),
                "api_base must be an http(s) origin like https://api.example.com",
            );
        }
    }
    (cx.errors.len() == n).then(|| RouteSpec {
        path: r.path.clone(),
        upstream: r.upstream.clone(),
        mode: r.mode,
        body_limit: r.body_limit,
        deadline: r.deadline.map(|d| d.0),
        ip_allow,
        api_base,
    })
}

/// An http(s) URL with a host and no path, query or userinfo.
fn origin_ok(base: &str) -> bool {
    let Ok(uri) = base.parse::<http::Uri>() else {
        return false;
    };
    matches!(uri.scheme_str(), Some("http" | "https"))
        && uri
            .authority()
            .is_some_and(|a| !a.host().is_empty() && !a.as_str().contains('@'))
        && matches!(uri.path(), "" | "/")
        && uri.query().is_none()
}

fn condition(
    cx: &mut Ctx<'_>,
    section: &str,
    c: &ConditionFile,
    format: DocFormat,
) -> Option<Condition> {
    let ok = cx.path(section, &c.field, format);
    let texts = |v: &Vec<super::file::Scalar>| v.iter().map(|s| s.text()).collect::<Vec<_>>();
    let mut tests = Vec::new();
    if let Some(v) = &c.equals {
        tests.push(Test::Equals(v.text()));
    }
    if let Some(v) = &c.not_equals {
        tests.push(Test::NotEquals(v.text()));
    }
    if let Some(v) = &c.one_of {
        tests.push(Test::OneOf(texts(v)));
    }
    if let Some(v) = &c.not_one_of {
        tests.push(Test::NotOneOf(texts(v)));
    }
    if let Some(v) = c.present {
        tests.push(Test::Present(v));
    }
    if tests.len() != 1 {
        cx.err(section, Some(&c.field), format!("the condition on {} needs exactly one of equals, not_equals, one_of, not_one_of, present", c.field));
        return None;
    }
    ok.then(|| Condition {
        pointer: c.field.clone(),
        test: tests.remove(0),
    })
}

fn answers(cx: &mut Ctx<'_>, file: &AdapterFile, format: DocFormat) -> Vec<Answer> {
    let mut out = Vec::new();
    let allowed = Allowed {
        reply: false,
        fields: false,
    };
    for a in &file.answers {
        if a.when.reason.is_some() {
            cx.err(
                "answers",
                Some("reason:"),
                "an answer has `event`, not `reason`",
            );
        }
        let when = condition(cx, "answers", &a.when, format);
        let body = body_tree(cx, "answers", &a.body, a.format, allowed);
        let event = label_or(cx, "answers", a.event.as_deref(), "answered");
        if let (Some(when), Some(body), Some(event)) = (when, body, event) {
            out.push(Answer {
                when,
                event,
                format: a.format,
                body,
            });
        }
    }
    out
}

/// A bounded label: [a-z0-9_]{1,32}.
fn label_or(
    cx: &mut Ctx<'_>,
    section: &str,
    s: Option<&str>,
    default: &'static str,
) -> Option<&'static str> {
    let Some(s) = s else { return Some(default) };
    if s.is_empty()
        || s.len() > 32
        || !s
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        cx.err(
            section,
            Some(s),
            format!(
                "label {:?} must be 1-32 of a-z 0-9 _",
                s.chars().take(40).collect::<String>()
            ),
        );
        return None;
    }
    label(cx, section, s)
}

fn ignore(cx: &mut Ctx<'_>, rules: &[ConditionFile], format: DocFormat) -> Vec<Rule> {
    let mut out = Vec::new();
    for c in rules {
        let when = condition(cx, "ignore", c, format);
        let reason = label_or(cx, "ignore", c.reason.as_deref(), "ignored");
        if let (Some(when), Some(reason)) = (when, reason) {
            out.push(Rule { when, reason });
        }
    }
    out
}

fn field(cx: &mut Ctx<'_>, key: &str, f: &FieldFile, format: DocFormat, chat_type: bool) -> Field {
    let mut out = Field::default();
    match f {
        FieldFile::Paths(p) => out.paths = p.clone(),
        FieldFile::Long(l) => {
            out.paths = l.field.as_ref().map(|p| p.0.clone()).unwrap_or_default();
            out.join = l.join.clone().unwrap_or_default();
            out.map = l.map.clone();
            out.default = l.default.clone();
            if out.paths.is_empty() && out.join.is_empty() && out.default.is_none() {
                cx.err(
                    key,
                    None,
                    format!("field {key} needs `field`, `join` or `default`"),
                );
            }
        }
    }
    for p in out.paths.clone().iter().chain(out.join.clone().iter()) {
        cx.path(key, p, format);
    }
    if chat_type {
        let values = out
            .map
            .iter()
            .flat_map(|m| m.values())
            .chain(out.default.iter());
        for v in values.cloned().collect::<Vec<_>>() {
            if !matches!(v.as_str(), "private" | "group" | "channel") {
                cx.err(
                    key,
                    Some(&v),
                    format!("chat type '{v}' must be private, group or channel"),
                );
            }
        }
    }
    out
}

fn fields(cx: &mut Ctx<'_>, f: &FieldsFile, format: DocFormat) -> Fields {
    let mut named = vec![
        ("id", field(cx, "id", &f.id, format, false)),
        ("text", field(cx, "text", &f.text, format, false)),
    ];
    let optional: [(&'static str, &Option<FieldFile>); 7] = [
        ("sender", &f.sender),
        ("sender_name", &f.sender_name),
        ("tenant", &f.tenant),
        ("room", &f.room),
        ("thread", &f.thread),
        ("chat_type", &f.chat_type),
        ("command", &f.command),
    ];
    for (name, spec) in optional {
        if let Some(spec) = spec {
            named.push((name, field(cx, name, spec, format, name == "chat_type")));
        }
    }
    let attachments = f.attachments.as_ref().map(|a| {
        cx.path("attachments", &a.field, format);
        let name = a.name.clone().unwrap_or_else(|| "/name".into());
        let url = a.url.clone().unwrap_or_else(|| "/url".into());
        for p in [&name, &url] {
            if let Err(e) = check_pointer(p) {
                cx.err("attachments", Some(p), e.to_string());
            }
        }
        Attachments {
            pointer: a.field.clone(),
            name,
            url,
        }
    });
    Fields { named, attachments }
}

fn attributes(
    cx: &mut Ctx<'_>,
    attrs: &BTreeMap<String, FieldFile>,
    format: DocFormat,
) -> Vec<(String, Field)> {
    let mut out = Vec::new();
    for (k, f) in attrs {
        if k.is_empty()
            || k.len() > 64
            || !k
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
            || k.starts_with("attachment.")
        {
            cx.err("attributes", Some(k), format!("attribute name {k:?} must be 1-64 of A-Z a-z 0-9 _ . and not start with attachment."));
            continue;
        }
        out.push((k.clone(), field(cx, "attributes", f, format, false)));
    }
    out
}

fn body_tree(
    cx: &mut Ctx<'_>,
    section: &str,
    yaml: &serde_yaml_ng::Value,
    format: super::file::BodyFormat,
    allowed: Allowed,
) -> Option<Tree> {
    let tree = Tree::parse(yaml, allowed).and_then(|t| t.check_format(format).map(|()| t));
    tree.map_err(|e| cx.template_err(section, &e)).ok()
}

fn reply(cx: &mut Ctx<'_>, file: &AdapterFile, api_base: Option<&str>) -> Option<Reply> {
    let n = cx.errors.len();
    let with_reply = Allowed {
        reply: true,
        fields: true,
    };
    let r = &file.reply;
    let inline = r.inline.as_ref().and_then(|i| {
        Some(Inline {
            format: i.format,
            body: body_tree(cx, "inline", &i.body, i.format, with_reply)?,
            max_length: i.max_length,
        })
    });
    let ack = r.ack.as_ref().and_then(|BodyFile { format, body }| {
        Some((
            *format,
            body_tree(
                cx,
                "ack",
                body,
                *format,
                Allowed {
                    reply: false,
                    fields: true,
                },
            )?,
        ))
    });
    let api = r.api.as_ref().and_then(|a| api(cx, a, api_base));
    (cx.errors.len() == n).then_some(Reply { inline, api, ack })
}

fn api(cx: &mut Ctx<'_>, a: &ApiFile, api_base: Option<&str>) -> Option<Api> {
    let with_reply = Allowed {
        reply: true,
        fields: true,
    };
    let method = match a
        .method
        .as_deref()
        .unwrap_or("POST")
        .to_ascii_uppercase()
        .as_str()
    {
        "POST" => Method::POST,
        "PUT" => Method::PUT,
        "PATCH" => Method::PATCH,
        m => {
            cx.err(
                "api",
                Some("method:"),
                format!("method '{m}' must be POST, PUT or PATCH"),
            );
            return None;
        }
    };
    let base = api_base
        .map(str::to_string)
        .unwrap_or_else(|| a.base.0.trim_end_matches('/').to_string());
    if !origin_ok(&base) {
        cx.err(
            "api",
            Some("base:"),
            "reply.api.base must be an http(s) origin like https://slack.com",
        );
    }
    if !a.url.0.starts_with('/') {
        cx.err("api", Some("url:"), "reply.api.url is a path on `base`, starting with / (route.api_base replaces base in tests)");
    }
    let url = Template::parse(&a.url.0, with_reply)
        .map_err(|e| cx.template_err("api", &e))
        .ok();
    let headers = headers(cx, &a.headers);
    let body = body_tree(cx, "api", &a.body, a.format, with_reply);
    let success = a.success.as_ref().and_then(|s| {
        check_pointer(&s.field)
            .map_err(|e| cx.template_err("success", &e))
            .ok()?;
        Some((label(cx, "success", &s.field)?, s.equals.clone()))
    });
    if a.success.is_some() && success.is_none() {
        return None;
    }
    Some(Api {
        method,
        base,
        url: url?,
        headers,
        format: a.format,
        body: body?,
        success,
        max_length: a.max_length,
    })
}

/// `reply.api.headers`: names checked, values parsed as templates.
fn headers(
    cx: &mut Ctx<'_>,
    raw: &BTreeMap<String, crate::config::yaml::EnvString>,
) -> Vec<(String, Template)> {
    let with_reply = Allowed {
        reply: true,
        fields: true,
    };
    let mut headers = Vec::new();
    for (name, value) in raw {
        if !verify::valid_header_name(name) {
            cx.err(
                "headers",
                Some(name),
                format!("'{name}' is not a header name"),
            );
        } else if value.0.chars().any(char::is_control) {
            cx.err(
                "headers",
                Some(name),
                format!("header '{name}' has a control character"),
            );
        } else if let Ok(t) =
            Template::parse(&value.0, with_reply).map_err(|e| cx.template_err("headers", &e))
        {
            headers.push((name.to_ascii_lowercase(), t));
        }
    }
    headers
}

/// The request pointers the reply templates read.
fn captured(reply: &Reply) -> Vec<String> {
    let mut sources: Vec<&Source> = Vec::new();
    if let Some(i) = &reply.inline {
        sources.extend(i.body.sources());
    }
    if let Some((_, body)) = &reply.ack {
        sources.extend(body.sources());
    }
    if let Some(a) = &reply.api {
        sources.extend(a.body.sources());
        sources.extend(a.url.sources());
        sources.extend(a.headers.iter().flat_map(|(_, t)| t.sources()));
    }
    let mut out: Vec<String> = sources
        .into_iter()
        .filter_map(|s| match s {
            Source::Pointer(p) => Some(p.clone()),
            _ => None,
        })
        .collect();
    out.sort();
    out.dedup();
    out
}
