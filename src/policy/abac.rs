//! ABAC: decides whether a subject may perform an action on a resource,
//! from the rules in `policies/abac.yaml`, with RBAC (`permissions.yaml`)
//! supplying roles and the command allowlist.
//!
//! The file is parsed and compiled once per (re)load: globs become small
//! automata, CIDRs and time zones are parsed, and rules are indexed by action
//! and by resource (exact strings, and the literal prefix of globs up to its
//! last `/`), so a decision looks at a handful of candidate rules instead of
//! scanning all of them, and the request path compiles and allocates nothing
//! except on the rare deny-by-RBAC path.
//!
//! # Semantics
//! - A rule applies when one of its `resources` globs and one of its
//!   `actions` globs match and every condition holds.
//! - `*` matches any run of characters except `/`; `**` matches any run
//!   including `/` (`/hooks/**` matches `/hooks/slack/demo`, not `/hooks`).
//! - Deny overrides allow. With no applying Allow the answer is deny
//!   (`default_deny`). Among applying rules of the deciding effect, the first
//!   in file order names the decision, except that an Allow carrying
//!   `confirm: true` wins over one without, so an obligation is never lost.
//! - A condition whose attribute is missing from the request does not hold:
//!   policies fail closed.
//! - An action `command:<name>` that ABAC allows must also be granted to one of
//!   the subject's roles by `permissions.yaml` (permission `command:<name>`,
//!   globs like `command:*` allowed): that is the command allowlist.
//!
//! # Where each attribute comes from
//! | attribute | source |
//! |-----------|--------|
//! | `subject.id` | JWT `sub` (HTTP API) or the platform's sender id (webhooks) |
//! | `subject.person` | JWT claim naming the person, or the platform sender's mapped person id |
//! | `subject.roles` (`roles`) | JWT `roles` claim ∪ `permissions.yaml` `subjects:` entries for the person or `platform:user_id` |
//! | `subject.tenant` (`tenant`) | JWT `tenant` claim, or the platform's tenant/workspace/corp id |
//! | `subject.device_type` (`deviceType`) | JWT `device_type` claim (absent for webhooks: such conditions fail closed) |
//! | `subject.platform` (`platform`) | the route's platform (`generic`, `slack`, `feishu`, ...) |
//! | `subject.claims` (`claims.<name>`) | every JWT claim, by name |
//! | `resource` | the route path the message arrived on (`/v1/messages`, `/hooks/slack/demo`) |
//! | `action` | `forward` for every inbound message; `command:<name>` when it starts with `/<name>` |
//! | `chat_type` | the platform parser's conversation type (`direct`, `group`, ...) |
//! | `command` | the command name without its slash (`backup` for `/backup now`) |
//! | `environment.ip` (`ipRange`) | the client IP from the socket (or `X-Forwarded-For` from a trusted proxy) |
//! | `environment.time` (`time`) | the gateway's clock when the message arrived |

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::IpAddr;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use chrono::{DateTime, Timelike, Utc};
use chrono_tz::Tz;
use ipnet::IpNet;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use crate::config::yaml::{did_you_mean, locate, parse_str, FileError};
use crate::policy::rbac::{Grant, Permissions};

/// Whether a rule allows or denies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
pub enum Effect {
    /// The rule permits the request (unless a Deny also applies).
    #[serde(alias = "allow")]
    Allow,
    /// The rule refuses the request, whatever else applies.
    #[serde(alias = "deny")]
    Deny,
}

impl fmt::Display for Effect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Effect::Allow => "allow",
            Effect::Deny => "deny",
        })
    }
}

/// Who is asking: identity attributes from the JWT or the platform.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Subject {
    /// JWT `sub` or the platform's user id.
    pub id: String,
    /// The person behind the account, when known.
    pub person: Option<String>,
    /// Roles from the JWT; `permissions.yaml` subjects add more at decision time.
    pub roles: Vec<String>,
    /// Tenant, workspace or corp id.
    pub tenant: Option<String>,
    /// Device type claimed by the client (`mobile`, `desktop`, ...).
    pub device_type: Option<String>,
    /// Platform the message came from (`generic`, `slack`, ...).
    pub platform: Option<String>,
    /// Every JWT claim, for `claims.<name>` conditions.
    pub claims: BTreeMap<String, serde_json::Value>,
}

/// Where and when the request happens.
#[derive(Debug, Clone, PartialEq)]
pub struct Environment {
    /// Client IP; `None` fails every `ipRange` condition.
    pub ip: Option<IpAddr>,
    /// Arrival time.
    pub time: DateTime<Utc>,
}

/// Everything an ABAC decision looks at.
#[derive(Debug, Clone, PartialEq)]
pub struct AccessRequest {
    /// Who is asking.
    pub subject: Subject,
    /// The route path (`/v1/messages`, `/hooks/slack/demo`).
    pub resource: String,
    /// `forward`, `read` or `command:<name>`.
    pub action: String,
    /// Conversation type from the platform parser.
    pub chat_type: Option<String>,
    /// Command name without its slash; defaults to the `command:<name>` action's name.
    pub command: Option<String>,
    /// Source IP and time.
    pub environment: Environment,
}

impl AccessRequest {
    /// The command this request carries, from `command` or a `command:<name>` action.
    pub fn command_name(&self) -> Option<&str> {
        self.command
            .as_deref()
            .or_else(|| self.action.strip_prefix("command:"))
    }
}

/// What decided a request, for the audit line and a metric label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecidedBy {
    /// An ABAC rule, by id.
    Rule {
        /// The rule's id.
        id: Arc<str>,
        /// The rule's effect.
        effect: Effect,
    },
    /// No Allow rule applied.
    DefaultDeny,
    /// ABAC allowed a command, but no role of the subject grants its permission.
    NoRoleGrants {
        /// The permission that was missing, `command:<name>`.
        permission: String,
    },
}

impl DecidedBy {
    /// A label bounded to the rule ids plus two fixed names, safe for metrics
    /// (the command name is user input, so it is left out).
    pub fn metric_label(&self) -> &str {
        match self {
            DecidedBy::Rule { id, .. } => id,
            DecidedBy::DefaultDeny => "default_deny",
            DecidedBy::NoRoleGrants { .. } => "rbac:no_role_grants",
        }
    }
}

impl fmt::Display for DecidedBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecidedBy::Rule { id, .. } => f.write_str(id),
            DecidedBy::DefaultDeny => f.write_str("default_deny"),
            DecidedBy::NoRoleGrants { permission } => {
                write!(f, "rbac:no_role_grants {permission}")
            }
        }
    }
}

/// The outcome of ABAC + RBAC for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may proceed.
    pub allowed: bool,
    /// The rule (or default) that decided.
    pub decided_by: DecidedBy,
    /// The allowing rule asks for a second-step confirmation before acting.
    pub confirm: bool,
    /// For allowed commands: the role and permission that granted it.
    pub grant: Option<Grant>,
}

/// One rule that matched the request's resource and action, and whether its
/// conditions held: what `moltgate explain` lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleTrace {
    /// The rule's id.
    pub id: Arc<str>,
    /// The rule's effect.
    pub effect: Effect,
    /// The rule's `confirm` flag.
    pub confirm: bool,
    /// `None` when every condition held; else the first condition that did not.
    pub failed: Option<String>,
}

/// A compiled `abac.yaml`. The default has no rules, so it denies everything.
#[derive(Debug, Default)]
pub struct AbacPolicy {
    rules: Vec<Rule>,
    index: Index,
}

impl AbacPolicy {
    /// Parses and compiles `abac.yaml`; every error names `file:line:col`.
    pub fn from_yaml(path: &Path, text: &str) -> Result<Self, FileError> {
        let raw: RawFile = parse_str(path, text).map_err(polish)?;
        let mut seen: HashSet<&str> = HashSet::new();
        for r in &raw.policies {
            if r.id.trim().is_empty() {
                return Err(FileError::at(
                    path,
                    locate(text, "id:"),
                    "a rule has an empty id; every rule needs a unique id",
                ));
            }
            if !seen.insert(&r.id) {
                let pos = locate_id(text, &r.id, 2).or_else(|| locate(text, &r.id));
                return Err(FileError::at(
                    path,
                    pos,
                    format!("duplicate rule id '{}'; rule ids must be unique", r.id),
                ));
            }
        }
        let rules: Vec<Rule> = raw
            .policies
            .into_iter()
            .map(|r| Rule {
                id: Arc::from(r.id.as_str()),
                effect: r.effect,
                resources: r.resources.0,
                actions: r.actions.0,
                conditions: r.conditions,
                confirm: r.confirm,
            })
            .collect();
        let index = Index::build(&rules);
        Ok(Self { rules, index })
    }

    /// Number of rules.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Whether the file has no rules (everything is then denied).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Every rule id in file order, e.g. to pre-register metric labels.
    pub fn rule_ids(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().map(|r| &*r.id)
    }

    /// Decides `req`: ABAC (deny overrides, default deny), then the RBAC
    /// command allowlist for `command:<name>` actions.
    pub fn decide(&self, req: &AccessRequest, perms: &Permissions) -> Decision {
        let mut best_deny: Option<usize> = None;
        // (confirm, index): a confirming Allow beats a plain one, then file order.
        let mut best_allow: Option<(bool, usize)> = None;
        self.index.candidates(&self.rules, req, |i| {
            let rule = &self.rules[i];
            match rule.effect {
                Effect::Deny => {
                    if best_deny.is_none_or(|d| i < d) && rule.conditions.check(req, perms).is_ok()
                    {
                        best_deny = Some(i);
                    }
                }
                Effect::Allow => {
                    let better = match best_allow {
                        None => true,
                        Some((c, j)) => (rule.confirm && !c) || (rule.confirm == c && i < j),
                    };
                    if best_deny.is_none() && better && rule.conditions.check(req, perms).is_ok() {
                        best_allow = Some((rule.confirm, i));
                    }
                }
            }
        });
        if let Some(i) = best_deny {
            return self.rule_decision(i, false, None);
        }
        let Some((confirm, i)) = best_allow else {
            return Decision {
                allowed: false,
                decided_by: DecidedBy::DefaultDeny,
                confirm: false,
                grant: None,
            };
        };
        if req.action.starts_with("command:") {
            match perms.grant(&req.subject, &req.action) {
                Some(g) => self.rule_decision(i, confirm, Some(g)),
                None => Decision {
                    allowed: false,
                    decided_by: DecidedBy::NoRoleGrants {
                        permission: req.action.clone(),
                    },
                    confirm: false,
                    grant: None,
                },
            }
        } else {
            self.rule_decision(i, confirm, None)
        }
    }

    /// Every rule whose resource and action match `req`, in file order, with
    /// the first failing condition of each: the detail behind a decision.
    pub fn trace(&self, req: &AccessRequest, perms: &Permissions) -> Vec<RuleTrace> {
        let mut hits = Vec::new();
        self.index.candidates(&self.rules, req, |i| hits.push(i));
        hits.sort_unstable();
        hits.dedup();
        hits.into_iter()
            .map(|i| {
                let r = &self.rules[i];
                RuleTrace {
                    id: r.id.clone(),
                    effect: r.effect,
                    confirm: r.confirm,
                    failed: r
                        .conditions
                        .check(req, perms)
                        .err()
                        .map(|f| f.describe(&r.conditions).into_owned()),
                }
            })
            .collect()
    }

    fn rule_decision(&self, i: usize, confirm: bool, grant: Option<Grant>) -> Decision {
        let rule = &self.rules[i];
        Decision {
            allowed: rule.effect == Effect::Allow,
            decided_by: DecidedBy::Rule {
                id: rule.id.clone(),
                effect: rule.effect,
            },
            confirm,
            grant,
        }
    }
}

/// Position of the `n`th (1-based) `id: <id>` (quoted or not) in `text`.
fn locate_id(text: &str, id: &str, n: usize) -> Option<(usize, usize)> {
    let offset = text
        .match_indices("id:")
        .filter_map(|(i, _)| {
            let after = &text[i + 3..];
            let value = after.trim_start_matches([' ', '"', '\'']);
            let rest = value.strip_prefix(id)?;
            let ends = rest
                .chars()
                .next()
                .is_none_or(|c| matches!(c, ' ' | ',' | '}' | '"' | '\'' | '\n' | '\r' | '#'));
            ends.then_some(i)
        })
        .nth(n.checked_sub(1)?)?;
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.rfind('\n').map_or(offset, |nl| offset - nl - 1) + 1;
    Some((line, column))
}

#[derive(Debug)]
struct Rule {
    id: Arc<str>,
    effect: Effect,
    resources: Vec<Glob>,
    actions: Vec<Glob>,
    conditions: Conditions,
    confirm: bool,
}

// ---------------------------------------------------------------------------
// Globs

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Elem {
    Byte(u8),
    Star,
    DoubleStar,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GlobKind {
    /// No wildcard: plain equality.
    Exact,
    /// A literal followed by a final `**`: a prefix test.
    Prefix,
    /// A literal followed by a final `*`: a prefix test, then no `/` after it.
    PrefixStar,
    /// Anything else: the literal prefix, then the automaton on the rest.
    General,
}

/// A resource, action or permission glob: `*` within a `/` segment, `**` across.
#[derive(Debug, Clone)]
pub struct Glob {
    source: Box<str>,
    elems: Box<[Elem]>,
    kind: GlobKind,
    prefix_len: usize,
}

impl Glob {
    /// Compiles `pattern`; errors say what is wrong without panicking.
    pub fn new(pattern: &str) -> Result<Self, String> {
        if pattern.is_empty() {
            return Err("empty pattern; write '**' to match everything".into());
        }
        if pattern.contains("***") {
            return Err(format!(
                "invalid glob '{pattern}': '***' is ambiguous; use '*' (one segment) or '**' (any depth)"
            ));
        }
        let prefix_len = pattern.find('*').unwrap_or(pattern.len());
        // Only the part from the first wildcard on needs the automaton.
        let bytes = &pattern.as_bytes()[prefix_len..];
        let mut elems = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'*' {
                if bytes.get(i + 1) == Some(&b'*') {
                    elems.push(Elem::DoubleStar);
                    i += 2;
                } else {
                    elems.push(Elem::Star);
                    i += 1;
                }
            } else {
                elems.push(Elem::Byte(bytes[i]));
                i += 1;
            }
        }
        let kind = match elems.as_slice() {
            [] => GlobKind::Exact,
            [Elem::DoubleStar] => GlobKind::Prefix,
            [Elem::Star] => GlobKind::PrefixStar,
            _ => GlobKind::General,
        };
        Ok(Self {
            source: pattern.into(),
            elems: elems.into_boxed_slice(),
            kind,
            prefix_len,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The literal text before the first wildcard.
    pub fn literal_prefix(&self) -> &str {
        &self.source[..self.prefix_len]
    }

    /// Whether the pattern has no wildcard.
    pub fn is_literal(&self) -> bool {
        self.kind == GlobKind::Exact
    }

    /// Whether `s` matches the whole pattern.
    pub fn is_match(&self, s: &str) -> bool {
        match self.kind {
            GlobKind::Exact => *self.source == *s,
            GlobKind::Prefix => s.starts_with(self.literal_prefix()),
            GlobKind::PrefixStar => s
                .strip_prefix(self.literal_prefix())
                .is_some_and(|rest| !rest.contains('/')),
            GlobKind::General => {
                let Some(rest) = s.strip_prefix(self.literal_prefix()) else {
                    return false;
                };
                let words = (self.elems.len() + 1).div_ceil(64);
                if words <= 2 {
                    let (mut a, mut b) = ([0u64; 2], [0u64; 2]);
                    self.run(rest.as_bytes(), &mut a[..words], &mut b[..words])
                } else {
                    let (mut a, mut b) = (vec![0u64; words], vec![0u64; words]);
                    self.run(rest.as_bytes(), &mut a, &mut b)
                }
            }
        }
    }

    /// Simulates the pattern as an NFA over bytes: state `i` means "about to
    /// match element `i`"; linear in input length times pattern length, so
    /// no input can make it backtrack exponentially.
    fn run<'a>(&self, input: &[u8], mut cur: &'a mut [u64], mut next: &'a mut [u64]) -> bool {
        let m = self.elems.len();
        set(cur, 0);
        self.close(cur);
        for &b in input {
            next.iter_mut().for_each(|w| *w = 0);
            let mut any = false;
            for (wi, &word) in cur.iter().enumerate() {
                let mut w = word;
                while w != 0 {
                    let i = wi * 64 + w.trailing_zeros() as usize;
                    w &= w - 1;
                    match self.elems.get(i) {
                        Some(Elem::Byte(x)) if *x == b => set(next, i + 1),
                        Some(Elem::Star) if b != b'/' => set(next, i),
                        Some(Elem::DoubleStar) => set(next, i),
                        _ => continue,
                    }
                    any = true;
                }
            }
            if !any {
                return false;
            }
            self.close(next);
            std::mem::swap(&mut cur, &mut next);
        }
        get(cur, m)
    }

    /// A wildcard may match nothing, so being before it means being after it too.
    fn close(&self, states: &mut [u64]) {
        for (i, e) in self.elems.iter().enumerate() {
            if get(states, i) && !matches!(e, Elem::Byte(_)) {
                set(states, i + 1);
            }
        }
    }
}

fn get(bits: &[u64], i: usize) -> bool {
    bits.get(i / 64).is_some_and(|w| w & (1 << (i % 64)) != 0)
}

fn set(bits: &mut [u64], i: usize) {
    if let Some(w) = bits.get_mut(i / 64) {
        *w |= 1 << (i % 64);
    }
}

// ---------------------------------------------------------------------------
// Index

/// Rules reachable from one action, by resource.
#[derive(Debug, Default)]
struct ResourceIndex {
    /// Literal resources.
    exact: HashMap<Box<str>, Vec<u32>>,
    /// Glob resources, keyed by their literal prefix cut after its last `/`;
    /// entries are (rule, resource glob) so only that glob is tested.
    by_prefix: HashMap<Box<str>, Vec<(u32, u32)>>,
}

impl ResourceIndex {
    fn insert(&mut self, rule: u32, res_idx: u32, glob: &Glob) {
        if glob.is_literal() {
            self.exact
                .entry(glob.as_str().into())
                .or_default()
                .push(rule);
        } else {
            let p = glob.literal_prefix();
            let key = p.rfind('/').map_or("", |i| &p[..=i]);
            self.by_prefix
                .entry(key.into())
                .or_default()
                .push((rule, res_idx));
        }
    }

    fn candidates(&self, rules: &[Rule], resource: &str, f: &mut impl FnMut(usize)) {
        if let Some(v) = self.exact.get(resource) {
            v.iter().for_each(|&i| f(i as usize));
        }
        if self.by_prefix.is_empty() {
            return;
        }
        let mut probe = |key: &str| {
            if let Some(v) = self.by_prefix.get(key) {
                for &(rule, res) in v {
                    let r = &rules[rule as usize];
                    if r.resources
                        .get(res as usize)
                        .is_some_and(|g| g.is_match(resource))
                    {
                        f(rule as usize);
                    }
                }
            }
        };
        probe("");
        for (i, _) in resource.match_indices('/') {
            probe(&resource[..=i]);
        }
    }
}

#[derive(Debug, Default)]
struct Index {
    /// Literal actions.
    by_action: HashMap<Box<str>, ResourceIndex>,
    /// Rules with at least one glob action; the action is re-checked per rule.
    glob_actions: ResourceIndex,
}

impl Index {
    fn build(rules: &[Rule]) -> Self {
        let mut index = Index::default();
        for (ri, rule) in rules.iter().enumerate() {
            let ri = ri as u32;
            let has_glob_action = rule.actions.iter().any(|a| !a.is_literal());
            let mut literal_actions: Vec<&str> = rule
                .actions
                .iter()
                .filter(|a| a.is_literal())
                .map(|a| a.as_str())
                .collect();
            literal_actions.sort_unstable();
            literal_actions.dedup();
            for (gi, glob) in rule.resources.iter().enumerate() {
                for a in &literal_actions {
                    index
                        .by_action
                        .entry((*a).into())
                        .or_default()
                        .insert(ri, gi as u32, glob);
                }
                if has_glob_action {
                    index.glob_actions.insert(ri, gi as u32, glob);
                }
            }
        }
        index
    }

    /// Calls `f` with every rule whose resource and action match (possibly
    /// more than once for the same rule).
    fn candidates(&self, rules: &[Rule], req: &AccessRequest, mut f: impl FnMut(usize)) {
        if let Some(ri) = self.by_action.get(req.action.as_str()) {
            ri.candidates(rules, &req.resource, &mut f);
        }
        self.glob_actions
            .candidates(rules, &req.resource, &mut |i| {
                if rules[i].actions.iter().any(|a| a.is_match(&req.action)) {
                    f(i);
                }
            });
    }
}

// ---------------------------------------------------------------------------
// Conditions

/// The condition names, as operators write them; used for did-you-mean.
const CONDITION_NAMES: &[&str] = &[
    "time",
    "timezone",
    "ipRange",
    "deviceType",
    "platform",
    "tenant",
    "roles",
    "chat_type",
    "command",
    "claims.<name>",
];

/// A daily time window in minutes, possibly overnight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TimeWindow {
    start: u32,
    end: u32,
}

impl TimeWindow {
    fn parse(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "invalid time window '{s}'; expected HH:MM-HH:MM, like 09:00-18:00 or 22:00-06:00"
            )
        };
        let (a, b) = s.split_once('-').ok_or_else(bad)?;
        let hm = |t: &str| -> Option<u32> {
            let (h, m) = t.trim().split_once(':')?;
            if h.len() != 2 || m.len() != 2 {
                return None;
            }
            let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
            (m < 60 && (h < 24 || (h == 24 && m == 0))).then_some(h * 60 + m)
        };
        let (start, end) = (hm(a).ok_or_else(bad)?, hm(b).ok_or_else(bad)?);
        if start == end {
            return Err(format!(
                "empty time window '{s}'; use 00:00-24:00 for the whole day"
            ));
        }
        if start == 24 * 60 {
            return Err(bad());
        }
        Ok(Self { start, end })
    }

    /// `start <= t < end`, wrapping past midnight when `start > end`.
    fn contains(&self, minute: u32) -> bool {
        if self.start < self.end {
            self.start <= minute && minute < self.end
        } else {
            minute >= self.start || minute < self.end
        }
    }
}

/// Compiled conditions of one rule; every present condition must hold.
#[derive(Debug, Default)]
struct Conditions {
    time: Option<TimeWindow>,
    timezone: Option<Tz>,
    ip_range: Option<Vec<IpNet>>,
    device_type: Option<Vec<String>>,
    platform: Option<Vec<String>>,
    tenant: Option<Vec<String>>,
    roles: Option<Vec<String>>,
    chat_type: Option<Vec<String>>,
    command: Option<Vec<String>>,
    claims: Vec<(String, Vec<String>)>,
}

/// Which condition failed, without allocating on the request path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failed {
    Named(&'static str),
    Claim(usize),
}

impl Failed {
    fn describe(self, c: &Conditions) -> Cow<'static, str> {
        match self {
            Failed::Named(n) => Cow::Borrowed(n),
            Failed::Claim(i) => Cow::Owned(format!(
                "claims.{}",
                c.claims.get(i).map_or("?", |x| x.0.as_str())
            )),
        }
    }
}

fn one_of(
    allowed: &Option<Vec<String>>,
    value: Option<&str>,
    name: &'static str,
) -> Result<(), Failed> {
    match allowed {
        None => Ok(()),
        Some(list) => match value {
            Some(v) if list.iter().any(|a| a == v) => Ok(()),
            _ => Err(Failed::Named(name)),
        },
    }
}

/// Whether a JWT claim value equals one of the allowed strings; arrays match
/// when any element does, objects and null never match.
fn claim_matches(value: &serde_json::Value, allowed: &[String]) -> bool {
    use serde_json::Value;
    match value {
        Value::String(s) => allowed.iter().any(|a| a == s),
        Value::Bool(b) => allowed
            .iter()
            .any(|a| a == if *b { "true" } else { "false" }),
        Value::Number(n) => {
            let n = n.to_string();
            allowed.contains(&n)
        }
        Value::Array(items) => items
            .iter()
            .any(|v| !v.is_array() && claim_matches(v, allowed)),
        Value::Null | Value::Object(_) => false,
    }
}

impl Conditions {
    fn check(&self, req: &AccessRequest, perms: &Permissions) -> Result<(), Failed> {
        let s = &req.subject;
        if let Some(w) = &self.time {
            let t = req.environment.time;
            let minute = match &self.timezone {
                Some(tz) => {
                    let local = t.with_timezone(tz);
                    local.hour() * 60 + local.minute()
                }
                None => t.hour() * 60 + t.minute(),
            };
            if !w.contains(minute) {
                return Err(Failed::Named("time"));
            }
        }
        if let Some(nets) = &self.ip_range {
            let ip = req.environment.ip.map(|ip| match ip {
                // A dual-stack socket reports IPv4 clients as ::ffff:a.b.c.d.
                IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
                IpAddr::V4(_) => ip,
            });
            match ip {
                Some(ip) if nets.iter().any(|n| n.contains(&ip)) => {}
                _ => return Err(Failed::Named("ipRange")),
            }
        }
        one_of(&self.device_type, s.device_type.as_deref(), "deviceType")?;
        one_of(&self.platform, s.platform.as_deref(), "platform")?;
        one_of(&self.tenant, s.tenant.as_deref(), "tenant")?;
        one_of(&self.chat_type, req.chat_type.as_deref(), "chat_type")?;
        one_of(&self.command, req.command_name(), "command")?;
        if let Some(roles) = &self.roles {
            if !roles.iter().any(|r| perms.has_role(s, r)) {
                return Err(Failed::Named("roles"));
            }
        }
        for (i, (name, allowed)) in self.claims.iter().enumerate() {
            match s.claims.get(name) {
                Some(v) if claim_matches(v, allowed) => {}
                _ => return Err(Failed::Claim(i)),
            }
        }
        Ok(())
    }
}

impl<'de> Deserialize<'de> for Conditions {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(ConditionsVisitor)
    }
}

struct ConditionsVisitor;

fn dup<E: de::Error>(seen: bool, key: &str) -> Result<(), E> {
    if seen {
        Err(E::custom(format!("duplicate condition '{key}'")))
    } else {
        Ok(())
    }
}

impl<'de> Visitor<'de> for ConditionsVisitor {
    type Value = Conditions;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a map of conditions (time, timezone, ipRange, deviceType, platform, tenant, roles, chat_type, command, claims.<name>)")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Conditions, E> {
        Ok(Conditions::default())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Conditions, A::Error> {
        let mut c = Conditions::default();
        while let Some(key) = map.next_key::<CondKey>()? {
            let name = match key {
                CondKey::Claim(name) => {
                    if c.claims.iter().any(|(n, _)| *n == name) {
                        return Err(de::Error::custom(format!(
                            "duplicate condition 'claims.{name}'"
                        )));
                    }
                    let list = map.next_value::<List<String>>()?.0;
                    c.claims.push((name, list));
                    continue;
                }
                CondKey::Known(name) => name,
            };
            match name {
                "time" => {
                    dup(c.time.is_some(), name)?;
                    c.time = Some(map.next_value::<Checked<TimeWindow>>()?.0);
                }
                "timezone" => {
                    dup(c.timezone.is_some(), name)?;
                    c.timezone = Some(map.next_value::<Checked<Tz>>()?.0);
                }
                "ipRange" => {
                    dup(c.ip_range.is_some(), name)?;
                    c.ip_range = Some(map.next_value::<List<IpNet>>()?.0);
                }
                "deviceType" => set_list(&mut map, &mut c.device_type, name)?,
                "platform" => set_list(&mut map, &mut c.platform, name)?,
                "tenant" => set_list(&mut map, &mut c.tenant, name)?,
                "roles" => set_list(&mut map, &mut c.roles, name)?,
                "chat_type" => set_list(&mut map, &mut c.chat_type, name)?,
                _ => {
                    set_list(&mut map, &mut c.command, name)?;
                    // Operators naturally write the slash; the attribute has none.
                    if let Some(list) = &mut c.command {
                        for cmd in list.iter_mut() {
                            if let Some(stripped) = cmd.strip_prefix('/') {
                                *cmd = stripped.to_string();
                            }
                        }
                    }
                }
            }
        }
        if c.timezone.is_some() && c.time.is_none() {
            return Err(de::Error::custom(
                "'timezone' needs a 'time' condition in the same rule",
            ));
        }
        Ok(c)
    }
}

fn set_list<'de, A: MapAccess<'de>>(
    map: &mut A,
    slot: &mut Option<Vec<String>>,
    key: &str,
) -> Result<(), A::Error> {
    dup(slot.is_some(), key)?;
    *slot = Some(map.next_value::<List<String>>()?.0);
    Ok(())
}

fn parse_net(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    IpNet::from_str(s)
        .or_else(|_| IpAddr::from_str(s).map(IpNet::from))
        .map_err(|_| {
            format!("invalid CIDR '{s}'; expected an address or network like 10.0.0.0/8 or ::1/128")
        })
}

/// A value parsed from one YAML scalar. Parsing happens inside the scalar's
/// visitor so serde_yaml pins any error to that scalar's line and column.
trait Parse: Sized {
    fn parse(s: &str) -> Result<Self, String>;
}

impl Parse for String {
    fn parse(s: &str) -> Result<Self, String> {
        Ok(s.to_string())
    }
}

impl Parse for Glob {
    fn parse(s: &str) -> Result<Self, String> {
        Glob::new(s)
    }
}

impl Parse for TimeWindow {
    fn parse(s: &str) -> Result<Self, String> {
        TimeWindow::parse(s)
    }
}

impl Parse for IpNet {
    fn parse(s: &str) -> Result<Self, String> {
        parse_net(s)
    }
}

impl Parse for Tz {
    fn parse(s: &str) -> Result<Self, String> {
        Tz::from_str(s.trim()).map_err(|_| {
            format!(
                "unknown timezone '{s}'; expected an IANA name like Asia/Shanghai or Europe/Berlin"
            )
        })
    }
}

/// One scalar (string, number or boolean, read as text) parsed into `T`.
struct Checked<T>(T);

struct CheckedVisitor<T>(std::marker::PhantomData<T>);

impl<T: Parse> CheckedVisitor<T> {
    fn done<E: de::Error>(s: &str) -> Result<T, E> {
        T::parse(s).map_err(E::custom)
    }
}

/// The scalar arms shared by single values and lists.
macro_rules! scalar_visits {
    ($out:ty, $wrap:expr) => {
        fn visit_str<E: de::Error>(self, v: &str) -> Result<$out, E> {
            CheckedVisitor::<T>::done(v).map($wrap)
        }
        fn visit_bool<E: de::Error>(self, v: bool) -> Result<$out, E> {
            CheckedVisitor::<T>::done(&v.to_string()).map($wrap)
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<$out, E> {
            CheckedVisitor::<T>::done(&v.to_string()).map($wrap)
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<$out, E> {
            CheckedVisitor::<T>::done(&v.to_string()).map($wrap)
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<$out, E> {
            CheckedVisitor::<T>::done(&v.to_string()).map($wrap)
        }
    };
}

impl<T: Parse> Visitor<'_> for CheckedVisitor<T> {
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }
    scalar_visits!(T, |x| x);
}

impl<'de, T: Parse> Deserialize<'de> for Checked<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(CheckedVisitor(std::marker::PhantomData))
            .map(Checked)
    }
}

/// One scalar or a non-empty list of them, each parsed into `T`.
struct List<T>(Vec<T>);

struct ListVisitor<T>(std::marker::PhantomData<T>);

impl<'de, T: Parse> Visitor<'de> for ListVisitor<T> {
    type Value = Vec<T>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string or a non-empty list of strings")
    }
    scalar_visits!(Vec<T>, |x| vec![x]);
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::new();
        while let Some(item) = seq.next_element::<Checked<T>>()? {
            out.push(item.0);
        }
        if out.is_empty() {
            return Err(de::Error::custom(
                "empty list; it would never match (remove the key instead)",
            ));
        }
        Ok(out)
    }
}

impl<'de, T: Parse> Deserialize<'de> for List<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ListVisitor(std::marker::PhantomData))
            .map(List)
    }
}

/// A condition name; unknown names fail here, inside the key's own
/// deserializer, so the error points at the key.
enum CondKey {
    Known(&'static str),
    Claim(String),
}

impl<'de> Deserialize<'de> for CondKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = CondKey;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a condition name")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<CondKey, E> {
                if let Some(k) = CONDITION_NAMES.iter().find(|k| **k == v) {
                    return Ok(CondKey::Known(k));
                }
                match v.strip_prefix("claims.") {
                    Some(name) if !name.is_empty() => Ok(CondKey::Claim(name.to_string())),
                    _ => Err(E::unknown_field(v, CONDITION_NAMES)),
                }
            }
        }
        d.deserialize_str(V)
    }
}

/// Rewrites serde_yaml's nested-path form (`policies[0].conditions: unknown
/// field ...`) into `unknown key 'x' (did you mean 'y'?)`, which the shared
/// loader only does for top-level keys.
pub(crate) fn polish(mut e: FileError) -> FileError {
    let Some(at) = e
        .message
        .find("unknown field `")
        .or_else(|| e.message.find("unknown variant `"))
    else {
        return e;
    };
    let body = &e.message[at..];
    let (marker, what) = if body.starts_with("unknown field `") {
        ("unknown field `", "key")
    } else {
        ("unknown variant `", "value")
    };
    let Some((name, expected)) = body[marker.len()..].split_once('`') else {
        return e;
    };
    let candidates: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
    let mut msg = format!("unknown {what} '{name}'");
    if let Some(best) = did_you_mean(name, candidates.iter().copied()) {
        msg.push_str(&format!(" (did you mean '{best}'?)"));
    }
    if !candidates.is_empty() {
        msg.push_str(&format!("; expected one of: {}", candidates.join(", ")));
    }
    e.message = msg;
    e
}

// ---------------------------------------------------------------------------
// File shape

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    policies: Vec<RawRule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    id: String,
    effect: Effect,
    resources: List<Glob>,
    actions: List<Glob>,
    #[serde(default)]
    conditions: Conditions,
    #[serde(default)]
    confirm: bool,
    /// Kept for operators; not used in decisions.
    #[serde(default)]
    #[allow(dead_code)]
    description: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    const P: &str = "policies/abac.yaml";

    fn policy(text: &str) -> AbacPolicy {
        match AbacPolicy::from_yaml(Path::new(P), text) {
            Ok(p) => p,
            Err(e) => panic!("{e}"),
        }
    }

    fn load_err(text: &str) -> FileError {
        match AbacPolicy::from_yaml(Path::new(P), text) {
            Ok(_) => panic!("expected an error"),
            Err(e) => e,
        }
    }

    fn perms(text: &str) -> Permissions {
        match Permissions::from_yaml(Path::new("policies/permissions.yaml"), text) {
            Ok(p) => p,
            Err(e) => panic!("{e}"),
        }
    }

    fn at(h: u32, m: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2025, 3, 4, h, m, 0)
            .single()
            .unwrap_or_default()
    }

    fn req(resource: &str, action: &str) -> AccessRequest {
        AccessRequest {
            subject: Subject {
                id: "u1".into(),
                ..Subject::default()
            },
            resource: resource.into(),
            action: action.into(),
            chat_type: None,
            command: None,
            environment: Environment {
                ip: Some("10.1.2.3".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]))),
                time: at(10, 0),
            },
        }
    }

    fn ip(s: &str) -> Option<IpAddr> {
        s.parse().ok()
    }

    fn id(d: &Decision) -> String {
        d.decided_by.to_string()
    }

    /// One Allow rule with the given conditions on /r for action forward.
    fn with_cond(cond: &str) -> AbacPolicy {
        policy(&format!(
            "policies:\n  - id: r\n    effect: Allow\n    resources: [\"/r\"]\n    actions: [forward]\n    conditions: {cond}\n"
        ))
    }

    fn allowed(p: &AbacPolicy, r: &AccessRequest) -> bool {
        p.decide(r, &Permissions::default()).allowed
    }

    const SEED: &str = include_str!("../../tests/fixtures/seed/abac.yaml");

    #[test]
    fn seed_loads_and_decides() {
        let p = policy(SEED);
        assert_eq!(p.rule_ids().collect::<Vec<_>>(), ["msg_routing_policy"]);
        let mut r = req("/api/v1/messages/42", "forward");
        r.subject.device_type = Some("mobile".into());
        let d = p.decide(&r, &Permissions::default());
        assert!(d.allowed, "{d:?}");
        assert_eq!(id(&d), "msg_routing_policy");
        // `*` stays within one segment.
        r.resource = "/api/v1/messages/42/x".into();
        assert_eq!(id(&p.decide(&r, &Permissions::default())), "default_deny");
    }

    #[test]
    fn shipped_example_loads_and_serves_the_demo() {
        let p = policy(include_str!("../../policies/abac.yaml"));
        let perms = perms(include_str!("../../policies/permissions.yaml"));
        for (res, addr) in [("/v1/messages", "127.0.0.1"), ("/hooks/slack/demo", "::1")] {
            for hour in [0, 3, 12, 23] {
                let mut r = req(res, "forward");
                r.environment.ip = ip(addr);
                r.environment.time = at(hour, 30);
                r.subject.platform = Some("generic".into());
                let d = p.decide(&r, &perms);
                assert!(d.allowed, "{res} {addr} {hour}: {d:?}");
            }
        }
        let mut r = req("/v1/messages", "forward");
        r.environment.ip = ip("203.0.113.9");
        assert!(!p.decide(&r, &perms).allowed);
    }

    #[test]
    fn globs() {
        let g = |p: &str| Glob::new(p).unwrap_or_else(|e| panic!("{e}"));
        assert!(g("/a/*").is_match("/a/b"));
        assert!(!g("/a/*").is_match("/a/b/c"));
        assert!(g("/a/*").is_match("/a/"));
        assert!(g("/a/**").is_match("/a/b/c"));
        assert!(!g("/a/**").is_match("/a"));
        assert!(g("/a/**/z").is_match("/a/b/c/z"));
        assert!(!g("/a/**/z").is_match("/a/b/c/y"));
        assert!(g("/a/*/z").is_match("/a/b/z"));
        assert!(!g("/a/*/z").is_match("/a/b/c/z"));
        assert!(g("/f*o*o").is_match("/fxoyyo"));
        assert!(g("command:*").is_match("command:reboot"));
        assert!(g("**").is_match(""));
        assert!(g("/exact").is_match("/exact"));
        assert!(!g("/exact").is_match("/exact2"));
        assert!(Glob::new("").is_err());
        assert!(Glob::new("/a/***").is_err());
        // A pattern longer than the stack bitset still works.
        let long = format!("/{}*{}", "a".repeat(150), "b".repeat(20));
        assert!(g(&long).is_match(&format!("/{}xyz{}", "a".repeat(150), "b".repeat(20))));
        assert!(!g(&long).is_match(&format!("/{}x/z{}", "a".repeat(150), "b".repeat(20))));
        // A wildcard tail longer than 127 elements uses the heap bitset.
        let tail = format!("/x/*{}", "ab".repeat(80));
        assert!(g(&tail).is_match(&format!("/x/zz{}", "ab".repeat(80))));
        assert!(!g(&tail).is_match(&format!("/x/z/z{}", "ab".repeat(80))));
        assert!(g("/a/*").is_match("/a/") && !g("/b/*").is_match("/a/x"));
        // Many stars against a long input stay linear (would hang if backtracking).
        let many = "*a".repeat(30);
        assert!(!g(&many).is_match(&"a".repeat(29)));
        assert!(g(&many).is_match(&"a".repeat(5000)));
    }

    #[test]
    fn effects_and_precedence() {
        let p = policy(
            "policies:
  - id: allow_all
    effect: Allow
    resources: ['/**']
    actions: ['*']
  - id: deny_admin
    effect: Deny
    resources: ['/admin/**']
    actions: [forward]
  - id: allow_admin
    effect: allow
    resources: ['/admin/x']
    actions: [forward]
",
        );
        let d = p.decide(&req("/v1/messages", "forward"), &Permissions::default());
        assert!(d.allowed);
        assert_eq!(id(&d), "allow_all");
        // Deny overrides allow, even a more specific later allow.
        let d = p.decide(&req("/admin/x", "forward"), &Permissions::default());
        assert!(!d.allowed);
        assert_eq!(id(&d), "deny_admin");
        assert_eq!(
            d.decided_by,
            DecidedBy::Rule {
                id: "deny_admin".into(),
                effect: Effect::Deny
            }
        );
        // Default deny when nothing allows.
        let empty = policy("policies: []\n");
        let d = empty.decide(&req("/x", "read"), &Permissions::default());
        assert_eq!(d.decided_by, DecidedBy::DefaultDeny);
        assert_eq!(d.decided_by.metric_label(), "default_deny");
        assert!(policy("{}\n").is_empty());
    }

    #[test]
    fn first_matching_deny_in_file_order_names_the_decision() {
        let p = policy(
            "policies:
  - { id: d1, effect: Deny, resources: ['/a/*'], actions: [read] }
  - { id: d2, effect: Deny, resources: ['/a/b'], actions: [read] }
  - { id: a1, effect: Allow, resources: ['/a/b'], actions: [read] }
",
        );
        assert_eq!(
            id(&p.decide(&req("/a/b", "read"), &Permissions::default())),
            "d1"
        );
    }

    #[test]
    fn action_must_match() {
        let p = with_cond("{}");
        assert!(allowed(&p, &req("/r", "forward")));
        assert!(!allowed(&p, &req("/r", "read")));
        assert!(!allowed(&p, &req("/other", "forward")));
    }

    #[test]
    fn time_condition_and_overnight_window() {
        let p = with_cond("{ time: '09:00-18:00' }");
        let mut r = req("/r", "forward");
        for (h, m, ok) in [(9, 0, true), (17, 59, true), (18, 0, false), (8, 59, false)] {
            r.environment.time = at(h, m);
            assert_eq!(allowed(&p, &r), ok, "{h}:{m}");
        }
        let p = with_cond("{ time: '22:00-06:00' }");
        for (h, ok) in [
            (22, true),
            (23, true),
            (0, true),
            (5, true),
            (6, false),
            (12, false),
        ] {
            r.environment.time = at(h, 30);
            assert_eq!(allowed(&p, &r), ok, "{h}");
        }
        let p = with_cond("{ time: '00:00-24:00' }");
        r.environment.time = at(23, 59);
        assert!(allowed(&p, &r));
    }

    #[test]
    fn timezone_shifts_the_window() {
        // 09:00-18:00 in Shanghai (UTC+8) is 01:00-10:00 UTC.
        let p = with_cond("{ time: '09:00-18:00', timezone: Asia/Shanghai }");
        let mut r = req("/r", "forward");
        r.environment.time = at(2, 0);
        assert!(allowed(&p, &r));
        r.environment.time = at(12, 0);
        assert!(!allowed(&p, &r));
        assert!(load_err("policies:\n  - { id: r, effect: Allow, resources: [x], actions: [y], conditions: { time: '09:00-18:00', timezone: Mars/Olympus } }\n")
            .message
            .contains("unknown timezone 'Mars/Olympus'"));
        let e = load_err("policies:\n  - id: r\n    effect: Allow\n    resources: [x]\n    actions: [y]\n    conditions: { timezone: UTC }\n");
        assert!(e.message.contains("needs a 'time'"), "{e}");
    }

    #[test]
    fn ip_range_condition() {
        let p = with_cond("{ ipRange: ['10.0.0.0/8', '2001:db8::/32', '192.0.2.7'] }");
        let mut r = req("/r", "forward");
        for (a, ok) in [
            ("10.9.9.9", true),
            ("11.0.0.1", false),
            ("2001:db8::5", true),
            ("::ffff:10.0.0.1", true),
            ("192.0.2.7", true),
            ("192.0.2.8", false),
        ] {
            r.environment.ip = ip(a);
            assert_eq!(allowed(&p, &r), ok, "{a}");
        }
        r.environment.ip = None;
        assert!(!allowed(&p, &r), "missing IP fails closed");
        let single = with_cond("{ ipRange: 10.0.0.0/8 }");
        r.environment.ip = ip("10.0.0.1");
        assert!(allowed(&single, &r));
        let e = load_err("policies:\n  - id: r\n    effect: Allow\n    resources: [x]\n    actions: [y]\n    conditions:\n      ipRange: 10.0.0.0/33\n");
        assert!(e.message.contains("invalid CIDR '10.0.0.0/33'"), "{e}");
        assert_eq!(e.line, Some(7), "{e}");
    }

    #[test]
    fn string_conditions_and_missing_attributes() {
        type Setter = fn(&mut AccessRequest, Option<String>);
        let cases: [(&str, Setter); 5] = [
            ("deviceType", |r, v| r.subject.device_type = v),
            ("platform", |r, v| r.subject.platform = v),
            ("tenant", |r, v| r.subject.tenant = v),
            ("chat_type", |r, v| r.chat_type = v),
            ("command", |r, v| r.command = v),
        ];
        for (name, set) in cases {
            let p = with_cond(&format!("{{ {name}: [a, b] }}"));
            let mut r = req("/r", "forward");
            set(&mut r, Some("b".into()));
            assert!(allowed(&p, &r), "{name} match");
            set(&mut r, Some("c".into()));
            assert!(!allowed(&p, &r), "{name} mismatch");
            set(&mut r, None);
            assert!(!allowed(&p, &r), "{name} missing fails closed");
            let t = p.trace(&r, &Permissions::default());
            assert_eq!(t[0].failed.as_deref(), Some(name));
        }
        // A single scalar is a one-item list; numbers are compared as text.
        let p = with_cond("{ tenant: 42 }");
        let mut r = req("/r", "forward");
        r.subject.tenant = Some("42".into());
        assert!(allowed(&p, &r));
    }

    #[test]
    fn command_condition_defaults_from_action() {
        let p = policy("policies:\n  - { id: c, effect: Allow, resources: ['/r'], actions: ['command:*'], conditions: { command: ['/backup'] } }\n");
        let perms = perms("roles: { u: ['command:*'] }\n");
        let mut r = req("/r", "command:backup");
        r.subject.roles = vec!["u".into()];
        assert!(p.decide(&r, &perms).allowed);
        r.action = "command:reboot".into();
        assert!(!p.decide(&r, &perms).allowed);
    }

    #[test]
    fn roles_condition_uses_jwt_and_permissions_subjects() {
        let p = with_cond("{ roles: [ops, admin] }");
        let perms =
            perms("roles: { admin: [], ops: [] }\nsubjects: { alice: [admin], 'slack:U1': ops }\n");
        let mut r = req("/r", "forward");
        assert!(!p.decide(&r, &perms).allowed, "no roles");
        r.subject.roles = vec!["ops".into()];
        assert!(p.decide(&r, &perms).allowed, "jwt role");
        r.subject.roles.clear();
        r.subject.person = Some("alice".into());
        assert!(p.decide(&r, &perms).allowed, "person mapping");
        r.subject.person = None;
        r.subject.platform = Some("slack".into());
        r.subject.id = "U1".into();
        assert!(p.decide(&r, &perms).allowed, "platform:user_id mapping");
        r.subject.platform = Some("discord".into());
        assert!(!p.decide(&r, &perms).allowed);
    }

    #[test]
    fn claims_conditions() {
        let p = with_cond("{ claims.dept: [eng, ops], claims.level: 3, claims.mfa: true }");
        let mut r = req("/r", "forward");
        r.subject
            .claims
            .insert("dept".into(), serde_json::json!(["sales", "ops"]));
        r.subject
            .claims
            .insert("level".into(), serde_json::json!(3));
        r.subject
            .claims
            .insert("mfa".into(), serde_json::json!(true));
        assert!(allowed(&p, &r));
        r.subject
            .claims
            .insert("mfa".into(), serde_json::json!(false));
        assert!(!allowed(&p, &r));
        assert_eq!(
            p.trace(&r, &Permissions::default())[0].failed.as_deref(),
            Some("claims.mfa")
        );
        r.subject.claims.remove("mfa");
        assert!(!allowed(&p, &r), "missing claim fails closed");
        r.subject
            .claims
            .insert("mfa".into(), serde_json::json!({"x": true}));
        assert!(!allowed(&p, &r), "object never matches");
    }

    #[test]
    fn all_conditions_must_hold() {
        let p = with_cond("{ time: '09:00-18:00', ipRange: 10.0.0.0/8, deviceType: mobile }");
        let mut r = req("/r", "forward");
        r.subject.device_type = Some("mobile".into());
        assert!(allowed(&p, &r));
        r.environment.ip = ip("8.8.8.8");
        assert!(!allowed(&p, &r));
    }

    #[test]
    fn command_needs_rbac_grant() {
        let p = policy("policies:\n  - { id: cmds, effect: Allow, resources: ['/r'], actions: ['command:*'] }\n  - { id: reboot, effect: Allow, resources: ['/r'], actions: ['command:reboot'], confirm: true }\n");
        let perms =
            perms("roles:\n  admin: ['command:*']\n  user: ['command:backup', message:send]\n");
        let mut r = req("/r", "command:reboot");
        r.subject.roles = vec!["user".into()];
        let d = p.decide(&r, &perms);
        assert!(!d.allowed);
        assert_eq!(id(&d), "rbac:no_role_grants command:reboot");
        assert_eq!(d.decided_by.metric_label(), "rbac:no_role_grants");
        r.subject.roles = vec!["admin".into()];
        let d = p.decide(&r, &perms);
        assert!(d.allowed);
        // The confirming rule wins over the earlier plain one.
        assert_eq!(id(&d), "reboot");
        assert!(d.confirm);
        assert_eq!(
            d.grant,
            Some(Grant {
                role: "admin".into(),
                permission: "command:*".into()
            })
        );
        r.action = "command:backup".into();
        r.subject.roles = vec!["user".into()];
        let d = p.decide(&r, &perms);
        assert!(d.allowed && !d.confirm);
        assert_eq!(id(&d), "cmds");
        // Without an ABAC allow, RBAC alone is not enough.
        r.resource = "/elsewhere".into();
        assert_eq!(id(&p.decide(&r, &perms)), "default_deny");
    }

    #[test]
    fn unknown_condition_is_located_with_suggestion() {
        let text = "policies:\n  - id: r\n    effect: Allow\n    resources: [x]\n    actions: [y]\n    conditions:\n      time: '09:00-18:00'\n      ipRnage: 10.0.0.0/8\n";
        let e = load_err(text);
        assert_eq!((e.line, e.column), (Some(8), Some(7)), "{e}");
        assert!(
            e.to_string().starts_with(
                "policies/abac.yaml:8:7: unknown key 'ipRnage' (did you mean 'ipRange'?)"
            ),
            "{e}"
        );
        let e = load_err("policies:\n  - { id: r, effect: Allow, resources: [x], actions: [y], conditions: { chatType: group } }\n");
        assert!(e.message.contains("did you mean 'chat_type'"), "{e}");
        assert_eq!(e.line, Some(2), "{e}");
        // Unknown rule keys and effects too.
        let e = load_err("policies:\n  - id: r\n    efect: Allow\n");
        assert!(
            e.to_string().starts_with(
                "policies/abac.yaml:3:5: unknown key 'efect' (did you mean 'effect'?)"
            ),
            "{e}"
        );
        let e = load_err("policies:\n  - { id: r, effect: Alow, resources: [x], actions: [y] }\n");
        assert!(e.message.contains("did you mean 'Allow'"), "{e}");
        let e = load_err("policies:\n  - { id: r, effect: Allow, resources: [x], actions: [y], conditions: { 'claims.': x } }\n");
        assert!(e.message.contains("unknown key 'claims.'"), "{e}");
    }

    #[test]
    fn semantic_errors_are_located() {
        let e = load_err("policies:\n  - id: r\n    effect: Allow\n    resources: [x]\n    actions: [y]\n    conditions: { time: '9-18' }\n");
        assert!(e.message.contains("invalid time window '9-18'"), "{e}");
        assert_eq!(e.line, Some(6), "{e}");
        for bad in ["25:00-26:00", "09:00-09:00", "09:60-10:00", "24:00-01:00"] {
            assert!(TimeWindow::parse(bad).is_err(), "{bad}");
        }
        let e = load_err("policies:\n  - id: r\n    effect: Allow\n    resources: ['/a/***']\n    actions: [y]\n");
        assert!(e.message.contains("'***'"), "{e}");
        assert_eq!(e.line, Some(4), "{e}");
        let e = load_err("policies:\n  - { id: a, effect: Allow, resources: [x], actions: [y] }\n  - { id: a, effect: Deny, resources: [x], actions: [y] }\n");
        assert!(e.message.contains("duplicate rule id 'a'"), "{e}");
        assert_eq!(e.line, Some(3), "{e}");
        let e = load_err("policies:\n  - { id: a, effect: Allow, resources: [], actions: [y] }\n");
        assert!(e.message.contains("empty list"), "{e}");
        let e = load_err("policies:\n  - { id: a, effect: Allow, resources: [x], actions: [y], conditions: { roles: [a], roles: [b] } }\n");
        assert!(e.line.is_some(), "{e}");
    }

    #[test]
    fn index_finds_rules_by_prefix_and_glob_actions() {
        let mut text = String::from("policies:\n");
        for i in 0..200 {
            text.push_str(&format!(
                "  - {{ id: r{i}, effect: Allow, resources: ['/t{i}/*', '/x{i}'], actions: [read, 'cmd:{i}*'] }}\n"
            ));
        }
        text.push_str(
            "  - { id: root, effect: Allow, resources: ['*/deep/**'], actions: ['**'] }\n",
        );
        let p = policy(&text);
        let perms = Permissions::default();
        assert_eq!(id(&p.decide(&req("/t7/a", "read"), &perms)), "r7");
        assert_eq!(id(&p.decide(&req("/x7", "cmd:7zz"), &perms)), "r7");
        assert_eq!(id(&p.decide(&req("/x7", "cmd:8"), &perms)), "default_deny");
        assert_eq!(
            id(&p.decide(&req("/t7/a/b", "read"), &perms)),
            "default_deny"
        );
        assert_eq!(id(&p.decide(&req("/deep/a/b", "zz"), &perms)), "root");
        let t = p.trace(&req("/t7/a", "read"), &perms);
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].failed, None);
    }
}
