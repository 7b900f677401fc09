//! Unit tests of `writeback`.

use super::*;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};

use http::Method;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A request as the fake server saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A scripted answer.
#[derive(Clone)]
struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: String,
    delay: Duration,
}

fn reply(status: u16, body: Value) -> Reply {
    Reply {
        status,
        headers: Vec::new(),
        body: body.to_string(),
        delay: Duration::ZERO,
    }
}

type Handler = Arc<dyn Fn(&Seen) -> Reply + Send + Sync>;

/// A tiny HTTP/1.1 server: one request per connection, answered by a
/// handler, every request recorded.
struct Fake {
    base: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Fake {
    async fn start(handler: Handler) -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let handler = handler.clone();
                let record = record.clone();
                tokio::spawn(async move {
                    let Some(req) = read_request(&mut stream).await else {
                        return;
                    };
                    record.lock().unwrap().push(req.clone());
                    let r = handler(&req);
                    tokio::time::sleep(r.delay).await;
                    let mut head = format!(
                            "HTTP/1.1 {} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
                            r.status,
                            r.body.len()
                        );
                    for (k, v) in &r.headers {
                        head.push_str(&format!("{k}: {v}\r\n"));
                    }
                    head.push_str("\r\n");
                    let _ = stream.write_all(head.as_bytes()).await;
                    let _ = stream.write_all(r.body.as_bytes()).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        Fake { base, seen }
    }

    /// Answers with `replies` in order, repeating the last one.
    async fn scripted(replies: Vec<Reply>) -> Fake {
        let queue = Mutex::new(VecDeque::from(replies));
        Fake::start(Arc::new(move |_| {
            let mut q = queue.lock().unwrap();
            if q.len() > 1 {
                q.pop_front().unwrap()
            } else {
                q.front().cloned().unwrap()
            }
        }))
        .await
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn hits(&self, prefix: &str) -> usize {
        self.seen()
            .iter()
            .filter(|s| s.target.starts_with(prefix))
            .count()
    }
}

async fn read_request(stream: &mut tokio::net::TcpStream) -> Option<Seen> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_string();
    let target = first.next()?.to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < len {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Some(Seen {
        method,
        target,
        headers,
        body,
    })
}

fn fast() -> WritebackSettings {
    WritebackSettings {
        attempt_timeout: Duration::from_secs(2),
        max_attempts: 3,
        base_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(50),
        max_retry_after: Duration::from_secs(2),
        use_env_proxy: false,
    }
}

fn stage(settings: WritebackSettings) -> (Writeback, Metrics) {
    let metrics = Metrics::new();
    (Writeback::new(metrics.clone(), settings), metrics)
}

fn counted(metrics: &Metrics, platform: &str, result: &str) -> u64 {
    metrics
        .writebacks
        .with_label_values(&[platform, result])
        .get()
}

fn slack_call(base: &str) -> ApiCall {
    let mut call = ApiCall::post_json(
        format!("{base}/api/chat.postMessage"),
        &json!({"channel": "C1", "text": "hi"}),
    );
    call.headers
        .push(("authorization".into(), "Bearer xoxb-test".into()));
    call.success = Some(("/ok", Value::Bool(true)));
    call
}

fn token_source(base: &str, key: &str, placement: TokenPlacement) -> TokenSource {
    let mut fetch = ApiCall::post_json(
        format!("{base}/auth/token"),
        &json!({"app_id": "a", "app_secret": "s"}),
    );
    fetch.success = Some(("/code", json!(0)));
    TokenSource {
        cache_key: key.into(),
        fetch,
        token_pointer: "/tenant_access_token",
        expires_in_pointer: "/expire",
        placement,
    }
}

fn authed_call(base: &str, key: &str, placement: TokenPlacement) -> ApiCall {
    let mut call = ApiCall::post_json(format!("{base}/im/reply?x=1"), &json!({"text": "hi"}));
    call.auth = Some(Box::new(token_source(base, key, placement)));
    call.success = Some(("/code", json!(0)));
    call
}

/// Serves tokens `t1`, `t2`, … from `/auth/token` (after `delay`) and
/// answers the API with `api`.
async fn token_server(delay: Duration, api: Handler) -> Fake {
    let n = Arc::new(AtomicUsize::new(0));
    Fake::start(Arc::new(move |req: &Seen| {
        if req.target.starts_with("/auth/token") {
            let i = n.fetch_add(1, Ordering::SeqCst) + 1;
            Reply {
                delay,
                ..reply(
                    200,
                    json!({"code": 0, "tenant_access_token": format!("t{i}"), "expire": 7200}),
                )
            }
        } else {
            api(req)
        }
    }))
    .await
}

#[tokio::test]
async fn success_sends_once_and_counts() {
    let fake = Fake::scripted(vec![reply(200, json!({"ok": true}))]).await;
    let (wb, metrics) = stage(fast());
    wb.send("slack", vec![slack_call(&fake.base)])
        .await
        .unwrap();
    let seen = fake.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, "POST");
    assert_eq!(seen[0].target, "/api/chat.postMessage");
    assert_eq!(seen[0].header("authorization"), Some("Bearer xoxb-test"));
    let body: Value = serde_json::from_slice(&seen[0].body).unwrap();
    assert_eq!(body["text"], "hi");
    assert_eq!(counted(&metrics, "slack", "sent"), 1);
    assert_eq!(counted(&metrics, "slack", "failed"), 0);
}

#[tokio::test]
async fn calls_run_in_order() {
    let fake = Fake::scripted(vec![reply(200, json!({"ok": true}))]).await;
    let (wb, metrics) = stage(fast());
    let calls = (1..=3)
        .map(|i| ApiCall::post_json(format!("{}/part/{i}", fake.base), &json!({})))
        .collect();
    wb.send("telegram", calls).await.unwrap();
    let targets: Vec<String> = fake.seen().into_iter().map(|s| s.target).collect();
    assert_eq!(targets, ["/part/1", "/part/2", "/part/3"]);
    assert_eq!(counted(&metrics, "telegram", "sent"), 1);
}

#[tokio::test]
async fn server_error_is_retried() {
    let fake = Fake::scripted(vec![reply(500, json!({})), reply(200, json!({"ok": true}))]).await;
    let (wb, metrics) = stage(fast());
    wb.send("slack", vec![slack_call(&fake.base)])
        .await
        .unwrap();
    assert_eq!(fake.seen().len(), 2);
    assert_eq!(counted(&metrics, "slack", "sent"), 1);
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let mut limited = reply(429, json!({"ok": false}));
    limited.headers.push(("retry-after", "1".into()));
    let fake = Fake::scripted(vec![limited, reply(200, json!({"ok": true}))]).await;
    let (wb, _) = stage(fast());
    let start = Instant::now();
    wb.send("slack", vec![slack_call(&fake.base)])
        .await
        .unwrap();
    assert!(start.elapsed() >= Duration::from_secs(1));
    assert_eq!(fake.seen().len(), 2);
}

#[tokio::test]
async fn retry_after_in_telegram_body_is_honoured() {
    let fake = Fake::scripted(vec![
        reply(429, json!({"ok": false, "parameters": {"retry_after": 1}})),
        reply(200, json!({"ok": true})),
    ])
    .await;
    let (wb, _) = stage(fast());
    let start = Instant::now();
    wb.send("telegram", vec![slack_call(&fake.base)])
        .await
        .unwrap();
    assert!(start.elapsed() >= Duration::from_secs(1));
}

#[tokio::test]
async fn retry_after_beyond_the_limit_gives_up() {
    let mut limited = reply(429, json!({}));
    limited.headers.push(("retry-after", "3600".into()));
    let fake = Fake::scripted(vec![limited]).await;
    let (wb, _) = stage(fast());
    let err = wb
        .send("slack", vec![slack_call(&fake.base)])
        .await
        .unwrap_err();
    assert_eq!((err.attempts, err.last_status), (1, Some(429)));
    assert_eq!(fake.seen().len(), 1);
}

#[tokio::test]
async fn client_error_is_not_retried() {
    let fake = Fake::scripted(vec![reply(400, json!({"ok": false}))]).await;
    let (wb, metrics) = stage(fast());
    let err = wb
        .send("slack", vec![slack_call(&fake.base)])
        .await
        .unwrap_err();
    assert_eq!(fake.seen().len(), 1);
    assert_eq!(err.kind, FailureKind::Status);
    assert_eq!((err.attempts, err.last_status), (1, Some(400)));
    assert_eq!(counted(&metrics, "slack", "failed"), 1);
}

#[tokio::test]
async fn attempts_are_bounded_then_fail() {
    let fake = Fake::scripted(vec![reply(503, json!({}))]).await;
    let (wb, metrics) = stage(fast());
    let calls = vec![
        ApiCall::post_json(format!("{}/first", fake.base), &json!({})),
        slack_call(&fake.base),
        slack_call(&fake.base),
    ];
    let err = wb.send("slack", calls).await.unwrap_err();
    // The first call already fails, so the rest are never sent.
    assert_eq!(fake.seen().len(), 3);
    assert_eq!(err.call, 0);
    assert_eq!(err.attempts, 3);
    assert_eq!(err.last_status, Some(503));
    assert_eq!(counted(&metrics, "slack", "failed"), 1);
    assert_eq!(counted(&metrics, "slack", "sent"), 0);
}

#[tokio::test]
async fn connection_refused_is_retried_then_fails() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let (wb, metrics) = stage(fast());
    let err = wb
        .send("slack", vec![slack_call(&format!("http://{addr}"))])
        .await
        .unwrap_err();
    assert_eq!(err.kind, FailureKind::Connect);
    assert_eq!((err.attempts, err.last_status), (3, None));
    assert_eq!(counted(&metrics, "slack", "failed"), 1);
}

#[tokio::test]
async fn slow_answer_times_out() {
    let fake = Fake::scripted(vec![Reply {
        delay: Duration::from_secs(3),
        ..reply(200, json!({"ok": true}))
    }])
    .await;
    let (wb, _) = stage(WritebackSettings {
        attempt_timeout: Duration::from_millis(200),
        max_attempts: 2,
        ..fast()
    });
    let start = Instant::now();
    let err = wb
        .send("slack", vec![slack_call(&fake.base)])
        .await
        .unwrap_err();
    assert_eq!(err.kind, FailureKind::Timeout);
    assert_eq!(err.attempts, 2);
    assert!(start.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn body_level_failure_is_a_failure() {
    let fake = Fake::scripted(vec![reply(
        200,
        json!({"ok": false, "error": "channel_not_found"}),
    )])
    .await;
    let (wb, metrics) = stage(fast());
    let err = wb
        .send("slack", vec![slack_call(&fake.base)])
        .await
        .unwrap_err();
    assert_eq!(err.kind, FailureKind::Rejected);
    assert_eq!((err.attempts, err.last_status), (1, Some(200)));
    assert_eq!(fake.seen().len(), 1);
    assert_eq!(counted(&metrics, "slack", "failed"), 1);
}

#[tokio::test]
async fn bearer_token_is_fetched_once_and_cached() {
    let fake = token_server(Duration::ZERO, Arc::new(|_| reply(200, json!({"code": 0})))).await;
    let (wb, metrics) = stage(fast());
    for _ in 0..2 {
        let call = authed_call(&fake.base, "feishu:a", TokenPlacement::BearerHeader);
        wb.send("feishu", vec![call]).await.unwrap();
    }
    assert_eq!(fake.hits("/auth/token"), 1);
    let api: Vec<Seen> = fake
        .seen()
        .into_iter()
        .filter(|s| s.target.starts_with("/im/reply"))
        .collect();
    assert_eq!(api.len(), 2);
    for s in &api {
        assert_eq!(s.header("authorization"), Some("Bearer t1"));
        assert_eq!(s.target, "/im/reply?x=1");
    }
    assert_eq!(counted(&metrics, "feishu", "sent"), 2);
}

#[tokio::test]
async fn query_token_is_appended_and_cached() {
    let fake = token_server(Duration::ZERO, Arc::new(|_| reply(200, json!({"code": 0})))).await;
    let (wb, _) = stage(fast());
    let mut first = authed_call(
        &fake.base,
        "wecom:a",
        TokenPlacement::QueryParam("access_token"),
    );
    wb.send("wecom", vec![first.clone()]).await.unwrap();
    first.url = format!("{}/cgi-bin/message/send", fake.base);
    wb.send("wecom", vec![first]).await.unwrap();
    assert_eq!(fake.hits("/auth/token"), 1);
    let targets: Vec<String> = fake
        .seen()
        .into_iter()
        .filter(|s| !s.target.starts_with("/auth/token"))
        .map(|s| s.target)
        .collect();
    assert_eq!(
        targets,
        [
            "/im/reply?x=1&access_token=t1",
            "/cgi-bin/message/send?access_token=t1"
        ]
    );
    assert!(fake
        .seen()
        .iter()
        .all(|s| s.header("authorization").is_none()));
}

#[tokio::test]
async fn expired_token_is_refetched_once() {
    // The first token is "expired"; the second works.
    let fake = token_server(
        Duration::ZERO,
        Arc::new(|req: &Seen| {
            if req.header("authorization") == Some("Bearer t1") {
                reply(400, json!({"code": 99_991_663, "msg": "token expired"}))
            } else {
                reply(200, json!({"code": 0}))
            }
        }),
    )
    .await;
    let (wb, metrics) = stage(fast());
    let call = authed_call(&fake.base, "feishu:b", TokenPlacement::BearerHeader);
    wb.send("feishu", vec![call.clone()]).await.unwrap();
    assert_eq!(fake.hits("/auth/token"), 2);
    // The fresh token is cached for the next send.
    wb.send("feishu", vec![call]).await.unwrap();
    assert_eq!(fake.hits("/auth/token"), 2);
    assert_eq!(counted(&metrics, "feishu", "sent"), 2);
}

#[tokio::test]
async fn token_that_stays_expired_fails_after_one_refetch() {
    let fake = token_server(
        Duration::ZERO,
        Arc::new(|_| reply(200, json!({"errcode": 42_001, "errmsg": "expired"}))),
    )
    .await;
    let (wb, metrics) = stage(fast());
    let mut call = authed_call(
        &fake.base,
        "wecom:b",
        TokenPlacement::QueryParam("access_token"),
    );
    call.success = Some(("/errcode", json!(0)));
    let err = wb.send("wecom", vec![call]).await.unwrap_err();
    assert_eq!(err.kind, FailureKind::Rejected);
    assert_eq!(fake.hits("/auth/token"), 2);
    assert_eq!(fake.hits("/im/reply"), 2);
    assert_eq!(counted(&metrics, "wecom", "failed"), 1);
}

#[tokio::test]
async fn concurrent_sends_fetch_the_token_once() {
    let fake = token_server(
        Duration::from_millis(300),
        Arc::new(|_| reply(200, json!({"code": 0}))),
    )
    .await;
    let (wb, metrics) = stage(fast());
    let sends = (0..8).map(|_| {
        let call = authed_call(&fake.base, "feishu:c", TokenPlacement::BearerHeader);
        let wb = wb.clone();
        async move { wb.send("feishu", vec![call]).await }
    });
    for r in futures::future::join_all(sends).await {
        r.unwrap();
    }
    assert_eq!(fake.hits("/auth/token"), 1);
    assert_eq!(fake.hits("/im/reply"), 8);
    assert_eq!(counted(&metrics, "feishu", "sent"), 8);
}

#[tokio::test]
async fn failed_token_fetch_fails_the_send() {
    let fake = Fake::scripted(vec![reply(200, json!({"code": 10003, "msg": "bad app"}))]).await;
    let (wb, metrics) = stage(fast());
    let call = authed_call(&fake.base, "feishu:d", TokenPlacement::BearerHeader);
    let err = wb.send("feishu", vec![call]).await.unwrap_err();
    assert_eq!(err.kind, FailureKind::Token);
    assert_eq!(err.url, format!("{}/auth/token", fake.base));
    assert_eq!(fake.seen().len(), 1);
    assert_eq!(counted(&metrics, "feishu", "failed"), 1);
}

#[tokio::test]
async fn spawn_send_runs_in_the_background() {
    let fake = Fake::scripted(vec![reply(200, json!({"ok": true}))]).await;
    let (wb, metrics) = stage(fast());
    let handle = tokio::runtime::Handle::current();
    wb.spawn_send(&handle, "slack", vec![slack_call(&fake.base)])
        .await
        .unwrap();
    assert_eq!(counted(&metrics, "slack", "sent"), 1);
}

#[test]
fn redact_url_keeps_only_public_parts() {
    let cases = [
        (
            "https://api.telegram.org/bot123456:ABC-def_ghi/sendMessage",
            "https://api.telegram.org/…",
        ),
        (
            "https://discord.com/api/v10/webhooks/112233445566/aW50ZXJhY3Rpb24tdG9rZW4",
            "https://discord.com/api/v10/webhooks/…",
        ),
        (
            "https://qyapi.weixin.qq.com/cgi-bin/gettoken?corpid=ww1&corpsecret=s3cr3t",
            "https://qyapi.weixin.qq.com/cgi-bin/gettoken",
        ),
        (
            "https://open.feishu.cn/open-apis/im/v1/messages/om_5f1e2d/reply",
            "https://open.feishu.cn/open-apis/im/v1/messages/…",
        ),
        (
            "https://slack.com/api/chat.postMessage",
            "https://slack.com/api/chat.postMessage",
        ),
        (
            "http://user:pw@127.0.0.1:8080/robot/send?access_token=abc#frag",
            "http://127.0.0.1:8080/robot/send",
        ),
        ("not a url", "<invalid url>"),
    ];
    for (url, want) in cases {
        assert_eq!(redact_url(url), want, "{url}");
    }
}

#[test]
fn query_params_are_appended_correctly() {
    assert_eq!(
        with_query_param("http://h/p", "t", "a b"),
        "http://h/p?t=a%20b"
    );
    assert_eq!(
        with_query_param("http://h/p?x=1", "t", "v"),
        "http://h/p?x=1&t=v"
    );
    assert_eq!(with_query_param("http://h/p?", "t", "v"), "http://h/p?t=v");
    assert_eq!(
        with_query_param("http://h/p#f", "t", "v"),
        "http://h/p?t=v#f"
    );
}

#[test]
fn backoff_grows_and_is_capped() {
    let s = WritebackSettings::default();
    let first = backoff(&s, 1);
    assert!(first >= Duration::from_millis(100) && first <= Duration::from_millis(200));
    assert!(backoff(&s, 30) <= s.max_backoff);
}

#[tokio::test]
async fn get_calls_keep_their_method() {
    // WeCom fetches its token with a bodiless GET.
    let fake = Fake::scripted(vec![reply(200, json!({"errcode": 0}))]).await;
    let (wb, _) = stage(fast());
    let call = ApiCall {
        method: Method::GET,
        url: format!("{}/cgi-bin/gettoken?corpid=c", fake.base),
        headers: Vec::new(),
        body: Bytes::new(),
        auth: None,
        success: Some(("/errcode", json!(0))),
    };
    wb.send("wecom", vec![call]).await.unwrap();
    let seen = fake.seen();
    assert_eq!(seen[0].method, "GET");
    assert_eq!(seen[0].target, "/cgi-bin/gettoken?corpid=c");
    assert!(seen[0].body.is_empty());
}
