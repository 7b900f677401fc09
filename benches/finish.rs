//! The per-message bookkeeping issue 11 changed: the dedupe claim (a new
//! message id claimed and committed, as `path::claim` and `path::finish` do)
//! and the audit line serialised as `Audit::emit` writes it.
//!
//! ```sh
//! cargo bench --bench finish          # < 20 s
//! ```

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use moltgate::dedupe::Dedupe;
use moltgate::observe::Audit;

fn claim(c: &mut Criterion) {
    let dedupe = Dedupe::new(100_000, Duration::from_secs(600));
    let mut g = c.benchmark_group("finish");
    let mut n = 0u64;
    // A new id every time, as under load: claim, then commit.
    g.bench_function("dedupe_new_id", |b| {
        b.iter(|| {
            n += 1;
            let (seen, claim) = dedupe.check(black_box(&format!("880{n:012}")));
            if let Some(claim) = claim {
                claim.commit();
            }
            seen
        })
    });
    // A redelivery of a committed id.
    if let Some(claim) = dedupe.check("redelivered").1 {
        claim.commit();
    }
    g.bench_function("dedupe_redelivery", |b| {
        b.iter(|| dedupe.check(black_box("redelivered")).0)
    });
    let mut audit = Audit::start("/hooks/telegram", "telegram");
    audit.decision = "proxied";
    audit.sender_id = "100000042".into();
    audit.thread_id = "telegram:100000042".into();
    audit.rules = vec!["abac:allow-hooks".into(), "rbac:user".into()];
    audit.node = "127.0.0.1:8081".into();
    audit.status = 200;
    audit.client_ip = "127.0.0.1".parse().ok();
    g.bench_function("audit_json_line", |b| {
        b.iter(|| black_box(&audit).json_line())
    });
    g.finish();
}

criterion_group!(benches, claim);
criterion_main!(benches);
