//! Ingress DLP as the message path runs it, per mode, against the plain
//! scan of the message text it replaced: what scanning every field costs.
//!
//! ```text
//! inspect/text_only          DlpPolicy::scan of the message text (the old passthrough check)
//! inspect/translate_message  path::inspect::message: text, sender name, attributes
//! inspect/passthrough_clean  path::inspect::payload: parse, walk every string, scan (nothing found)
//! inspect/passthrough_masked the same with a card in the caption: walk, mask, rebuild, reseal
//! ```
//!
//! A Telegram update (~700 bytes: text, entities, a quoted reply) and the
//! shipped `policies/dlp.yaml`. Run: `cargo bench --bench inspect`.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, Method};

use moltgate::path::inspect;
use moltgate::path::IncomingRequest;
use moltgate::platform::telegram::{TelegramAdapter, SECRET_HEADER};
use moltgate::platform::{PlatformAdapter, PlatformMessage};
use moltgate::policy::dlp::Direction;
use moltgate::policy::PolicySet;

const SECRET: &str = "bench-secret";

fn update(caption: &str) -> String {
    serde_json::json!({
        "update_id": 811_000_001,
        "message": {
            "message_id": 4417, "date": 1_732_190_000,
            "from": {"id": 90_017, "is_bot": false, "first_name": "Ada", "username": "ada"},
            "chat": {"id": -100_200_300, "type": "supergroup", "title": "ops"},
            "text": "Can you summarise the incident report and list the follow-ups for the on-call team?",
            "entities": [{"type": "bold", "offset": 0, "length": 3}],
            "caption": caption,
            "reply_to_message": {
                "message_id": 4410, "date": 1_732_189_000,
                "from": {"id": 90_018, "is_bot": false, "first_name": "Bo"},
                "chat": {"id": -100_200_300, "type": "supergroup", "title": "ops"},
                "text": "The report is in the shared drive, section 3."
            }
        }
    })
    .to_string()
}

fn request(body: String) -> IncomingRequest {
    let mut headers = HeaderMap::new();
    headers.insert(SECRET_HEADER, SECRET.parse().expect("static"));
    headers.insert("content-type", "application/json".parse().expect("static"));
    IncomingRequest {
        method: Method::POST,
        query: None,
        headers,
        body: Bytes::from(body),
        client_ip: "127.0.0.1".parse().expect("static"),
    }
}

fn bench_inspect(c: &mut Criterion) {
    let policies: Arc<PolicySet> = Arc::new(
        PolicySet::load(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("policies"),
            1,
            None,
        )
        .expect("shipped policies load"),
    );
    let mut secrets = BTreeMap::new();
    secrets.insert("secret_token".to_string(), SECRET.to_string());
    let adapter = TelegramAdapter::new(&secrets, None).expect("adapter");
    let clean = request(update("see the attached timeline"));
    let masked = request(update("card 4111 1111 1111 1111 on file"));
    let msg = PlatformMessage {
        text: "Can you summarise the incident report and list the follow-ups for the on-call team?"
            .into(),
        sender_name: "Ada".into(),
        ..Default::default()
    };

    let mut g = c.benchmark_group("inspect");
    g.bench_function("text_only", |b| {
        b.iter(|| black_box(policies.dlp.scan(black_box(&msg.text), Direction::Ingress)))
    });
    g.bench_function("translate_message", |b| {
        b.iter(|| {
            let mut m = msg.clone();
            black_box(inspect::message(&policies, &mut m))
        })
    });
    g.bench_function("passthrough_clean", |b| {
        b.iter(|| {
            black_box(inspect::payload(
                &policies,
                &adapter as &dyn PlatformAdapter,
                &clean,
                &[],
            ))
        })
    });
    g.bench_function("passthrough_masked", |b| {
        b.iter(|| {
            let (_, sealed) =
                inspect::payload(&policies, &adapter as &dyn PlatformAdapter, &masked, &[]);
            assert!(
                matches!(sealed, Ok(Some(_))),
                "the card must be masked and resealed"
            );
            black_box(sealed)
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = bench_inspect
}
criterion_main!(benches);
