//! Reversible tokenisation per message (issue 15): what `action: tokenize`
//! adds to a typical chat message with two values (a mobile number and an
//! e-mail address), on top of the DLP scan it needs anyway.
//!
//! * `token_for`: one token id (normalisation and HMAC-SM3), no vault;
//! * `tokenize_message`: the scan, then each value tokenised and sealed
//!   (SM4-GCM) into the in-memory vault, the text rendered with tokens;
//! * `restore_message`: the model's reply with both tokens (one rewritten,
//!   `<cn_mobile:…>`), looked up, opened and put back;
//! * `restore_stream_16b`: the same reply through a `Restorer` in 16-byte
//!   pieces (a model's delta size); divided by the pieces, the added
//!   latency per chunk;
//! * `restore_plain`: a reply of the same length with no token (the cost
//!   every reply pays once tokenisation is on).

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use futures::executor::block_on;
use moltgate::policy::dlp::{Direction, DlpPolicy};
use moltgate::tokenize::{Labels, MasterKey, Restorer, Scope, Tokenizer};

const DLP: &str = r#"
patterns:
  cn_mobile: { regex: '1[3-9]\d{9}', action: tokenize }
  email: { regex: '[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,24}', action: tokenize }
keywords:
  internal: { words: ["机密", "confidential"], action: alert }
"#;

const MESSAGE: &str = "Hi, please ask the courier to call me on 13812345678 before delivery, \
and send the invoice to alice.wang@example.com. The order is #88213, two boxes, leave them at reception.";

fn bench(c: &mut Criterion) {
    let policy = DlpPolicy::from_yaml(Path::new("dlp.yaml"), DLP).expect("policy");
    let key = MasterKey::parse("8f1c2ab9d07e4e55b61c93a07f2d3e11").expect("key");
    let t = Arc::new(Tokenizer::in_memory(
        &key,
        Duration::from_secs(3600),
        100_000,
    ));
    let scope = Scope {
        tenant: "acme",
        conversation: "c-1",
    };
    let labels = Labels::from_rules(policy.tokenize_rules());
    let outcome = policy.scan(MESSAGE, Direction::Ingress);
    let seen = block_on(t.tokenize_outcome(scope, MESSAGE, &outcome));
    let phone = t.token_for("acme", "cn_mobile", "13812345678");
    let mail = t.token_for("acme", "email", "alice.wang@example.com");
    let reply = format!(
        "Sure. I asked the courier to call {phone} before delivery, and the invoice goes to \
         <cn_mobile:{}>'s owner at {mail}. Anything else for order #88213?",
        phone.id().to_uppercase()
    );
    assert!(!block_on(t.restore(scope, &labels, &reply)).contains('⟨'));
    let plain = "x".repeat(reply.len());

    let mut g = c.benchmark_group("tokenize");
    g.throughput(Throughput::Bytes(MESSAGE.len() as u64));
    g.bench_function("token_for", |b| {
        b.iter(|| t.token_for(black_box("acme"), "cn_mobile", black_box("138 1234 5678")))
    });
    g.bench_function("tokenize_message", |b| {
        b.iter(|| {
            let outcome = policy.scan(black_box(MESSAGE), Direction::Ingress);
            block_on(t.tokenize_outcome(scope, MESSAGE, &outcome))
        })
    });
    g.throughput(Throughput::Bytes(reply.len() as u64));
    g.bench_function("restore_message", |b| {
        b.iter(|| block_on(t.restore(scope, &labels, black_box(&reply))))
    });
    g.bench_function("restore_stream_16b", |b| {
        b.iter(|| {
            let mut r = Restorer::new(t.clone(), scope, labels.clone());
            let mut out = String::with_capacity(reply.len());
            let mut from = 0;
            while from < reply.len() {
                let mut to = (from + 16).min(reply.len());
                while !reply.is_char_boundary(to) {
                    to += 1;
                }
                out.push_str(&block_on(r.push(&reply[from..to])));
                from = to;
            }
            out.push_str(&block_on(r.finish()));
            out
        })
    });
    g.bench_function("restore_plain", |b| {
        b.iter(|| block_on(t.restore(scope, &labels, black_box(&plain))))
    });
    g.finish();
    black_box(seen);
}

criterion_group!(benches, bench);
criterion_main!(benches);
