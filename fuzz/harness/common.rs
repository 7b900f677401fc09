//! Shared harness helpers.
//!
//! Input layout of the `*_receive` targets (and the two decrypt targets):
//!
//! ```text
//! ctl: u8 | field_0 NUL field_1 NUL ... field_{n-1} NUL | body (any bytes, NULs included)
//! ```
//!
//! `ctl` selects the harness mode (raw fields vs. harness-computed valid
//! signature / ciphertext around fuzzed content), the HTTP method and, where a
//! platform has several published vectors, the adapter config and the fixed
//! clock. A field that is missing (fewer NULs than fields) is an absent header
//! or parameter; the remainder is the body. `fuzz/seed.py` writes seeds in
//! this layout.
#![allow(dead_code)]

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use moltgate::platform::adapter::{Inbound, PlatformAdapter, Resealed, WebhookRequest};
use moltgate::platform::Rejection;

pub struct Input<'a> {
    pub ctl: u8,
    pub fields: Vec<Option<&'a [u8]>>,
    pub body: &'a [u8],
}

impl<'a> Input<'a> {
    pub fn split(data: &'a [u8], n: usize) -> Option<Self> {
        let (&ctl, mut rest) = data.split_first()?;
        let mut fields = Vec::with_capacity(n);
        while fields.len() < n {
            match rest.iter().position(|&b| b == 0) {
                Some(i) => {
                    fields.push(Some(&rest[..i]));
                    rest = &rest[i + 1..];
                }
                None => break,
            }
        }
        fields.resize(n, None);
        Some(Self {
            ctl,
            fields,
            body: rest,
        })
    }

    pub fn field(&self, i: usize) -> Option<&'a [u8]> {
        self.fields.get(i).copied().flatten()
    }

    /// The field as text (lossy), empty when absent.
    pub fn text(&self, i: usize) -> Cow<'a, str> {
        String::from_utf8_lossy(self.field(i).unwrap_or_default())
    }

    pub fn bit(&self, b: u8) -> bool {
        self.ctl & (1 << b) != 0
    }
}

pub fn secrets(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub fn at_secs(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

pub fn at_millis(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// Builds a header map; values that `http` would refuse are left out (as a
/// real server would never hand them to the adapter).
pub fn headers(pairs: &[(&'static str, Option<&[u8]>)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (name, value) in pairs {
        if let Some(v) = value {
            if let Ok(v) = HeaderValue::from_bytes(v) {
                h.append(HeaderName::from_static(*name), v);
            }
        }
    }
    h
}

/// `POST` normally; `GET` when asked (adapters must refuse, or route to their GET handling).
pub fn method(get: bool) -> &'static Method {
    static GET: Method = Method::GET;
    static POST: Method = Method::POST;
    if get {
        &GET
    } else {
        &POST
    }
}

/// Percent-encodes everything but unreserved characters.
pub fn pct(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Text fed to the reply/reseal half of the contract: nasty on purpose (CDATA
/// terminator, Slack markup, entities, astral chars, long enough to split).
pub fn tricky_text() -> &'static str {
    static T: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        let mut s = String::from("]]><![CDATA[ <@U1|x> &amp; &lt; @_user_1 \u{0} \r\n");
        while s.encode_utf16().count() < 4200 {
            s.push_str("\u{1F600}é中");
        }
        s
    });
    T.as_str()
}

static DEBUG: std::sync::LazyLock<bool> =
    std::sync::LazyLock::new(|| std::env::var_os("FUZZ_DEBUG").is_some());

/// Runs `receive` and, for a message, the rest of the adapter contract on it.
/// Everything must hold without panicking, whatever the bytes.
pub fn drive<A: PlatformAdapter>(adapter: &A, req: &WebhookRequest<'_>) -> Option<Inbound> {
    let result = adapter.receive(req);
    if *DEBUG {
        // `FUZZ_DEBUG=1 target seeds/<target>/*` shows what each seed reaches.
        match &result {
            Ok(Inbound::Message(m)) => eprintln!("=> message {:?} {:?}", m.message_id, m.text),
            Ok(Inbound::Answer { event, .. }) => eprintln!("=> answer {event}"),
            Ok(Inbound::Skip { reason, .. }) => eprintln!("=> skip {reason}"),
            Err(e) => eprintln!("=> rejected: {e}"),
        }
    }
    match result {
        Ok(inbound) => {
            match &inbound {
                Inbound::Message(msg) => {
                    for text in [msg.text.as_str(), tricky_text(), ""] {
                        if let Some(answer) = adapter.inline_reply(msg, text, req.now) {
                            open_and_seal(adapter, &answer.body, answer.content_type, req);
                        }
                        let _ = adapter.reply_calls(msg, text);
                    }
                    let _ = adapter.ack(msg);
                    passthrough(adapter, req);
                }
                Inbound::Answer { response, .. } | Inbound::Skip { response, .. } => {
                    let _ = response.status;
                }
            }
            Some(inbound)
        }
        Err(rej) => {
            let _ = (rej.status(), rej.kind(), rej.to_string());
            None
        }
    }
}

/// An adapter's own inline answer opens (decrypts) for egress DLP, and the
/// opened answer, rewritten, seals again.
fn open_and_seal<A: PlatformAdapter>(
    adapter: &A,
    body: &[u8],
    content_type: &'static str,
    req: &WebhookRequest<'_>,
) {
    let ct = Some(content_type).filter(|c| !c.is_empty());
    let mut opened = adapter
        .open_answer(ct, body)
        .expect("the adapter's own answer opens");
    if opened
        .texts_mut(adapter.opaque_keys(), &mut |s: &mut String| {
            s.push_str("]]>&<")
        })
        .is_ok()
    {
        let _ = adapter.seal_answer(&opened, req.now);
    }
}

/// Passthrough of a verified message: its payload is scanned and masked,
/// and whatever the adapter reseals verifies and parses again as a message.
fn passthrough<A: PlatformAdapter>(adapter: &A, req: &WebhookRequest<'_>) {
    let Ok(mut payload) = adapter.payload(req) else {
        return;
    };
    let walked = payload.texts_mut(adapter.opaque_keys(), &mut |s: &mut String| {
        s.push_str(" **** ]]>&<");
    });
    if walked.is_err() {
        return;
    }
    let Some(sealed) = adapter.reseal_payload(req, &payload) else {
        return;
    };
    let headers = resealed_headers(req.headers, &sealed);
    let again = WebhookRequest {
        query: sealed.query.as_deref().or(req.query),
        headers: &headers,
        body: &sealed.body,
        ..*req
    };
    match adapter.receive(&again) {
        Ok(Inbound::Message(_)) | Ok(Inbound::Skip { .. }) | Ok(Inbound::Answer { .. }) => {}
        // The fixed clock gives the reseal the original's signed timestamp,
        // which this same adapter already spent on the original body (the
        // bot, a different service, never shares that memory).
        Err(Rejection::Replayed(_)) => {}
        Err(e) => panic!("a resealed request must verify again: {e}"),
    }
}

fn resealed_headers(original: &HeaderMap, sealed: &Resealed) -> HeaderMap {
    let mut h = original.clone();
    for (k, v) in &sealed.headers {
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes()),
            HeaderValue::from_str(v),
        ) {
            h.insert(k, v);
        }
    }
    h
}

/// HMAC-SHA256 (RFC 2104), written out over `sha2` (the fuzz crate has no
/// `hmac`): the harness's own reference for the signatures it makes and checks.
pub fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |b: u8| block.map(|k| k ^ b);
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(msg)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .into()
}

/// Unpadded base64url, as JWTs are written.
pub fn b64url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Unpadded base64url decoding; `None` when not canonical base64url.
pub fn b64url_decode(text: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .ok()
}

/// `header.payload.signature` with an HS256 signature over the first two
/// parts under `key` (`header` and `payload` are taken as raw bytes, so a
/// payload need not even be JSON).
pub fn hs256_token(header: &[u8], payload: &[u8], key: &[u8]) -> String {
    let input = format!("{}.{}", b64url(header), b64url(payload));
    let sig = hmac_sha256(key, input.as_bytes());
    format!("{input}.{}", b64url(&sig))
}

/// Seconds since the Unix epoch, from the wall clock (JWT `exp`/`nbf` and the
/// Slack replay window are checked against it).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Replaces the first character of the last `.`-separated part (a JWT's
/// signature) by a different base64url character: a whole 6-bit group
/// changes, so the signature no longer verifies.
pub fn corrupt_signature(token: &str) -> String {
    let cut = token.rfind('.').map_or(0, |i| i + 1);
    let mut out = token.to_string();
    let new = match token[cut..].chars().next() {
        Some('A') => "B",
        Some(_) => "A",
        None => "AAAA",
    };
    let end = cut + token[cut..].chars().next().map_or(0, char::len_utf8);
    out.replace_range(cut..end, new);
    out
}

/// Every line break YAML knows (LF, CR, CRLF counts once per CR and LF here,
/// NEL, LS, PS), so a generous upper bound for reported line numbers.
pub fn line_breaks(text: &str) -> usize {
    text.chars()
        .filter(|c| matches!(c, '\n' | '\r' | '\u{85}' | '\u{2028}' | '\u{2029}'))
        .count()
}

/// A located policy error must say what is wrong and point inside the file.
pub fn check_file_error(e: &moltgate::config::FileError, text: &str) {
    assert!(!e.to_string().trim().is_empty(), "an error with no text");
    // libyaml reports an error at the end of a file whose last line has no
    // line break one line further down (its stream end forces a new line).
    let unterminated = !text.ends_with(['\n', '\r', '\u{85}', '\u{2028}', '\u{2029}']);
    let max_line = line_breaks(text) + 1 + usize::from(unterminated);
    for d in e.clone().split() {
        assert!(
            !d.message.trim().is_empty(),
            "a diagnostic with an empty message: {d:?}"
        );
        assert!(
            d.line.is_some() || d.column.is_none(),
            "a column without a line: {d:?}"
        );
        if let Some(line) = d.line {
            assert!(
                (1..=max_line).contains(&line),
                "line {line} outside the file ({max_line} lines): {d}"
            );
        }
        if let Some(col) = d.column {
            assert!(col >= 1, "column 0: {d}");
        }
    }
}

/// What holds for the outcome of any DLP scan of `text`, whatever the policy:
/// findings inside the text on character boundaries, in order; `blocked_by`
/// is the first `block` finding; a masked text has one character per original
/// character.
pub fn check_dlp_outcome(text: &str, out: &moltgate::policy::dlp::DlpOutcome) {
    use moltgate::policy::dlp::Action;
    let mut last = 0;
    for f in &out.findings {
        assert!(
            f.start <= f.end && f.end <= text.len(),
            "finding {f:?} outside the text ({} bytes)",
            text.len()
        );
        assert!(
            text.is_char_boundary(f.start) && text.is_char_boundary(f.end),
            "finding {f:?} not on character boundaries of {text:?}"
        );
        assert!(f.start >= last, "findings out of order: {:?}", out.findings);
        last = f.start;
    }
    let first_block = out
        .findings
        .iter()
        .find(|f| f.action == Action::Block)
        .map(|f| f.rule.clone());
    assert_eq!(
        out.blocked_by, first_block,
        "blocked_by is not the first block finding"
    );
    assert_eq!(out.is_blocked(), first_block.is_some());
    if let Some(masked) = &out.masked {
        assert_eq!(
            masked.chars().count(),
            text.chars().count(),
            "masking must replace character for character: {text:?} -> {masked:?}"
        );
        assert!(
            out.findings.iter().any(|f| f.action == Action::Mask),
            "masked without a mask finding"
        );
    }
    assert_eq!(out.text(text), out.masked.as_deref().unwrap_or(text));
}

/// The fixed Ed25519 key of the public-key JWT paths (RFC 8032 TEST 1 secret).
pub const ED25519_SECRET: [u8; 32] = [
    0x9d, 0x61, 0xb1, 0x9d, 0xef, 0xfd, 0x5a, 0x60, 0xba, 0x84, 0x4a, 0xf4, 0x92, 0xec, 0x2c, 0xc4,
    0x44, 0x49, 0xc5, 0x69, 0x7b, 0x10, 0x58, 0x7e, 0x1e, 0xe9, 0xd1, 0x6c, 0x2b, 0x1e, 0x3d, 0xeb,
];

/// The Ed25519 public key as a PEM `SubjectPublicKeyInfo`.
pub fn ed25519_public_pem() -> String {
    use base64::Engine;
    let public = ed25519_dalek::SigningKey::from_bytes(&ED25519_SECRET)
        .verifying_key()
        .to_bytes();
    let mut der = vec![
        0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
    ];
    der.extend_from_slice(&public);
    format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        base64::engine::general_purpose::STANDARD.encode(der)
    )
}

/// The Ed25519 public key as a JWKS with key id `k1`.
pub fn ed25519_jwks() -> String {
    let public = ed25519_dalek::SigningKey::from_bytes(&ED25519_SECRET)
        .verifying_key()
        .to_bytes();
    serde_json::json!({"keys": [{
        "kty": "OKP", "crv": "Ed25519", "x": b64url(&public), "kid": "k1", "alg": "EdDSA", "use": "sig"
    }]})
    .to_string()
}

/// A directory holding the key files a `jwt_validation` may name:
/// `ed25519.pem` and `jwks.json`. One fixed directory for every process
/// (nothing is left behind per run); each file is written whole under a
/// private name and renamed into place, so a concurrent reader never sees a
/// partial file.
pub fn key_dir() -> &'static std::path::Path {
    static DIR: std::sync::LazyLock<std::path::PathBuf> = std::sync::LazyLock::new(|| {
        let dir = std::env::temp_dir().join("moltgate-fuzz-keys");
        std::fs::create_dir_all(&dir).expect("key dir");
        for (name, text) in [
            ("ed25519.pem", ed25519_public_pem()),
            ("jwks.json", ed25519_jwks()),
        ] {
            let path = dir.join(name);
            if std::fs::read_to_string(&path).is_ok_and(|t| t == text) {
                continue;
            }
            let tmp = dir.join(format!("{name}.{}", std::process::id()));
            std::fs::write(&tmp, text).expect("key file");
            std::fs::rename(&tmp, &path).expect("key file");
        }
        dir
    });
    DIR.as_path()
}

/// Whether a key file name from a fuzzed policy is a plain file name inside
/// [`key_dir`] (never an absolute path, `..` or a device such as `/dev/zero`).
pub fn plain_file_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}
