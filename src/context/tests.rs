//! Unit tests of `context`.

use super::*;
use std::collections::HashMap;

const NO_STATE: [(&str, &str); 0] = [];

fn store(limits: ContextLimits) -> (ContextStore, Metrics) {
    let metrics = Metrics::new();
    (ContextStore::with_limits(limits, metrics.clone()), metrics)
}

fn limits(turns: usize) -> ContextLimits {
    ContextLimits {
        max_bytes: 64 << 20,
        ttl: Duration::from_secs(3600),
        idle: Duration::from_secs(3600),
        turns,
    }
}

fn events(m: &Metrics, event: &str) -> u64 {
    m.context_events.with_label_values(&[event]).get()
}

fn texts(ctx: &Context) -> Vec<String> {
    ctx.turns
        .iter()
        .map(|t| format!("{}:{}", t.role, t.text))
        .collect()
}

/// Polls `cond` (running moka's maintenance first) for at most 5 s.
fn eventually(s: &ContextStore, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        s.run_pending_tasks();
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

#[test]
fn keys_for_private_group_and_linked_chats() {
    let k = |platform, chat_type: &str, room: &str, thread: &str, sender: &str, person| {
        let msg = PlatformMessage {
            chat_type: ChatType::parse(chat_type).unwrap_or_default(),
            room_id: room.into(),
            thread_id: thread.into(),
            sender_id: sender.into(),
            ..Default::default()
        };
        conversation_key(platform, &msg, person)
    };
    // Unlinked: the same shapes as before identity linking.
    assert_eq!(k("slack", "group", "c1", "", "u1", None), "slack:room:c1");
    assert_eq!(
        k("slack", "group", "c1", "t", "u1", None),
        "slack:room:c1:thread:t"
    );
    assert_eq!(k("slack", "private", "d1", "", "u1", None), "slack:dm:u1");
    assert_eq!(k("generic", "", "", "", "sub", None), "generic:dm:sub");
    // A linked person's private chats continue across platforms...
    let tg = k("telegram", "private", "555", "", "555", Some("zhangsan"));
    let wc = k("wecom", "private", "", "", "zhangsan", Some("zhangsan"));
    assert_eq!(tg, "person:zhangsan");
    assert_eq!(tg, wc);
    // ...but a group stays the group's, whoever speaks.
    let g1 = k("telegram", "group", "-100", "", "555", Some("zhangsan"));
    let g2 = k("telegram", "group", "-100", "", "777", None);
    assert_eq!(g1, g2);
    assert_ne!(g1, tg);
    assert_ne!(
        g1,
        k("telegram", "group", "-200", "", "555", Some("zhangsan"))
    );
    assert_ne!(g1, k("wecom", "group", "-100", "", "555", Some("zhangsan")));
    // Separators inside ids cannot forge another chat's key.
    assert_ne!(
        k("slack", "group", "a:thread:b", "", "u", None),
        k("slack", "group", "a", "b", "u", None)
    );
    assert_eq!(
        k("slack", "group", "a:b%", "", "u", None),
        "slack:room:a%3Ab%25"
    );
}

#[test]
fn a_tenant_scopes_rooms_and_private_chats() {
    let msg = |tenant: &str, chat_type, room: &str, sender: &str| PlatformMessage {
        tenant: tenant.into(),
        chat_type,
        room_id: room.into(),
        sender_id: sender.into(),
        ..Default::default()
    };
    let room_a = conversation_key("generic", &msg("acme", ChatType::Group, "ops", "u1"), None);
    let room_b = conversation_key(
        "generic",
        &msg("initech", ChatType::Group, "ops", "u1"),
        None,
    );
    assert_eq!(room_a, "generic@acme:room:ops");
    assert_ne!(
        room_a, room_b,
        "the same room name in two tenants is two rooms"
    );
    let dm_a = conversation_key(
        "wecom",
        &msg("corp1", ChatType::Private, "", "zhangsan"),
        None,
    );
    let dm_b = conversation_key(
        "wecom",
        &msg("corp2", ChatType::Private, "", "zhangsan"),
        None,
    );
    assert_ne!(dm_a, dm_b, "user ids are unique per corp only");
    // A tenant cannot be forged through the separators.
    let forged = conversation_key(
        "generic",
        &msg("acme:room:ops", ChatType::Private, "", "x"),
        None,
    );
    assert!(!forged.starts_with("generic@acme:room:ops"), "{forged}");
    // A linked person's private chat is the person's, whatever the tenant.
    let linked = conversation_key(
        "wecom",
        &msg("corp1", ChatType::Private, "", "z"),
        Some("zhangsan"),
    );
    assert_eq!(linked, "person:zhangsan");
}

#[test]
fn turns_are_kept_in_order_and_trimmed() {
    let (s, _) = store(limits(4));
    assert!(s.snapshot("k").turns.is_empty());
    s.record_exchange("k", "q1", ["a1"], NO_STATE, "telegram", 1);
    s.record_exchange("k", "q2", ["a2"], NO_STATE, "wecom", 2);
    assert_eq!(
        texts(&s.snapshot("k")),
        ["user:q1", "assistant:a1", "user:q2", "assistant:a2"]
    );
    s.record_exchange("k", "q3", ["a3"], NO_STATE, "slack", 3);
    let ctx = s.snapshot("k");
    assert_eq!(
        texts(&ctx),
        ["user:q2", "assistant:a2", "user:q3", "assistant:a3"]
    );
    assert_eq!(ctx.turns[0].platform, "wecom");
    assert_eq!(ctx.turns[0].at, 2);
    assert_eq!(ctx.turns[3].platform, "slack");
    // Other conversations are untouched.
    assert!(s.snapshot("other").turns.is_empty());
}

#[test]
fn a_limit_smaller_than_one_exchange_keeps_the_newest() {
    let (s, _) = store(limits(1));
    s.record_exchange("k", "q1", ["a1"], NO_STATE, "generic", 1);
    assert_eq!(texts(&s.snapshot("k")), ["assistant:a1"]);
    let (s, _) = store(limits(3));
    s.record_exchange("k", "q1", ["a1"], NO_STATE, "generic", 1);
    s.record_exchange("k", "q2", ["a2"], NO_STATE, "generic", 1);
    assert_eq!(
        texts(&s.snapshot("k")),
        ["assistant:a1", "user:q2", "assistant:a2"]
    );
}

#[test]
fn reply_parts_join_and_empty_texts_add_no_turn() {
    let (s, _) = store(limits(10));
    s.record_exchange("k", "hi", ["Hel", "lo"], NO_STATE, "generic", 1);
    s.record_exchange("k", "", Vec::<String>::new(), NO_STATE, "generic", 2);
    s.record_exchange("k", "only me", Vec::<&str>::new(), NO_STATE, "generic", 3);
    assert_eq!(
        texts(&s.snapshot("k")),
        ["user:hi", "assistant:Hello", "user:only me"]
    );
    // Nothing to record creates nothing.
    s.record_exchange("empty", "", [""], NO_STATE, "generic", 1);
    s.run_pending_tasks();
    assert_eq!(s.entries(), 1);
}

#[test]
fn long_turns_are_cut_at_a_char_boundary() {
    let (s, _) = store(limits(10));
    let long = "é".repeat(MAX_TURN_BYTES); // 2 bytes each
    s.record_exchange("k", &long, [&long, &long], NO_STATE, "generic", 1);
    let ctx = s.snapshot("k");
    for t in &ctx.turns {
        assert!(t.text.len() <= MAX_TURN_BYTES && t.text.len() >= MAX_TURN_BYTES - 1);
        assert!(t.text.chars().all(|c| c == 'é'));
    }
}

#[test]
fn state_merges_within_bounds() {
    let (s, m) = store(limits(10));
    let mut first: HashMap<String, String> = (0..70)
        .map(|i| (format!("k{i:02}"), format!("v{i}")))
        .collect();
    first.insert("big".into(), "x".repeat(MAX_STATE_VALUE_BYTES + 1));
    first.insert("y".repeat(MAX_STATE_KEY_BYTES + 1), "v".into());
    first.insert(String::new(), "v".into());
    s.record_exchange("k", "q", ["a"], &first, "generic", 1);
    let state = s.snapshot("k").state;
    assert_eq!(state.len(), MAX_STATE_KEYS);
    assert!(!state.contains_key("big"));
    // 70 - 64 extra keys, one long value, one long key, one empty key.
    assert_eq!(events(&m, "state_dropped"), 9);

    // Updating and deleting existing keys works even when full.
    let exact = "z".repeat(MAX_STATE_VALUE_BYTES);
    let existing = state.keys().next().cloned().unwrap();
    let deleted = state.keys().nth(1).cloned().unwrap();
    s.record_exchange(
        "k",
        "q",
        ["a"],
        [(existing.as_str(), exact.as_str()), (deleted.as_str(), "")],
        "generic",
        2,
    );
    let state = s.snapshot("k").state;
    assert_eq!(state.get(&existing), Some(&exact));
    assert!(!state.contains_key(&deleted));
    assert_eq!(state.len(), MAX_STATE_KEYS - 1);
    // Now there is room for one new key.
    s.record_exchange(
        "k",
        "",
        [""],
        [("stage", "done"), ("more", "x")],
        "generic",
        3,
    );
    let state = s.snapshot("k").state;
    assert_eq!(state.get("stage").map(String::as_str), Some("done"));
    assert_eq!(state.len(), MAX_STATE_KEYS);
}

#[test]
fn attributes_are_kept_and_bounded() {
    let (s, _) = store(limits(10));
    s.set_attributes("k", [("device_type", "mobile"), ("tenant", "t1")]);
    s.record_exchange("k", "q", ["a"], [("stage", "1")], "generic", 1);
    let ctx = s.snapshot("k");
    assert_eq!(
        ctx.attributes.get("device_type").map(String::as_str),
        Some("mobile")
    );
    assert_eq!(ctx.state.get("stage").map(String::as_str), Some("1"));
    assert_eq!(ctx.turns.len(), 2);
    let many: Vec<(String, String)> = (0..100).map(|i| (format!("a{i}"), "v".into())).collect();
    s.set_attributes("k", many);
    assert_eq!(s.snapshot("k").attributes.len(), MAX_STATE_KEYS);
}

#[test]
fn hits_misses_entries_and_remove() {
    let (s, m) = store(limits(10));
    s.snapshot("a");
    s.record_exchange("a", "q", ["r"], NO_STATE, "generic", 1);
    s.record_exchange("b", "q", ["r"], NO_STATE, "generic", 1);
    s.record_exchange("a", "q", ["r"], NO_STATE, "generic", 2);
    s.snapshot("a");
    s.snapshot("b");
    assert_eq!((events(&m, "hit"), events(&m, "miss")), (2, 1));
    s.run_pending_tasks();
    assert_eq!(s.entries(), 2);
    assert_eq!(m.context_entries.get(), 2);
    assert!(s.remove("a"));
    assert!(!s.remove("a"));
    assert!(eventually(&s, || m.context_entries.get() == 1 && s.entries() == 1));
    assert!(s.snapshot("a").turns.is_empty());
}

#[test]
fn idle_conversations_expire() {
    let (s, m) = store(ContextLimits {
        idle: Duration::from_millis(100),
        ..limits(10)
    });
    s.record_exchange("k", "q", ["a"], NO_STATE, "generic", 1);
    assert_eq!(s.snapshot("k").turns.len(), 2);
    assert!(eventually(&s, || s.snapshot("k").turns.is_empty()));
    assert!(eventually(&s, || m.context_entries.get() == 0));
    assert_eq!(events(&m, "expired"), 1);
}

#[test]
fn busy_conversations_still_end_at_ttl() {
    // Updates every few ms keep it from ever being idle, yet it must end
    // `ttl` after it started (moka's own ttl would restart on each write).
    let (s, _) = store(ContextLimits {
        ttl: Duration::from_millis(300),
        ..limits(10_000)
    });
    let started = Instant::now();
    let mut i = 0;
    let ended = eventually(&s, || {
        i += 1;
        s.record_exchange("k", &format!("q{i}"), ["a"], NO_STATE, "generic", i);
        // Empty (expired between the write and this read) also means it ended.
        s.snapshot("k").turns.first().map(|t| t.text.as_str()) != Some("q1")
    });
    assert!(ended, "the conversation outlived its ttl");
    assert!(started.elapsed() >= Duration::from_millis(300));
    // One more exchange starts the next conversation whichever way the
    // old one ended (overwritten, or read back empty once expired).
    s.record_exchange("k", "next", ["a"], NO_STATE, "generic", i + 1);
    // The overwritten expired conversation counts as expired, and the
    // gauge still shows one conversation.
    s.run_pending_tasks();
    assert_eq!(s.metrics.context_entries.get(), 1);
    assert_eq!(events(&s.metrics, "expired"), 1);
}

#[test]
fn byte_bound_is_enforced_lru() {
    let (probe, _) = store(limits(20));
    let text = "x".repeat(80);
    for _ in 0..10 {
        probe.record_exchange("conv:0", &text, [&text], NO_STATE, "telegram", 1);
    }
    probe.run_pending_tasks();
    let one = probe.weighted_size();
    assert!(one > 0 && one <= bytes_per_conversation(20), "{one}");

    let (s, m) = store(ContextLimits {
        max_bytes: one * 50,
        ..limits(20)
    });
    for i in 0..500 {
        for _ in 0..10 {
            s.record_exchange(
                &format!("conv:{i}"),
                &text,
                [&text],
                NO_STATE,
                "telegram",
                1,
            );
        }
    }
    s.run_pending_tasks();
    assert!(
        s.weighted_size() <= one * 50,
        "{} > {}",
        s.weighted_size(),
        one * 50
    );
    assert!(s.entries() <= 50 && s.entries() >= 40, "{}", s.entries());
    assert_eq!(m.context_entries.get() as u64, s.entries());
    assert!(events(&m, "evicted") >= 450);
    // The most recent conversation survives.
    assert_eq!(s.snapshot("conv:499").turns.len(), 20);
}

#[test]
fn concurrent_exchanges_never_lose_a_turn() {
    let (s, _) = store(limits(10_000));
    let s = Arc::new(s);
    let handles: Vec<_> = (0..8)
        .map(|t| {
            let s = s.clone();
            std::thread::spawn(move || {
                for i in 0..50 {
                    s.record_exchange(
                        "k",
                        &format!("{t}-{i}"),
                        ["r"],
                        [(format!("t{t}"), format!("{i}"))],
                        "generic",
                        i,
                    );
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let ctx = s.snapshot("k");
    assert_eq!(ctx.turns.len(), 8 * 50 * 2);
    assert_eq!(ctx.state.len(), 8);
    assert!(ctx.state.values().all(|v| v == "49"));
}

#[test]
fn limits_from_config() {
    let l = ContextLimits::from_config(&ContextConfig::default());
    assert_eq!(l.turns, 20);
    assert_eq!(l.ttl, Duration::from_secs(24 * 3600));
    assert_eq!(l.idle, DEFAULT_IDLE);
    assert_eq!(l.max_bytes, 100_000 * bytes_per_conversation(20));
    let short = ContextConfig {
        ttl: crate::config::yaml::HumanDuration(Duration::from_secs(60)),
        ..ContextConfig::default()
    };
    assert_eq!(
        ContextLimits::from_config(&short).idle,
        Duration::from_secs(60)
    );
    let s = ContextStore::new(&ContextConfig::default(), Metrics::new());
    assert_eq!(s.limits().max_bytes, l.max_bytes);
}
