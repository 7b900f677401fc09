//! The shared tier's scripts against a real redis-server, several
//! `Shared` handles standing for several nodes: limit precision (with and
//! without leases), claims, conversations, confirmations, and what a
//! stopped Redis costs. The gateway-level acceptance tests (three real
//! gateway processes) are in tests/shared.rs.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::redis::RedisServer;
use moltgate::config::SharedConfig;
use moltgate::context::confirm::ConfirmOutcome;
use moltgate::context::ContextLimits;
use moltgate::dedupe::Seen;
use moltgate::observe::Metrics;
use moltgate::policy::rate::Applicable;
use moltgate::proto::v1::{Conversation, Envelope};
use moltgate::shared::{conversations, Shared, SharedError};

fn config(url: &str, extra: &str) -> SharedConfig {
    let yaml = format!("redis: {{ url: \"{url}\", timeout: 100ms }}\nkey_prefix: \"t:\"\n{extra}");
    serde_yaml_ng::from_str(&yaml).expect("shared config")
}

/// `n` nodes on `redis`, each with its own metrics, each registered by one probe.
async fn nodes(redis: &RedisServer, n: usize, extra: &str) -> Vec<(Shared, Metrics)> {
    let mut out = Vec::new();
    for _ in 0..n {
        let metrics = Metrics::new();
        let shared = Shared::connect(&config(&redis.url(), extra), metrics.clone()).unwrap();
        out.push((shared, metrics));
    }
    for (s, _) in &out {
        s.probe().await.expect("redis answers the probe");
    }
    for (s, _) in &out {
        s.probe().await.unwrap();
        assert_eq!(s.nodes() as usize, n, "every node sees the others");
    }
    out
}

fn limit(scope: &'static str, key: &str, n: u64, window: Duration) -> Applicable {
    Applicable {
        scope,
        key: key.into(),
        limit: n,
        window,
    }
}

fn ops(metrics: &Metrics, op: &str) -> f64 {
    common::metric(
        &metrics.render(),
        "moltgate_shared_ops_total",
        &[("op", op), ("result", "ok")],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_admit_what_one_would() {
    let redis = RedisServer::start();
    let nodes = nodes(&redis, 3, "").await;
    let user = [limit("per_user", "user:u1", 90, Duration::from_secs(60))];
    let mut admitted = 0;
    let mut refused = 0;
    for i in 0..300 {
        let (shared, _) = &nodes[i % 3];
        match shared.limit(&user).await.unwrap() {
            Ok(()) => admitted += 1,
            Err(limited) => {
                assert_eq!(limited.scope, "per_user");
                assert!(limited.retry_after <= Duration::from_secs(61));
                assert!(limited.retry_after > Duration::ZERO);
                refused += 1;
            }
        }
    }
    assert_eq!(
        (admitted, refused),
        (90, 210),
        "exactly the limit, across nodes"
    );
    // Once refused, a node answers from its "blocked until" entry: the
    // refusals after the first per node cost no round trip.
    let round_trips: f64 = nodes.iter().map(|(_, m)| ops(m, "rate")).sum();
    assert_eq!(
        round_trips,
        90.0 + 3.0,
        "90 admissions + one refusal per node"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_or_nothing_across_scopes() {
    let redis = RedisServer::start();
    let nodes = nodes(&redis, 2, "").await;
    let window = Duration::from_secs(60);
    let tight = [
        limit("per_route", "route:/a", 1000, window),
        limit("per_user", "user:tight", 2, window),
    ];
    let other_user = [
        limit("per_route", "route:/a", 1000, window),
        limit("per_user", "user:other", 1000, window),
    ];
    for i in 0..10 {
        let _ = nodes[i % 2].0.limit(&tight).await.unwrap();
    }
    // The user's refusals spent nothing of the route's budget: 2 + 998 fit.
    let mut admitted = 0;
    for i in 0..1100 {
        if nodes[i % 2].0.limit(&other_user).await.unwrap().is_ok() {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 998);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leased_budgets_stay_within_one_percent() {
    let redis = RedisServer::start();
    let nodes = nodes(&redis, 3, "").await;
    let global = [limit("global", "global", 10_000, Duration::from_secs(60))];
    let mut admitted = 0u64;
    for i in 0..12_000 {
        if nodes[i % 3].0.limit(&global).await.unwrap().is_ok() {
            admitted += 1;
        }
    }
    assert!(admitted <= 10_000, "{admitted} admitted: over the limit");
    assert!(
        admitted >= 9_900,
        "{admitted} admitted: more than 1 % lost to leases"
    );
    let round_trips: f64 = nodes.iter().map(|(_, m)| ops(m, "rate")).sum();
    // 10,000 / 3 nodes / 100 = 33 units a lease: about 1/33 of the checks go to Redis.
    assert!(
        round_trips < 1_000.0,
        "{round_trips} round trips for {admitted} admissions: leases not used"
    );
    eprintln!("leases: {admitted} of 10000 admitted with {round_trips} round trips");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_is_seen_by_every_node_and_settles_once() {
    let redis = RedisServer::start();
    let nodes = nodes(&redis, 2, "claim_ttl: 300ms\n").await;
    let (a, b) = (&nodes[0].0, &nodes[1].0);
    let day = Duration::from_secs(86_400);
    async fn take(
        node: &Shared,
        route: &str,
        id: &str,
    ) -> (Seen, moltgate::shared::claims::RemoteClaim) {
        let claim = node.new_claim(route, id);
        (node.claim(&claim).await.unwrap(), claim)
    }

    let (seen, claim) = take(a, "/tg", "update-1").await;
    assert_eq!(seen, Seen::New);
    // Sent twice (a retry after a dropped connection): still ours.
    assert_eq!(a.claim(&claim).await.unwrap(), Seen::New);
    assert_eq!(take(b, "/tg", "update-1").await.0, Seen::InFlight);
    a.commit(&claim, day).await.unwrap();
    assert_eq!(take(b, "/tg", "update-1").await.0, Seen::Done);
    // Another route's id space is its own.
    assert_eq!(take(b, "/other", "update-1").await.0, Seen::New);

    // Released: the redelivery is processed on any node.
    let (_, claim) = take(a, "/tg", "update-2").await;
    a.release(&claim).await.unwrap();
    let (seen, b_claim) = take(b, "/tg", "update-2").await;
    assert_eq!(seen, Seen::New);
    // A's stale release cannot drop B's claim (compare-and-delete).
    let (_, stale) = take(a, "/tg", "update-3").await;
    a.release(&stale).await.unwrap();
    let (_, b3) = take(b, "/tg", "update-3").await;
    a.release(&stale).await.unwrap();
    assert_eq!(take(a, "/tg", "update-3").await.0, Seen::InFlight);
    b.commit(&b3, day).await.unwrap();
    b.commit(&b_claim, day).await.unwrap();

    // A node that dies holding a claim blocks redeliveries until claim_ttl.
    let (_, _abandoned) = take(a, "/tg", "update-4").await;
    assert_eq!(take(b, "/tg", "update-4").await.0, Seen::InFlight);
    let deadline = Instant::now() + Duration::from_secs(5);
    while take(b, "/tg", "update-4").await.0 != Seen::New {
        assert!(Instant::now() < deadline, "the claim never expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_that_lands_after_its_timeout_is_released_once_redis_answers() {
    let mut redis = RedisServer::start();
    let nodes = nodes(&redis, 2, "").await;
    let (a, b) = (&nodes[0].0, &nodes[1].0);
    redis.pause();
    let claim = a.new_claim("/tg", "update-9");
    assert!(matches!(
        a.claim(&claim).await,
        Err(SharedError::Timeout(_))
    ));
    // The caller gives up (on_error) and releases; Redis is still stopped.
    assert!(a.release(&claim).await.is_err());
    redis.resume();
    // The queued SET NX runs now; the release waits for a probe.
    let deadline = Instant::now() + Duration::from_secs(5);
    while a.probe().await.is_err() {
        assert!(Instant::now() < deadline, "redis never answered again");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let retry = b.new_claim("/tg", "update-9");
    assert_eq!(
        b.claim(&retry).await.unwrap(),
        Seen::New,
        "the stray claim was released"
    );
}

fn envelope(conversation: &str, id: &str, text: &str) -> Envelope {
    Envelope {
        id: id.into(),
        platform: "telegram".into(),
        conversation: Some(Conversation {
            id: conversation.into(),
            ..Default::default()
        }),
        content: Some(moltgate::proto::v1::Content {
            text: text.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversation_continues_on_any_node_within_its_bounds() {
    let redis = RedisServer::start();
    let nodes = nodes(&redis, 3, "").await;
    let limits = ContextLimits {
        max_bytes: 1 << 20,
        ttl: Duration::from_secs(3600),
        idle: Duration::from_secs(600),
        turns: 4,
    };
    let mut state = HashMap::new();
    state.insert("step".to_string(), "1".to_string());
    for (i, (shared, _)) in nodes.iter().enumerate() {
        let before = shared.snapshot("telegram:dm:42").await.unwrap();
        assert_eq!(before.turns.len(), (2 * i).min(4), "turn {}", i + 1);
        let replies = [format!("answer {i}")];
        let exchange = conversations::Exchange {
            user_turn: &format!("question {i}"),
            replies: &replies,
            state: &state,
            platform: "telegram",
            at: 1_700_000_000_000 + i as i64,
        };
        assert_eq!(
            shared
                .record("telegram:dm:42", &limits, exchange)
                .await
                .unwrap(),
            0
        );
    }
    let after = nodes[0].0.snapshot("telegram:dm:42").await.unwrap();
    let texts: Vec<&str> = after.turns.iter().map(|t| t.text.as_str()).collect();
    assert_eq!(texts, ["question 1", "answer 1", "question 2", "answer 2"]);
    assert_eq!(after.turns[3].role, "assistant");
    assert_eq!(after.state["step"], "1");

    // A turn is cut to the byte bound; state beyond 64 keys is dropped.
    let long = "长".repeat(10_000);
    let mut many = HashMap::new();
    for i in 0..70 {
        many.insert(format!("k{i:02}"), "v".to_string());
    }
    let exchange = conversations::Exchange {
        user_turn: &long,
        replies: &[],
        state: &many,
        platform: "telegram",
        at: 0,
    };
    let dropped = nodes[1].0.record("c2", &limits, exchange).await.unwrap();
    assert_eq!(dropped, 6);
    let c2 = nodes[2].0.snapshot("c2").await.unwrap();
    assert!(c2.turns[0].text.len() <= moltgate::context::MAX_TURN_BYTES);
    assert!(c2.turns[0].text.len() > moltgate::context::MAX_TURN_BYTES - 3);
    assert_eq!(c2.state.len(), 64);
    let ttl = redis.command(&["PTTL", "t:ctx:c2:turns"]);
    let ttl: i64 = ttl.parse().unwrap();
    assert!(ttl > 0 && ttl <= 600_000, "idle expiry set: {ttl}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_code_from_one_node_releases_at_another_exactly_once() {
    let redis = RedisServer::start();
    let nodes = nodes(&redis, 3, "").await;
    let ttl = Duration::from_secs(300);
    let held = envelope("c", "env-1", "/deploy prod");
    let code = nodes[0]
        .0
        .hold("person:zhang", &held, ttl, 3)
        .await
        .unwrap();
    let wrong = if code == "000000" { "111111" } else { "000000" };
    assert_eq!(
        nodes[1].0.respond("person:zhang", wrong).await.unwrap(),
        ConfirmOutcome::Wrong { remaining: 2 }
    );
    // Someone else's code slot is empty.
    assert_eq!(
        nodes[1].0.respond("person:li", &code).await.unwrap(),
        ConfirmOutcome::NotPending
    );
    let (a, b) = tokio::join!(
        nodes[1].0.respond("person:zhang", &code),
        nodes[2].0.respond("person:zhang", &code)
    );
    let forwarded: Vec<_> = [a.unwrap(), b.unwrap()]
        .into_iter()
        .filter_map(|o| match o {
            ConfirmOutcome::Forward(h) => Some(h.envelope),
            _ => None,
        })
        .collect();
    assert_eq!(forwarded, vec![held], "released exactly once");
    // Neither the code nor the text is stored in the clear.
    let raw = redis.command(&["KEYS", "t:confirm:*"]);
    assert!(raw.is_empty() || !raw.contains("zhang"), "{raw}");

    // Three wrong tries reject; a late code is expired.
    let code = nodes[0]
        .0
        .hold("u2", &envelope("c", "env-2", "x"), ttl, 3)
        .await
        .unwrap();
    let wrong = if code == "000000" { "111111" } else { "000000" };
    for remaining in [2, 1, 0] {
        assert_eq!(
            nodes[1].0.respond("u2", wrong).await.unwrap(),
            ConfirmOutcome::Wrong { remaining }
        );
    }
    assert_eq!(
        nodes[2].0.respond("u2", &code).await.unwrap(),
        ConfirmOutcome::NotPending
    );
    let short = Duration::from_millis(1);
    let code = nodes[0]
        .0
        .hold("u3", &envelope("c", "env-3", "x"), short, 3)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(
        nodes[1].0.respond("u3", &code).await.unwrap(),
        ConfirmOutcome::Expired
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_redis_costs_one_timeout_then_nothing_until_it_answers() {
    let mut redis = RedisServer::start();
    let nodes = nodes(&redis, 1, "").await;
    let (shared, metrics) = &nodes[0];
    let user = [limit("per_user", "user:u", 1000, Duration::from_secs(60))];
    assert!(shared.limit(&user).await.unwrap().is_ok());

    redis.pause();
    let started = Instant::now();
    let first = shared.limit(&user).await;
    let took = started.elapsed();
    assert!(matches!(first, Err(SharedError::Timeout(_))), "{first:?}");
    assert!(
        took >= Duration::from_millis(100),
        "the timeout is 100ms: {took:?}"
    );
    assert!(took < Duration::from_millis(400), "{took:?}");
    assert!(!shared.is_up());
    let started = Instant::now();
    assert!(matches!(shared.limit(&user).await, Err(SharedError::Open)));
    assert!(matches!(
        shared.claim(&shared.new_claim("/r", "m")).await,
        Err(SharedError::Open)
    ));
    assert!(
        started.elapsed() < Duration::from_millis(20),
        "an open breaker skips at once"
    );
    assert!(shared.probe().await.is_err());
    let text = metrics.render();
    assert_eq!(common::metric(&text, "moltgate_shared_up", &[]), 0.0);
    assert_eq!(
        common::metric(
            &text,
            "moltgate_shared_ops_total",
            &[("op", "rate"), ("result", "skipped")]
        ),
        1.0
    );

    redis.resume();
    let deadline = Instant::now() + Duration::from_secs(5);
    while shared.probe().await.is_err() {
        assert!(Instant::now() < deadline, "the probe never succeeded again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(shared.is_up());
    assert!(shared.limit(&user).await.unwrap().is_ok());
    assert_eq!(
        common::metric(&metrics.render(), "moltgate_shared_up", &[]),
        1.0
    );

    // Killed and started again on the same port: the connection manager
    // reconnects, no new client needed.
    redis.kill();
    assert!(shared.limit(&user).await.is_err());
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    while shared.probe().await.is_err() {
        assert!(Instant::now() < deadline, "no reconnect after restart");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(shared.limit(&user).await.unwrap().is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_window_slides_on_redis_time_and_never_admits_more_than_the_limit() {
    let redis = RedisServer::start();
    let nodes = nodes(&redis, 2, "").await;
    // 640 ms window: 64 buckets of 10 ms.
    let window = Duration::from_millis(640);
    let user = [limit("per_user", "user:slide", 5, window)];
    let mut admitted_at = Vec::new();
    let started = Instant::now();
    let mut i = 0;
    // Steady pressure for 2.5 windows, bounded in count too.
    while started.elapsed() < window * 5 / 2 && i < 20_000 {
        if let Ok(()) = nodes[i % 2].0.limit(&user).await.unwrap() {
            admitted_at.push(Instant::now());
        }
        i += 1;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // Every window of 640 ms (less 10 ms for the client's view of Redis's
    // clock) holds at most 5 admissions; and the budget came back (the
    // window slid): more than 5 in total.
    for (j, t) in admitted_at.iter().enumerate() {
        let within = admitted_at[j..]
            .iter()
            .take_while(|u| u.duration_since(*t) < window - Duration::from_millis(10))
            .count();
        assert!(within <= 5, "{within} admissions in one window");
    }
    assert!(
        admitted_at.len() >= 10,
        "only {} admitted in 2.5 windows",
        admitted_at.len()
    );

    // Huge budgets (leased or not) never refuse.
    let huge = [
        limit(
            "global",
            "global:huge",
            1_000_000_000,
            Duration::from_secs(60),
        ),
        limit(
            "per_user",
            "user:huge",
            1_000_000_000,
            Duration::from_secs(60),
        ),
    ];
    for i in 0..2_000 {
        assert!(
            nodes[i % 2].0.limit(&huge).await.unwrap().is_ok(),
            "request {i}"
        );
    }
}
