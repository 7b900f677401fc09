//! Slowloris (issue 10 item 10): a TLS handshake and a request header each
//! have a total deadline, and connections are capped in total and per client
//! address. Every test runs the real gateway over real TLS; the clients come
//! from several loopback addresses (127.0.0.0/8) to be several clients.

mod common;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use common::{metric, raw_tls, rt, tcp_from, tls_over, Setup, SECURITY_POLICY};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

const A: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const B: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);
const C: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 4);

/// How long after `started` the peer closed `stream` (EOF or an error), or
/// `None` if it was still open after `limit`.
async fn closed_after(
    stream: &mut (impl AsyncRead + Unpin),
    started: Instant,
    limit: Duration,
) -> Option<Duration> {
    let mut buf = [0u8; 1024];
    let deadline = started + limit;
    loop {
        match tokio::time::timeout_at(deadline.into(), stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

fn message(text: &str) -> String {
    serde_json::json!({"platform":"test","sender":{"id":"x","name":"Alice"},"content":{"text":text,"attachments":[]},"timestamp":1700000000,"context":{"room_id":"r1","thread_id":"t1","chat_type":"private"}}).to_string()
}

/// A connection that never starts TLS, one that trickles its header a byte
/// at a time (each read is quick, the header never completes) and an idle
/// keep-alive connection are each closed at their 1 s deadline; a request
/// whose body takes longer than that is not.
#[test]
fn stalled_handshakes_and_headers_are_cut_at_their_deadlines() {
    let gw = Setup {
        extra: "limits: { handshake_timeout: 1s, header_timeout: 1s, body_timeout: 8s }\n".into(),
        ..Default::default()
    }
    .start();
    let token = gw.token("alice", &[]);
    rt().block_on(async {
        let started = Instant::now();
        let mut silent = tcp_from(&gw, A).await;
        let (mut trickle_read, mut trickle_write) = tokio::io::split(raw_tls(&gw).await);
        let trickler = tokio::spawn(async move {
            for b in b"POST /v1/messages HTTP/1.1\r\nHost: localhost\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".iter() {
                if trickle_write.write_all(&[*b]).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        let silent_closed = closed_after(&mut silent, started, Duration::from_secs(10)).await;
        let trickle_closed = closed_after(&mut trickle_read, started, Duration::from_secs(10)).await;
        trickler.abort();
        for (what, closed) in [("silent", silent_closed), ("trickled", trickle_closed)] {
            let after = closed.unwrap_or_else(|| panic!("the {what} connection was still open after 10 s"));
            assert!(after >= Duration::from_millis(900), "{what} closed too early: {after:?}");
        }

        // Keep-alive: one answered request, then silence.
        let mut idle = raw_tls(&gw).await;
        let body = message("hello");
        let head = format!("POST /v1/messages HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n", body.len());
        idle.write_all(head.as_bytes()).await.unwrap();
        idle.write_all(body.as_bytes()).await.unwrap();
        let mut answer = vec![0u8; 4096];
        let n = idle.read(&mut answer).await.unwrap();
        assert!(answer[..n].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&answer[..n]));
        let answered = Instant::now();
        let after = closed_after(&mut idle, answered, Duration::from_secs(10)).await;
        assert!(after.is_some_and(|d| d >= Duration::from_millis(900)), "idle keep-alive: {after:?}");

        // A request in flight has no header deadline: its body trickles for
        // 2.5 s (well inside body_timeout) and it is answered.
        let mut slow = raw_tls(&gw).await;
        slow.write_all(head.as_bytes()).await.unwrap();
        for chunk in body.as_bytes().chunks(body.len() / 5 + 1) {
            tokio::time::sleep(Duration::from_millis(500)).await;
            slow.write_all(chunk).await.unwrap();
        }
        let n = slow.read(&mut answer).await.unwrap();
        assert!(answer[..n].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&answer[..n]));
    });
    let m = gw.metrics();
    let cut = |phase| metric(&m, "moltgate_connections_cut_total", &[("phase", phase)]);
    assert!(cut("handshake_timeout") >= 1.0, "{m}");
    assert!(cut("header_timeout") >= 2.0, "{m}");
    let line = gw.wait_audit(|l| l["decision"] == "cut" && l["reason"] == "handshake_timeout");
    assert_eq!(line["client_ip"], A.to_string());
    // Request lines carry the address the IP policy judged, too.
    let line = gw.wait_audit(|l| l["route"] == "/v1/messages");
    assert_eq!(line["client_ip"], "127.0.0.1");
}

/// The connection past `max_connections_per_ip` from one address, and the
/// one past `max_connections` in total, are closed before the TLS handshake;
/// closing one frees its slot. A trusted proxy is not held to the
/// per-address cap.
#[test]
fn connection_caps_refuse_the_excess_per_address_and_in_total() {
    let gw = Setup {
        extra: "limits: { max_connections: 8, max_connections_per_ip: 3 }\n".into(),
        policies: vec![
            (
                "security_policy.yaml",
                format!("{SECURITY_POLICY}trusted_proxies: [127.0.0.4/32]\n"),
            ),
            ("abac.yaml", common::ALLOW_ALL_ABAC.into()),
        ],
        ..Default::default()
    }
    .start();
    rt().block_on(async {
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(
                tls_over(&gw, tcp_from(&gw, A).await)
                    .await
                    .expect("under the per-address cap"),
            );
        }
        let refused = tls_over(&gw, tcp_from(&gw, A).await).await;
        assert!(
            refused.is_err(),
            "the 4th connection from {A} must be refused"
        );
        // The trusted proxy holds 5, past the per-address cap: 8 in total.
        for _ in 0..5 {
            held.push(
                tls_over(&gw, tcp_from(&gw, C).await)
                    .await
                    .expect("a trusted proxy is exempt"),
            );
        }
        let refused = tls_over(&gw, tcp_from(&gw, B).await).await;
        assert!(
            refused.is_err(),
            "the 9th connection in total must be refused"
        );

        // Closing one of A's frees its slot once the gateway sees the close.
        held.remove(0).shutdown().await.ok();
        let deadline = Instant::now() + Duration::from_secs(10);
        while metric(&gw.metrics(), "moltgate_connections_open", &[]) > 7.0 {
            assert!(
                Instant::now() < deadline,
                "the closed connection was never released"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        held.push(
            tls_over(&gw, tcp_from(&gw, A).await)
                .await
                .expect("a freed slot is reusable"),
        );
    });
    let m = gw.metrics();
    let refused = |limit| {
        metric(
            &m,
            "moltgate_connections_refused_total",
            &[("limit", limit)],
        )
    };
    assert_eq!(refused("max_connections_per_ip"), 1.0, "{m}");
    assert_eq!(refused("max_connections"), 1.0, "{m}");
    let line = gw.wait_audit(|l| l["decision"] == "refused" && l["reason"] == "max_connections");
    assert_eq!(line["client_ip"], B.to_string());
}

/// 300 stalled connections from three addresses (silent before TLS, idle
/// after the handshake, and stuck mid-header) do not stop a normal client:
/// its requests are all answered while the stalled ones are still held.
/// (How much they delay it is measured in `benches/load/run.sh`.)
#[test]
fn stalled_connections_do_not_stop_a_normal_client() {
    let gw = Setup {
        extra: "limits: { handshake_timeout: 60s, header_timeout: 60s }\n".into(),
        ..Default::default()
    }
    .start();
    let token = gw.token("alice", &[]);
    rt().block_on(async {
        let mut silent = Vec::new();
        let mut idle = Vec::new();
        let mut partial = Vec::new();
        for _ in 0..100 {
            silent.push(tcp_from(&gw, A).await);
            idle.push(tls_over(&gw, tcp_from(&gw, B).await).await.unwrap());
            let mut s = tls_over(&gw, tcp_from(&gw, C).await).await.unwrap();
            s.write_all(b"POST /v1/messages HTTP/1.1\r\nHost: loc")
                .await
                .unwrap();
            partial.push(s);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while metric(&gw.metrics(), "moltgate_connections_open", &[]) < 300.0 {
            assert!(
                Instant::now() < deadline,
                "the stalled connections never registered"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let client = gw.client(true);
        for i in 0..20 {
            let resp = client
                .post(gw.url("/v1/messages"))
                .bearer_auth(&token)
                .header("content-type", "application/json")
                .body(message(&format!("normal {i}")))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
        }
        assert!(metric(&gw.metrics(), "moltgate_connections_open", &[]) >= 300.0);
        drop((silent, idle, partial));
    });
}
