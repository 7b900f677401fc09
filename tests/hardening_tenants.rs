//! Tenants never share state: conversation context, identity links, RBAC
//! subjects and rate keys include the tenant (the JWT `tenant` claim; the
//! platform's team, corp or tenant id). Issue 10, item 2.

mod common;

use std::process::Command;

use common::{post, rt, Gateway, Setup, BIN};
use serde_json::{json, Value};

/// One message on the API as `token` in group room `room`; the demo
/// assistant's answer names the conversation's turn.
async fn say(gw: &Gateway, token: &str, room: &str, chat_type: &str, text: &str) -> String {
    let body =
        json!({"content": {"text": text}, "context": {"room_id": room, "chat_type": chat_type}});
    let resp = post(
        gw,
        "/v1/messages",
        &[("authorization", format!("Bearer {token}"))],
        body.to_string(),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    v["replies"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn the_same_room_in_two_tenants_is_two_conversations() {
    let gw = Setup::default().start();
    let acme = gw.token("alice", &["tenant=acme"]);
    let initech = gw.token("mallory", &["tenant=initech"]);
    rt().block_on(async {
        assert!(say(&gw, &acme, "ops", "group", "one")
            .await
            .ends_with("(turn 1)"));
        assert!(say(&gw, &acme, "ops", "group", "two")
            .await
            .ends_with("(turn 2)"));
        // Another tenant naming the same room neither reads nor extends it.
        let other = say(&gw, &initech, "ops", "group", "hello").await;
        assert!(other.ends_with("(turn 1)"), "{other}");
        assert!(say(&gw, &acme, "ops", "group", "three")
            .await
            .ends_with("(turn 3)"));
    });
}

#[test]
fn the_same_user_id_in_two_tenants_is_two_people() {
    let gw = Setup::default().start();
    let in_acme = gw.token("zhangsan", &["tenant=acme"]);
    let in_initech = gw.token("zhangsan", &["tenant=initech"]);
    rt().block_on(async {
        assert!(say(&gw, &in_acme, "", "private", "hi")
            .await
            .ends_with("(turn 1)"));
        assert!(say(&gw, &in_acme, "", "private", "again")
            .await
            .ends_with("(turn 2)"));
        let other = say(&gw, &in_initech, "", "private", "hi").await;
        assert!(other.ends_with("(turn 1)"), "{other}");
    });
}

/// Two WeCom corps behind one gateway: `wecom:zhangsan` could be either
/// corp's zhangsan, so `moltgate check` asks for `wecom:<corp_id>:zhangsan`.
#[test]
fn check_flags_accounts_without_a_corp_when_several_corps_are_served() {
    let route = |path: &str, corp: &str| {
        format!(
            "  - {{ path: {path}, platform: wecom, upstream: assistant, secrets: {{ token: t0k3n, encoding_aes_key: jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C, corp_id: {corp}, agent_id: \"1\", corp_secret: s }} }}\n"
        )
    };
    let mut setup = Setup {
        routes: route("/hooks/wecom/a", "wwcorpA") + &route("/hooks/wecom/b", "wwcorpB"),
        ..Setup::default()
    };
    setup.policies.push((
        "identities.yaml",
        "people:\n  zhangsan: [\"wecom:zhangsan\", \"wecom:wwcorpA:lisi\"]\n".into(),
    ));
    let (_dir, _, _, config) = setup.write();
    let out = Command::new(BIN)
        .arg("check")
        .arg("-c")
        .arg(&config)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "a warning, not an error: {text}");
    assert!(
        text.contains("identities.yaml:2:15: warning: account 'wecom:zhangsan' names no tenant"),
        "{text}"
    );
    assert!(!text.contains("'wecom:wwcorpA:lisi'"), "{text}");
}
