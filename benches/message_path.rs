//! The socket-free message path of the generic API (`POST /v1/messages`),
//! stage by stage and as a whole: what `Gateway::handle_generic` spends CPU
//! on before the gRPC call.
//!
//! ```text
//! jwt/verify_hs256                 Authorization: Bearer <HS256 token> ─▶ Subject
//! message_path/parse               JSON body ─▶ GenericMessage
//! message_path/to_platform_message GenericMessage + Subject ─▶ PlatformMessage
//! message_path/envelope_build      PlatformMessage ─▶ Envelope (uuid v4, clock, keys)
//! message_path/encode              Envelope ─▶ protobuf bytes (prost)
//! message_path/whole               parse ─▶ to_platform_message ─▶ build ─▶ encode
//! message_path/whole_with_jwt      verify ─▶ whole
//! ```
//!
//! Run: `cargo bench --bench message_path` (defaults: 1 s warm-up, 3 s
//! measurement per bench; command-line flags such as `--measurement-time`
//! override them). See `benches/README.md`.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use prost::Message;

use moltgate::envelope;
use moltgate::platform::generic;
use moltgate::policy::jwt::{JwtValidationConfig, JwtVerifier, Subject};

const ROUTE: &str = "/v1/messages";

/// A typical body of the generic API: a group message with sender, context,
/// timestamp and one attachment by reference (about 400 bytes).
const BODY: &[u8] = br#"{
  "platform": "web",
  "sender": {"id": "u-1842", "name": "Alice Martin"},
  "content": {
    "text": "Hi! Can you summarise yesterday's incident report and list the follow-up actions for the on-call team?",
    "attachments": [{"type": "file", "url": "https://files.example.com/r/incident-2024-11-20.pdf", "name": "incident-2024-11-20.pdf", "mime_type": "application/pdf"}]
  },
  "timestamp": 1732190000,
  "context": {"room_id": "ops-room", "thread_id": "t-77", "chat_type": "group"}
}"#;

/// `jwt_validation` as shipped in `policies/security_policy.yaml`.
const JWT_POLICY: &str = "issuer: auth.example.com\naudiences: [moltbot.api]\nleeway: 60\nalgorithms: [HS256]\nsecret: bench-secret-0123456789abcdef\n";

/// The verifier and an `Authorization` header value with a valid token
/// minted the way `moltgate token` mints one (sub, iat, exp, iss, aud and
/// the roles/tenant/device_type claims).
fn jwt_fixture() -> (JwtVerifier, String) {
    let file = Path::new("security_policy.yaml");
    let cfg: JwtValidationConfig =
        moltgate::config::yaml::parse_str(file, JWT_POLICY).expect("jwt_validation parses");
    let verifier =
        JwtVerifier::new(&cfg, Path::new("."), file, JWT_POLICY).expect("jwt_validation compiles");
    let mut extra = BTreeMap::new();
    extra.insert("roles".to_string(), serde_json::json!(["user"]));
    extra.insert("tenant".to_string(), serde_json::json!("acme"));
    extra.insert("device_type".to_string(), serde_json::json!("desktop"));
    let token = verifier.mint("alice", &extra, 3600).expect("mint");
    let header = format!("Bearer {token}");
    let subject = verifier
        .verify(Some(&header))
        .expect("the fixture token verifies");
    assert_eq!(subject.id, "alice");
    (verifier, header)
}

fn subject() -> Subject {
    Subject {
        id: "alice".into(),
        roles: vec!["user".into()],
        tenant: "acme".into(),
        device_type: "desktop".into(),
        claims: BTreeMap::new(),
    }
}

/// parse ─▶ to_platform_message ─▶ build ─▶ encode, as the pipeline does it.
fn whole(body: &[u8], subject: &Subject) -> Vec<u8> {
    let msg = generic::parse(body).expect("valid body");
    let msg = generic::to_platform_message(msg, subject);
    let env = envelope::build(
        "generic",
        ROUTE,
        key(&msg),
        &msg,
        subject.roles.clone(),
        subject.device_type.clone(),
    );
    env.encode_to_vec()
}

fn bench_message_path(c: &mut Criterion) {
    let subject = subject();
    let parsed = generic::parse(BODY).expect("the fixture body parses");
    let platform_msg = generic::to_platform_message(parsed.clone(), &subject);
    let env = envelope::build(
        "generic",
        ROUTE,
        key(&platform_msg),
        &platform_msg,
        subject.roles.clone(),
        subject.device_type.clone(),
    );
    let encoded_len = env.encode_to_vec().len();

    let mut g = c.benchmark_group("message_path");
    g.throughput(Throughput::Bytes(BODY.len() as u64));
    g.bench_function("parse", |b| {
        b.iter(|| generic::parse(black_box(BODY)).unwrap())
    });
    g.bench_function("to_platform_message", |b| {
        b.iter_batched(
            || parsed.clone(),
            |m| generic::to_platform_message(m, black_box(&subject)),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("envelope_build", |b| {
        b.iter(|| {
            envelope::build(
                "generic",
                ROUTE,
                key(&platform_msg),
                black_box(&platform_msg),
                subject.roles.clone(),
                subject.device_type.clone(),
            )
        })
    });
    g.throughput(Throughput::Bytes(encoded_len as u64));
    g.bench_function("encode", |b| b.iter(|| black_box(&env).encode_to_vec()));
    g.throughput(Throughput::Elements(1));
    g.bench_function("whole", |b| {
        b.iter(|| whole(black_box(BODY), black_box(&subject)))
    });

    let (verifier, header) = jwt_fixture();
    g.bench_function("whole_with_jwt", |b| {
        b.iter(|| {
            let subject = verifier.verify(Some(black_box(header.as_str()))).unwrap();
            whole(black_box(BODY), &subject)
        })
    });
    g.finish();
}

fn bench_jwt(c: &mut Criterion) {
    let (verifier, header) = jwt_fixture();
    let mut g = c.benchmark_group("jwt");
    g.throughput(Throughput::Elements(1));
    g.bench_function("verify_hs256", |b| {
        b.iter(|| verifier.verify(Some(black_box(header.as_str()))).unwrap())
    });
    g.finish();
}

criterion_group! {
    name = benches;
    // Short by default so the whole file runs in well under a minute;
    // command-line flags (--warm-up-time, --measurement-time) still win.
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = bench_message_path, bench_jwt
}
criterion_main!(benches);

/// The conversation key the pipeline derives (part of building the envelope).
fn key(m: &moltgate::platform::PlatformMessage) -> String {
    moltgate::context::conversation_key("generic", m, None)
}
