//! WebSocket passthrough: tungstenite's frame parser with a route's limits,
//! and frame inspection (`websocket::inspect`, the `openclaw` and `json`
//! profiles) over the messages it yields and over frame sequences.
//!
//! Input: byte 0 picks the mode and profile:
//! - bit 0: `openclaw` (0) or `json` with pointers `/text`, `/a/0/b` in and
//!   `/reply`, `/a` out (1);
//! - bit 1: wire mode (1): the rest is raw bytes from a client, read by a
//!   server-role tungstenite over memory with `max_frame` 256; every text
//!   message it yields is inspected as a client frame;
//! - frame mode (0): the rest is frames separated by NUL; a frame's first
//!   byte says which side sent it (even: client, odd: upstream).
//!
//! Properties, for every input:
//! - nothing panics, and no message over `max_frame` is yielded;
//! - a rewritten frame is JSON of the same kind (object stays object);
//! - a client frame that is not JSON is refused (and only such a frame is
//!   refused as malformed); a frame is a message only if it is JSON;
//! - upstream frames are never refused (their text is masked or withheld).

use std::io::{Cursor, Read, Write};
use std::sync::{Arc, LazyLock};

use moltgate::config::{WebSocketProfile, WebSocketSettings};
use moltgate::policy::PolicySet;
use moltgate::websocket::inspect::{FrameInspector, Refusal, Verdict};
use serde_json::Value;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocket, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;

const MAX_FRAME: usize = 256;

static POLICIES: LazyLock<Arc<PolicySet>> = LazyLock::new(|| {
    // The main crate's root (tests) or the fuzz crate's (libFuzzer).
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = match root.join("policies") {
        d if d.is_dir() => d,
        _ => root.join("../policies"),
    };
    Arc::new(PolicySet::load(&dir, 1, None).expect("the shipped policies load"))
});

fn settings(json: bool) -> WebSocketSettings {
    if !json {
        return WebSocketSettings {
            profile: Some(WebSocketProfile::Openclaw),
            ..Default::default()
        };
    }
    WebSocketSettings {
        profile: Some(WebSocketProfile::Json),
        ingress_pointers: vec!["/text".into(), "/a/0/b".into()],
        egress_pointers: vec!["/reply".into(), "/a".into()],
        ..Default::default()
    }
}

/// Bytes in, bytes out: what tungstenite reads from and writes to.
struct Wire {
    input: Cursor<Vec<u8>>,
    output: Vec<u8>,
}

impl Read for Wire {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.input.read(buf)
    }
}

impl Write for Wire {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.output.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub fn run(data: &[u8]) {
    let Some((&ctl, rest)) = data.split_first() else {
        return;
    };
    let mut inspector = FrameInspector::new(&settings(ctl & 1 == 1));
    if ctl & 2 == 2 {
        wire(&mut inspector, rest);
    } else {
        for frame in rest.split(|&b| b == 0) {
            let Some((&side, text)) = frame.split_first() else {
                continue;
            };
            let text = String::from_utf8_lossy(text);
            if side % 2 == 0 {
                client(&mut inspector, &text);
            } else {
                upstream(&mut inspector, &text);
            }
        }
    }
}

fn wire(inspector: &mut FrameInspector, bytes: &[u8]) {
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_FRAME))
        .max_frame_size(Some(MAX_FRAME));
    let wire = Wire {
        input: Cursor::new(bytes.to_vec()),
        output: Vec::new(),
    };
    let mut ws = WebSocket::from_raw_socket(wire, Role::Server, Some(config));
    // Each read consumes input or fails; the input is finite.
    for _ in 0..10_000 {
        match ws.read() {
            Ok(Message::Text(text)) => {
                assert!(text.len() <= MAX_FRAME);
                client(inspector, text.as_str());
            }
            Ok(Message::Binary(b)) => assert!(b.len() <= MAX_FRAME),
            Ok(_) => {}
            Err(_) => return,
        }
    }
}

fn client(inspector: &mut FrameInspector, text: &str) {
    let parsed = serde_json::from_str::<Value>(text).ok();
    let ins = inspector.client_frame(&POLICIES, text);
    match (&ins.verdict, &parsed) {
        (Verdict::Refuse(Refusal::Malformed(_)), None) => {}
        (_, None) => panic!("non-JSON not refused: {text:?} -> {:?}", ins.verdict),
        (Verdict::Refuse(Refusal::Malformed(_)), Some(_)) => {
            panic!("JSON refused as malformed: {text:?}")
        }
        (Verdict::Rewrite(out), Some(before)) => same_kind(before, out),
        _ => {}
    }
    if ins.message.is_some() {
        assert!(parsed.is_some());
    }
}

fn upstream(inspector: &mut FrameInspector, text: &str) {
    let parsed = serde_json::from_str::<Value>(text).ok();
    let e = inspector.upstream_frame(&POLICIES, text);
    match (&e.verdict, &parsed) {
        (Verdict::Refuse(_), _) => panic!("upstream frames are never refused"),
        (Verdict::Rewrite(out), Some(before)) => same_kind(before, out),
        _ => {}
    }
}

fn same_kind(before: &Value, out: &str) {
    let after: Value = serde_json::from_str(out).expect("a rewrite is JSON");
    assert_eq!(
        std::mem::discriminant(before),
        std::mem::discriminant(&after),
        "{before} -> {after}"
    );
}
