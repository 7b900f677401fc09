use std::path::{Path, PathBuf};

use super::*;
use crate::config::Config;

const HEAD: &str = "listen:\n  public: { address: 127.0.0.1:8443, tls: { cert: c, key: k } }\n  admin: { address: 127.0.0.1:9090 }\nupstreams:\n  ai: { kind: grpc, nodes: [embedded] }\n  bot: { kind: http, nodes: [\"127.0.0.1:1\"] }\n";

fn parse(mqtt: &str) -> Result<Config, FileError> {
    let text = format!("{HEAD}mqtt:\n{mqtt}");
    Config::from_str_at(Path::new("moltgate.yaml"), &text, PathBuf::new())
}

/// The listener block with `field` lines replaced or added.
fn listener(extra: &str) -> String {
    format!("  - name: iot\n    broker: {{ host: 127.0.0.1 }}\n    topics: [\"alerts/+/events\"]\n    adapter: iot-alerts\n    upstream: ai\n{extra}")
}

/// The error's first diagnostic, whose message contains `needle`, at (line, column).
fn expect_error(mqtt: &str, needle: &str) -> (usize, usize) {
    let e = parse(mqtt).expect_err(needle);
    let d = e
        .clone()
        .split()
        .into_iter()
        .find(|d| d.message.contains(needle))
        .unwrap_or_else(|| panic!("no '{needle}' in:\n{e}"));
    (d.line.unwrap_or(0), d.column.unwrap_or(0))
}

#[test]
fn a_listener_with_defaults() {
    let c = parse(&listener("")).unwrap();
    let l = &c.mqtt[0];
    assert_eq!(l.name.0, "iot");
    assert_eq!(l.broker.port(), 1883);
    assert_eq!(l.client_id(), "moltgate-iot");
    assert_eq!(l.broker.keep_alive.0, Duration::from_secs(30));
    assert_eq!(l.max_payload, DEFAULT_MAX_PAYLOAD);
    assert_eq!(l.identity, MqttIdentity::Adapter);
    assert!(l.reply_topic.is_none());
    // No `mqtt:` at all is no listener.
    let none = Config::from_str_at(Path::new("m.yaml"), HEAD, PathBuf::new()).unwrap();
    assert!(none.mqtt.is_empty());
}

#[test]
fn every_setting() {
    std::env::set_var("MOLTGATE_TEST_MQTT_PASSWORD", "s3cret-pass");
    let yaml = "  - name: iot_2\n    broker:\n      host: broker.example\n      tls: true\n      client_id: edge-1\n      username: gw\n      password: ${MOLTGATE_TEST_MQTT_PASSWORD}\n      keep_alive: 1m\n    topics: [\"alerts/+/events\", \"alerts/#\"]\n    adapter: iot-alerts\n    upstream: ai\n    reply_topic: \"replies/{2}\"\n    identity: client\n    max_payload: 1024\n";
    let c = parse(yaml).unwrap();
    let l = &c.mqtt[0];
    assert_eq!(l.broker.port(), 8883, "TLS's default port");
    assert_eq!(l.client_id(), "edge-1");
    assert_eq!(l.broker.password.as_ref().unwrap().expose(), "s3cret-pass");
    assert_eq!(l.identity, MqttIdentity::Client);
    assert_eq!(l.max_payload, 1024);
    assert_eq!(l.broker.keep_alive.0, Duration::from_secs(60));
    let debug = format!("{c:?}");
    assert!(!debug.contains("s3cret-pass"), "the password never shows");
    assert!(debug.contains("MqttPassword(***)"));
}

#[test]
fn unknown_keys_are_located() {
    let e = parse("  - name: iot\n    broker: { host: h, pasword: x }\n    topics: [a]\n    adapter: a\n    upstream: ai\n").unwrap_err();
    assert_eq!(e.line, Some(9), "{e}");
    assert!(
        e.message
            .contains("unknown key 'pasword' (did you mean 'password'?)"),
        "{e}"
    );
    let e = parse(&listener("    identity: sender\n")).unwrap_err();
    assert!(e.message.contains("unknown value 'sender'"), "{e}");
    assert!(e.message.contains("adapter, client"), "{e}");
}

#[test]
fn semantic_errors_are_located() {
    // Line 8 is the first listener line (`  - name: ...`).
    assert_eq!(
        expect_error(
            &listener("").replace("name: iot", "name: IoT"),
            "must be [a-z0-9_-]+"
        ),
        (8, 11)
    );
    assert_eq!(
        expect_error(
            &listener("").replace("alerts/+/events", "alerts/x+/events"),
            "is not a topic filter"
        ),
        (10, 15)
    );
    assert_eq!(
        expect_error(
            &listener("").replace("upstream: ai", "upstream: aj"),
            "unknown upstream 'aj' (did you mean 'ai'?)"
        ),
        (12, 5)
    );
    assert_eq!(
        expect_error(
            &listener("").replace("upstream: ai", "upstream: bot"),
            "needs a grpc upstream"
        ),
        (12, 5)
    );
    assert_eq!(
        expect_error(&listener("    max_payload: 0\n"), "max_payload must be"),
        (13, 5)
    );
    let with_password =
        listener("").replace("{ host: 127.0.0.1 }", "{ host: 127.0.0.1, password: p }");
    assert!(expect_error(&with_password, "needs a username").0 == 9);
    let ka = listener("").replace("{ host: 127.0.0.1 }", "{ host: 127.0.0.1, keep_alive: 0s }");
    assert_eq!(expect_error(&ka, "keep_alive must be").0, 9);
    let ca = listener("").replace("{ host: 127.0.0.1 }", "{ host: 127.0.0.1, ca: ca.pem }");
    assert_eq!(expect_error(&ca, "broker.tls is false").0, 9);
    let ca = listener("").replace(
        "{ host: 127.0.0.1 }",
        "{ host: 127.0.0.1, tls: true, ca: /nonexistent/ca.pem }",
    );
    assert_eq!(
        expect_error(&ca, "cannot read /nonexistent/ca.pem"),
        (9, 47)
    );
    let twice = format!("{}{}", listener(""), listener(""));
    assert_eq!(expect_error(&twice, "'iot' is defined twice").0, 8);
    let no_topics = listener("").replace("[\"alerts/+/events\"]", "[]");
    assert_eq!(expect_error(&no_topics, "has no topics").0, 10);
}

#[test]
fn every_problem_at_once() {
    let bad = listener("    max_payload: 0\n").replace("upstream: ai", "upstream: aj");
    let e = parse(&bad).unwrap_err();
    assert_eq!(e.count(), 2, "{e}");
}

#[test]
fn a_reply_topic_that_loops_is_refused() {
    for (topics, reply) in [
        ("[\"alerts/#\"]", "alerts/{2}/reply"),
        ("[\"alerts/+/events\"]", "alerts/{2}/events"),
        ("[\"+/+/events\"]", "x{1}/y/events"),
        ("[\"alerts/+/events\"]", "{topic}"),
        ("[\"#\"]", "replies/{1}"),
    ] {
        let l = listener(&format!("    reply_topic: \"{reply}\"\n"))
            .replace("[\"alerts/+/events\"]", topics);
        let (line, _) = expect_error(&l, "would receive its own replies");
        assert_eq!(line, 13, "{topics} {reply}");
    }
    for (topics, reply) in [
        ("[\"alerts/+/events\"]", "alerts/{2}/reply"),
        ("[\"alerts/+/events\"]", "{topic}/reply"),
        ("[\"alerts/+/events\"]", "replies/{topic}"),
        ("[\"a/b\"]", "a/b/c"),
    ] {
        let l = listener(&format!("    reply_topic: \"{reply}\"\n"))
            .replace("[\"alerts/+/events\"]", topics);
        parse(&l).unwrap_or_else(|e| panic!("{topics} {reply}: {e}"));
    }
}

#[test]
fn reply_topic_templates_are_checked_at_load() {
    for (raw, why) in [
        ("", "is empty"),
        ("a/+/b", "contains '+'"),
        ("a/#", "contains '#'"),
        ("a/{x}", "has '{x}'"),
        ("a/{0}", "has '{0}'"),
        ("a/{-1}", "has '{-1}'"),
        ("a/{1", "unclosed '{'"),
        ("a/1}", "'}' without '{'"),
    ] {
        let e = ReplyTopic::parse(raw).unwrap_err();
        assert!(e.contains(why), "{raw}: {e}");
    }
    // In the config, the error is at the value.
    let (line, col) = expect_error(&listener("    reply_topic: \"r/{x}\"\n"), "has '{x}'");
    assert_eq!((line, col), (13, 18));
}

#[test]
fn reply_topics_render() {
    let t = |raw: &str, topic: &str| ReplyTopic::parse(raw).unwrap().render(topic);
    assert_eq!(
        t("alerts/{2}/reply", "alerts/dev7/events").unwrap(),
        "alerts/dev7/reply"
    );
    assert_eq!(
        t("{topic}/reply", "alerts/dev7/events").unwrap(),
        "alerts/dev7/events/reply"
    );
    assert_eq!(t("r/{1}-{3}", "a/b/c").unwrap(), "r/a-c");
    assert_eq!(t("fixed/topic", "a/b").unwrap(), "fixed/topic");
    assert_eq!(
        t("r/{4}", "a/b/c").unwrap_err(),
        ReplyTopicError::MissingLevel {
            template: "r/{4}".into(),
            level: 4,
            levels: 3
        }
    );
    for (raw, topic, why) in [
        ("{2}", "a/", "it is empty"),
        ("r/{1}", "a+/b", "wildcard"),
        ("r/{1}", "#", "wildcard"),
        ("r/{topic}", "a\0b", "NUL"),
    ] {
        match t(raw, topic) {
            Err(ReplyTopicError::Unusable { why: w, .. }) => {
                assert!(w.contains(why), "{raw} {topic:?}: {w}")
            }
            other => panic!("{raw} {topic:?}: {other:?}"),
        }
    }
    let long = "x".repeat(70_000);
    assert!(t("{topic}", &long).is_err());
}

#[test]
fn filter_overlap() {
    let f = |s: &str| s.split('/').map(str::to_string).collect::<Vec<_>>();
    assert!(filters_overlap(&f("a/+/c"), &f("a/b/c")));
    assert!(filters_overlap(&f("a/#"), &f("a")));
    assert!(filters_overlap(&f("+/b"), &f("a/+")));
    assert!(!filters_overlap(&f("a/b"), &f("a/b/c")));
    assert!(!filters_overlap(&f("a/b"), &f("a/c")));
    let filters =
        |raw: &str, subscribed: &[&str]| ReplyTopic::parse(raw).unwrap().as_filters(subscribed);
    assert_eq!(filters("a/{1}x/b", &["s"]), vec![f("a/+/b")]);
    assert_eq!(
        filters("a/x{topic}/b", &["c/d", "e/#"]),
        vec![f("a/+/d/b"), f("a/+/#")]
    );
    assert_eq!(filters("{topic}/reply", &["c/+"]), vec![f("c/+/reply")]);
    assert_eq!(filters("r/{topic}", &["#"]), vec![f("r/#")]);
}
