//! Conversation context: what one conversation costs in memory, whether
//! 1,000,000 conversations fit the byte bound the config derives, and the
//! time of the two calls on the message path (`snapshot` before the AI call,
//! `record_exchange` after it).
//!
//! The memory part fills `MOLTGATE_BENCH_CONVERSATIONS` conversations
//! (default 1,000,000 under `cargo bench`, 10,000 under `cargo test`) of 20 turns of 80 bytes each (10 exchanges), as the
//! gateway would, and prints the weighed size (what the bound counts) and
//! the growth of the process's resident memory (`/proc/self/statm`), per
//! conversation. It stops filling after `MOLTGATE_BENCH_FILL_SECS` (default
//! 300) and reports what it reached. It fails if a conversation was evicted
//! or the weighed size passed the bound.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion};
use moltgate::config::{ContextConfig, HumanDuration};
use moltgate::context::{bytes_per_conversation, ContextLimits, ContextStore};
use moltgate::observe::Metrics;

const TURNS: usize = 20;
const TURN_BYTES: usize = 80;
const NO_STATE: [(&str, &str); 0] = [];

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Resident set size in bytes, from `/proc/self/statm` (Linux only).
fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}

/// An 80-byte turn that differs per conversation and turn, like real text.
fn turn_text(conv: u64, turn: usize) -> String {
    let mut t = format!("conversation {conv} turn {turn}: ");
    while t.len() < TURN_BYTES {
        t.push_str("lorem ipsum ");
    }
    t.truncate(TURN_BYTES);
    t
}

fn fill(store: &ContextStore, range: std::ops::Range<u64>, deadline: Instant) -> u64 {
    let mut done = 0;
    for conv in range {
        if conv % 1024 == 0 && Instant::now() > deadline {
            break;
        }
        let key = format!("telegram:dm:{}", 100_000_000 + conv);
        for ex in 0..TURNS / 2 {
            let user = turn_text(conv, ex * 2);
            let reply = turn_text(conv, ex * 2 + 1);
            store.record_exchange(
                &key,
                &user,
                [reply],
                NO_STATE,
                "telegram",
                1_700_000_000_000,
            );
        }
        done += 1;
    }
    done
}

fn memory(default_n: u64) {
    let n = env_or("MOLTGATE_BENCH_CONVERSATIONS", default_n);
    let budget = Duration::from_secs(env_or("MOLTGATE_BENCH_FILL_SECS", 300));
    let cfg = ContextConfig {
        max_conversations: n,
        ttl: HumanDuration(Duration::from_secs(24 * 3600)),
        turns: TURNS,
        ..ContextConfig::default()
    };
    let metrics = Metrics::new();
    let limits = ContextLimits::from_config(&cfg);
    let before = rss_bytes().unwrap_or(0);
    let store = Arc::new(ContextStore::new(&cfg, metrics.clone()));
    let started = Instant::now();
    let deadline = started + budget;
    let threads = std::thread::available_parallelism().map_or(2, |p| p.get()) as u64;
    let per = n.div_ceil(threads);
    let filled: u64 = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let store = store.clone();
                s.spawn(move || fill(&store, t * per..((t + 1) * per).min(n), deadline))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or(0)).sum()
    });
    let fill_time = started.elapsed();
    store.run_pending_tasks();
    let after = rss_bytes().unwrap_or(0);
    let entries = store.entries();
    let weighed = store.weighted_size();
    let evicted = metrics.context_events.with_label_values(&["evicted"]).get();
    let rss = after.saturating_sub(before);
    let per_conv = |bytes: u64| bytes as f64 / entries.max(1) as f64;
    println!("context memory: {filled} of {n} conversations x {TURNS} turns x {TURN_BYTES} B filled in {fill_time:.1?} ({threads} threads)");
    println!(
        "  entries {entries}, evicted {evicted}; weighed {weighed} B = {:.0} B/conversation; RSS +{rss} B = {:.0} B/conversation",
        per_conv(weighed),
        per_conv(rss)
    );
    println!(
        "  bound {} B ({} B/conversation x {n}); weighed uses {:.1}% of it, RSS {:.1}%",
        limits.max_bytes,
        bytes_per_conversation(TURNS),
        100.0 * weighed as f64 / limits.max_bytes as f64,
        100.0 * rss as f64 / limits.max_bytes as f64
    );
    assert_eq!(evicted, 0, "conversations were evicted below the bound");
    assert_eq!(entries, filled, "every filled conversation is held");
    assert!(weighed <= limits.max_bytes, "weighed size over the bound");
    drop(store);
}

fn timing(c: &mut Criterion) {
    let cfg = ContextConfig::default();
    let store = ContextStore::new(&cfg, Metrics::new());
    fill(&store, 0..10_000, Instant::now() + Duration::from_secs(60));
    let key = "telegram:dm:100000042";
    let user = turn_text(42, 0);
    let reply = turn_text(42, 1);
    let state = [("stage", "collecting"), ("slot", "date")];

    c.bench_function("context/snapshot_20_turns", |b| {
        b.iter(|| black_box(store.snapshot(black_box(key))))
    });
    c.bench_function("context/snapshot_miss", |b| {
        b.iter(|| black_box(store.snapshot(black_box("telegram:dm:nobody"))))
    });
    c.bench_function("context/record_exchange_full_20_turns", |b| {
        b.iter(|| {
            store.record_exchange(
                black_box(key),
                black_box(&user),
                [black_box(reply.as_str())],
                state,
                "telegram",
                1,
            )
        })
    });
}

criterion_group!(benches, timing);

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` does not, and
    // then a small fill is enough to check that the bench still works.
    let full = std::env::args().any(|a| a == "--bench");
    memory(if full { 1_000_000 } else { 10_000 });
    benches();
    Criterion::default().configure_from_args().final_summary();
}
