//! Streaming-safe masking (`StreamMasker`) with the
//! shipped `policies/dlp.yaml` is the same as masking the whole text.
//!
//! Input: byte 0 picks the largest piece size (1..=64 bytes), bytes 1..9
//! seed the cut positions, the rest is the text (lossy UTF-8). The text is
//! streamed in pieces cut on character boundaries and, for every input:
//! - without a `block` finding, the emitted pieces add up to the whole
//!   text's masked form (`stream::whole_outcome`), and the findings are the
//!   whole text's, each reported once, with offsets into the whole text;
//! - with one, the stream reports the same rule once, and what it emitted
//!   is a prefix of the whole masked text that ends before the value;
//! - the held tail never exceeds `StreamMasker::bound`;
//! - `whole_outcome` finds everything `DlpPolicy::scan` finds.

use std::path::Path;
use std::sync::LazyLock;

use moltgate::policy::dlp::stream::whole_outcome;
use moltgate::policy::dlp::{Action, Direction, DlpPolicy, Finding, StreamMasker};

static POLICY: LazyLock<DlpPolicy> = LazyLock::new(|| {
    DlpPolicy::from_yaml(
        Path::new("policies/dlp.yaml"),
        include_str!("../../policies/dlp.yaml"),
    )
    .expect("the shipped dlp.yaml loads")
});

fn cuts(text: &str, max: usize, mut seed: u64) -> Vec<usize> {
    let mut out = Vec::new();
    let mut at = 0;
    loop {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        at += 1 + (seed % max as u64) as usize;
        while at < text.len() && !text.is_char_boundary(at) {
            at += 1;
        }
        if at >= text.len() {
            return out;
        }
        out.push(at);
    }
}

pub fn run(data: &[u8]) {
    if data.len() < 9 {
        return;
    }
    let max = usize::from(data[0] % 64) + 1;
    let seed = u64::from_le_bytes(data[1..9].try_into().unwrap()) | 1;
    let text = String::from_utf8_lossy(&data[9..]);
    let text = text.as_ref();
    let whole = whole_outcome(&POLICY, text, Direction::Egress);
    let plain = POLICY.scan(text, Direction::Egress);
    assert_eq!(whole.blocked_by, plain.blocked_by);
    for f in &plain.findings {
        assert!(whole.findings.contains(f), "{f:?} missing: {text:?}");
    }

    let mut m = StreamMasker::new(&*POLICY, Direction::Egress);
    let (mut emitted, mut findings, mut blocked) =
        (String::new(), Vec::<Finding>::new(), Vec::new());
    let mut from = 0;
    let cuts = cuts(text, max, seed);
    for &to in cuts.iter().chain(std::iter::once(&text.len())) {
        let e = m.push(&text[from..to]);
        assert!(m.held_len() <= m.bound());
        emitted.push_str(&e.text);
        findings.extend(e.findings);
        blocked.extend(e.blocked_by);
        from = to;
    }
    let e = m.finish();
    emitted.push_str(&e.text);
    findings.extend(e.findings);
    blocked.extend(e.blocked_by);

    let want = whole.text(text);
    match &whole.blocked_by {
        None => {
            assert!(
                blocked.is_empty(),
                "blocked {blocked:?}: {text:?} at {cuts:?}"
            );
            assert_eq!(emitted, want, "{text:?} at {cuts:?}");
            assert_eq!(findings, whole.findings, "{text:?} at {cuts:?}");
        }
        Some(rule) => {
            assert_eq!(blocked.len(), 1, "{text:?} at {cuts:?}");
            assert_eq!(&blocked[0], rule, "{text:?} at {cuts:?}");
            let first = whole.findings.iter().find(|f| f.action == Action::Block);
            let limit = first.map_or(0, |f| text[..f.start].chars().count());
            let n = emitted.chars().count();
            assert!(n <= limit, "{text:?} at {cuts:?}");
            assert_eq!(emitted, want.chars().take(n).collect::<String>());
        }
    }
}
