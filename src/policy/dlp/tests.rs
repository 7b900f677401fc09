//! Unit tests of the DLP policy: loading, every rule kind, masking, folding.

use super::*;
use triggers::{ascii_dialect, derive_trigger};

const SEED: &str = include_str!("../../../tests/fixtures/seed/dlp.yaml");
const SHIPPED: &str = include_str!("../../../policies/dlp.yaml");

fn load(text: &str) -> DlpPolicy {
    DlpPolicy::from_yaml(Path::new("policies/dlp.yaml"), text).unwrap()
}

fn err(text: &str) -> FileError {
    DlpPolicy::from_yaml(Path::new("policies/dlp.yaml"), text).unwrap_err()
}

fn types(o: &DlpOutcome) -> Vec<&str> {
    o.findings.iter().map(|f| &*f.rule).collect()
}

fn shipped() -> DlpPolicy {
    load(SHIPPED)
}

#[test]
fn seed_loads_and_enforces() {
    let p = load(SEED);
    assert_eq!(
        p.rule_names().collect::<Vec<_>>(),
        ["credit_card", "id_card", "internal"]
    );
    let o = p.scan("card 4111 1111 1111 1111 ok", Direction::Ingress);
    assert_eq!(types(&o), ["credit_card"]);
    assert_eq!(o.masked.as_deref(), Some("card ******************* ok"));
    assert!(!o.is_blocked());
    let o = p.scan("身份证11010519491231002X", Direction::Ingress);
    assert_eq!(o.blocked_by.as_deref(), Some("id_card"));
    let o = p.scan("这是机密 Confidential", Direction::Egress);
    assert_eq!(
        types(&o),
        ["internal"],
        "seed keywords are case-sensitive by default"
    );
    assert_eq!(
        (o.findings[0].start, o.findings[0].end, o.findings[0].action),
        (6, 12, Action::Alert)
    );
    assert_eq!(o.masked, None);
}

/// Masking keeps digits; kept digits next to other digits must not read
/// as a number the scan would mask (found by the dlp_mask fuzz target).
#[test]
fn masking_never_leaves_a_maskable_number() {
    let p = shipped();
    for text in [
        "4111111111111110 13812345678",
        "a 4111111111111110 138 b 4111111111111110 13812345678",
        // Kept digits of two phones around digits read as a card.
        "5111 1110091111 13 and 13812335111 1110091111 13812335111",
    ] {
        let o = p.scan(text, Direction::Ingress);
        let masked = o.masked.as_deref().unwrap_or(text);
        let again = p.scan(masked, Direction::Ingress);
        assert_eq!(again.masked, None, "{text:?} masked to {masked:?}");
        for f in &o.findings {
            assert!(text.is_char_boundary(f.start) && f.end <= text.len());
            let value = &text[f.start..f.end];
            assert!(!masked.contains(value), "{value:?} shows in {masked:?}");
        }
    }
}

#[test]
fn shipped_policy_covers_every_category() {
    let p = shipped();
    let cases = [
        ("pay with 4111-1111-1111-1111 please", "credit_card"),
        ("卡号6212345678901232", "credit_card"),
        ("amex 378282246310005", "credit_card"),
        ("身份证号11010519491231002X。", "id_card"),
        ("手机13812341234", "cn_mobile"),
        ("call +86 13812341234", "cn_mobile"),
        ("mail alice.smith+x@example.co.uk now", "email"),
        ("key AKIAIOSFODNN7EXAMPLE here", "aws_access_key"),
        (
            "-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY-----",
            "private_key",
        ),
        (
            "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNz",
            "private_key",
        ),
        (
            "token ghp_abcdefghijklmnopqrstuvwxyz0123456789",
            "github_token",
        ),
        (
            "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstu",
            "github_token",
        ),
        ("xoxb-1234567890-abcdefghij", "slack_token"),
        (
            "OPENAI_API_KEY=sk-proj-abcdefghijklmnopqrstuvwxyz012345",
            "openai_key",
        ),
        (
            "sk-abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKL",
            "openai_key",
        ),
        ("sk_live_abcdefghijklmnop1234", "stripe_secret_key"),
        ("AIzaSyA-1234567890abcdefghijklmnopqrstu", "google_api_key"),
        ("这是内部资料", "internal"),
        ("CONFIDENTIAL draft", "internal"),
    ];
    for (text, rule) in cases {
        let o = p.scan(text, Direction::Ingress);
        assert_eq!(types(&o), [rule], "{text}");
    }
}

#[test]
fn phone_partial_mask_and_card_suffix() {
    let p = shipped();
    let o = p.scan(
        "我的手机13812341234，卡4111 1111 1111 1111",
        Direction::Egress,
    );
    assert_eq!(
        o.masked.as_deref(),
        Some("我的手机138****1234，卡***************1111")
    );
    let f = &o.findings[0];
    assert_eq!(
        (&*f.rule, f.start, f.end, f.action),
        ("cn_mobile", 12, 23, Action::Mask)
    );
    let o = p.scan("mail bob@example.com", Direction::Ingress);
    assert_eq!(o.masked.as_deref(), Some("mail b**************"));
}

#[test]
fn number_shaped_noise_passes_untouched() {
    let p = shipped();
    for text in [
        "订单号 4111111111111112 已发货",
        "order 2023112412345678 shipped",
        "ts=1732201234567 elapsed=1732201234",
        "tracking 110105194912310021",
        "0000 0000 0000 0000",
        "build 20240115093000123456",
        "version 1.2.3 at 2024-01-15 09:30:00",
        "risk-assessment-report-for-the-quarter",
        "14012345678901",
    ] {
        let o = p.scan(text, Direction::Ingress);
        assert!(o.findings.is_empty(), "{text}: {:?}", o.findings);
        assert_eq!(o.text(text), text);
    }
}

/// Issue 10, item 4: every evasion is found in the shipped policy, and
/// offsets and masks land on the original characters.
#[test]
fn evasions_are_found_and_masked_in_place() {
    let p = shipped();
    let cases = [
        // Full-width digits and letters (NFKC).
        (
            "手机１３８１２３４５６７８",
            "cn_mobile",
            "１３８１２３４５６７８",
        ),
        (
            "卡号４１１１　１１１１　１１１１　１１１１",
            "credit_card",
            "４１１１　１１１１　１１１１　１１１１",
        ),
        (
            "ＡＫＩＡＩＯＳＦＯＤＮＮ７ＥＸＡＭＰＬＥ",
            "aws_access_key",
            "ＡＫＩＡＩＯＳＦＯＤＮＮ７ＥＸＡＭＰＬＥ",
        ),
        (
            "mail ａｌｉｃｅ＠ｅｘａｍｐｌｅ．ｃｏｍ",
            "email",
            "ａｌｉｃｅ＠ｅｘａｍｐｌｅ．ｃｏｍ",
        ),
        (
            "这是ＣＯＮＦＩＤＥＮＴＩＡＬ",
            "internal",
            "ＣＯＮＦＩＤＥＮＴＩＡＬ",
        ),
        // Zero-width and other format characters between digits.
        (
            "tel 138\u{200b}1234\u{200c}5678",
            "cn_mobile",
            "138\u{200b}1234\u{200c}5678",
        ),
        (
            "4111\u{2060}1111\u{feff}1111\u{ad}1111 ok",
            "credit_card",
            "4111\u{2060}1111\u{feff}1111\u{ad}1111",
        ),
        (
            "id 110105\u{200d}19491231002X",
            "id_card",
            "110105\u{200d}19491231002X",
        ),
        ("机\u{200b}密文件", "internal", "机\u{200b}密"),
        // Digits glued to letters.
        ("tel13812345678", "cn_mobile", "13812345678"),
        ("call me at13812345678 ok", "cn_mobile", "13812345678"),
        ("card4111111111111111exp", "credit_card", "4111111111111111"),
        ("ID11010519491231002Xok", "id_card", "11010519491231002X"),
        // Separators inside card numbers.
        (
            "pay 4111.1111.1111.1111 now",
            "credit_card",
            "4111.1111.1111.1111",
        ),
        (
            "pay 4111-1111 1111.1111 now",
            "credit_card",
            "4111-1111 1111.1111",
        ),
        ("amex 3782 822463 10005", "credit_card", "3782 822463 10005"),
        // A greedy 17-digit grab that fails Luhn, retried shorter and later.
        (
            "card 4111 1111 1111 1111 7 thanks",
            "credit_card",
            "4111 1111 1111 1111",
        ),
        (
            "ref 3456 4111 1111 1111 1111",
            "credit_card",
            "4111 1111 1111 1111",
        ),
    ];
    for (text, rule, value) in cases {
        let o = p.scan(text, Direction::Ingress);
        let got: Vec<_> = o
            .findings
            .iter()
            .map(|f| (&*f.rule, &text[f.start..f.end]))
            .collect();
        assert_eq!(got, [(rule, value)], "{text:?}");
    }
    let text = "手机１３８\u{200b}１２３４５６７８，卡4111.1111.1111.1111";
    let o = p.scan(text, Direction::Ingress);
    assert_eq!(
        o.masked.as_deref(),
        Some("手机１３８\u{200b}****５６７８，卡***************1111")
    );
    assert_eq!(
        scan_line_json(&p, 1, "tel１３８１２３４５６７８"),
        r#"{"line":1,"findings":[{"type":"cn_mobile","start":3,"end":36,"action":"mask"}],"masked":"tel１３８****５６７８"}"#
    );
}

/// A validated pattern never fires on a window of a longer digit run.
#[test]
fn longer_digit_runs_hold_no_numbers() {
    let p = shipped();
    for text in [
        "order 004111111111111111 shipped",
        "order 411111111111111100000 shipped",
        "订单号 201101051949123100 2X",
        "run 1381234567890",
        "ts 17322012345678",
        "x2110105194912310021",
    ] {
        let o = p.scan(text, Direction::Ingress);
        assert!(o.findings.is_empty(), "{text}: {:?}", o.findings);
    }
    // An ID number that also passes Luhn is reported once, as an ID.
    let o = p.scan("身份证 440524188001010014", Direction::Ingress);
    assert_eq!(types(&o), ["id_card"]);
}

/// Full-width punctuation no rule can tell from ASCII is not folded
/// (no copy of the text); what a rule could see is.
#[test]
fn keep_is_derived_from_the_policy() {
    let p = shipped();
    for c in ['，', '：', '！', '？', '（', '）', '；'] {
        assert!(p.keep.has(c), "{c}");
    }
    // In a regex class or literal (email, cards, keys), or a separator.
    for c in ['＠', '．', '－', '＋', '％', '＿', '＜', '＝', '１', 'Ａ'] {
        assert!(!p.keep.has(c), "{c}");
    }
    let p = load("keywords:\n  k: { words: ['a,b'], action: alert }\n");
    assert!(!p.keep.has('，'));
    assert_eq!(types(&p.scan("a，b", Direction::Ingress)), ["k"]);
    let p = load("patterns:\n  colon: { regex: 'x[:;]y', action: alert }\n");
    assert!(!p.keep.has('：') && !p.keep.has('；') && p.keep.has('，'));
    assert_eq!(types(&p.scan("x：y", Direction::Ingress)), ["colon"]);
}

/// Keywords are folded like the text, and a value inside a blocked one
/// is not reported on its own.
#[test]
fn keywords_fold_and_blocked_values_swallow_their_parts() {
    let p = load("keywords:\n  k: { words: ['ＳＥＣＲＥＴ\u{200b}Ｘ'], action: alert }\n");
    assert_eq!(types(&p.scan("a SECRETX b", Direction::Ingress)), ["k"]);
    let p = shipped();
    let text = "token xoxb-13812345678-4111111111111111-abcdefghijklmnopqrstuvwx done";
    let o = p.scan(text, Direction::Ingress);
    assert_eq!(types(&o), ["slack_token"]);
    assert_eq!(o.masked, None);
    // Outside a blocked value, both are reported.
    let o = p.scan("13812345678@qq.com", Direction::Ingress);
    assert_eq!(types(&o), ["cn_mobile", "email"]);
    // The hexadecimal-token exception is for numbers, not for words.
    let p = load("patterns:\n  w: { regex: 'deadbeef', action: alert }\n");
    assert_eq!(
        types(&p.scan("sha abcdeadbeefabc0123456789abcdef", Direction::Ingress)),
        ["w"]
    );
}

#[test]
fn directions_and_actions() {
    let p = load(
        "patterns:\n  in_only: { regex: 'IN-\\d{4}', action: block, direction: ingress }\n  \
         out_only: { regex: 'OUT-\\d{4}', action: mask, direction: egress }\n\
         keywords:\n  both: { words: [secret], action: alert }\n",
    );
    let text = "IN-1234 OUT-5678 secret";
    let i = p.scan(text, Direction::Ingress);
    assert_eq!(types(&i), ["in_only", "both"]);
    assert_eq!(i.blocked_by.as_deref(), Some("in_only"));
    assert_eq!(i.masked, None);
    let e = p.scan(text, Direction::Egress);
    assert_eq!(types(&e), ["out_only", "both"]);
    assert!(!e.is_blocked());
    assert_eq!(e.text(text), "IN-1234 ******** secret");
}

#[test]
fn keyword_case_folding_is_per_rule() {
    let p = load(
        "keywords:\n  ci: { words: [Project X], action: alert, case_insensitive: true }\n  \
         cs: { words: [TopSecret], action: mask, mask: { char: '#' } }\n",
    );
    let o = p.scan("project x and topsecret and TopSecret", Direction::Ingress);
    assert_eq!(types(&o), ["ci", "cs"]);
    assert_eq!(o.findings[1].start, 28);
    assert_eq!(
        o.masked.as_deref(),
        Some("project x and topsecret and #########")
    );
}

#[test]
fn overlapping_keywords_all_reported_and_masks_merge() {
    let p = load("keywords:\n  a: { words: [内部资料, 资料], action: mask }\n  b: { words: [部资], action: alert }\n");
    let o = p.scan("看内部资料吧", Direction::Ingress);
    assert_eq!(types(&o), ["a", "b", "a"]);
    assert_eq!(o.masked.as_deref(), Some("看****吧"));
}

#[test]
fn triggers_are_derived() {
    let p = shipped();
    let trig = |name: &str| {
        let rule = p.rules.iter().position(|r| &*r.name == name).unwrap();
        p.patterns.iter().find(|x| x.rule == rule).unwrap().trigger
    };
    assert_eq!(
        trig("credit_card"),
        Trigger::Digits {
            min: 13,
            max_len: Some(64)
        }
    );
    assert_eq!(
        trig("cn_mobile"),
        Trigger::Digits {
            min: 11,
            max_len: Some(18)
        }
    );
    assert!(matches!(
        trig("id_card"),
        Trigger::Digits {
            min: 17,
            max_len: Some(18)
        }
    ));
    for lit in [
        "email",
        "aws_access_key",
        "private_key",
        "github_token",
        "slack_token",
        "openai_key",
    ] {
        assert_eq!(trig(lit), Trigger::Literals, "{lit}");
    }
    let seed = load(SEED);
    assert_eq!(
        seed.patterns[0].trigger,
        Trigger::Digits {
            min: 15,
            max_len: None
        }
    );
    let (t, lits) = derive_trigger(&ascii_dialect("(?i)akia[0-9A-Z]{16}"));
    // 2 x 3 x 2 x 2: Unicode case folding adds the Kelvin sign to `k`.
    assert_eq!((t, lits.len()), (Trigger::Literals, 24));
    assert_eq!(
        derive_trigger(&ascii_dialect("^\\d{6}$")).0,
        Trigger::Digits {
            min: 6,
            max_len: None
        }
    );
    // Unicode `\d` also matches non-ASCII digits the digit scan does not count.
    assert_eq!(derive_trigger("^\\d{6}$").0, Trigger::Always);
    assert_eq!(derive_trigger("[a-z]+").0, Trigger::Always);
}

#[test]
fn ascii_dialect_rewrites_only_what_it_should() {
    assert_eq!(ascii_dialect(r"\b\d{3}\B"), r"(?-u:\b)[0-9]{3}(?-u:\B)");
    assert_eq!(ascii_dialect(r"[\dXx][^\d]"), r"[0-9Xx][^0-9]");
    assert_eq!(ascii_dialect(r"\\d\b{start}[]\d]"), r"\\d\b{start}[]0-9]");
    assert_eq!(
        ascii_dialect(r"[[:digit:]\d]\p{Han}"),
        r"[[:digit:]0-9]\p{Han}"
    );
}

/// The prefilters must never change the answer: compare against running
/// every regex on the whole text.
#[test]
fn prefilter_matches_full_scan() {
    let p = shipped();
    // The same search on the whole folded text, with no trigger or window.
    let naive = |text: &str| -> Vec<(String, usize, usize)> {
        let folded = Folded::new(text, Keep::NONE);
        let (mut hits, mut claimed) = (Vec::new(), Vec::new());
        for pat in &p.patterns {
            let whole = (0, folded.text.len());
            p.run(pat, &folded.text, whole, &mut claimed, &mut hits);
        }
        let mut v: Vec<_> = p
            .finish(text, &folded, hits)
            .findings
            .into_iter()
            .map(|f| (f.rule.to_string(), f.start, f.end))
            .collect();
        v.sort();
        v
    };
    let pieces = [
        "4111",
        "1111",
        " ",
        "-",
        "13812341234",
        "11010519491231002X",
        "机",
        "a",
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
        "9",
        "\u{200b}",
        "１３８",
        ".",
        "tel",
        "＠ｂ．ｃｎ",
        "378282246310005",
        "，",
        "：",
        "＠",
        "－",
        "（",
    ];
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..6000 {
        let mut text = String::new();
        let n = (seed % 12) as usize + 1;
        for _ in 0..n {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            text.push_str(pieces[(seed % pieces.len() as u64) as usize]);
        }
        let got: Vec<(String, usize, usize)> = {
            // One pass: the prefilter's equivalence, before any re-scan
            // of the masked text.
            let mut v: Vec<_> = p
                .scan_once(&text, BOTH)
                .findings
                .into_iter()
                .filter(|f| &*f.rule != "internal")
                .map(|f| (f.rule.to_string(), f.start, f.end))
                .collect();
            v.sort();
            v
        };
        assert_eq!(got, naive(&text), "{text:?}");
    }
}

#[test]
fn scan_line_json_exact_output() {
    let p = shipped();
    assert_eq!(
        scan_line_json(&p, 1, "hello"),
        r#"{"line":1,"findings":[],"masked":"hello"}"#
    );
    assert_eq!(
        scan_line_json(&p, 2, "tel 13812341234 \"机密\""),
        r#"{"line":2,"findings":[{"type":"cn_mobile","start":4,"end":15,"action":"mask"},{"type":"internal","start":17,"end":23,"action":"alert"}],"masked":"tel 138****1234 \"机密\""}"#
    );
    assert_eq!(
        scan_line_json(&p, 3, "id 11010519491231002X"),
        r#"{"line":3,"findings":[{"type":"id_card","start":3,"end":21,"action":"block"}],"masked":"id 11010519491231002X"}"#
    );
}

#[test]
fn load_errors_are_located() {
    let e = err("patterns:\n  card:\n    regex: 'x'\n    validte: luhn\n    action: mask\n");
    assert_eq!((e.line, e.column), (Some(4), Some(5)), "{e}");
    assert!(
        e.message.contains("validte") && e.message.contains("validate"),
        "{e}"
    );

    let e = err("patterns:\n  card: { regex: 'x', validate: lunh, action: mask }\n");
    assert_eq!(e.line, Some(2), "{e}");
    assert!(
        e.message.contains("lunh") && e.message.contains("luhn"),
        "{e}"
    );

    let e = err("patterns:\n  ok: { regex: 'a', action: alert }\n  broken: { regex: '(\\d', action: block }\n");
    assert_eq!((e.line, e.column), (Some(3), Some(3)), "{e}");
    assert!(e.message.contains("pattern 'broken': invalid regex"), "{e}");
    assert!(
        !e.message.contains("?-u"),
        "shows the operator's pattern: {e}"
    );

    let e = err("patterns:\n  a: { regex: 'a', action: alert }\nkeywords:\n  a: { words: [b], action: alert }\n");
    assert_eq!(e.line, Some(2), "{e}");
    assert!(e.message.contains("used twice"), "{e}");

    let e = err("keywords:\n  a: { words: [b], action: blok }\n");
    assert!(
        e.message.contains("blok") && e.message.contains("block"),
        "{e}"
    );

    let e = err("keywords:\n  k: { words: [], action: alert }\n");
    assert_eq!(e.line, Some(2), "{e}");

    let e = err("keywords:\n  k: { words: [x], action: alert, mask: { keep_prefix: 1 } }\n");
    assert!(e.message.contains("need 'action: mask'"), "{e}");

    let e =
        err("patterns:\n  a: { regex: 'a', action: alert }\n  a: { regex: 'b', action: alert }\n");
    // Refused by the YAML loader (duplicate key) or by the rule list.
    assert!(
        e.message.contains("duplicate") && e.message.contains("'a'"),
        "{e}"
    );
    assert!(e.line.is_some(), "{e}");
}

/// Every bad pattern and keyword rule is reported, in file order.
#[test]
fn every_bad_rule_is_reported() {
    let e = err("patterns:
  a: { regex: '(', action: mask }
  b: { regex: 'fine', action: alert }
  c: { regex: 'x', action: alert, mask: { keep_prefix: 1 } }
  d: { regx: 'x', action: block }
  e: { regex: '[z', action: block }
keywords:
  b: { words: [x], action: alert }
  k: { words: [], action: alert }
  m: { words: [x], action: blok }
");
    let shown: Vec<String> = e.clone().split().iter().map(ToString::to_string).collect();
    let want = [
        "policies/dlp.yaml:2:3: pattern 'a': invalid regex: unclosed group (column 1)",
        "policies/dlp.yaml:4:3: rule 'c': 'mask' options need 'action: mask' (it is 'alert')",
        "policies/dlp.yaml:5:8: unknown key 'regx'",
        "policies/dlp.yaml:6:3: pattern 'e': invalid regex: unclosed character class (column 1)",
        "policies/dlp.yaml:3:3: rule name 'b' is used twice",
        "policies/dlp.yaml:9:3: keywords 'k': 'words' is empty",
        "policies/dlp.yaml:10:28: unknown value 'blok'",
    ];
    assert_eq!(shown.len(), want.len(), "{e}");
    for w in want {
        assert!(shown.iter().any(|s| s.starts_with(w)), "{w}\n{e}");
    }
}

#[test]
fn empty_policies_scan_clean() {
    for text in ["", "patterns:\nkeywords:\n", "{}"] {
        let p = load(text);
        assert!(p
            .scan("4111111111111111 机密", Direction::Ingress)
            .findings
            .is_empty());
    }
    assert!(DlpPolicy::empty().is_empty());
}

#[test]
fn unicode_opt_out_and_always_trigger() {
    let p = load("patterns:\n  word: { regex: '\\bcode\\w+', action: alert, unicode: true }\n");
    assert_eq!(p.patterns[0].trigger, Trigger::Literals);
    assert_eq!(
        types(&p.scan("码codeword", Direction::Ingress)),
        Vec::<&str>::new()
    );
    assert_eq!(types(&p.scan("a codeword", Direction::Ingress)), ["word"]);
    let p = load("patterns:\n  lower: { regex: '[a-z]{30}', action: alert }\n");
    assert_eq!(p.patterns[0].trigger, Trigger::Always);
    assert_eq!(
        types(&p.scan(&"q".repeat(31), Direction::Ingress)),
        ["lower"]
    );
}

/// Splitting digit runs into segments only skips work: over every input the DLP fuzzer kept
/// (fuzz/corpora/dlp_mask) and the dense transcript, the scan finds and
/// masks exactly what it finds and masks with every window searched.
#[test]
fn digit_segments_change_no_outcome() {
    let gated = shipped();
    assert!(
        gated.segmenter.is_some(),
        "the shipped numeric patterns are windowed"
    );
    let mut ungated = shipped();
    ungated.segmenter = None;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpora/dlp_mask");
    let mut texts: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| String::from_utf8_lossy(&std::fs::read(e.unwrap().path()).unwrap()).into_owned())
        .collect();
    assert!(texts.len() > 1000, "the corpus is in {}", dir.display());
    texts.push(
        "[2024-06-14 09:30:12] alice: 订单 2023112412345678 已发货 4111 1111 1111 1111 \
         13812345678 110101199003074514 carol.wu@example.com ext. 4417\n"
            .repeat(20),
    );
    let mut found = 0;
    for text in &texts {
        let (a, b) = (
            gated.scan(text, Direction::Ingress),
            ungated.scan(text, Direction::Ingress),
        );
        assert_eq!(a, b, "on {text:?}");
        found += usize::from(!a.findings.is_empty());
    }
    assert!(found > 100, "only {found} inputs had findings");
}
