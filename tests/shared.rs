//! Edge nodes that share state through Redis (`shared:`), against the real
//! binary: several gateway nodes on loopback, each with its own config,
//! certificates and process, pointed at one real `redis-server` that the
//! test starts on a fresh port (never a Redis the machine may already run).
//!
//! What is checked: a rate limit holds across three nodes (300 requests, 90
//! admitted ± 1); a Telegram redelivery at another node is a duplicate; a
//! conversation continues across nodes (the context the assistant sees);
//! a confirmation code issued by one node is accepted at another, once;
//! Redis stopped (SIGSTOP) and killed, in each `on_error` mode, with the
//! latency every request paid; Redis back (SIGCONT, or restarted on the same
//! port) without restarting a gateway, also when it was down for less than
//! a probe interval; a node killed between claim and commit (the
//! redelivery waits out `claim_ttl`); a unix socket URL.
//!
//! Sharing tests use a roomy per-command timeout (250 ms) so a busy CI
//! machine never trips the circuit breaker and turns an exact count into a
//! local one; the outage tests use the 50 ms of the design, because the time
//! a failing Redis may cost each request is what they measure.

mod common;

use std::time::{Duration, Instant};

use common::fake_api::FakeApi;
use common::platforms::telegram as tg;
use common::redis::RedisServer;
use common::{admin_get, metric, rt, Gateway, RecordingAssistant, Setup};
use futures::StreamExt;
use serde_json::{json, Value};

/// Per-command timeout of the sharing tests (see the module doc).
const ROOMY_TIMEOUT: &str = "250ms";
/// Per-command timeout of the outage tests, in milliseconds.
const OUTAGE_TIMEOUT_MS: u64 = 50;
/// What a request may take on top of its Redis-up time plus `timeout`
/// while Redis fails (a debug build on a 2-core CI machine).
const OUTAGE_MARGIN: Duration = Duration::from_millis(400);
/// The key prefix every node uses.
const PREFIX: &str = "t:";

/// Everything is allowed; `/reboot` additionally needs a confirmation.
fn abac() -> String {
    format!(
        "{}  - id: reboot_needs_confirmation\n    effect: Allow\n    resources: [\"/**\"]\n    actions: [\"command:reboot\"]\n    confirm: true\n",
        common::ALLOW_ALL_ABAC
    )
}

/// Who may run commands (`/reboot`): the confirmation tests' users.
const PERMISSIONS: &str = "roles:\n  admin: [\"command:*\"]\n  user: [message:send]\nsubjects:\n  \"generic:dana\": [admin]\n  \"generic:erin\": [admin]\n  \"generic:conf\": [admin]\n";

/// How one node is configured.
struct Opts {
    /// `shared.redis.url`.
    url: String,
    /// `shared.on_error`.
    on_error: &'static str,
    /// `shared.redis.timeout`.
    timeout: String,
    /// `per_user.max_requests` in a 60 s window.
    per_user: u32,
    /// The `upstreams:` entry of `assistant`.
    assistant: String,
    /// `shared.claim_ttl`, when not the default.
    claim_ttl: Option<&'static str>,
}

impl Opts {
    fn new(url: String, on_error: &'static str, timeout: &str, per_user: u32) -> Self {
        Opts {
            url,
            on_error,
            timeout: timeout.into(),
            per_user,
            assistant:
                "  assistant: { kind: grpc, nodes: [embedded], balance: conversation, timeout: 5s }\n"
                    .into(),
            claim_ttl: None,
        }
    }

    /// Uses the `RecordingAssistant` on `port` (`timeout` for the call).
    fn recording(mut self, port: u16, timeout: &str) -> Self {
        self.assistant = format!(
            "  assistant: {{ kind: grpc, nodes: [\"127.0.0.1:{port}\"], balance: conversation, timeout: {timeout} }}\n"
        );
        self
    }

    /// The generic API at `/v1/messages`, Telegram at `/hooks/telegram`
    /// (API replies to `api`), the `shared:` block.
    fn setup(&self, api: &str) -> Setup {
        let claim_ttl = self
            .claim_ttl
            .map(|t| format!("  claim_ttl: {t}\n"))
            .unwrap_or_default();
        let shared = format!(
            "shared:\n  redis:\n    url: \"{}\"\n    timeout: {}\n  key_prefix: \"{PREFIX}\"\n  on_error: {}\n{claim_ttl}",
            self.url, self.timeout, self.on_error
        );
        let security = format!(
            "{}rate_limiting:\n  per_user: {{ window: 60s, max_requests: {} }}\n",
            common::SECURITY_POLICY,
            self.per_user
        );
        Setup {
            upstreams: self.assistant.clone(),
            routes: format!(
                "  - {{ path: /v1/messages, platform: generic, upstream: assistant }}\n\
                 \x20 - {{ path: /hooks/telegram, platform: telegram, upstream: assistant, api_base: \"{api}\", secrets: {} }}\n",
                tg::secrets()
            ),
            extra: shared,
            policies: vec![
                ("security_policy.yaml", security),
                ("abac.yaml", abac()),
                ("permissions.yaml", PERMISSIONS.into()),
            ],
        }
    }
}

/// One gateway node and a client that keeps its connections (so latencies
/// are the request's, not a TLS handshake's).
struct Node {
    gw: Gateway,
    http: reqwest::Client,
}

/// One answer: status, `Retry-After`, JSON body (`Null` when empty or not
/// JSON) and how long it took.
#[derive(Debug)]
struct Answer {
    status: u16,
    retry_after: Option<String>,
    body: Value,
    took: Duration,
}

impl Answer {
    /// The one reply text of an answered generic message.
    fn reply(&self) -> &str {
        assert_eq!(self.status, 200, "{self:?}");
        let replies = self.body["replies"].as_array().expect("replies");
        assert_eq!(replies.len(), 1, "{self:?}");
        replies[0]["text"].as_str().unwrap()
    }

    /// The inline `sendMessage` text of an answered Telegram update.
    fn tg_text(&self) -> &str {
        assert_eq!(self.status, 200, "{self:?}");
        assert_eq!(self.body["method"], "sendMessage", "{self:?}");
        self.body["text"].as_str().unwrap()
    }

    /// A 503 that tells the sender when to retry.
    fn assert_retry_later(&self) {
        assert_eq!(self.status, 503, "{self:?}");
        let after: u64 = self
            .retry_after
            .as_deref()
            .unwrap_or_else(|| panic!("503 without Retry-After: {self:?}"))
            .parse()
            .unwrap_or_else(|_| panic!("Retry-After is not seconds: {self:?}"));
        assert!(after >= 1, "{self:?}");
    }

    /// The empty acknowledgement a duplicate gets.
    fn assert_duplicate_ack(&self) {
        assert_eq!(self.status, 200, "{self:?}");
        assert_eq!(self.body, Value::Null, "a duplicate gets an empty ack");
    }
}

impl Node {
    fn new(gw: Gateway) -> Self {
        let http = gw.client(true);
        Node { gw, http }
    }

    /// A generic-API message in a private chat.
    async fn api(&self, token: &str, text: &str) -> Answer {
        let body = json!({
            "sender": {"id": "client-side", "name": "Someone"},
            "content": {"text": text, "attachments": []},
            "context": {"room_id": "dm", "chat_type": "private"},
        });
        let started = Instant::now();
        let resp = self
            .http
            .post(self.gw.url("/v1/messages"))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        answer(resp, started).await
    }

    /// Posts a Telegram update as Telegram does.
    async fn telegram(&self, update: &Value) -> Answer {
        let started = Instant::now();
        let resp = self
            .try_telegram(update)
            .await
            .unwrap_or_else(|e| panic!("Telegram update not answered: {e}"));
        answer(resp, started).await
    }

    async fn try_telegram(&self, update: &Value) -> reqwest::Result<reqwest::Response> {
        let signed = tg::seal(update);
        let mut req = self
            .http
            .post(self.gw.url("/hooks/telegram"))
            .body(signed.body);
        for (k, v) in &signed.headers {
            req = req.header(*k, v.as_str());
        }
        req.send().await
    }

    fn metrics(&self) -> String {
        self.gw.metrics()
    }

    /// `moltgate_shared_up`, or `None` when the metric is missing.
    fn shared_up(&self) -> Option<f64> {
        let m = self.metrics();
        m.lines()
            .any(|l| l.starts_with("moltgate_shared_up"))
            .then(|| metric(&m, "moltgate_shared_up", &[]))
    }

    /// Polls (bounded) until `moltgate_shared_up` is `want`; returns how long it took.
    fn wait_shared_up(&self, want: f64, within: Duration) -> Duration {
        let started = Instant::now();
        loop {
            if self.shared_up() == Some(want) {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < within,
                "moltgate_shared_up never became {want} within {within:?} (now {:?}); logs:\n{}",
                self.shared_up(),
                self.gw.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `/readyz`: (status, JSON body).
    fn readyz(&self) -> (u16, Value) {
        let (s, body) = admin_get(self.gw.admin, "/readyz").expect("/readyz answers");
        (s, serde_json::from_str(&body).unwrap_or(Value::Null))
    }

    /// Polls (bounded) until `/readyz` says `"shared": shared`; returns its status.
    fn wait_ready_shared(&self, shared: &str) -> u16 {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (s, body) = self.readyz();
            if body["shared"] == shared {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "/readyz never said \"shared\":\"{shared}\": {s} {body}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The sum of `moltgate_shared_ops_total` series whose result is not `ok`.
    fn failed_ops(&self) -> f64 {
        let m = self.metrics();
        let all = metric(&m, "moltgate_shared_ops_total", &[]);
        all - metric(&m, "moltgate_shared_ops_total", &[("result", "ok")])
    }
}

async fn answer(resp: reqwest::Response, started: Instant) -> Answer {
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    let bytes = resp.bytes().await.unwrap();
    Answer {
        status,
        retry_after,
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        took: started.elapsed(),
    }
}

/// Starts one node per setup, in parallel, each checked to serve its own
/// public port.
fn start_nodes(setups: Vec<Setup>) -> Vec<Node> {
    std::thread::scope(|s| {
        let handles: Vec<_> = setups
            .into_iter()
            .map(|setup| s.spawn(move || start_node(&setup)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// Starts a node (`Setup::start` checks that the public port is its own).
fn start_node(setup: &Setup) -> Node {
    Node::new(setup.start())
}

/// A private-chat Telegram update from user `from`.
fn update(update_id: u64, from: u64, text: &str) -> Value {
    tg::update(update_id, &from.to_string(), json!({ "text": text }))
}

/// The 6-digit code of a held generic message (202).
fn held_code(a: &Answer) -> String {
    assert_eq!(a.status, 202, "{a:?}");
    assert_eq!(a.body["status"], "confirmation_required", "{a:?}");
    let code = a.body["code"].as_str().unwrap().to_string();
    assert!(
        code.len() == 6 && code.bytes().all(|b| b.is_ascii_digit()),
        "{a:?}"
    );
    code
}

/// Every key in Redis carries the configured prefix, and there are some.
fn assert_keys_prefixed(redis: &RedisServer) {
    let keys = redis.keys("*");
    assert!(!keys.is_empty(), "nothing was stored in Redis");
    let stray: Vec<_> = keys.iter().filter(|k| !k.starts_with(PREFIX)).collect();
    assert!(
        stray.is_empty(),
        "keys without the prefix {PREFIX:?}: {stray:?}"
    );
}

// ------------------------------------------------------------ harness ----

/// The harness itself: a fresh server answers on its port and socket,
/// without persistence; paused it answers nothing, resumed it answers with
/// its data; killed it refuses connections; restarted on the same port and
/// socket it answers again, empty.
#[test]
fn harness_redis_server_starts_pauses_resumes_kills_restarts() {
    let mut redis = RedisServer::start();
    let other = RedisServer::start();
    assert_ne!(redis.port, other.port, "every test gets its own server");
    drop(other);
    assert_eq!(redis.url(), format!("redis://127.0.0.1:{}/0", redis.port));
    assert_eq!(redis.command(&["PING"]), "PONG");
    assert_eq!(redis.command(&["CONFIG", "GET", "save"]), "save\n");
    assert_eq!(
        redis.command(&["CONFIG", "GET", "appendonly"]),
        "appendonly\nno"
    );
    assert_eq!(redis.command(&["SET", "k", "v1"]), "OK");
    assert_eq!(redis.command(&["GET", "k"]), "v1");
    assert_eq!(redis.command(&["GET", "missing"]), "(nil)");
    assert_eq!(redis.keys("*"), vec!["k".to_string()]);
    assert_eq!(redis.command(&["INCR", "n"]), "1");
    assert!(matches!(
        redis.query(&["NOSUCHCOMMAND"]),
        common::redis::Reply::Error(_)
    ));
    assert!(redis.unix_url().starts_with("unix:///"));
    assert!(redis.unix_url().ends_with("/redis.sock"));
    assert_eq!(unix_ping(&redis), "+PONG\r\n");

    redis.pause();
    let t = Instant::now();
    assert!(
        !redis.answers(Duration::from_millis(200)),
        "a stopped server answered"
    );
    assert!(t.elapsed() >= Duration::from_millis(150));
    redis.resume();
    assert_eq!(redis.command(&["GET", "k"]), "v1", "SIGCONT keeps the data");

    let port = redis.port;
    redis.kill();
    let refused = std::net::TcpStream::connect(("127.0.0.1", port));
    assert!(refused.is_err(), "a killed server still accepts");
    redis.restart();
    assert_eq!(redis.port, port);
    assert_eq!(redis.command(&["PING"]), "PONG");
    assert_eq!(redis.command(&["GET", "k"]), "(nil)", "no persistence");
    assert_eq!(unix_ping(&redis), "+PONG\r\n");

    // Drop of a paused server still ends (and reaps) it.
    redis.pause();
    let pid = redis.pid().unwrap();
    drop(redis);
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "redis-server {pid} outlived its handle"
    );
}

/// `PING` over the server's unix socket: the raw answer.
fn unix_ping(redis: &RedisServer) -> String {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(redis.socket_path()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"*1\r\n$4\r\nPING\r\n").unwrap();
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf).unwrap();
    String::from_utf8_lossy(&buf).into_owned()
}

// ------------------------------------------------------------ sharing ----

/// 300 requests of one user, round-robin over three nodes, against 90 per
/// minute: 90 ± 1 are answered by the assistant, the rest get 429, nothing
/// else. Every key the nodes wrote carries the prefix; the shared metrics
/// count the work.
#[test]
fn rate_limit_holds_across_three_nodes() {
    let redis = RedisServer::start();
    let fake = FakeApi::start();
    let opts = Opts::new(redis.url(), "local", ROOMY_TIMEOUT, 90);
    let nodes = start_nodes((0..3).map(|_| opts.setup(&fake.base())).collect());
    let token = nodes[0].gw.token("hammer", &[]);
    for n in &nodes {
        n.wait_shared_up(1.0, Duration::from_secs(10));
    }
    let started = Instant::now();
    let results: Vec<(usize, Answer)> = rt().block_on(async {
        futures::stream::iter(0..300usize)
            .map(|i| {
                let (node, token) = (&nodes[i % 3], &token);
                async move { (i, node.api(token, &format!("m{i}")).await) }
            })
            .buffer_unordered(6)
            .collect()
            .await
    });
    let took = started.elapsed();
    let mut per_node = [0usize; 3];
    let (mut ok, mut limited, mut other) = (0, 0, Vec::new());
    for (i, a) in &results {
        match a.status {
            200 => {
                ok += 1;
                per_node[i % 3] += 1;
                let text = a.reply();
                assert!(
                    text.starts_with(&format!("echo: m{i} (turn ")),
                    "request {i}: not the assistant's answer: {text:?}"
                );
            }
            429 => {
                limited += 1;
                assert_eq!(a.body["error"], "rate_limited", "{a:?}");
                let after: u64 = a.retry_after.as_deref().unwrap().parse().unwrap();
                assert!((1..=61).contains(&after), "{a:?}");
            }
            _ => other.push((i, a)),
        }
    }
    let failed: Vec<f64> = nodes.iter().map(|n| n.failed_ops()).collect();
    println!(
        "precision: {ok} of 300 admitted against a limit of 90 (per node {per_node:?}), {limited} got 429, in {took:?}; failed shared ops per node {failed:?}"
    );
    assert!(other.is_empty(), "statuses other than 200/429: {other:?}");
    assert!(
        (89..=91).contains(&ok),
        "{ok} admitted across three nodes, want 90 ± 1 (per node {per_node:?}; failed shared ops {failed:?})"
    );
    assert_eq!(ok + limited, 300);
    assert_keys_prefixed(&redis);
    for (n, admitted) in nodes.iter().zip(per_node) {
        let m = n.metrics();
        assert_eq!(metric(&m, "moltgate_shared_up", &[]), 1.0, "{m}");
        // At least the limit check of every message it admitted.
        assert!(
            metric(&m, "moltgate_shared_ops_total", &[("result", "ok")]) >= admitted as f64,
            "{m}"
        );
        assert!(
            metric(&m, "moltgate_shared_seconds_count", &[]) >= admitted as f64,
            "{m}"
        );
        // The labels the design names: ops by operation and result, and
        // a histogram of their time.
        let ops: Vec<&str> = m
            .lines()
            .filter(|l| l.starts_with("moltgate_shared_ops_total{"))
            .collect();
        assert!(
            !ops.is_empty()
                && ops
                    .iter()
                    .all(|l| l.contains("op=\"") && l.contains("result=\"")),
            "{m}"
        );
        assert!(
            m.lines()
                .any(|l| l.starts_with("moltgate_shared_seconds_bucket")),
            "{m}"
        );
        assert_eq!(n.readyz().1["shared"], "up");
    }
}

/// The same Telegram update at node 1, then nodes 2 and 3 (and node 1
/// again): the assistant receives it once; the others acknowledge it as a
/// duplicate (200, empty), audited and counted as such.
#[test]
fn telegram_redelivery_at_another_node_is_a_duplicate() {
    let redis = RedisServer::start();
    let fake = FakeApi::start();
    let ai = RecordingAssistant::start();
    let opts = Opts::new(redis.url(), "local", ROOMY_TIMEOUT, 100).recording(ai.port, "5s");
    let nodes = start_nodes((0..3).map(|_| opts.setup(&fake.base())).collect());
    let u = update(7_100_001, 4001, "only once");
    rt().block_on(async {
        let first = nodes[0].telegram(&u).await;
        assert_eq!(first.tg_text(), "echo: only once (turn 1)");
        for n in [&nodes[1], &nodes[2], &nodes[0]] {
            n.telegram(&u).await.assert_duplicate_ack();
        }
    });
    let seen = ai.envelopes();
    assert_eq!(seen.len(), 1, "the assistant got the update more than once");
    assert_eq!(seen[0].platform_message_id, "7100001");
    for n in &nodes[1..] {
        let a =
            n.gw.wait_audit(|a| a["route"] == "/hooks/telegram" && a["decision"] == "duplicate");
        assert_eq!(a["status"], 200, "{a}");
        assert_eq!(
            metric(
                &n.metrics(),
                "moltgate_duplicate_messages_total",
                &[("platform", "telegram")]
            ),
            1.0
        );
    }
    assert_keys_prefixed(&redis);
}

/// One conversation, one message per node: the assistant sees 0, 2, then 4
/// turns of context, with the right texts, and counts turns 1, 2, 3; the
/// same for a Telegram chat whose updates go to the nodes in another order.
#[test]
fn conversation_continues_across_three_nodes() {
    let redis = RedisServer::start();
    let fake = FakeApi::start();
    let ai = RecordingAssistant::start();
    let opts = Opts::new(redis.url(), "local", ROOMY_TIMEOUT, 100).recording(ai.port, "5s");
    let nodes = start_nodes((0..3).map(|_| opts.setup(&fake.base())).collect());
    let token = nodes[0].gw.token("walker", &[]);
    rt().block_on(async {
        for (i, text) in ["one", "two", "three"].iter().enumerate() {
            let a = nodes[i].api(&token, text).await;
            assert_eq!(a.reply(), format!("echo: {text} (turn {})", i + 1));
        }
        for (i, (node, text)) in [(2, "uno"), (0, "dos"), (1, "tres")].iter().enumerate() {
            let a = nodes[*node]
                .telegram(&update(7_200_001 + i as u64, 4002, text))
                .await;
            assert_eq!(a.tg_text(), format!("echo: {text} (turn {})", i + 1));
        }
    });
    let seen = ai.envelopes();
    assert_eq!(seen.len(), 6);
    for (envelopes, texts) in [
        (&seen[..3], ["one", "two", "three"]),
        (&seen[3..], ["uno", "dos", "tres"]),
    ] {
        let turns: Vec<Vec<(String, String)>> = envelopes
            .iter()
            .map(|e| {
                e.context
                    .as_ref()
                    .map(|c| {
                        c.turns
                            .iter()
                            .map(|t| (t.role.clone(), t.text.clone()))
                            .collect()
                    })
                    .unwrap_or_default()
            })
            .collect();
        let t = |role: &str, text: String| (role.to_string(), text);
        let want = vec![
            t("user", texts[0].into()),
            t("assistant", format!("echo: {} (turn 1)", texts[0])),
            t("user", texts[1].into()),
            t("assistant", format!("echo: {} (turn 2)", texts[1])),
        ];
        assert_eq!(
            turns.iter().map(Vec::len).collect::<Vec<_>>(),
            [0, 2, 4],
            "{turns:?}"
        );
        assert_eq!(turns[1], want[..2], "{turns:?}");
        assert_eq!(turns[2], want, "{turns:?}");
        let ids: Vec<_> = envelopes
            .iter()
            .map(|e| e.conversation.as_ref().unwrap().id.clone())
            .collect();
        assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
    }
    assert_keys_prefixed(&redis);
}

/// A code issued by node 1 releases the held message at node 2; the same
/// code at node 3 is then an ordinary message. A second hold, whose code
/// reaches all three nodes at once, is released exactly once.
#[test]
fn confirmation_code_is_accepted_at_another_node_once() {
    let redis = RedisServer::start();
    let fake = FakeApi::start();
    let ai = RecordingAssistant::start();
    let opts = Opts::new(redis.url(), "local", ROOMY_TIMEOUT, 100).recording(ai.port, "5s");
    let nodes = start_nodes((0..3).map(|_| opts.setup(&fake.base())).collect());
    let (dana, erin) = (
        nodes[0].gw.token("dana", &[]),
        nodes[0].gw.token("erin", &[]),
    );
    let held_texts = |text: &str| {
        ai.envelopes()
            .iter()
            .filter(|e| e.content.as_ref().unwrap().text == text)
            .count()
    };
    rt().block_on(async {
        let code = held_code(&nodes[0].api(&dana, "/reboot now").await);
        assert_eq!(
            ai.envelopes().len(),
            0,
            "a held message must not be forwarded"
        );
        assert_eq!(
            nodes[1].api(&dana, &code).await.reply(),
            "echo: /reboot now (turn 1)"
        );
        assert_eq!(held_texts("/reboot now"), 1);
        assert_eq!(
            nodes[2].api(&dana, &code).await.reply(),
            format!("echo: {code} (turn 2)"),
            "a used code is an ordinary message"
        );
        assert_eq!(held_texts("/reboot now"), 1);
        assert_eq!(ai.envelopes().len(), 2);
        nodes[0]
            .gw
            .wait_audit(|a| a["decision"] == "confirm_required");
        nodes[1]
            .gw
            .wait_audit(|a| a["decision"] == "confirm_forwarded");

        // The same code at three nodes at once: one release.
        let code = held_code(&nodes[1].api(&erin, "/reboot later").await);
        let answers = futures::future::join_all(nodes.iter().map(|n| n.api(&erin, &code))).await;
        let replies: Vec<&str> = answers.iter().map(|a| a.reply()).collect();
        let released = replies
            .iter()
            .filter(|r| r.starts_with("echo: /reboot later"))
            .count();
        assert_eq!(released, 1, "{replies:?}");
        assert!(
            replies
                .iter()
                .filter(|r| !r.starts_with("echo: /reboot later"))
                .all(|r| r.starts_with(&format!("echo: {code} "))),
            "{replies:?}"
        );
        assert_eq!(held_texts("/reboot later"), 1);
    });
    let forwarded: usize = nodes
        .iter()
        .map(|n| {
            n.gw.audit_lines()
                .iter()
                .filter(|a| a["decision"] == "confirm_forwarded")
                .count()
        })
        .sum();
    assert_eq!(forwarded, 2, "two holds, two releases in all");
}

// ------------------------------------------------------------- outages ----

#[derive(Clone, Copy, Debug, PartialEq)]
enum Outage {
    /// SIGSTOP: commands hang until `timeout`; then SIGCONT.
    Pause,
    /// SIGKILL: connections are refused; then a restart on the same port.
    Kill,
}

#[test]
fn redis_paused_on_error_allow() {
    outage("allow", Outage::Pause);
}

#[test]
fn redis_paused_on_error_deny() {
    outage("deny", Outage::Pause);
}

#[test]
fn redis_paused_on_error_local() {
    outage("local", Outage::Pause);
}

#[test]
fn redis_killed_on_error_allow() {
    outage("allow", Outage::Kill);
}

#[test]
fn redis_killed_on_error_deny() {
    outage("deny", Outage::Kill);
}

#[test]
fn redis_killed_on_error_local() {
    outage("local", Outage::Kill);
}

/// Two nodes, per_user 5 per minute, `timeout: 50ms`. With Redis up, the
/// Redis-up latency of a generic message and a Telegram update; then Redis
/// fails (`how`), and on node A, for `mode`:
/// - a new Telegram update: `allow`, `local`: answered; `deny`: 503 with
///   Retry-After, not forwarded; `local`: its redelivery at A is a duplicate;
/// - 8 messages of one user: `allow`: all answered; `deny`: all 503 with
///   Retry-After (audit reason `shared_state_unavailable`); `local`: 5
///   answered, then 429;
/// - `allow`, `local`: context and confirmations work from the local store
///   (with `deny` every message stops at the limit, before them);
/// - every request within its Redis-up time + `timeout` + a margin;
/// - `moltgate_shared_up` 0, failed operations counted, `/readyz` says
///   `"shared":"down"`, 503 only for `deny`.
///
/// B, idle, notices by its probe. Then Redis comes back (SIGCONT, or a
/// restart on the same port): both nodes report it up, a fresh user's limit is shared by A and B again (5
/// of 10 admitted), and so is dedupe; for `deny`, the update refused during
/// the outage is processed when redelivered.
fn outage(mode: &'static str, how: Outage) {
    let mut redis = RedisServer::start();
    let fake = FakeApi::start();
    let ai = RecordingAssistant::start();
    let opts =
        Opts::new(redis.url(), mode, &format!("{OUTAGE_TIMEOUT_MS}ms"), 5).recording(ai.port, "5s");
    let nodes = start_nodes((0..2).map(|_| opts.setup(&fake.base())).collect());
    let (a, b) = (&nodes[0], &nodes[1]);
    let tokens: Vec<String> = ["base", "out", "ctx", "conf", "back", "again"]
        .iter()
        .map(|s| a.gw.token(s, &[]))
        .collect();
    let [base, out, ctx, conf, back, again] = &tokens[..] else {
        unreachable!()
    };
    let forwarded = |text: &str| {
        ai.envelopes()
            .iter()
            .filter(|e| e.content.as_ref().unwrap().text == text)
            .count()
    };
    let tag = format!("{mode}/{how:?}");
    let runtime = rt();

    // Redis up: connected, ready, and what requests cost.
    for n in &nodes {
        n.wait_shared_up(1.0, Duration::from_secs(10));
        assert_eq!(n.wait_ready_shared("up"), 200);
    }
    let (baseline_api, baseline_tg) = runtime.block_on(async {
        a.api(base, "warm-up").await.reply(); // the TLS handshake
        let mut api = Duration::ZERO;
        for i in 0..3 {
            let r = a.api(base, &format!("b{i}")).await;
            r.reply();
            api = api.max(r.took);
        }
        let mut tg_up = Duration::ZERO;
        for i in 0..2 {
            let r = a.telegram(&update(7_400_001 + i, 5001 + i, "up")).await;
            assert_eq!(r.tg_text(), "echo: up (turn 1)");
            tg_up = tg_up.max(r.took);
        }
        (api, tg_up)
    });

    match how {
        Outage::Pause => redis.pause(),
        Outage::Kill => redis.kill(),
    }
    let timeout = Duration::from_millis(OUTAGE_TIMEOUT_MS);
    let mut worst_api = Duration::ZERO;
    let mut worst_tg = Duration::ZERO;
    let refused = update(7_400_100, 5100, "during the outage");
    runtime.block_on(async {
        // A webhook first: the first request to find Redis gone is a claim.
        let r = a.telegram(&refused).await;
        worst_tg = worst_tg.max(r.took);
        match mode {
            "deny" => {
                r.assert_retry_later();
                assert_eq!(forwarded("during the outage"), 0);
            }
            _ => {
                assert_eq!(r.tg_text(), "echo: during the outage (turn 1)", "{tag}");
                assert_eq!(forwarded("during the outage"), 1);
            }
        }
        if mode == "local" {
            // This node's own dedupe still knows it.
            let again = a.telegram(&refused).await;
            worst_tg = worst_tg.max(again.took);
            again.assert_duplicate_ack();
            assert_eq!(forwarded("during the outage"), 1);
        }

        // The limit: 8 messages of one user at one node.
        let mut statuses = Vec::new();
        for i in 0..8 {
            let r = a.api(out, &format!("o{i}")).await;
            worst_api = worst_api.max(r.took);
            match mode {
                "deny" => r.assert_retry_later(),
                "local" if i >= 5 => {
                    assert_eq!(r.status, 429, "{tag}: request {i}: {r:?}");
                    assert_eq!(r.body["error"], "rate_limited");
                }
                _ => assert_eq!(r.reply(), format!("echo: o{i} (turn {})", i + 1), "{tag}"),
            }
            statuses.push(r.status);
        }
        println!("{tag}: statuses during the outage {statuses:?}");

        // Context and confirmations from the node's own store.
        if mode != "deny" {
            for (i, text) in ["c1", "c2"].iter().enumerate() {
                let r = a.api(ctx, text).await;
                worst_api = worst_api.max(r.took);
                assert_eq!(r.reply(), format!("echo: {text} (turn {})", i + 1), "{tag}");
            }
            let hold = a.api(conf, "/reboot now").await;
            worst_api = worst_api.max(hold.took);
            let code = held_code(&hold);
            let release = a.api(conf, &code).await;
            worst_api = worst_api.max(release.took);
            assert_eq!(release.reply(), "echo: /reboot now (turn 1)", "{tag}");
        }
    });
    if mode == "deny" {
        let refusals = a.gw.wait_audits(9, |l| l["status"] == 503);
        assert_eq!(refusals.len(), 9, "{refusals:?}");
        assert!(
            refusals
                .iter()
                .all(|l| l["reason"] == "shared_state_unavailable"),
            "{tag}: {refusals:?}"
        );
    }
    println!(
        "{tag}: worst latency with Redis down: API {worst_api:?} (up: {baseline_api:?}), Telegram {worst_tg:?} (up: {baseline_tg:?}); timeout {timeout:?}"
    );
    assert!(
        worst_api <= baseline_api + timeout + OUTAGE_MARGIN,
        "{tag}: an API request took {worst_api:?} with Redis down, {baseline_api:?} with it up"
    );
    assert!(
        worst_tg <= baseline_tg + timeout + OUTAGE_MARGIN,
        "{tag}: a Telegram update took {worst_tg:?} with Redis down, {baseline_tg:?} with it up"
    );
    a.wait_shared_up(0.0, Duration::from_secs(5));
    assert!(a.failed_ops() >= 1.0, "{tag}: no failed operation counted");
    let ready = a.wait_ready_shared("down");
    assert_eq!(ready, if mode == "deny" { 503 } else { 200 }, "{tag}");
    // B had no traffic: its probe notices (within an interval and a
    // timeout). Waiting for it keeps this test about an outage both nodes
    // saw; `redis_restarted_within_a_probe_interval_is_used_at_once` is
    // about one they did not.
    b.wait_shared_up(0.0, Duration::from_secs(5));

    // Redis back: no gateway restart.
    let back_at = Instant::now();
    match how {
        Outage::Pause => redis.resume(),
        Outage::Kill => redis.restart(),
    }
    for n in &nodes {
        n.wait_shared_up(1.0, Duration::from_secs(15));
    }
    println!(
        "{tag}: both nodes report Redis up {:?} after it came back",
        back_at.elapsed()
    );
    assert_eq!(a.wait_ready_shared("up"), 200);
    runtime.block_on(async {
        // Limits are shared again: 10 messages alternating A and B, 5 admitted.
        let mut admitted = 0;
        for i in 0..10 {
            let node = if i % 2 == 0 { a } else { b };
            let r = node.api(back, &format!("k{i}")).await;
            match r.status {
                200 => admitted += 1,
                429 => {}
                _ => panic!(
                    "{tag}: request {i} after Redis came back (both nodes said \
                     moltgate_shared_up 1): {r:?}; its node's log:\n{}",
                    node_log(&node.gw)
                ),
            }
        }
        assert_eq!(
            admitted, 5,
            "{tag}: the limit is not shared after Redis came back"
        );
        // And dedupe.
        let u = update(7_400_200, 5200, "after");
        assert_eq!(a.telegram(&u).await.tg_text(), "echo: after (turn 1)");
        b.telegram(&u).await.assert_duplicate_ack();
        assert_eq!(forwarded("after"), 1);
        // And context.
        assert_eq!(a.api(again, "d1").await.reply(), "echo: d1 (turn 1)");
        assert_eq!(b.api(again, "d2").await.reply(), "echo: d2 (turn 2)");
        if mode == "deny" {
            // Refused during the outage (the platform was told to retry):
            // the redelivery is processed now.
            let r = b.telegram(&refused).await;
            assert!(
                r.status == 200 && r.body["text"] == "echo: during the outage (turn 1)",
                "{tag}: an update refused with 503 during the outage (the platform was told to \
                 retry) is not processed when redelivered after Redis came back: {r:?}; \
                 claims in Redis: {:?}",
                claims(&redis)
            );
            assert_eq!(forwarded("during the outage"), 1);
        }
    });
}

/// Redis killed and restarted on the same port faster than the probe
/// interval, while both nodes are idle: once both report
/// `moltgate_shared_up` 1, their next requests are shared at once. A fresh
/// user's 10 messages, alternating between the nodes, get 5 answers and 5
/// × 429, and never the 503 of `on_error: deny`.
#[test]
fn redis_restarted_within_a_probe_interval_is_used_at_once() {
    let mut redis = RedisServer::start();
    let fake = FakeApi::start();
    let opts = Opts::new(redis.url(), "deny", &format!("{OUTAGE_TIMEOUT_MS}ms"), 5);
    let nodes = start_nodes((0..2).map(|_| opts.setup(&fake.base())).collect());
    let (warm, quick) = (
        nodes[0].gw.token("warm", &[]),
        nodes[0].gw.token("quick", &[]),
    );
    let runtime = rt();
    for n in &nodes {
        n.wait_shared_up(1.0, Duration::from_secs(10));
    }
    // Both nodes hold a connection to this Redis.
    runtime.block_on(async {
        for (i, n) in nodes.iter().enumerate() {
            n.api(&warm, &format!("w{i}")).await.reply();
        }
    });
    let started = Instant::now();
    redis.kill();
    redis.restart();
    println!("Redis was down for {:?}", started.elapsed());
    for n in &nodes {
        n.wait_shared_up(1.0, Duration::from_secs(15));
    }
    let answers: Vec<Answer> = runtime.block_on(async {
        let mut out = Vec::new();
        for i in 0..10 {
            out.push(nodes[i % 2].api(&quick, &format!("q{i}")).await);
        }
        out
    });
    let statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
    let unavailable: Vec<(usize, &Answer)> = answers
        .iter()
        .enumerate()
        .filter(|(_, a)| a.status == 503)
        .collect();
    assert!(
        unavailable.is_empty(),
        "after Redis came back (both nodes said moltgate_shared_up 1), requests got 503 \
         (statuses {statuses:?}): {unavailable:?}; node logs:\n{}\n---\n{}",
        node_log(&nodes[0].gw),
        node_log(&nodes[1].gw)
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        5,
        "{statuses:?}"
    );
}

/// A node's log without its audit lines (what it said about Redis).
fn node_log(gw: &Gateway) -> String {
    gw.log_text()
        .lines()
        .filter(|l| !l.contains("moltgate::audit"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every dedupe claim in Redis (a string value `inflight:…`) with its PTTL.
fn claims(redis: &RedisServer) -> Vec<(String, String, String)> {
    redis
        .keys("*")
        .into_iter()
        .filter(|k| redis.command(&["TYPE", k]) == "string")
        .map(|k| {
            let v = redis.command(&["GET", &k]);
            let ttl = redis.command(&["PTTL", &k]);
            (k, v, ttl)
        })
        .filter(|(_, v, _)| v.starts_with("inflight:"))
        .collect()
}

// ---------------------------------------------------- node killed ----

/// A TCP listener that accepts connections and never answers: an AI node
/// that hangs before `accepted`.
struct SilentUpstream {
    port: u16,
}

impl SilentUpstream {
    fn start() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for conn in listener.incoming().map_while(Result::ok) {
                held.push(conn);
            }
        });
        SilentUpstream { port }
    }
}

/// Node 1 claims an update and hangs on a silent AI node; it is killed
/// (SIGKILL) before it can commit or release. The redelivery at node 2 gets
/// 503 with Retry-After while the claim holds, and is processed (once) when
/// `claim_ttl: 2s` has passed.
#[test]
fn node_killed_between_claim_and_commit() {
    let redis = RedisServer::start();
    let fake = FakeApi::start();
    let ai = RecordingAssistant::start();
    let silent = SilentUpstream::start();
    let mut hung = Opts::new(redis.url(), "local", ROOMY_TIMEOUT, 100);
    // The call may last at most 1.9 s (claim_ttl must outlast it), and the
    // silent node must stay healthy meanwhile.
    hung.assistant = format!(
        "  assistant: {{ kind: grpc, nodes: [\"127.0.0.1:{}\"], timeout: 1900ms, accept_timeout: 1900ms, health_check: {{ interval: 60s, timeout: 30s }} }}\n",
        silent.port
    );
    hung.claim_ttl = Some("2s");
    let mut working =
        Opts::new(redis.url(), "local", ROOMY_TIMEOUT, 100).recording(ai.port, "1500ms");
    working.claim_ttl = Some("2s");
    let mut nodes = start_nodes(vec![hung.setup(&fake.base()), working.setup(&fake.base())]);
    let u = update(7_500_001, 5300, "survive the crash");
    let runtime = rt();

    // Node 1 takes the claim and hangs.
    let http = nodes[0].http.clone();
    let url = nodes[0].gw.url("/hooks/telegram");
    let signed = tg::seal(&u);
    let pending = runtime.spawn(async move {
        let mut req = http.post(url).body(signed.body);
        for (k, v) in &signed.headers {
            req = req.header(*k, v.as_str());
        }
        req.send().await.map(|r| r.status().as_u16())
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    let claim = loop {
        if let Some((k, _, _)) = claims(&redis).into_iter().next() {
            break k;
        }
        assert!(
            Instant::now() < deadline,
            "node 1 never claimed the update in Redis; keys {:?}; logs:\n{}",
            redis.keys("*"),
            nodes[0].gw.log_text()
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    let claimed_by = Instant::now();
    let pttl: i64 = redis.command(&["PTTL", &claim]).parse().unwrap();
    assert!(
        (1..=2000).contains(&pttl),
        "the claim {claim} should expire within claim_ttl (2 s): PTTL {pttl}"
    );
    nodes[0].gw.signal("KILL");
    assert!(
        redis.command(&["GET", &claim]).starts_with("inflight:"),
        "node 1 settled the claim before it was killed; the test proves nothing"
    );
    let crashed = runtime.block_on(pending).unwrap();
    assert!(crashed.is_err(), "the killed node answered: {crashed:?}");

    let n2 = &nodes[1];
    let (processed_after, retries) = runtime.block_on(async {
        let first = n2.telegram(&u).await;
        first.assert_retry_later();
        let mut retries = 1;
        let deadline = claimed_by + Duration::from_secs(10);
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let r = n2.telegram(&u).await;
            if r.status == 200 {
                assert_eq!(r.tg_text(), "echo: survive the crash (turn 1)");
                break (claimed_by.elapsed(), retries);
            }
            r.assert_retry_later();
            retries += 1;
            assert!(
                Instant::now() < deadline,
                "the redelivery was never processed; claim {claim}: {:?}",
                redis.query(&["GET", &claim])
            );
        }
    });
    println!(
        "the redelivery was processed {processed_after:?} after the claim was seen ({retries} answers 503 before)"
    );
    assert!(
        processed_after >= Duration::from_millis(1500),
        "processed {processed_after:?} after the claim, before claim_ttl (2 s) passed"
    );
    n2.gw.wait_audit(|a| a["decision"] == "duplicate_in_flight");
    assert_eq!(ai.envelopes().len(), 1, "the assistant got it once");
    runtime.block_on(async { n2.telegram(&u).await.assert_duplicate_ack() });
    assert_eq!(ai.envelopes().len(), 1);
    nodes.clear();
}

// ---------------------------------------------------------- unix socket ----

/// One node reaches Redis over its unix socket, the other over TCP: they
/// share the limit (5 of 10 admitted) and the conversation.
#[test]
fn unix_socket_url_shares_with_a_tcp_node() {
    let redis = RedisServer::start();
    let fake = FakeApi::start();
    let nodes = start_nodes(vec![
        Opts::new(redis.unix_url(), "local", ROOMY_TIMEOUT, 5).setup(&fake.base()),
        Opts::new(redis.url(), "local", ROOMY_TIMEOUT, 5).setup(&fake.base()),
    ]);
    let (limited, talker) = (
        nodes[0].gw.token("sockets", &[]),
        nodes[0].gw.token("chat", &[]),
    );
    for n in &nodes {
        n.wait_shared_up(1.0, Duration::from_secs(10));
    }
    rt().block_on(async {
        let mut admitted = 0;
        for i in 0..10 {
            let r = nodes[i % 2].api(&limited, &format!("s{i}")).await;
            match r.status {
                200 => admitted += 1,
                429 => {}
                _ => panic!("request {i}: {r:?}"),
            }
        }
        assert_eq!(
            admitted, 5,
            "the unix-socket node and the TCP node share the limit"
        );
        assert_eq!(
            nodes[0].api(&talker, "x1").await.reply(),
            "echo: x1 (turn 1)"
        );
        assert_eq!(
            nodes[1].api(&talker, "x2").await.reply(),
            "echo: x2 (turn 2)"
        );
        assert_eq!(
            nodes[0].api(&talker, "x3").await.reply(),
            "echo: x3 (turn 3)"
        );
    });
    let clients = redis.command(&["CLIENT", "LIST"]);
    assert!(
        clients
            .lines()
            .any(|l| l.contains("addr=/") || l.contains("flags=U")),
        "no client on the unix socket:\n{clients}"
    );
    assert_keys_prefixed(&redis);
}
