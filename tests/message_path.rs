//! Issue 9's acceptance: every message, whatever its platform, mode or
//! channel, takes every stage. One gateway carries a translate route and a
//! passthrough route per platform (and the generic API); one table lists
//! each platform's text-bearing fields and its ways of sending a command.
//! For every platform × mode:
//!
//! - (a) a Luhn-valid card in each text-bearing field, one field per
//!   request, never reaches the bot (the bytes it received, decrypted) nor
//!   the assistant (every `Envelope` it received, and its echo inline or
//!   through the platform API). The card rule is `direction: ingress` only,
//!   so egress DLP cannot hide an ingress miss;
//! - (b) `/reboot`, which no sender has a role for, typed as text or sent as
//!   the platform's command field, is denied and reaches nobody;
//! - (c) an address on the deny list (via a trusted proxy) is refused;
//! - (d) the message past the per-user limit is limited;
//! - (e) every request leaves exactly one audit line.
//!
//! A second test takes a passthrough bot down, then up: the redelivered
//! update reaches the bot once, and a third delivery is a duplicate.
//!
//! Failures are collected per case and reported together, so one run shows
//! every case the gateway gets wrong.

mod common;

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::fake_api::{FakeApi, Recorded};
use common::platforms::{self as p, Signed};
use common::{admin_get, free_port, Gateway, RecordingAssistant, Setup};
use moltgate::proto::Envelope;
use serde_json::{json, Value};

/// `per_user.max_requests` of (d).
const LIMIT: usize = 3;
/// A Luhn-valid card, spaced and plain (two findings, apart so that neither
/// swallows the other's digits).
const CARD_TEXT: &str = "card 4111 1111 1111 1111, again 4111111111111111";
const CARD_DIGITS: &str = "4111111111111111";
/// Inside `ip_blacklist`; 127.0.0.1 is a trusted proxy, so its
/// `X-Forwarded-For` names the client.
const DENIED_IP: &str = "203.0.113.7";
/// Audit decisions of a message that reached the bot or the assistant.
const DELIVERED: &[&str] = &["answered", "accepted", "proxied"];
/// Sender ids are `700000 + n`; every sender up to this `n` may `/ask`.
const SENDERS: u64 = 600;
/// How long any one expected event may take.
const WAIT: Duration = Duration::from_secs(10);

// ------------------------------------------------------------- the table ----

/// One request's ids: a unique number (message, event and update ids), its
/// sender, and the fake platform API's base (for reply URLs in payloads).
struct Msg {
    seq: u64,
    sender: String,
    api: String,
}

impl Msg {
    /// A token that the assistant's echo carries back.
    fn marker(&self) -> String {
        format!("mk{}q", self.seq)
    }

    /// Neutral text with the marker, for the fields not under test.
    fn plain(&self) -> String {
        format!("{} hello", self.marker())
    }
}

/// Builds a signed request with `value` in one field.
type Build = fn(&Msg, &str) -> Signed;

struct Platform {
    name: &'static str,
    /// (a): every text-bearing field; the first is the message text, also
    /// used for (c) and (d).
    fields: &'static [(&'static str, Build)],
    /// (b): the ways of sending `/reboot now`: typed as text, and the
    /// platform's command field where it has one.
    commands: &'static [(&'static str, Build)],
    /// Whether the platform has a passthrough route (the generic API has not).
    passthrough: bool,
}

const PLATFORMS: &[Platform] = &[
    Platform {
        name: "telegram",
        fields: &[
            ("message.text", tg_text),
            ("message.caption (photo)", tg_caption),
            ("reply_to_message.text", tg_reply),
            ("quote.text", tg_quote),
            ("entities[].url (text_link)", tg_link),
        ],
        commands: &[
            ("typed text", tg_text),
            ("bot_command entity", tg_bot_command),
        ],
        passthrough: true,
    },
    Platform {
        name: "slack",
        fields: &[
            ("event.text", sl_text),
            ("blocks rich_text", sl_blocks),
            ("attachments[].title", sl_attachment_title),
            ("attachments[].text", sl_attachment_text),
            ("attachments[].fallback", sl_attachment_fallback),
            ("slash command /ask text", sl_slash_ask),
        ],
        commands: &[("typed text", sl_text), ("slash command", sl_slash)],
        passthrough: true,
    },
    Platform {
        name: "discord",
        fields: &[
            ("data.options[].value", dc_option),
            ("resolved message content", dc_message),
        ],
        commands: &[("application command with options", dc_command)],
        passthrough: true,
    },
    Platform {
        name: "feishu",
        fields: &[
            ("text content", fs_text),
            ("post title", fs_post_title),
            ("post content text", fs_post_text),
        ],
        commands: &[("typed text", fs_text)],
        passthrough: true,
    },
    Platform {
        name: "wecom",
        fields: &[("Content", wc_text), ("link Title", wc_link_title)],
        commands: &[("typed text", wc_text)],
        passthrough: true,
    },
    Platform {
        name: "dingtalk",
        fields: &[
            ("text.content", dt_text),
            ("richText text", dt_rich_text),
            ("event subscription (encrypted) Title", dt_event_title),
        ],
        commands: &[("typed text", dt_text)],
        passthrough: true,
    },
    Platform {
        name: "generic",
        fields: &[
            ("content.text", ge_text),
            ("content.attachments[].name", ge_attachment),
        ],
        commands: &[("typed text", ge_text)],
        passthrough: false,
    },
];

#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    Translate,
    Passthrough,
}

/// One row of the matrix: a platform in a mode.
#[derive(Clone, Copy)]
struct Case {
    platform: &'static Platform,
    mode: Mode,
}

impl Case {
    fn all() -> Vec<Case> {
        let mut out = Vec::new();
        for platform in PLATFORMS {
            out.push(Case {
                platform,
                mode: Mode::Translate,
            });
            if platform.passthrough {
                out.push(Case {
                    platform,
                    mode: Mode::Passthrough,
                });
            }
        }
        out
    }

    fn route(&self) -> String {
        match (self.platform.name, self.mode) {
            ("generic", _) => "/v1/messages".into(),
            (name, Mode::Translate) => format!("/hooks/{name}"),
            (name, Mode::Passthrough) => format!("/hooks/{name}/bot"),
        }
    }

    fn is_api(&self) -> bool {
        self.platform.name == "generic"
    }

    fn label(&self) -> String {
        format!("{} {:?}", self.platform.name, self.mode)
    }
}

// ------------------------------------------------------------- builders ----

fn tg(m: &Msg, message: Value) -> Signed {
    p::telegram::seal(&p::telegram::update(
        700_000_000 + m.seq,
        &m.sender,
        message,
    ))
}

fn tg_text(m: &Msg, v: &str) -> Signed {
    tg(m, json!({ "text": v }))
}

fn tg_caption(m: &Msg, v: &str) -> Signed {
    let photo =
        json!([{"file_id": "AgADmp", "file_unique_id": "AQADmp", "width": 90, "height": 90}]);
    tg(m, json!({ "photo": photo, "caption": v }))
}

fn tg_earlier(text: &str) -> Value {
    json!({
        "message_id": 7, "date": p::now_secs() - 60, "text": text,
        "from": {"id": 4242, "is_bot": true, "first_name": "Bot", "username": "mybot"},
        "chat": {"id": 4242, "type": "private"}
    })
}

fn tg_reply(m: &Msg, v: &str) -> Signed {
    tg(
        m,
        json!({ "text": m.plain(), "reply_to_message": tg_earlier(v) }),
    )
}

fn tg_quote(m: &Msg, v: &str) -> Signed {
    tg(
        m,
        json!({
            "text": m.plain(), "reply_to_message": tg_earlier("earlier"),
            "quote": {"text": v, "position": 0, "is_manual": true}
        }),
    )
}

fn tg_link(m: &Msg, v: &str) -> Signed {
    let text = m.plain();
    let url = format!("https://pay.example/checkout?note={}", v.replace(' ', "-"));
    let link = json!({"type": "text_link", "offset": 0, "length": text.encode_utf16().count(), "url": url});
    tg(m, json!({ "text": text, "entities": [link] }))
}

/// `/reboot now` as Telegram sends a tapped command: `/reboot@mybot now`
/// with a `bot_command` entity over the command.
fn tg_bot_command(m: &Msg, v: &str) -> Signed {
    let (command, args) = v.split_once(' ').unwrap_or((v, ""));
    let command = format!("{command}@mybot");
    let entity =
        json!({"type": "bot_command", "offset": 0, "length": command.encode_utf16().count()});
    tg(
        m,
        json!({ "text": format!("{command} {args}"), "entities": [entity] }),
    )
}

fn sl(m: &Msg, event: Value) -> Signed {
    p::slack::seal(&p::slack::message(
        &format!("Ev{}", m.seq),
        &m.sender,
        event,
    ))
}

fn sl_text(m: &Msg, v: &str) -> Signed {
    sl(m, json!({ "text": v }))
}

fn sl_blocks(m: &Msg, v: &str) -> Signed {
    let section = json!({"type": "rich_text_section", "elements": [{"type": "text", "text": v}]});
    let blocks = json!([{"type": "rich_text", "block_id": "mp1", "elements": [section]}]);
    sl(m, json!({ "text": m.plain(), "blocks": blocks }))
}

fn sl_attachment(m: &Msg, key: &str, v: &str) -> Signed {
    let mut attachment = json!({"id": 1, "title": "see", "text": "see", "fallback": "see"});
    attachment[key] = json!(v);
    sl(m, json!({ "text": m.plain(), "attachments": [attachment] }))
}

fn sl_attachment_title(m: &Msg, v: &str) -> Signed {
    sl_attachment(m, "title", v)
}

fn sl_attachment_text(m: &Msg, v: &str) -> Signed {
    sl_attachment(m, "text", v)
}

fn sl_attachment_fallback(m: &Msg, v: &str) -> Signed {
    sl_attachment(m, "fallback", v)
}

fn sl_form(m: &Msg, command: &str, text: &str) -> Signed {
    let response_url = format!("{}/commands/T0MP/{}/mp", m.api, m.seq);
    let trigger = format!("{}.mp.trigger", m.seq);
    p::slack::seal_form(p::slack::slash_command(
        &trigger,
        &m.sender,
        command,
        text,
        &response_url,
    ))
}

fn sl_slash_ask(m: &Msg, v: &str) -> Signed {
    sl_form(m, "/ask", v)
}

/// `/reboot now` as a Slack slash command: `command=/reboot&text=now`.
fn sl_slash(m: &Msg, v: &str) -> Signed {
    let (command, args) = v.split_once(' ').unwrap_or((v, ""));
    sl_form(m, command, args)
}

fn dc(m: &Msg, data: Value) -> Signed {
    let id = format!("13{:017}", m.seq);
    p::discord::seal(&p::discord::command(&id, &m.sender, data))
}

fn dc_option(m: &Msg, v: &str) -> Signed {
    dc(
        m,
        json!({"id": "99", "name": "ask", "type": 1,
               "options": [{"type": 3, "name": "question", "value": v}]}),
    )
}

/// A message context-menu command: it acts on the target message's content.
fn dc_message(m: &Msg, v: &str) -> Signed {
    let target = json!({"id": "777", "channel_id": "555000", "content": v, "type": 0,
                        "author": {"id": "31337", "username": "bob"}});
    dc(
        m,
        json!({"id": "98", "name": "ask", "type": 3, "target_id": "777",
               "resolved": {"messages": {"777": target}}}),
    )
}

/// `/reboot now` as a Discord application command with an option.
fn dc_command(m: &Msg, v: &str) -> Signed {
    let (command, args) = v.split_once(' ').unwrap_or((v, ""));
    dc(
        m,
        json!({"id": "97", "name": command.trim_start_matches('/'), "type": 1,
               "options": [{"type": 3, "name": "reason", "value": args}]}),
    )
}

fn fs(m: &Msg, message_type: &str, content: Value) -> Signed {
    let id = format!("om_mp{}", m.seq);
    p::feishu::seal(&p::feishu::message(&id, &m.sender, message_type, &content))
}

fn fs_text(m: &Msg, v: &str) -> Signed {
    fs(m, "text", json!({ "text": v }))
}

fn fs_post_title(m: &Msg, v: &str) -> Signed {
    let body = json!([[{"tag": "text", "text": m.plain()}]]);
    fs(m, "post", json!({ "title": v, "content": body }))
}

fn fs_post_text(m: &Msg, v: &str) -> Signed {
    let body = json!([[{"tag": "text", "text": v}]]);
    fs(m, "post", json!({ "title": "note", "content": body }))
}

fn wc_text(m: &Msg, v: &str) -> Signed {
    let id = (7_000_000_000 + m.seq).to_string();
    p::wecom::seal(&p::wecom::message(
        &id,
        &m.sender,
        "text",
        &[("Content", v)],
    ))
}

fn wc_link_title(m: &Msg, v: &str) -> Signed {
    let id = (7_000_000_000 + m.seq).to_string();
    let fields = [
        ("Title", v),
        ("Description", "see title"),
        ("Url", "https://example.com/mp"),
        ("PicUrl", "https://example.com/mp.png"),
    ];
    p::wecom::seal(&p::wecom::message(&id, &m.sender, "link", &fields))
}

fn dt(m: &Msg, fields: Value) -> Signed {
    let hook = format!("{}/robot/sendBySession?session=s{}", m.api, m.seq);
    let id = format!("msgmp{}", m.seq);
    p::dingtalk::seal_robot(&p::dingtalk::robot(&id, &m.sender, &hook, fields))
}

fn dt_text(m: &Msg, v: &str) -> Signed {
    dt(m, json!({"msgtype": "text", "text": {"content": v}}))
}

fn dt_rich_text(m: &Msg, v: &str) -> Signed {
    dt(
        m,
        json!({"msgtype": "richText", "content": {"richText": [{"text": v}, {"type": "picture", "downloadCode": "dc1"}]}}),
    )
}

/// An encrypted event subscription delivery: a group chat renamed.
fn dt_event_title(m: &Msg, v: &str) -> Signed {
    p::dingtalk::seal_event(&json!({
        "EventType": "chat_update_title", "ChatId": format!("chat{}", m.seq),
        "Title": v, "Operator": m.sender, "OperatorUnionId": format!("u{}", m.sender),
        "CorpId": "ding_mp", "TimeStamp": p::now_millis().to_string()
    }))
}

fn ge_text(m: &Msg, v: &str) -> Signed {
    p::generic::seal(&m.sender, &p::generic::message(json!({ "text": v })))
}

fn ge_attachment(m: &Msg, v: &str) -> Signed {
    let attachment = json!({"kind": "file", "url": "https://files.example/r.pdf", "name": v, "mime_type": "application/pdf"});
    p::generic::seal(
        &m.sender,
        &p::generic::message(json!({ "text": m.plain(), "attachments": [attachment] })),
    )
}

// ------------------------------------------------------------- policies ----

/// The policy files: JWT, the deny list behind a trusted proxy, the
/// per-user limit (when given); `forward` and every command allowed by
/// ABAC; `/ask` granted to every test sender and `/reboot` to none; the
/// card masked on ingress only.
fn policies(per_user: Option<usize>) -> Vec<(&'static str, String)> {
    let mut security = p::generic::jwt_policy();
    security.push_str("trusted_proxies: [127.0.0.1/32]\nip_blacklist: [203.0.113.0/24]\n");
    if let Some(n) = per_user {
        security.push_str(&format!(
            "rate_limiting:\n  per_user: {{ window: 60s, max_requests: {n} }}\n"
        ));
    }
    let abac = "policies:\n  - id: forward_and_commands\n    effect: Allow\n    resources: [\"/**\"]\n    actions: [forward, \"command:*\"]\n";
    let mut permissions = String::from("roles:\n  asker: [\"command:ask\"]\nsubjects:\n");
    for n in 1..=SENDERS {
        for platform in ["discord", "slack"] {
            permissions.push_str(&format!("  \"{platform}:{}\": [asker]\n", 700_000 + n));
        }
    }
    let dlp = "patterns:\n  credit_card:\n    regex: '\\b(?:[3-6]\\d{3}|2[2-7]\\d{2})(?:[ -]?\\d){9,15}\\b'\n    validate: luhn\n    action: mask\n    direction: ingress\n    mask: { keep_suffix: 4 }\n";
    vec![
        ("security_policy.yaml", security),
        ("abac.yaml", abac.into()),
        ("permissions.yaml", permissions),
        ("dlp.yaml", dlp.into()),
    ]
}

/// A translate and a passthrough route per platform; the generic API.
fn routes(api: &str) -> String {
    let mut out = String::new();
    for case in Case::all() {
        let name = case.platform.name;
        if case.is_api() {
            out.push_str("  - { path: /v1/messages, platform: generic, upstream: assistant }\n");
            continue;
        }
        let (mode, upstream) = match case.mode {
            Mode::Translate => ("translate", "assistant"),
            Mode::Passthrough => ("passthrough", "bot"),
        };
        out.push_str(&format!(
            "  - {{ path: {}, platform: {name}, mode: {mode}, upstream: {upstream}, api_base: \"{api}\",\n      secrets: {} }}\n",
            case.route(),
            p::secrets(name)
        ));
    }
    out
}

// -------------------------------------------------------------- harness ----

/// The gateway's answer, read whole.
#[derive(Debug)]
struct Answer {
    status: u16,
    retry_after: Option<String>,
    body: Vec<u8>,
}

/// What one request caused.
struct Seen {
    answer: Answer,
    /// Its audit line.
    audit: Value,
    /// What the bot received on this route meanwhile.
    bot: Vec<Recorded>,
    /// What the assistant received from this sender meanwhile.
    envelopes: Vec<Envelope>,
    /// How many platform API calls there were before the request.
    api_before: usize,
}

impl Seen {
    /// Status, decision and where the message went, for the log.
    fn summary(&self) -> String {
        let reason = self.audit["reason"].as_str().unwrap_or_default();
        format!(
            "{} {}{}{}, bot got {}, assistant got {}",
            self.answer.status,
            self.audit["decision"].as_str().unwrap_or("?"),
            if reason.is_empty() { "" } else { ":" },
            reason,
            self.bot.len(),
            self.envelopes.len()
        )
    }
}

struct Harness {
    gw: Gateway,
    bot: FakeApi,
    api: FakeApi,
    ai: RecordingAssistant,
    rt: tokio::runtime::Runtime,
    client: reqwest::Client,
    seq: Cell<u64>,
    /// (route, sender) of every request sent; the sender is empty for
    /// requests refused before their body was read.
    sent: RefCell<Vec<(String, String)>>,
    failures: RefCell<Vec<String>>,
}

impl Harness {
    fn start() -> Self {
        let (bot, api, ai) = (
            FakeApi::start(),
            FakeApi::start(),
            RecordingAssistant::start(),
        );
        let gw = Setup {
            upstreams: format!(
                "  assistant: {{ kind: grpc, nodes: [\"127.0.0.1:{}\"], balance: conversation, timeout: 5s }}\n  bot: {{ kind: http, nodes: [\"127.0.0.1:{}\"], timeout: 5s }}\n",
                ai.port, bot.port
            ),
            routes: routes(&api.base()),
            extra: String::new(),
            policies: policies(Some(LIMIT)),
        }
        .start();
        gw.wait_admin("/readyz", 200);
        let client = gw.client(true);
        Self {
            gw,
            bot,
            api,
            ai,
            rt: common::rt(),
            client,
            seq: Cell::new(0),
            sent: RefCell::new(Vec::new()),
            failures: RefCell::new(Vec::new()),
        }
    }

    fn next(&self) -> u64 {
        let n = self.seq.get() + 1;
        assert!(n <= SENDERS, "raise SENDERS: more than {SENDERS} ids used");
        self.seq.set(n);
        n
    }

    /// A message from a sender of its own.
    fn msg(&self) -> Msg {
        let seq = self.next();
        self.msg_from(&(700_000 + seq).to_string(), seq)
    }

    fn msg_from(&self, sender: &str, seq: u64) -> Msg {
        Msg {
            seq,
            sender: sender.to_string(),
            api: self.api.base(),
        }
    }

    fn send(&self, route: &str, s: &Signed, forwarded_for: Option<&str>) -> Answer {
        let url = match s.query.as_str() {
            "" => self.gw.url(route),
            q => format!("{}?{q}", self.gw.url(route)),
        };
        let mut req = self.client.post(url).body(s.body.clone());
        for (k, v) in &s.headers {
            req = req.header(*k, v.as_str());
        }
        if let Some(ip) = forwarded_for {
            req = req.header("x-forwarded-for", ip);
        }
        self.rt.block_on(async {
            let resp = req.send().await.expect("the gateway answers");
            let status = resp.status().as_u16();
            let retry_after = resp
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap_or("?").to_string());
            let body = resp.bytes().await.unwrap_or_default().to_vec();
            Answer {
                status,
                retry_after,
                body,
            }
        })
    }

    /// Sends `s` on the case's route and collects what it caused: its audit
    /// line (waited for), and what the bot and the assistant received.
    fn exchange(&self, case: Case, m: &Msg, s: &Signed, via: Option<&str>) -> Result<Seen, String> {
        let route = case.route();
        let audits_before = self.gw.audit_lines().len();
        let bot_before = self.bot.requests().len();
        let env_before = self.ai.envelopes().len();
        let api_before = self.api.requests().len();
        let answer = self.send(&route, s, via);
        let sender = via.is_none().then_some(m.sender.as_str());
        let audit = self.wait_audit(audits_before, &route, sender);
        // (e) counts lines by the sender they name: none before the body
        // was read, nor for an event that is not a message.
        let named = match &audit {
            Ok(line) => line["sender_id"].as_str().unwrap_or_default(),
            Err(_) => sender.unwrap_or_default(),
        };
        self.sent.borrow_mut().push((route.clone(), named.into()));
        let audit = audit?;
        let bot = self.bot.requests()[bot_before..]
            .iter()
            .filter(|r| r.path == route)
            .cloned()
            .collect();
        let envelopes = self.ai.envelopes()[env_before..]
            .iter()
            .filter(|e| e.sender.as_ref().is_some_and(|s| s.id == m.sender))
            .cloned()
            .collect();
        Ok(Seen {
            answer,
            audit,
            bot,
            envelopes,
            api_before,
        })
    }

    /// Waits for the first audit line after `from` on `route` from `sender`
    /// (any sender when `None`), or else one that names no sender (a
    /// verified event that is not a message has none).
    fn wait_audit(&self, from: usize, route: &str, sender: Option<&str>) -> Result<Value, String> {
        let deadline = Instant::now() + WAIT;
        loop {
            let lines: Vec<Value> = self.gw.audit_lines().into_iter().skip(from).collect();
            let on_route = |a: &&Value| a["route"] == route;
            let named = lines
                .iter()
                .filter(on_route)
                .find(|a| sender.is_none_or(|s| a["sender_id"] == s));
            let anonymous = || lines.iter().filter(on_route).find(|a| a["sender_id"] == "");
            if let Some(line) = named.or_else(anonymous) {
                return Ok(line.clone());
            }
            if Instant::now() > deadline {
                self.assert_alive();
                return Err(format!("no audit line for {route} from {sender:?}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the test at once (with what failed so far) if the gateway died.
    fn assert_alive(&self) {
        if admin_get(self.gw.admin, "/healthz").map(|(s, _)| s) != Some(200) {
            panic!(
                "the gateway is down; failures so far:\n{}\nlogs:\n{}",
                self.failures.borrow().join("\n"),
                self.gw.log_text()
            );
        }
    }

    /// Platform API calls (replies, notices) since `from`, as plaintext.
    fn api_texts(&self, platform: &str, from: usize) -> Vec<String> {
        self.api.requests()[from..]
            .iter()
            .map(|r| format!("{} {}", r.path, p::plaintext(platform, &r.body)))
            .collect()
    }

    /// Waits for the assistant's echo of `marker`, inline or through the API.
    fn wait_echo(&self, platform: &str, seen: &Seen, marker: &str) -> Result<(), String> {
        let echo = format!("echo: {marker}");
        let deadline = Instant::now() + WAIT;
        while !p::plaintext(platform, &seen.answer.body).contains(&echo) {
            if self
                .api_texts(platform, seen.api_before)
                .iter()
                .any(|t| t.contains(&echo))
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("the assistant's reply never came ({echo})"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    fn record(&self, what: String, result: Checked) {
        match result {
            Ok(note) => eprintln!("ok   {what}: {note}"),
            Err(e) => {
                eprintln!("FAIL {what}: {e}");
                self.failures.borrow_mut().push(format!("{what}: {e}"));
            }
        }
    }
}

/// A check's outcome: what happened (for the log), or what went wrong.
type Checked = Result<String, String>;

macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}

/// Whether `text` carries the card, spaced or not.
fn leaks(text: &str) -> bool {
    let digits: String = text.chars().filter(char::is_ascii_digit).collect();
    text.contains("4111 1111 1111 1111") || digits.contains(CARD_DIGITS)
}

fn shorten(text: &str) -> String {
    text.chars().take(600).collect()
}

// --------------------------------------------------------------- checks ----

/// (a) The card in one field reaches neither the bot nor the assistant.
fn card_in_field(h: &Harness, case: Case, build: Build) -> Checked {
    let m = h.msg();
    let seen = h.exchange(
        case,
        &m,
        &build(&m, &format!("{} {CARD_TEXT}", m.marker())),
        None,
    )?;
    let status = seen.answer.status;
    ensure!(
        (200..300).contains(&status) || (400..500).contains(&status),
        "answered {status}, neither 2xx nor a 4xx refusal"
    );
    let name = case.platform.name;
    for r in &seen.bot {
        let text = p::plaintext(name, &r.body);
        ensure!(
            !leaks(&text),
            "the bot received the card: {}",
            shorten(&text)
        );
        // Every request carries the marker in a readable field: without
        // it, this is not the plaintext and the check above proves nothing.
        ensure!(
            text.contains(&m.marker()),
            "cannot read what the bot received: {}",
            shorten(&text)
        );
    }
    for e in &seen.envelopes {
        let text = format!("{e:?}");
        ensure!(
            !leaks(&text),
            "the assistant received the card: {}",
            shorten(&text)
        );
    }
    if !seen.envelopes.is_empty() {
        h.wait_echo(name, &seen, &m.marker())?;
    }
    let answer = p::plaintext(name, &seen.answer.body);
    ensure!(
        !leaks(&answer),
        "the answer carries the card: {}",
        shorten(&answer)
    );
    for text in h.api_texts(name, seen.api_before) {
        ensure!(
            !leaks(&text),
            "a platform API call carries the card: {}",
            shorten(&text)
        );
    }
    Ok(seen.summary())
}

/// (b) `/reboot now`, which no sender may run, is denied and reaches nobody.
fn command_refused(h: &Harness, case: Case, build: Build) -> Checked {
    let m = h.msg();
    let seen = h.exchange(case, &m, &build(&m, "/reboot now"), None)?;
    let want = if case.is_api() { 403 } else { 200 };
    ensure!(
        seen.answer.status == want,
        "answered {}, not {want}",
        seen.answer.status
    );
    ensure!(
        seen.audit["decision"] == "denied",
        "audit line: {}",
        seen.audit
    );
    ensure!(seen.bot.is_empty(), "the bot received it: {:?}", seen.bot);
    ensure!(
        seen.envelopes.is_empty(),
        "the assistant received it: {:?}",
        seen.envelopes
    );
    let answer = p::plaintext(case.platform.name, &seen.answer.body);
    ensure!(!answer.contains("echo:"), "answered with an echo: {answer}");
    Ok(seen.summary())
}

/// (c) A client on the deny list is refused before anything is delivered.
fn denied_address_refused(h: &Harness, case: Case) -> Checked {
    let m = h.msg();
    let seen = h.exchange(
        case,
        &m,
        &case.platform.fields[0].1(&m, &m.plain()),
        Some(DENIED_IP),
    )?;
    ensure!(seen.answer.status == 403, "answered {}", seen.answer.status);
    ensure!(
        seen.audit["decision"] == "rejected" && seen.audit["reason"] == "blacklist",
        "audit line: {}",
        seen.audit
    );
    ensure!(seen.bot.is_empty(), "the bot received it");
    ensure!(
        h.ai.envelopes()
            .iter()
            .all(|e| e.sender.as_ref().is_none_or(|s| s.id != m.sender)),
        "the assistant received it"
    );
    Ok(seen.summary())
}

/// (d) One sender's messages pass up to the limit; the next is limited.
fn limit_enforced(h: &Harness, case: Case) -> Checked {
    let sender = (700_000 + h.next()).to_string();
    for i in 0..=LIMIT {
        let m = h.msg_from(&sender, h.next());
        let seen = h.exchange(case, &m, &case.platform.fields[0].1(&m, &m.plain()), None)?;
        let delivered = seen.bot.len() + seen.envelopes.len();
        let (status, decision) = (seen.answer.status, &seen.audit["decision"]);
        if i < LIMIT {
            ensure!(
                (200..300).contains(&status) && delivered == 1,
                "message {} of {LIMIT}: answered {status}, delivered {delivered} times",
                i + 1
            );
            ensure!(
                DELIVERED.iter().any(|d| decision == d),
                "message {}: audit line {}",
                i + 1,
                seen.audit
            );
            continue;
        }
        ensure!(delivered == 0, "message {} was delivered", i + 1);
        ensure!(
            decision == "rate_limited",
            "message {}: audit line {}",
            i + 1,
            seen.audit
        );
        if case.is_api() {
            ensure!(
                status == 429 && seen.answer.retry_after.is_some(),
                "answered {status} (Retry-After {:?}), not 429 with Retry-After",
                seen.answer.retry_after
            );
        } else {
            ensure!(status == 200, "answered {status}, not 200");
        }
    }
    Ok(format!("{LIMIT} delivered, then rate_limited"))
}

/// Runs (a)–(d) for one case.
fn run_case(h: &Harness, case: Case) {
    let label = case.label();
    for (field, build) in case.platform.fields {
        h.record(
            format!("{label} (a) card in {field}"),
            card_in_field(h, case, *build),
        );
    }
    for (how, build) in case.platform.commands {
        h.record(
            format!("{label} (b) /reboot as {how}"),
            command_refused(h, case, *build),
        );
    }
    h.record(
        format!("{label} (c) denied address"),
        denied_address_refused(h, case),
    );
    h.record(
        format!("{label} (d) limit of {LIMIT}"),
        limit_enforced(h, case),
    );
}

/// Waits (bounded) until no new audit line has come for half a second.
fn settle(gw: &Gateway) -> usize {
    let deadline = Instant::now() + WAIT;
    let (mut count, mut since) = (gw.audit_lines().len(), Instant::now());
    while Instant::now() < deadline && since.elapsed() < Duration::from_millis(500) {
        std::thread::sleep(Duration::from_millis(50));
        let now = gw.audit_lines().len();
        if now != count {
            (count, since) = (now, Instant::now());
        }
    }
    count
}

/// (e) Exactly one audit line per request: per case, the lines on its
/// route from each sender match the requests sent; in all, the lines match
/// the requests (none on any other route).
fn one_audit_line_each(h: &Harness) {
    let total = settle(&h.gw);
    let lines = h.gw.audit_lines();
    let sent = h.sent.borrow();
    for case in Case::all() {
        let route = case.route();
        let mut want: BTreeMap<&str, usize> = BTreeMap::new();
        for (_, sender) in sent.iter().filter(|(r, _)| *r == route) {
            *want.entry(sender.as_str()).or_default() += 1;
        }
        let on_route: Vec<&Value> = lines
            .iter()
            .filter(|a| a["route"] == route.as_str())
            .collect();
        let mut wrong = Vec::new();
        for (sender, n) in &want {
            let got = on_route
                .iter()
                .filter(|a| a["sender_id"] == *sender)
                .count();
            if got != *n {
                wrong.push(format!("{got} lines for {n} requests from {sender:?}"));
            }
        }
        let n: usize = want.values().sum();
        if on_route.len() != n {
            wrong.push(format!("{} lines for {n} requests", on_route.len()));
        }
        let result = match wrong.is_empty() {
            true => Ok(format!("{n} lines for {n} requests")),
            false => Err(wrong.join("; ")),
        };
        h.record(
            format!("{} (e) one audit line per request", case.label()),
            result,
        );
    }
    let result = match total == sent.len() {
        true => Ok(format!("{total} lines for {total} requests")),
        false => Err(format!("{total} audit lines for {} requests", sent.len())),
    };
    h.record("(e) in all".into(), result);
}

#[test]
fn every_platform_and_mode_takes_every_stage() {
    let h = Harness::start();
    for case in Case::all() {
        run_case(&h, case);
    }
    one_audit_line_each(&h);
    let failures = h.failures.borrow();
    assert!(
        failures.is_empty(),
        "{} failing checks:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

// ------------------------------------------------------ bot down, then up ----

/// A Telegram passthrough route to a bot that is down: the update gets a
/// 5xx (Telegram redelivers); once the bot is up on the same port, the
/// redelivery reaches it exactly once, and a further one is a duplicate.
#[test]
fn passthrough_bot_down_then_up_delivers_once() {
    let port = free_port();
    let route = "/hooks/telegram/bot";
    let gw = Setup {
        upstreams: format!("  bot: {{ kind: http, nodes: [\"127.0.0.1:{port}\"], timeout: 5s }}\n"),
        routes: format!(
            "  - {{ path: {route}, platform: telegram, mode: passthrough, upstream: bot, secrets: {} }}\n",
            p::secrets("telegram")
        ),
        extra: String::new(),
        policies: policies(None),
    }
    .start();
    let h = Delivery::new(&gw, route);
    let update = p::telegram::seal(&p::telegram::update(
        990_001,
        "700999",
        json!({"text": "once"}),
    ));

    let first = h.deliver(&update);
    assert!(first.status >= 500, "the bot is down: {first:?}");
    let bot = FakeApi::start_on(port).expect("the bot's port was taken meanwhile");
    let deadline = Instant::now() + WAIT;
    let mut again = h.deliver(&update);
    while again.status >= 500 {
        assert!(bot.requests().is_empty(), "a 5xx although the bot got it");
        assert!(
            Instant::now() < deadline,
            "the redelivery keeps failing: {again:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
        again = h.deliver(&update);
    }
    assert_eq!(again.status, 200, "{again:?}");
    assert_eq!(
        bot.requests_to(route).len(),
        1,
        "the redelivery was answered 200 but reached the bot {} times; its audit line: {}",
        bot.requests_to(route).len(),
        h.last_audit()
    );
    assert_eq!(bot.requests_to(route)[0].body, update.body);

    let third = h.deliver(&update);
    assert_eq!(third.status, 200, "{third:?}");
    assert_eq!(h.last_audit()["decision"], "duplicate");
    assert_eq!(
        bot.requests().len(),
        1,
        "the duplicate never reached the bot"
    );
}

/// Sends one signed request to one route, as a platform redelivers it.
struct Delivery<'g> {
    gw: &'g Gateway,
    route: &'g str,
    rt: tokio::runtime::Runtime,
    sent: Cell<usize>,
}

impl<'g> Delivery<'g> {
    fn new(gw: &'g Gateway, route: &'g str) -> Self {
        Self {
            gw,
            route,
            rt: common::rt(),
            sent: Cell::new(0),
        }
    }

    /// The route's latest audit line, once the one for the latest delivery
    /// has arrived.
    fn last_audit(&self) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let lines = self.gw.audit_lines();
            let mine: Vec<&Value> = lines.iter().filter(|a| a["route"] == self.route).collect();
            if mine.len() >= self.sent.get() {
                return mine.last().map(|a| (*a).clone()).unwrap_or_default();
            }
            assert!(
                Instant::now() < deadline,
                "{} deliveries, {} audit lines",
                self.sent.get(),
                mine.len()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn deliver(&self, s: &Signed) -> Answer {
        self.sent.set(self.sent.get() + 1);
        let mut req = self
            .gw
            .client(true)
            .post(self.gw.url(self.route))
            .body(s.body.clone());
        for (k, v) in &s.headers {
            req = req.header(*k, v.as_str());
        }
        self.rt.block_on(async {
            let resp = req.send().await.expect("the gateway answers");
            Answer {
                status: resp.status().as_u16(),
                retry_after: None,
                body: resp.bytes().await.unwrap_or_default().to_vec(),
            }
        })
    }
}
