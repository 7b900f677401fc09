use super::*;

fn parse(text: &str) -> Result<Config, FileError> {
    Config::from_str_at(Path::new("moltgate.yaml"), text, PathBuf::new())
}

const MIN: &str = "listen:\n  public: { address: 127.0.0.1:8443, tls: { cert: c, key: k } }\n  admin: { address: 127.0.0.1:9090 }\n";

#[test]
fn demo_config_loads() {
    let c = Config::demo(Path::new(".")).unwrap();
    assert!(c.upstreams.contains_key("assistant"));
    assert!(c.routes.iter().any(|r| r.path.0 == "/v1/messages"));
}

/// Only the shipped text is the demo; any edit makes it a deployment.
#[test]
fn demo_is_the_shipped_text() {
    assert!(Config::demo(Path::new(".")).unwrap().is_demo());
    assert!(parse(DEMO_CONFIG).unwrap().is_demo());
    let edited = DEMO_CONFIG.replace("turns: 20", "turns: 21");
    assert!(!parse(&edited).unwrap().is_demo());
    assert!(!parse(MIN).unwrap().is_demo());
}

#[test]
fn admin_without_token_must_be_loopback() {
    let cfg = |admin: &str| {
        parse(&format!(
                "listen:\n  public: {{ address: 127.0.0.1:8443, tls: {{ cert: c, key: k }} }}\n  admin: {admin}\n"
            ))
    };
    let e = cfg("{ address: 0.0.0.0:9090 }").unwrap_err();
    assert_eq!((e.line, e.column), (Some(3), Some(21)), "{e}");
    assert!(
        e.message
            .contains("'0.0.0.0:9090' is not a loopback address and listen.admin.token is not set"),
        "{e}"
    );
    assert!(e.message.contains("Bind it to 127.0.0.1:9090"), "{e}");
    // An empty token (an unset `${VAR:-}`) is no token.
    assert!(cfg("{ address: \"[::]:9090\", token: \"\" }").is_err());
    for ok in [
        "{ address: 127.0.0.1:9090 }",
        "{ address: \"[::1]:9090\" }",
        "{ address: 127.0.0.2:9090 }",
        "{ address: 0.0.0.0:9090, token: 0123456789abcdef0123 }",
    ] {
        let c = cfg(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        assert_eq!(c.admin_token().is_some(), ok.contains("token"));
    }
    let e = cfg("{ address: 127.0.0.1:9090, token: short }").unwrap_err();
    assert!(
        e.message
            .contains("listen.admin.token is 5 bytes; use at least 16"),
        "{e}"
    );
    assert!(
        !e.to_string().contains("short"),
        "the token is never echoed: {e}"
    );
    assert_eq!(e.line, Some(3), "{e}");
    let e = cfg("{ address: 127.0.0.1:9090, token: \"0123456789 abcdef\" }").unwrap_err();
    assert!(e.message.contains("printable ASCII"), "{e}");
    let c = cfg("{ address: 127.0.0.1:9090, token: 0123456789abcdef-secret }").unwrap();
    assert!(!format!("{c:?}").contains("0123456789abcdef-secret"));
}

#[test]
fn design_example_loads() {
    let text = format!(
            "{MIN}policies: policies/\ncontext: {{ max_conversations: 100000, ttl: 24h, turns: 20 }}\nupstreams:\n  assistant: {{ kind: grpc, nodes: [embedded], balance: conversation, timeout: 30s }}\n  legacy-bot: {{ kind: http, nodes: [\"127.0.0.1:3000\"] }}\nroutes:\n  - {{ path: /v1/messages, platform: generic, upstream: assistant }}\n  - {{ path: /hooks/slack/demo, platform: slack, upstream: assistant,\n      secrets: {{ signing_secret: \"${{SLACK_SIGNING_SECRET:-demo}}\", bot_token: \"${{SLACK_BOT_TOKEN:-}}\" }} }}\n  - {{ path: /hooks/telegram/legacy, platform: telegram, mode: passthrough, upstream: legacy-bot,\n      secrets: {{ secret_token: \"${{TG_SECRET:-demo}}\" }} }}\n"
        );
    let c = parse(&text).unwrap();
    assert_eq!(c.context.ttl.0, Duration::from_secs(86400));
    assert_eq!(
        c.routes[1]
            .secrets
            .to_map()
            .get("signing_secret")
            .map(String::as_str),
        Some("demo")
    );
    assert_eq!(c.routes[1].secrets.to_map().get("bot_token"), None);
}

#[test]
fn unknown_key_is_located() {
    let e = parse(&format!("{MIN}polices: p/\n")).unwrap_err();
    assert_eq!((e.line, e.column), (Some(4), Some(1)), "{e}");
    assert!(e.message.contains("did you mean 'policies'"), "{e}");
}

#[test]
fn unknown_upstream_is_located_with_suggestion() {
    let e = parse(&format!(
            "{MIN}upstreams:\n  assistant: {{ kind: grpc, nodes: [embedded] }}\nroutes:\n  - {{ path: /v1/messages, platform: generic, upstream: asistant }}\n"
        ))
        .unwrap_err();
    assert_eq!((e.line, e.column), (Some(7), Some(56)), "{e}");
    assert!(e.message.contains("did you mean 'assistant'"), "{e}");
}

/// Every route and upstream problem is reported at once, in file order.
#[test]
fn every_error_is_reported() {
    let e = parse(&format!(
            "{MIN}upstreams:\n  a: {{ kind: grpc, nodes: [embedded] }}\n  b: {{ kind: http, nodes: [embedded, nowhere] }}\n  c: {{ kind: grpc, nodes: [] }}\nroutes:\n  - {{ path: x, platform: generic, upstream: a }}\n  - {{ path: /y, platform: generic, upstream: asistant }}\n  - {{ path: /y, platform: generic, upstream: a }}\n"
        ))
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "moltgate.yaml:6:28: upstream 'b': node 'embedded' is a gRPC assistant; kind must be grpc
moltgate.yaml:6:38: upstream 'b': node 'nowhere' must be host:port or 'embedded'
moltgate.yaml:7:3: upstream 'c' has no nodes
moltgate.yaml:9:13: route path 'x' must start with '/'
moltgate.yaml:10:46: route '/y' names unknown upstream 'asistant'; defined: a, b, c
moltgate.yaml:11:13: route path '/y' is defined twice"
    );
    assert_eq!(e.count(), 6);
}

#[test]
fn bad_values_are_errors() {
    assert!(parse(&format!("{MIN}context: {{ ttl: forever }}\n"))
        .unwrap_err()
        .message
        .contains("invalid duration"));
    let e = parse("listen:\n  public: { address: nowhere, tls: { cert: c, key: k } }\n  admin: { address: 127.0.0.1:9090 }\n").unwrap_err();
    assert_eq!(e.line, Some(2), "{e}");
    let e = parse(&format!(
            "{MIN}upstreams:\n  a: {{ kind: grpc, nodes: [embedded] }}\nroutes:\n  - {{ path: /x, platform: slak, upstream: a }}\n"
        ))
        .unwrap_err();
    assert!(e.message.contains("did you mean 'slack'"), "{e}");
    let e = parse(&format!(
            "{MIN}upstreams:\n  a: {{ kind: grpc, nodes: [embedded] }}\nroutes:\n  - {{ path: /x, platform: slack, upstream: a, secrets: {{ signing_secrt: x }} }}\n"
        ))
        .unwrap_err();
    assert!(e.message.contains("did you mean 'signing_secret'"), "{e}");
}

#[test]
fn shared_block_is_checked_with_positions() {
    let with = |shared: &str| parse(&format!("{MIN}shared:\n{shared}"));
    let ok = with("  redis: { url: \"redis://127.0.0.1:6379/0\" }\n").unwrap();
    let s = ok.shared.unwrap();
    assert_eq!(s.redis.timeout.0, Duration::from_millis(50));
    assert_eq!(s.on_error, OnError::Local);
    assert_eq!(s.key_prefix.0, "moltgate:");
    assert_eq!(s.claim_ttl.0, Duration::from_secs(60));
    for url in ["unix:///run/redis.sock", "rediss://cache.internal:6380/1"] {
        assert!(
            with(&format!("  redis: {{ url: \"{url}\" }}\n")).is_ok(),
            "{url}"
        );
    }

    let e = with("  redis: { url: \"http://:hunter2@cache:6379\", timeout: 0s }\n").unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("shared.redis.url 'http://***@cache:6379' is not a Redis URL"),
        "{text}"
    );
    assert!(
        text.contains("shared.redis.timeout must be above zero"),
        "{text}"
    );
    assert!(!text.contains("hunter2"), "{text}");

    let e = with("  redis: { url: \"redis://r:6379\" }\n  on_error: ignore\n").unwrap_err();
    assert!(
        e.to_string()
            .contains("unknown value 'ignore'; expected one of: allow, deny, local"),
        "{e}"
    );

    // A claim must outlive every platform route's upstream call.
    let text = format!(
        "{MIN}upstreams:\n  bot: {{ kind: http, nodes: [\"127.0.0.1:3000\"], timeout: 30s }}\nroutes:\n  - {{ path: /tg, platform: telegram, mode: passthrough, upstream: bot, secrets: {{ secret_token: abcdefghijklmnop }} }}\nshared:\n  redis: {{ url: \"redis://r:6379\" }}\n  claim_ttl: 10s\n"
    );
    let e = parse(&text).unwrap_err();
    assert!(
        e.to_string()
            .contains("shared.claim_ttl (10s) must be longer than upstream 'bot' timeout (30s)"),
        "{e}"
    );
    assert_eq!(e.line, Some(10), "{e}");
}

/// `upgrade_socket:` is optional, resolved against the config's directory,
/// and must fit a Unix socket address; a typo of the key is named.
#[test]
fn upgrade_socket_key() {
    assert!(parse(MIN).unwrap().upgrade_socket.is_none());
    let at = |v: &str| {
        Config::from_str_at(
            Path::new("/etc/moltgate/moltgate.yaml"),
            &format!("{MIN}upgrade_socket: {v}\n"),
            PathBuf::from("/etc/moltgate"),
        )
    };
    let c = at("/run/moltgate/upgrade.sock").unwrap();
    assert_eq!(
        c.resolve(c.upgrade_socket.as_ref().unwrap()),
        Path::new("/run/moltgate/upgrade.sock")
    );
    let c = at("run/up.sock").unwrap();
    assert_eq!(
        c.resolve(c.upgrade_socket.as_ref().unwrap()),
        Path::new("/etc/moltgate/run/up.sock")
    );
    for bad in [
        "\"\"",
        "/run/moltgate/",
        &format!("/run/{}", "x".repeat(110)),
    ] {
        let e = at(bad).unwrap_err();
        assert!(
            e.message
                .contains("must name a socket file of at most 107 bytes"),
            "{bad}: {e}"
        );
        assert_eq!(e.line, Some(4), "{bad}: {e}");
    }
    let e = parse(&format!("{MIN}upgrade_sock: /run/u.sock\n")).unwrap_err();
    assert!(e.to_string().contains("upgrade_socket"), "{e}");
}

#[test]
fn websocket_routes_are_checked() {
    let with = |route: &str| {
        parse(&format!(
            "{MIN}upstreams:\n  a: {{ kind: grpc, nodes: [embedded] }}\n  bot: {{ kind: http, nodes: [\"127.0.0.1:3000\"] }}\nroutes:\n{route}"
        ))
    };
    let ok = with("  - { path: /v1/ws, platform: websocket, upstream: a, websocket: { max_frame: 1024, idle: 30s } }\n").unwrap();
    let ws = ok.routes[0].websocket.as_ref().unwrap();
    assert_eq!((ws.max_frame, ws.idle.0), (1024, Duration::from_secs(30)));
    let e = with(
        "  - { path: /v1/chat, platform: generic, upstream: a, websocket: { max_frame: 1024 } }\n",
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("apply to `platform: websocket` routes only"),
        "{e}"
    );
    let e = with("  - { path: /ws, platform: websocket, mode: passthrough, upstream: bot }\n")
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("needs `websocket: { profile: openclaw }`"),
        "{e}"
    );
    let ok = with("  - { path: /oc, platform: websocket, mode: passthrough, upstream: bot, websocket: { profile: openclaw, identity_header: X-Forwarded-User, upstream_path: / } }\n").unwrap();
    let ws = ok.routes[0].websocket.as_ref().unwrap();
    assert_eq!(ws.upstream_path.as_deref(), Some("/"));
    let e = with("  - { path: /j, platform: websocket, mode: passthrough, upstream: bot, websocket: { profile: json } }\n").unwrap_err();
    assert!(e.to_string().contains("needs `ingress_pointers`"), "{e}");
    let e = with("  - { path: /j, platform: websocket, mode: passthrough, upstream: bot, websocket: { profile: json, ingress_pointers: [text] } }\n").unwrap_err();
    assert!(
        e.to_string().contains("'text' is not a JSON pointer"),
        "{e}"
    );
    let e = with("  - { path: /v1/ws, platform: websocket, upstream: a, websocket: { profile: openclaw } }\n").unwrap_err();
    assert!(
        e.to_string().contains("apply to `mode: passthrough` only"),
        "{e}"
    );
    let e =
        with("  - { path: /ws, platform: websocket, upstream: a, websocket: { max_frame: 0 } }\n")
            .unwrap_err();
    assert!(e.to_string().contains("must be above zero"), "{e}");
}
