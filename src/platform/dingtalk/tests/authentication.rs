//! Who may use a signature: a robot sign's timestamp carries one body
//! (replays of a captured header pair with another body are refused), the
//! record of used timestamps is purged with the window, and every event
//! that fails to authenticate is refused alike, before any decryption.

use super::*;

fn robot_req<'a>(h: &'a HeaderMap, body: &'a [u8], now: SystemTime) -> WebhookRequest<'a> {
    WebhookRequest {
        method: &Method::POST,
        query: None,
        headers: h,
        body,
        now,
        bearer: None,
    }
}

fn signed_at(t: i64) -> HeaderMap {
    let ts = t.to_string();
    headers(&ts, &robot_sign("test_app_secret", &ts))
}

/// The robot sign covers only the timestamp. A signed request sent
/// again unchanged passes on (the dedupe stage answers it as a
/// duplicate of its msgId); the same sign with any other body (another
/// msgId, text or sender: a new message forged from a captured header
/// pair) is refused, for as long as the timestamp verifies.
#[test]
fn a_signed_timestamp_carries_one_body() {
    let a = robot();
    let t0 = 1_700_000_000_000i64;
    let h = signed_at(t0);
    let body = robot_body("text", "staff1").to_string();
    let message_id = |r: Result<Inbound, Rejection>| match r {
        Ok(Inbound::Message(m)) => m.message_id,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        message_id(a.receive(&robot_req(&h, body.as_bytes(), ms(t0)))),
        "msgABC=="
    );
    // The identical request, an hour later: the same message again, so
    // dedupe (which remembers msgABC== for a day) calls it a duplicate.
    let later = ms(t0 + 3_599_000);
    assert_eq!(
        message_id(a.receive(&robot_req(&h, body.as_bytes(), later))),
        "msgABC=="
    );
    let mut forged = Vec::new();
    let mut other_id = robot_body("text", "staff1");
    other_id["msgId"] = json!("msgNEW==");
    forged.push(other_id);
    let mut other_text = robot_body("text", "staff1");
    other_text["text"]["content"] = json!("transfer everything");
    forged.push(other_text);
    let mut other_sender = robot_body("text", "boss");
    other_sender["msgId"] = json!("msgBOSS==");
    forged.push(other_sender);
    let mut skip = robot_body("picture", "staff1");
    skip["msgId"] = json!("msgPIC==");
    forged.push(skip);
    for b in &forged {
        for now in [ms(t0), ms(t0 - 3_599_000), later] {
            let r = a
                .receive(&robot_req(&h, b.to_string().as_bytes(), now))
                .unwrap_err();
            assert_eq!(r, Rejection::Replayed("sign"), "{b}");
            assert_eq!(r.kind(), "replayed_signature");
            assert!(r.is_unauthenticated());
            // Nor can it be read or re-signed for a passthrough bot.
            let bytes = b.to_string();
            let req = robot_req(&h, bytes.as_bytes(), now);
            assert!(a.payload(&req).is_err());
            assert!(a.reseal_payload(&req, &Payload::Json(b.clone())).is_none());
        }
    }
    // Whitespace around the header values is the same pair.
    let padded = headers(
        &format!(" {t0} "),
        &format!(" {} ", robot_sign("test_app_secret", &t0.to_string())),
    );
    assert_eq!(
        a.receive(&robot_req(
            &padded,
            forged[0].to_string().as_bytes(),
            ms(t0)
        ))
        .unwrap_err(),
        Rejection::Replayed("sign")
    );
    // Past the window the pair is stale anyway.
    assert_eq!(
        a.receive(&robot_req(&h, body.as_bytes(), ms(t0 + 3_601_000)))
            .unwrap_err()
            .kind(),
        "stale_timestamp"
    );
    // A new signed timestamp carries a new message; clones of the
    // adapter (one route) share what was used.
    let b2 = forged[0].to_string();
    assert_eq!(
        message_id(a.receive(&robot_req(&signed_at(t0 + 1), b2.as_bytes(), ms(t0)))),
        "msgNEW=="
    );
    let clone = a.clone();
    assert_eq!(
        clone
            .receive(&robot_req(&h, b2.as_bytes(), ms(t0)))
            .unwrap_err(),
        Rejection::Replayed("sign")
    );
    // Another route (its own adapter) keeps its own record.
    assert!(robot()
        .receive(&robot_req(&h, b2.as_bytes(), ms(t0)))
        .is_ok());
}

/// A body that cannot be a callback does not claim the pair (so a
/// garbled copy cannot cost the genuine message its signature), and a
/// forged sign claims nothing.
#[test]
fn only_a_verified_callback_claims_its_timestamp() {
    let a = robot();
    let t0 = 1_700_000_000_000i64;
    let h = signed_at(t0);
    for junk in [&b"{not json"[..], b"[1,2]", b"\"text\""] {
        assert_eq!(
            a.receive(&robot_req(&h, junk, ms(t0))).unwrap_err().kind(),
            "malformed"
        );
    }
    let forged = headers(&t0.to_string(), "AAAA");
    let evil = robot_body("text", "mallory").to_string();
    assert!(a
        .receive(&robot_req(&forged, evil.as_bytes(), ms(t0)))
        .is_err());
    let body = robot_body("text", "staff1").to_string();
    assert!(a.receive(&robot_req(&h, body.as_bytes(), ms(t0))).is_ok());
}

/// Concurrent requests under one pair with different bodies: exactly
/// one is accepted.
#[test]
fn one_body_wins_a_race() {
    let a = robot();
    let t0 = 1_700_000_000_000i64;
    let h = signed_at(t0);
    let accepted: usize = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..16)
            .map(|i| {
                let (a, h) = (&a, &h);
                scope.spawn(move || {
                    let mut b = robot_body("text", "staff1");
                    b["msgId"] = json!(format!("msg{i}"));
                    let body = b.to_string();
                    usize::from(a.receive(&robot_req(h, body.as_bytes(), ms(t0))).is_ok())
                })
            })
            .collect();
        handles.into_iter().map(|j| j.join().unwrap()).sum()
    });
    assert_eq!(accepted, 1);
}

/// Used timestamps leave once they can no longer verify; the record
/// holds at most the genuine callbacks of the window.
#[test]
fn used_signs_are_purged_after_the_window() {
    let window = DEFAULT_REPLAY_WINDOW;
    let mut used = UsedSigns::default();
    let t0 = 1_700_000_000i64;
    for i in 0..2000 {
        assert!(used.accept(&format!("{}", t0 * 1000 + i), t0, b"b", t0, window));
    }
    assert!(!used.accept(&format!("{}", t0 * 1000), t0, b"other", t0, window));
    assert!(used.accept(&format!("{}", t0 * 1000), t0, b"b", t0, window));
    // Three hours later the old ones are gone on the next purge.
    let later = t0 + 3 * 3600;
    for i in 0..2100 {
        used.accept(&format!("{}", later * 1000 + i), later, b"b", later, window);
    }
    assert!(
        used.by_timestamp.len() <= 2100,
        "{}",
        used.by_timestamp.len()
    );
    assert!(!used.by_timestamp.contains_key(&format!("{}", t0 * 1000)));
}

/// dedupe remembers a msgId for longer than a signed timestamp can be
/// replayed (an hour either side), so a replay is always a duplicate.
#[test]
fn dedupe_ttl_covers_the_replay_window() {
    let a = robot();
    assert!(a.dedupe_ttl() >= DEFAULT_REPLAY_WINDOW * 2);
    assert_eq!(a.dedupe_ttl(), MIN_DEDUPE_TTL);
    let wide = robot().with_replay_window(Duration::from_secs(20 * 3600));
    assert!(wide.dedupe_ttl() >= Duration::from_secs(40 * 3600));
}

/// An event whose signature fails, or is stale, is never decrypted;
/// every failure to authenticate, robot or event, answers alike.
#[test]
fn event_failures_never_decrypt_and_answer_alike() {
    let v = vectors();
    let a = events(&v);
    let ev = a.events.as_ref().unwrap();
    let t0 = 1_700_000_000_000i64;
    let ts = t0.to_string();
    let hdr = HeaderMap::new();
    let bad_padding = STANDARD.encode([0x5a; 32]);
    assert_eq!(
        ev.crypt.decrypt(&bad_padding, &ev.owner_key),
        Err(wxcrypt::WxCryptError::Padding)
    );
    let ciphertexts = [
        ev.crypt
            .encrypt(b"{\"EventType\":\"check_url\"}", &ev.owner_key, &[1; 16]),
        "!!notbase64!!".to_string(),
        "AAAA".to_string(),
        bad_padding.clone(),
        ev.crypt.encrypt(b"{}", "suiteOTHER", &[1; 16]),
    ];
    let mut failures = Vec::new();
    for enc in &ciphertexts {
        let before = wxcrypt::decrypts();
        let body = json!({ "encrypt": enc }).to_string();
        let forged = wxcrypt::msg_signature("guessed", &ts, "n", enc);
        let good = wxcrypt::msg_signature(&ev.token, &ts, "n", enc);
        for (sig, now, want) in [
            (&forged, ms(t0), "bad_signature"),
            (&good, ms(t0 + 3_601_000), "stale_timestamp"),
        ] {
            let q = format!("signature={sig}&timestamp={ts}&nonce=n");
            let req = WebhookRequest {
                method: &Method::POST,
                query: Some(&q),
                headers: &hdr,
                body: body.as_bytes(),
                now,
                bearer: None,
            };
            let r = a.receive(&req).unwrap_err();
            assert_eq!(r.kind(), want, "{enc}");
            assert!(a.payload(&req).is_err());
            failures.push(r);
        }
        assert_eq!(
            wxcrypt::decrypts(),
            before,
            "{enc}: decrypted before verifying"
        );
        // Signed and fresh: decrypted, and a failure answers alike too.
        let q = format!("signature={good}&timestamp={ts}&nonce=n");
        let r = a.receive(&WebhookRequest {
            method: &Method::POST,
            query: Some(&q),
            headers: &hdr,
            body: body.as_bytes(),
            now: ms(t0),
            bearer: None,
        });
        if let Err(r) = r {
            assert_eq!(r.kind(), "decrypt_failed", "{enc}");
            failures.push(r);
        }
    }
    // Robot side: no headers, half the headers, bad sign, stale, replayed.
    let robot_route = robot();
    let body = robot_body("text", "staff1").to_string();
    let mut only_ts = HeaderMap::new();
    only_ts.insert("timestamp", HeaderValue::from_static("1"));
    let h = signed_at(t0);
    assert!(robot_route
        .receive(&robot_req(&h, body.as_bytes(), ms(t0)))
        .is_ok());
    let mut replay = robot_body("text", "staff1");
    replay["msgId"] = json!("other");
    let replay = replay.to_string();
    for (h, b, now) in [
        (&HeaderMap::new(), &body, ms(t0)),
        (&only_ts, &body, ms(t0)),
        (&headers(&ts, "AAAA"), &body, ms(t0)),
        (&h, &body, ms(t0 + 3_601_000)),
        (&h, &replay, ms(t0)),
    ] {
        failures.push(
            robot_route
                .receive(&robot_req(h, b.as_bytes(), now))
                .unwrap_err(),
        );
    }
    assert_eq!(failures.len(), 2 * 5 + 4 + 5);
    for r in &failures {
        assert_eq!(r.status(), http::StatusCode::UNAUTHORIZED, "{r:?}");
        assert_eq!(
            (r.public_kind(), r.public_message().as_str()),
            ("unauthenticated", "the request could not be authenticated"),
            "{r:?}"
        );
    }
}
