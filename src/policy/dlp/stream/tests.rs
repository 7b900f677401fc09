//! Unit tests of streaming masking: the streamed outcome against the
//! whole-text scan, over the DLP corpus and the `dlp_mask` fuzz inputs.

use super::*;
use crate::policy::dlp::MAX_MASK_PASSES;
use std::path::Path;
use unicode_normalization::char::canonical_combining_class;
use unicode_normalization::IsNormalized;

#[allow(dead_code, clippy::all)]
#[path = "../../../../tests/dlp/corpus.rs"]
mod corpus;
#[allow(dead_code, clippy::all)]
#[path = "../../../../tests/dlp/gen.rs"]
mod gen;

const SHIPPED: &str = include_str!("../../../../policies/dlp.yaml");
const SEED_POLICY: &str = include_str!("../../../../tests/fixtures/seed/dlp.yaml");

fn load(text: &str) -> DlpPolicy {
    DlpPolicy::from_yaml(Path::new("policies/dlp.yaml"), text).unwrap()
}

fn shipped() -> DlpPolicy {
    load(SHIPPED)
}

/// Streams `text` cut at `cuts` (byte offsets, ascending, on char boundaries).
fn stream(p: &DlpPolicy, text: &str, cuts: &[usize], dir: Direction) -> (Vec<Emitted>, usize) {
    let mut m = StreamMasker::new(p, dir);
    let mut out = Vec::new();
    let mut from = 0;
    let mut most_held = 0;
    for &c in cuts.iter().chain(std::iter::once(&text.len())) {
        out.push(m.push(&text[from..c]));
        most_held = most_held.max(m.held_len());
        assert!(m.held_len() <= m.bound(), "held {} > bound", m.held_len());
        from = c;
    }
    out.push(m.finish());
    (out, most_held)
}

/// Checks the streamed outcome of `text` cut at `cuts` against the whole
/// text's (with the re-scan of [`scan_window`]; see
/// `reference_differs_from_scan_only_by_masking_more`).
fn check(p: &DlpPolicy, text: &str, cuts: &[usize], dir: Direction) -> Result<(), String> {
    let whole = scan_window(p, text, dir);
    let (parts, _) = stream(p, text, cuts, dir);
    let emitted: String = parts.iter().map(|e| e.text.as_str()).collect();
    let findings: Vec<Finding> = parts.iter().flat_map(|e| e.findings.clone()).collect();
    let blocked: Vec<&Arc<str>> = parts.iter().filter_map(|e| e.blocked_by.as_ref()).collect();
    let want = whole.text(text);
    let explain = || format!("{text:?} cut at {cuts:?}");
    match &whole.blocked_by {
        None => {
            if !blocked.is_empty() {
                return Err(format!(
                    "blocked by {blocked:?}, whole is not: {}",
                    explain()
                ));
            }
            if emitted != want {
                return Err(format!(
                    "emitted {emitted:?}\n want {want:?}\n {}",
                    explain()
                ));
            }
            if findings != whole.findings {
                return Err(format!(
                    "findings {findings:?}\n want {:?}\n {}",
                    whole.findings,
                    explain()
                ));
            }
        }
        Some(rule) => {
            if blocked.len() != 1 || blocked[0] != rule {
                return Err(format!("blocked {blocked:?}, want {rule}: {}", explain()));
            }
            let first = whole.findings.iter().find(|f| f.action == Action::Block);
            let limit = first.map_or(0, |f| text[..f.start].chars().count());
            let prefix: String = want.chars().take(emitted.chars().count()).collect();
            if emitted != prefix || emitted.chars().count() > limit {
                return Err(format!(
                    "blocked stream emitted {emitted:?} (first block at char {limit}) of {want:?}: {}",
                    explain()
                ));
            }
        }
    }
    Ok(())
}

/// Char boundaries of `text` except 0 and the end.
fn boundaries(text: &str) -> Vec<usize> {
    text.char_indices()
        .map(|(i, _)| i)
        .filter(|&i| i > 0)
        .collect()
}

/// Every split in two (when `every`), then random splits into pieces of
/// 1..=max bytes.
fn check_all(p: &DlpPolicy, text: &str, rng: &mut gen::Rng, every: bool) -> Vec<String> {
    let mut errors = Vec::new();
    let bounds = boundaries(text);
    if every {
        for &b in &bounds {
            if let Err(e) = check(p, text, &[b], Direction::Egress) {
                errors.push(e);
            }
        }
    }
    // One-byte pieces cost a scan per byte: short texts only.
    let sizes: &[usize] = if text.len() <= 400 {
        &[1, 3, 8, 24]
    } else {
        &[3, 24]
    };
    for &max in sizes {
        let mut cuts = Vec::new();
        let mut at = 0;
        loop {
            at += 1 + rng.below(max);
            match bounds.iter().find(|&&b| b >= at) {
                Some(&b) => {
                    cuts.push(b);
                    at = b;
                }
                None => break,
            }
        }
        if let Err(e) = check(p, text, &cuts, Direction::Egress) {
            errors.push(e);
        }
    }
    errors
}

fn report(errors: &[String]) {
    for e in errors.iter().take(8) {
        eprintln!("{e}\n");
    }
    assert!(
        errors.is_empty(),
        "{} streams differ from the whole scan",
        errors.len()
    );
}

/// Every split of `text` in two and in three pieces.
fn check_pairs(p: &DlpPolicy, text: &str) {
    let bounds = boundaries(text);
    let mut errors = Vec::new();
    for (i, &a) in bounds.iter().enumerate() {
        for cuts in std::iter::once(vec![a]).chain(bounds[i + 1..].iter().map(|&b| vec![a, b])) {
            if let Err(e) = check(p, text, &cuts, Direction::Egress) {
                errors.push(e);
            }
        }
    }
    report(&errors);
}

fn streamed(p: &DlpPolicy, pieces: &[&str]) -> (String, Vec<Finding>, Option<Arc<str>>) {
    let mut m = StreamMasker::new(p, Direction::Egress);
    let mut parts: Vec<Emitted> = pieces.iter().map(|d| m.push(d)).collect();
    parts.push(m.finish());
    let text = parts.iter().map(|e| e.text.as_str()).collect();
    let findings = parts.iter().flat_map(|e| e.findings.clone()).collect();
    let blocked = parts.iter().find_map(|e| e.blocked_by.clone());
    (text, findings, blocked)
}

#[test]
fn a_card_split_across_pieces_is_masked() {
    let p = shipped();
    let (text, findings, blocked) = streamed(&p, &["My card is 4111 1111", " 1111 1111"]);
    assert_eq!(text, "My card is ***************1111");
    assert_eq!(blocked, None);
    assert_eq!(findings.len(), 1);
    assert_eq!(
        (&*findings[0].rule, findings[0].start, findings[0].end),
        ("credit_card", 11, 30)
    );
    // Nothing of the number leaves before it is complete (the shipped
    // keywords hold the last 16 bytes besides).
    let mut m = StreamMasker::new(&p, Direction::Egress);
    let first = m.push("My card is 4111 1111").text;
    assert!(
        "My card is ".starts_with(&first) && !first.is_empty(),
        "{first:?}"
    );
    let p = load(
        "patterns:\n  card: { regex: '4\\d{3}(?: ?\\d{4}){3}', validate: luhn, action: mask }\n",
    );
    let mut m = StreamMasker::new(&p, Direction::Egress);
    assert_eq!(m.push("My card is 4111 1111").text, "My card is ");
    // Complete, but the two characters after it decide what its mask keeps.
    assert_eq!(m.push(" 1111 1111").text, "");
    assert_eq!(m.push(", ok").text, "*******************, o");
    assert_eq!(m.finish().text, "k");
    let p = shipped();
    check_pairs(&p, "My card is 4111 1111 1111 1111, thanks");
    check_pairs(&p, "pay 4111-1111-1111-1111 or 5500 0000 0000 0004.");
}

#[test]
fn a_phone_split_across_pieces_is_masked() {
    let p = shipped();
    let (text, ..) = streamed(&p, &["call 138", "1234", "5678 tonight"]);
    assert_eq!(text, "call 138****5678 tonight");
    check_pairs(&p, "call me on 138 1234 5678 tonight");
    check_pairs(&p, "手机13812345678，下午联系。");
    // One digit more and it is no phone number: what was held comes out as it was.
    let (text, findings, _) = streamed(&p, &["ref 1381234567", "89 ok"]);
    assert_eq!((text.as_str(), findings.len()), ("ref 138123456789 ok", 0));
}

#[test]
fn full_width_digits_fold_across_pieces() {
    let p = shipped();
    let (text, ..) = streamed(&p, &["电话：１３８", "１２３４", "５６７８。"]);
    assert_eq!(text, "电话：１３８****５６７８。");
    check_pairs(&p, "电话：１３８１２３４５６７８。");
    check_pairs(&p, "卡号4111\u{200b}1111 1111 １１１１ 好");
}

#[test]
fn characters_that_fold_together_are_held_together() {
    // `e` + U+0301 folds to `é`: a keyword ending in `é` split between them.
    let p = load("keywords:\n  cafe: { words: [\"café\", \"机密\"], action: mask }\n");
    let (text, findings, _) = streamed(&p, &["un cafe", "\u{301} noir 机", "密"]);
    assert_eq!(text, "un ***** noir **");
    assert_eq!(findings.len(), 2);
    check_pairs(&p, "un cafe\u{301} noir, 机密 😀 cafe");
    check_pairs(&p, "ｶﾞ ca\u{200b}fé");
}

#[test]
fn a_block_rule_stops_the_stream() {
    let p = shipped();
    let mut m = StreamMasker::new(&p, Direction::Egress);
    let mut out = m.push("key AKIAIOSFODNN7").text;
    let e = m.push("EXAMPLE and 13812345678");
    out += &e.text;
    assert_eq!(e.blocked_by.as_deref(), Some("aws_access_key"));
    assert_eq!(out, "key ");
    assert_eq!(e.findings.len(), 1, "the block finding, reported once");
    assert!(m.is_blocked());
    assert_eq!(m.push("more"), Emitted::default());
    assert_eq!(m.finish(), Emitted::default());
    check_pairs(&p, "key AKIAIOSFODNN7EXAMPLE here");
    check_pairs(&p, "not a key AKIAIOSFODNN7EXAMPLEX");
    check_pairs(&p, "x -----BEGIN RSA PRIVATE KEY-----\nMIIE\n");
    // At the end of the stream, a block rule matches on finish.
    let (_, _, blocked) = streamed(&p, &["key AKIAIOSFODNN7EXAMPLE"]);
    assert_eq!(blocked.as_deref(), Some("aws_access_key"));
}

#[test]
fn the_held_tail_is_bounded() {
    let p = shipped();
    let bound = StreamMasker::new(&p, Direction::Egress).bound();
    // README quotes this figure: a stream never holds more than a few KiB.
    eprintln!("hold-back bound with the shipped rules: {bound} bytes");
    assert!(bound <= 4 * 1024, "bound {bound}");
    for (piece, n) in [
        ("a", 200_000),
        ("1\u{200b}", 20_000),
        ("1 ", 20_000),
        ("é", 20_000),
    ] {
        let mut m = StreamMasker::new(&p, Direction::Egress);
        let mut total = 0;
        let text = piece.repeat(n);
        let mut from = 0;
        while from < text.len() {
            let to = super::ceil_char(&text, from + 997);
            total += m.push(&text[from..to]).text.len();
            from = to;
            assert!(
                m.held_len() <= bound,
                "{piece:?}: held {} > {bound}",
                m.held_len()
            );
        }
        total += m.finish().text.len();
        assert!(total > 0);
    }
}

#[test]
fn only_what_can_still_match_is_held() {
    // No keywords: prose comes out whole at once.
    let p = load(
        "patterns:\n  cn_mobile: { regex: '1[3-9]\\d{9}', action: mask }\n  email: { regex: '[a-z]+@[a-z]+\\.[a-z]{2,}', action: mask }\n",
    );
    let mut m = StreamMasker::new(&p, Direction::Egress);
    assert_eq!(
        m.push("Hello there, how are you? ").text,
        "Hello there, how are you? "
    );
    assert_eq!(m.held_len(), 0);
    // A word could still be the start of an e-mail address; a number a phone number.
    assert_eq!(m.push("Mail bob").text, "Mail ");
    assert_eq!(
        m.push("@x.io or 13").text,
        "******** or ",
        "the address, masked"
    );
    assert_eq!(m.held_len(), "13".len());
    assert_eq!(m.finish().text, "13");
    // With keywords, the tail a keyword could still start in is held too.
    let p = shipped();
    let mut m = StreamMasker::new(&p, Direction::Egress);
    m.push("Hello there, how are you today? Fine, thanks. ");
    assert!(m.held_len() < 17, "held {}", m.held_len());
}

#[test]
fn the_bound_is_derived_from_the_rules() {
    let p = load("patterns:\n  cn_mobile: { regex: '1[3-9]\\d{9}', action: mask }\n");
    let plan = plan_of(&p);
    // 11 bytes long, windowed: 2 * 11 + 4 passes * 11 + lookbehind, times 4, + 64.
    assert_eq!(
        plan.bound,
        FOLD_EXPANSION * (2 * 11 + MAX_MASK_PASSES * 11 + 4) + 64
    );
    assert_eq!(plan.tail_hold(Direction::Egress), 0);
    let p = shipped();
    let plan = plan_of(&p);
    // Unbounded patterns (e-mail, keys) count as UNBOUNDED_CAP; github_pat is longer.
    assert!(
        plan.bound >= FOLD_EXPANSION * 2 * UNBOUNDED_CAP,
        "{}",
        plan.bound
    );
    // Keywords hold only a tail that starts one of them, ASCII case aside.
    assert_eq!(plan.tail_hold(Direction::Egress), 0);
    let tail = |text: &str| plan.keyword_tail(Direction::Egress, text);
    assert_eq!(tail("call me at "), 0);
    assert_eq!(tail("please do not dis"), "do not dis".len());
    assert_eq!(tail("this is CONFID"), "CONFID".len());
    assert_eq!(tail("资料是内部"), "内部".len());
    assert_eq!(tail("confidential"), 0, "a whole keyword is the scan's");
    assert_eq!(
        plan.keyword_tail(Direction::Ingress, "do not dis"),
        "do not dis".len()
    );
}

#[test]
fn a_stream_keeps_the_snapshot_it_started_with() {
    struct Snapshot {
        dlp: DlpPolicy,
    }
    let snap = Arc::new(Snapshot { dlp: shipped() });
    let mut m = StreamMasker::with_snapshot(Arc::clone(&snap), |s| &s.dlp, Direction::Egress);
    drop(snap);
    let mut out = m.push("tel 13812345678").text;
    out.push_str(&m.finish().text);
    assert_eq!(out, "tel 138****5678");
    let owned = StreamMasker::new(Arc::new(shipped()), Direction::Ingress);
    assert_eq!(owned.finish(), Emitted::default());
}

#[test]
fn ascii_that_ends_the_folded_text_composes_with_nothing() {
    use unicode_normalization::char::compose;
    use unicode_normalization::is_nfc_quick;
    let marks: Vec<char> = (0..=0x10FFFFu32)
        .filter_map(char::from_u32)
        .filter(|&m| {
            canonical_combining_class(m) != 0
                || is_nfc_quick(std::iter::once(m)) != IsNormalized::Yes
        })
        .collect();
    for c in (0u8..128).map(char::from).filter(|&c| final_at_end(c)) {
        for &m in &marks {
            assert_eq!(compose(c, m), None, "{c:?} + {m:?}");
        }
    }
}

#[test]
fn corpus_streams_like_the_whole_text() {
    let p = shipped();
    let mut rng = gen::Rng::new(7);
    let mut errors = Vec::new();
    for s in corpus::build(0x00D1_5C0B_2026, 20, 200) {
        errors.extend(check_all(&p, &s.text, &mut rng, true));
    }
    report(&errors);
}

#[test]
fn corpus_streams_like_the_whole_text_under_the_seed_policy() {
    // Its card pattern has no maximum length (`[ -]*?`).
    let p = load(SEED_POLICY);
    let mut rng = gen::Rng::new(9);
    let mut errors = Vec::new();
    for s in corpus::build(0x5EED, 6, 60) {
        errors.extend(check_all(&p, &s.text, &mut rng, true));
    }
    report(&errors);
}

fn fuzz_inputs() -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut out = Vec::new();
    for dir in ["seeds", "corpora", "crashes"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join("dlp_mask")) else {
            continue;
        };
        let mut files: Vec<_> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        files.sort();
        for f in files {
            let data = std::fs::read(&f).unwrap();
            out.push(String::from_utf8_lossy(&data).into_owned());
        }
    }
    out
}

/// Every `dlp_mask` fuzz input (seeds, corpus, crashes): the short ones cut
/// everywhere, all of them in random pieces. Two halves, run in parallel.
fn fuzz_half(half: usize) {
    let p = shipped();
    let mut rng = gen::Rng::new(11 + half as u64);
    let mut errors = Vec::new();
    let inputs = fuzz_inputs();
    assert!(inputs.len() > 1000, "the dlp_mask corpus is there");
    for text in inputs.iter().skip(half).step_by(2) {
        errors.extend(check_all(&p, text, &mut rng, text.len() <= 80));
    }
    report(&errors);
}

#[test]
fn fuzz_inputs_stream_like_the_whole_text_a() {
    fuzz_half(0);
}

#[test]
fn fuzz_inputs_stream_like_the_whole_text_b() {
    fuzz_half(1);
}

/// The stream's reference (the masked text always scanned again) and the
/// whole-text scan agree, except that the reference masks more.
#[test]
fn reference_differs_from_scan_only_by_masking_more() {
    let p = shipped();
    let differ = |texts: &[String]| {
        let mut n = 0;
        for text in texts {
            let a = p.scan(text, Direction::Egress);
            let b = scan_window(&p, text, Direction::Egress);
            if a == b {
                continue;
            }
            n += 1;
            assert_eq!(a.blocked_by, b.blocked_by, "{text:?}");
            for f in &a.findings {
                assert!(
                    b.findings.contains(f),
                    "{text:?}: {f:?} only in the whole scan"
                );
            }
        }
        n
    };
    let corpus: Vec<String> = corpus::build(0x00D1_5C0B_2026, 50, 1000)
        .into_iter()
        .map(|s| s.text)
        .collect();
    assert_eq!(differ(&corpus), 0, "the labelled corpus");
    let fuzz = fuzz_inputs();
    let n = differ(&fuzz);
    eprintln!(
        "{n} of {} dlp_mask fuzz inputs: the re-scan masks more",
        fuzz.len()
    );
    assert!(n * 20 < fuzz.len(), "{n}");
}

/// Texts glued from pieces that interact: numbers next to numbers, letters
/// and hex digests, separators, full-width and invisible characters, keys.
#[test]
fn glued_pieces_stream_like_the_whole_text() {
    let p = shipped();
    let pieces = [
        "4111",
        "1111",
        " ",
        "-",
        "13812341234",
        "11010519491231002X",
        "机密",
        "a",
        "e",
        "x",
        "0",
        "7",
        "55",
        "@b.cn",
        "AKIAIOSFODNN7EXAMPLE",
        "_",
        "5500000000000004",
        "６",
        "+86",
        "\u{200b}",
        "１３８",
        ".",
        "tel",
        "＠ｂ．ｃｎ",
        "378282246310005",
        "，",
        "deadbeef",
        "\u{301}",
        "x@y.nd",
        "Confidential",
        "do not ",
        "distribute",
        "😀",
        "\n",
    ];
    let mut rng = gen::Rng::new(0x5717);
    let mut errors = Vec::new();
    for _ in 0..1500 {
        let n = rng.range(1, 14);
        let text: String = (0..n).map(|_| *rng.pick(&pieces)).collect();
        errors.extend(check_all(&p, &text, &mut rng, text.len() <= 48));
    }
    report(&errors);
}

#[test]
fn every_shipped_rule_has_a_maximum_length_and_an_unbounded_one_is_named() {
    // Streamed routes refuse a policy whose egress patterns have no maximum
    // length (`moltgate check`, start): the shipped one must pass.
    assert_eq!(
        shipped().unbounded_rules(Direction::Egress),
        Vec::<&str>::new()
    );
    let p = load(
        "patterns:\n  ticket: { regex: 'TICKET-[0-9]+', action: mask }\n  card: { regex: '4[0-9]{15}', action: mask }\n  inbound: { regex: 'x+', action: block, direction: ingress }\n",
    );
    assert_eq!(p.unbounded_rules(Direction::Egress), ["ticket"]);
    assert_eq!(p.unbounded_rules(Direction::Ingress), ["ticket", "inbound"]);
}
