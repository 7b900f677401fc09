use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::policy::dlp::{Direction, DlpPolicy};

#[path = "../../tests/dlp/gen.rs"]
#[allow(dead_code)]
mod gen;

const KEY: &str = "8f1c2ab9d07e4e55b61c93a07f2d3e11";
const A: Scope<'static> = Scope {
    tenant: "acme",
    conversation: "c1",
};

fn tokenizer() -> Arc<Tokenizer> {
    let key = MasterKey::parse(KEY).unwrap();
    Arc::new(Tokenizer::in_memory(&key, Duration::from_secs(60), 1000))
}

fn labels() -> Labels {
    Labels::from_rules(["cn_mobile", "email"])
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    futures::executor::block_on(f)
}

#[test]
fn same_value_same_token_within_a_tenant_only() {
    let t = tokenizer();
    let a = t.token_for("acme", "cn_mobile", "13812345678");
    assert_eq!(a, t.token_for("acme", "cn_mobile", "138 1234-5678"));
    assert_eq!(
        a,
        t.token_for("acme", "cn_mobile", "１３８１２３４５６７８")
    );
    assert_ne!(a, t.token_for("other", "cn_mobile", "13812345678"));
    assert_ne!(a, t.token_for("acme", "cn_mobile", "13812345679"));
    assert_ne!(a.id(), t.token_for("acme", "phone", "13812345678").id());
    assert_eq!(a.label(), "CN_MOBILE");
    let shown = a.to_string();
    assert!(
        shown.starts_with("⟨CN_MOBILE:") && shown.ends_with('⟩'),
        "{shown}"
    );
    assert_eq!(a.id().len(), format::ID_LEN);
    // Another key, another token.
    let other = Tokenizer::in_memory(
        &MasterKey::parse("5b9e0c47a1d2f3e8c6b7a09182736455").unwrap(),
        Duration::from_secs(60),
        10,
    );
    assert_ne!(a, other.token_for("acme", "cn_mobile", "13812345678"));
    // The same token through the vault, in any conversation.
    let stored = block_on(t.tokenize(A, "cn_mobile", "13812345678")).unwrap();
    assert_eq!(stored, a);
    let elsewhere = Scope {
        conversation: "c2",
        ..A
    };
    assert_eq!(
        block_on(t.tokenize(elsewhere, "cn_mobile", "13812345678")).unwrap(),
        a
    );
}

#[test]
fn restore_exact_and_rewritten() {
    let t = tokenizer();
    let tok = block_on(t.tokenize(A, "cn_mobile", "138-1234-5678")).unwrap();
    let id = tok.id().to_string();
    let up = id.to_uppercase();
    let l = labels();
    for reply in [
        format!("Call {tok} now."),
        format!("Call <CN_MOBILE:{id}> now."),
        format!("Call ⟨ cn_mobile : {up} ⟩ now."),
        format!("Call CN_MOBILE:{id} now."),
        format!("Call cn-mobile：{up} now."),
        format!("Call [TEL: {id}] now."),
        format!("Call ⟨{id}⟩ now."),
    ] {
        assert_eq!(
            block_on(t.restore(A, &l, &reply)),
            "Call 138-1234-5678 now.",
            "{reply}"
        );
    }
    // A changed id, or no label and no brackets: left as written.
    for reply in [
        format!("Call CN_MOBILE:{} now.", &id[..11]),
        format!("Call {id} now."),
        format!("Call XCN_MOBILE:{id} now."),
    ] {
        assert_eq!(block_on(t.restore(A, &l, &reply)), reply);
    }
}

#[test]
fn other_tenant_or_conversation_is_not_restored() {
    let t = tokenizer();
    let tok = block_on(t.tokenize(A, "cn_mobile", "13812345678")).unwrap();
    let reply = format!("it is {tok}");
    let l = labels();
    for scope in [
        Scope {
            tenant: "evil",
            ..A
        },
        Scope {
            conversation: "c2",
            ..A
        },
    ] {
        assert_eq!(block_on(t.restore(scope, &l, &reply)), reply);
    }
    assert_eq!(block_on(t.restore(A, &l, &reply)), "it is 13812345678");
}

#[test]
fn entries_moved_to_another_key_do_not_open() {
    let key = MasterKey::parse(KEY).unwrap();
    let vault = Arc::new(MemoryVault::new(Duration::from_secs(60), 100));
    let t = Tokenizer::new(&key, vault.clone());
    let tok = block_on(t.tokenize(A, "cn_mobile", "13812345678")).unwrap();
    let from = vault_key(A, tok.id());
    let entries = block_on(vault.get(&from)).unwrap();
    let evil = Scope {
        tenant: "evil",
        ..A
    };
    block_on(vault.put(&vault_key(evil, tok.id()), entries[0].clone())).unwrap();
    let reply = tok.to_string();
    assert_eq!(block_on(t.restore(evil, &labels(), &reply)), reply);
}

#[test]
fn ambiguous_tokens_are_not_restored() {
    let key = MasterKey::parse(KEY).unwrap();
    let vault = Arc::new(MemoryVault::new(Duration::from_secs(60), 100));
    let t = Tokenizer::new(&key, vault.clone());
    let tok = block_on(t.tokenize(A, "cn_mobile", "13812345678")).unwrap();
    // A second type under the same id (what a 60-bit collision would make).
    let twin = Token::from_parts("EMAIL".into(), tok.id().into());
    let sealed = t.keys.seal(b"a@b.example", &aad(A, &twin));
    let entry = Entry {
        label: "EMAIL".into(),
        sealed,
    };
    block_on(vault.put(&vault_key(A, tok.id()), entry)).unwrap();
    let l = labels();
    let id = tok.id();
    // The written label decides between them…
    assert_eq!(block_on(t.restore(A, &l, &tok.to_string())), "13812345678");
    assert_eq!(block_on(t.restore(A, &l, &twin.to_string())), "a@b.example");
    // …and without it, or with another, neither is restored.
    for reply in [format!("⟨{id}⟩"), format!("⟨TEL:{id}⟩")] {
        assert_eq!(block_on(t.restore(A, &l, &reply)), reply);
    }
}

#[test]
fn collisions_fail_closed() {
    let key = MasterKey::parse(KEY).unwrap();
    let vault = Arc::new(MemoryVault::new(Duration::from_secs(60), 100));
    let t = Tokenizer::new(&key, vault.clone());
    let tok = block_on(t.tokenize(A, "cn_mobile", "13812345678")).unwrap();
    // Plant another value under the token, as a collision would.
    let entry = Entry {
        label: tok.label().into(),
        sealed: t.keys.seal(b"13999999999", &aad(A, &tok)),
    };
    block_on(vault.put(&vault_key(A, tok.id()), entry)).unwrap();
    let err = block_on(t.tokenize(A, "cn_mobile", "13812345678")).unwrap_err();
    assert!(matches!(err, TokenizeError::Collision(_)));
    assert!(!err.to_string().contains("1381234"), "{err}");
    assert!(!format!("{err:?}").contains("1381234"));
}

fn dlp() -> DlpPolicy {
    DlpPolicy::from_yaml(
        Path::new("dlp.yaml"),
        r#"
patterns:
  cn_mobile: { regex: '1[3-9]\d{9}', action: tokenize }
  email: { regex: '[a-z0-9.]+@[a-z0-9.]+\.[a-z]+', action: tokenize }
  card: { regex: '4\d{15}', validate: luhn, action: mask }
"#,
    )
    .unwrap()
}

#[test]
fn tokenize_outcome_then_restore_round_trips() {
    let t = tokenizer();
    let p = dlp();
    let text = "I am bob@corp.example, tel 13812345678 or 13812345678; card 4111111111111111";
    let outcome = p.scan(text, Direction::Ingress);
    let seen = block_on(t.tokenize_outcome(A, text, &outcome));
    assert!(
        !seen.contains("13812345678") && !seen.contains("bob@"),
        "{seen}"
    );
    assert!(seen.contains("****************"), "{seen}");
    let phone = t.token_for("acme", "cn_mobile", "13812345678").to_string();
    assert_eq!(seen.matches(&phone).count(), 2, "{seen}");
    let labels = Labels::from_rules(p.tokenize_rules());
    let back = block_on(t.restore(A, &labels, &seen));
    assert_eq!(
        back,
        "I am bob@corp.example, tel 13812345678 or 13812345678; card ****************"
    );
}

/// A reply with tokens, rewritten tokens and near-misses, restored in
/// random pieces, is restored exactly as whole.
#[test]
fn streaming_restore_equals_whole_for_random_splits() {
    let t = tokenizer();
    let mut tokens = Vec::new();
    for v in ["13812345678", "13900001111"] {
        tokens.push(block_on(t.tokenize(A, "cn_mobile", v)).unwrap());
    }
    let mail = block_on(t.tokenize(A, "email", "x@y.example")).unwrap();
    let (a, b) = (&tokens[0], &tokens[1]);
    let text = format!(
        "电话 {a}，或 <cn_mobile:{}>; CN_MOBILE：{} and ⟨ EMAIL : {} ⟩, (see {a}) \
         CN_MOB cn_mobile: notatoken ⟨{}⟩ {b}",
        a.id().to_uppercase(),
        b.id(),
        mail.id(),
        b.id(),
    );
    let l = labels();
    let whole = block_on(t.restore(A, &l, &text));
    assert_eq!(whole.matches("13812345678").count(), 3, "{whole}");
    assert_eq!(whole.matches("13900001111").count(), 3, "{whole}");
    assert!(whole.contains("x@y.example") && whole.contains("CN_MOB cn_mobile: notatoken"));
    let bounds: Vec<usize> = text.char_indices().map(|(i, _)| i).skip(1).collect();
    let mut rng = gen::Rng::new(15);
    for round in 0..300 {
        let pieces = 1 + rng.below(12);
        let mut cuts: Vec<usize> = (0..pieces).map(|_| *rng.pick(&bounds)).collect();
        cuts.sort_unstable();
        cuts.dedup();
        let mut r = Restorer::new(t.clone(), A, l.clone());
        let mut out = String::new();
        let mut from = 0;
        for &c in cuts.iter().chain(std::iter::once(&text.len())) {
            out.push_str(&block_on(r.push(&text[from..c])));
            assert!(r.held_len() <= Restorer::<Arc<Tokenizer>>::bound());
            from = c;
        }
        out.push_str(&block_on(r.finish()));
        assert_eq!(out, whole, "round {round}, cuts {cuts:?}");
    }
}

#[test]
fn streams_emit_plain_text_at_once() {
    let t = tokenizer();
    let mut r = Restorer::new(t.clone(), A, labels());
    assert_eq!(
        block_on(r.push("Hello there, your number ")),
        "Hello there, your number "
    );
    assert_eq!(block_on(r.push("is CN_MOB")), "is ");
    assert_eq!(r.held_len(), "CN_MOB".len());
    assert_eq!(block_on(r.push("ILITY")), "CN_MOBILITY");
}

#[test]
fn nothing_shows_a_value() {
    let t = tokenizer();
    let tok = block_on(t.tokenize(A, "cn_mobile", "13812345678")).unwrap();
    let key = vault_key(A, tok.id());
    let entries = block_on(t.vault.get(&key)).unwrap();
    let r = Restorer::new(t.clone(), A, labels());
    for shown in [
        format!("{tok:?}"),
        tok.to_string(),
        format!("{t:?}"),
        format!("{entries:?}"),
        format!("{key:?}"),
        format!("{r:?}"),
        format!("{:?}", MasterKey::parse(KEY).unwrap()),
    ] {
        assert!(!shown.contains("1381234"), "{shown}");
        assert!(!shown.contains(&KEY[..8]), "{shown}");
    }
}

#[test]
fn check_refuses_tokenize_rules_without_a_block() {
    let p = dlp();
    let e = check_policy(false, &p).unwrap_err();
    assert!(e.contains("'cn_mobile'") && e.contains("tokenize:"), "{e}");
    assert!(check_policy(true, &p).is_ok());
    assert!(check_policy(false, &DlpPolicy::empty()).is_ok());
}

#[test]
fn known_tokens_restore_in_pieces_and_nothing_else_does() {
    let t = Tokenizer::in_memory(
        &MasterKey::parse(KEY).unwrap(),
        Duration::from_secs(60),
        100,
    );
    let token = t.token_for("acme", "cn_mobile", "13812345678");
    let other = t.token_for("evil", "cn_mobile", "13812345678");
    let mut known = Known::default();
    known.insert(&token, "13812345678");
    let known = Arc::new(known);
    let text = format!(
        "ring {token} or {other}; <cn mobile : {}>",
        token.id().to_uppercase()
    );
    let want = format!("ring 13812345678 or {other}; 13812345678");
    assert_eq!(known.restore(&text), want);
    for cut in 1..text.len() {
        if !text.is_char_boundary(cut) {
            continue;
        }
        let mut r = KnownRestorer::new(known.clone());
        let mut out = r.push(&text[..cut]);
        out.push_str(&r.push(&text[cut..]));
        out.push_str(&r.finish());
        assert_eq!(out, want, "cut at {cut}");
    }
}
