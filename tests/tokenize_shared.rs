//! The shared-tier token vault (`shared::tokens::RedisVault`) against a
//! real redis-server, two `Shared` handles standing for two edge nodes: a
//! value tokenised on node A is restored on node B, only in its own tenant
//! and conversation; entries expire with `tokenize.ttl`; Redis holds only
//! ciphertext; and a Redis that is down fails closed (the value is masked,
//! a token stays a token).

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::redis::RedisServer;
use moltgate::config::SharedConfig;
use moltgate::observe::Metrics;
use moltgate::policy::dlp::{Direction, DlpPolicy};
use moltgate::shared::tokens::RedisVault;
use moltgate::shared::Shared;
use moltgate::tokenize::{
    Labels, MasterKey, Scope, TokenVault, TokenizeError, Tokenizer, VaultKey,
};

const KEY: &str = "8f1c2ab9d07e4e55b61c93a07f2d3e11";
const PHONE: &str = "13812345678";
const A: Scope<'static> = Scope {
    tenant: "acme",
    conversation: "generic@acme:u1",
};

fn config(url: &str) -> SharedConfig {
    let yaml = format!("redis: {{ url: \"{url}\", timeout: 100ms }}\nkey_prefix: \"t:\"\n");
    serde_yaml_ng::from_str(&yaml).expect("shared config")
}

/// One edge node: its own `Shared` client, vault and tokenizer.
struct Node {
    shared: Arc<Shared>,
    vault: Arc<RedisVault>,
    tokenizer: Tokenizer,
}

async fn node(redis: &RedisServer, ttl: Duration) -> Node {
    let shared = Arc::new(Shared::connect(&config(&redis.url()), Metrics::new()).unwrap());
    shared.probe().await.expect("redis answers the probe");
    let vault = Arc::new(RedisVault::new(shared.clone(), ttl));
    let tokenizer = Tokenizer::new(&MasterKey::parse(KEY).unwrap(), vault.clone());
    Node {
        shared,
        vault,
        tokenizer,
    }
}

fn dlp() -> DlpPolicy {
    DlpPolicy::from_yaml(
        Path::new("dlp.yaml"),
        "patterns:\n  cn_mobile: { regex: '1[3-9]\\d{9}', action: tokenize }\n",
    )
    .unwrap()
}

fn labels() -> Labels {
    Labels::from_rules(["cn_mobile"])
}

fn vault_key(scope: Scope<'_>, id: &str) -> VaultKey {
    VaultKey {
        tenant: scope.tenant.into(),
        conversation: scope.conversation.into(),
        id: id.into(),
    }
}

/// A hash's fields and values, as raw bytes.
type RawHash = Vec<(Vec<u8>, Vec<u8>)>;

/// Every hash under `pattern`: its key and its fields.
fn raw_hashes(redis: &RedisServer, pattern: &str) -> Vec<(String, RawHash)> {
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    redis
        .keys(pattern)
        .into_iter()
        .map(|k| {
            let fields: RawHash = redis::cmd("HGETALL").arg(&k).query(&mut conn).unwrap();
            (k, fields)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_tokenised_on_one_node_is_restored_on_another() {
    let redis = RedisServer::start();
    let (a, b) = (
        node(&redis, Duration::from_secs(60)).await,
        node(&redis, Duration::from_secs(60)).await,
    );
    let text = format!("call me on {PHONE} please");
    let outcome = dlp().scan(&text, Direction::Ingress);
    let seen = a.tokenizer.tokenize_outcome(A, &text, &outcome).await;
    assert!(!seen.contains(PHONE), "{seen}");
    let token = a.tokenizer.token_for(A.tenant, "cn_mobile", PHONE);
    assert!(seen.contains(&token.to_string()), "{seen}");

    let reply = format!("I will call {token} now");
    let back = b.tokenizer.restore(A, &labels(), &reply).await;
    assert_eq!(back, format!("I will call {PHONE} now"));

    // Node B sees exactly the entry node A stored.
    let entries = b.vault.get(&vault_key(A, token.id())).await.unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].label, "CN_MOBILE");
    assert_eq!(
        entries,
        a.vault.get(&vault_key(A, token.id())).await.unwrap()
    );

    // Tokenising the same value again on B keeps one entry (same token).
    let again = b.tokenizer.tokenize(A, "cn_mobile", PHONE).await.unwrap();
    assert_eq!(again, token);
    let keys = redis.keys("t:tok:*");
    assert_eq!(
        keys,
        vec![format!("t:tok:acme:generic@acme%3Au1:{}", token.id())]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_tenant_or_conversation_does_not_restore() {
    let redis = RedisServer::start();
    let (a, b) = (
        node(&redis, Duration::from_secs(60)).await,
        node(&redis, Duration::from_secs(60)).await,
    );
    let token = a.tokenizer.tokenize(A, "cn_mobile", PHONE).await.unwrap();
    let reply = format!("number: {token}");
    let other_conversation = Scope {
        tenant: A.tenant,
        conversation: "generic@acme:u2",
    };
    let other_tenant = Scope {
        tenant: "globex",
        conversation: A.conversation,
    };
    // A tenant and conversation whose naive `tenant:conversation` join
    // equals A's: escaped, they are another key.
    let spliced = Scope {
        tenant: "acme:generic@acme",
        conversation: "u1",
    };
    for scope in [other_conversation, other_tenant, spliced] {
        let out = b.tokenizer.restore(scope, &labels(), &reply).await;
        assert_eq!(out, reply, "{scope:?} must not restore A's token");
        assert!(!out.contains(PHONE));
    }
    // Even an entry copied to the other conversation's key does not open
    // there (the associated data binds it to A).
    let entries = a.vault.get(&vault_key(A, token.id())).await.unwrap();
    let moved = vault_key(other_conversation, token.id());
    b.vault.put(&moved, entries[0].clone()).await.unwrap();
    let out = b
        .tokenizer
        .restore(other_conversation, &labels(), &reply)
        .await;
    assert_eq!(out, reply);
    // A still restores.
    let out = b.tokenizer.restore(A, &labels(), &reply).await;
    assert_eq!(out, format!("number: {PHONE}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_expire_with_the_ttl() {
    let redis = RedisServer::start();
    let ttl = Duration::from_millis(1000);
    let (a, b) = (node(&redis, ttl).await, node(&redis, ttl).await);
    let token = a.tokenizer.tokenize(A, "cn_mobile", PHONE).await.unwrap();
    let key = format!("t:tok:acme:generic@acme%3Au1:{}", token.id());
    let pttl = |redis: &RedisServer| -> i64 { redis.command(&["PTTL", &key]).parse().unwrap() };
    let first = pttl(&redis);
    assert!(first > 0 && first <= 1000, "PTTL {first}");
    let reply = format!("number: {token}");
    assert_eq!(
        b.tokenizer.restore(A, &labels(), &reply).await,
        format!("number: {PHONE}")
    );

    // Once a third of the TTL has passed, storing the value again (on the
    // other node) starts the TTL again.
    poll(
        || async { (0..=650).contains(&pttl(&redis)) },
        "PTTL below 650",
    )
    .await;
    b.tokenizer.tokenize(A, "cn_mobile", PHONE).await.unwrap();
    let stored_again = Instant::now();
    let renewed = pttl(&redis);
    assert!(
        renewed > 650 && renewed <= 1000,
        "PTTL {renewed} after a put"
    );

    // Then it expires, not before the TTL since the last put.
    poll(
        || async {
            b.vault
                .get(&vault_key(A, token.id()))
                .await
                .unwrap()
                .is_empty()
        },
        "the entry to expire",
    )
    .await;
    assert!(
        stored_again.elapsed() >= ttl - Duration::from_millis(50),
        "expired {:?} after the last put (ttl {ttl:?})",
        stored_again.elapsed()
    );
    assert_eq!(b.tokenizer.restore(A, &labels(), &reply).await, reply);
    assert!(redis.keys("t:tok:*").is_empty());
}

/// Waits (at most 5 s, checking every 20 ms) until `done` answers true.
async fn poll<F, Fut>(done: F, what: &str)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !done().await {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "waited 5 s for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_holds_only_ciphertext() {
    let redis = RedisServer::start();
    let a = node(&redis, Duration::from_secs(60)).await;
    let values = [PHONE, "13900001111"];
    for v in values {
        a.tokenizer.tokenize(A, "cn_mobile", v).await.unwrap();
    }
    let hashes = raw_hashes(&redis, "t:tok:*");
    assert_eq!(hashes.len(), 2);
    for (key, fields) in hashes {
        assert_eq!(fields.len(), 1, "{key}");
        let (label, sealed) = &fields[0];
        assert_eq!(label.as_slice(), b"CN_MOBILE");
        // 12-byte nonce + 11 bytes + 16-byte tag.
        assert_eq!(sealed.len(), 12 + PHONE.len() + 16, "{key}");
        for v in values {
            assert!(
                !sealed.windows(v.len()).any(|w| w == v.as_bytes()),
                "{key} holds a plain value"
            );
            assert!(!key.contains(v), "{key}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_is_down_fails_closed() {
    let mut redis = RedisServer::start();
    let a = node(&redis, Duration::from_secs(60)).await;
    let token = a.tokenizer.tokenize(A, "cn_mobile", PHONE).await.unwrap();
    redis.kill();

    // The first command fails (refused); the breaker is then open and
    // every later one is skipped at once.
    let err = a.vault.get(&vault_key(A, token.id())).await.unwrap_err();
    let msg = err.to_string();
    assert!(msg.starts_with("token vault: shared tier"), "{msg}");
    assert!(!msg.contains("acme") && !msg.contains(token.id()), "{msg}");
    assert!(!a.shared.is_up());
    let err = a
        .tokenizer
        .tokenize(A, "cn_mobile", PHONE)
        .await
        .unwrap_err();
    assert!(matches!(err, TokenizeError::Vault(_)), "{err}");
    assert!(err.to_string().contains("circuit open"), "{err}");

    // The message: the value is masked, not passed on.
    let text = format!("call me on {PHONE}");
    let outcome = dlp().scan(&text, Direction::Ingress);
    let seen = a.tokenizer.tokenize_outcome(A, &text, &outcome).await;
    assert!(!seen.contains(PHONE), "{seen}");
    assert!(!seen.contains(&token.to_string()), "{seen}");
    assert!(seen.contains("***********"), "{seen}");

    // The reply: the token stays a token.
    let reply = format!("number: {token}");
    assert_eq!(a.tokenizer.restore(A, &labels(), &reply).await, reply);

    // Redis back (empty: no persistence): the probe closes the breaker and
    // tokenising works again.
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    while a.shared.probe().await.is_err() {
        assert!(Instant::now() < deadline, "no reconnect after restart");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    a.tokenizer.tokenize(A, "cn_mobile", PHONE).await.unwrap();
    assert_eq!(
        a.tokenizer.restore(A, &labels(), &reply).await,
        format!("number: {PHONE}")
    );
}
