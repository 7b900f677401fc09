//! The `conditions:` of an ABAC rule: parsed once (time windows, time zones,
//! CIDRs), then checked per request without allocating.
//!
//! A condition whose attribute is missing from the request does not hold:
//! policies fail closed.

use std::borrow::Cow;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use chrono::Timelike;
use chrono_tz::Tz;
use ipnet::IpNet;
use serde::de::{self, Deserialize, Deserializer, MapAccess, Visitor};

use super::scalar::{Checked, List, Parse};
use crate::policy::rbac::Permissions;
use crate::policy::request::{command_name, AccessRequest};

/// The condition names, as operators write them; used for did-you-mean.
pub(crate) const CONDITION_NAMES: &[&str] = &[
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
pub(crate) struct TimeWindow {
    start: u32,
    end: u32,
}

impl TimeWindow {
    pub(crate) fn parse(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "invalid time window '{s}'; expected HH:MM-HH:MM, like 09:00-18:00 or 22:00-06:00"
            )
        };
        let (a, b) = s.split_once('-').ok_or_else(bad)?;
        let (start, end) = (
            minute_of_day(a).ok_or_else(bad)?,
            minute_of_day(b).ok_or_else(bad)?,
        );
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

/// `HH:MM` (00:00 to 24:00) as minutes since midnight.
fn minute_of_day(t: &str) -> Option<u32> {
    let (h, m) = t.trim().split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    (m < 60 && (h < 24 || (h == 24 && m == 0))).then_some(h * 60 + m)
}

/// Compiled conditions of one rule; every present condition must hold.
#[derive(Debug, Default)]
pub(crate) struct Conditions {
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
pub(crate) enum Failed {
    Named(&'static str),
    Claim(usize),
}

impl Failed {
    pub(crate) fn describe(self, c: &Conditions) -> Cow<'static, str> {
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
    /// Whether every condition holds for `req` evaluated as `action` (which
    /// supplies the command name when `req.command` is absent).
    pub(crate) fn check(
        &self,
        req: &AccessRequest,
        action: &str,
        perms: &Permissions,
    ) -> Result<(), Failed> {
        let s = &req.subject;
        self.check_time(req)?;
        self.check_ip(req.environment.ip)?;
        one_of(&self.device_type, s.device_type.as_deref(), "deviceType")?;
        one_of(&self.platform, s.platform.as_deref(), "platform")?;
        one_of(&self.tenant, s.tenant.as_deref(), "tenant")?;
        one_of(&self.chat_type, req.chat_type.as_deref(), "chat_type")?;
        one_of(
            &self.command,
            command_name(req.command.as_deref(), action),
            "command",
        )?;
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

    fn check_time(&self, req: &AccessRequest) -> Result<(), Failed> {
        let Some(w) = &self.time else {
            return Ok(());
        };
        let t = req.environment.time;
        let minute = match &self.timezone {
            Some(tz) => {
                let local = t.with_timezone(tz);
                local.hour() * 60 + local.minute()
            }
            None => t.hour() * 60 + t.minute(),
        };
        if w.contains(minute) {
            Ok(())
        } else {
            Err(Failed::Named("time"))
        }
    }

    fn check_ip(&self, ip: Option<IpAddr>) -> Result<(), Failed> {
        let Some(nets) = &self.ip_range else {
            return Ok(());
        };
        let ip = ip.map(|ip| match ip {
            // A dual-stack socket reports IPv4 clients as ::ffff:a.b.c.d.
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            IpAddr::V4(_) => ip,
        });
        match ip {
            Some(ip) if nets.iter().any(|n| n.contains(&ip)) => Ok(()),
            _ => Err(Failed::Named("ipRange")),
        }
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
            match key {
                CondKey::Claim(name) => {
                    if c.claims.iter().any(|(n, _)| *n == name) {
                        return Err(de::Error::custom(format!(
                            "duplicate condition 'claims.{name}'"
                        )));
                    }
                    let list = map.next_value::<List<String>>()?.0;
                    c.claims.push((name, list));
                }
                CondKey::Known(name) => read_condition(&mut map, &mut c, name)?,
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

/// Reads the value of the known condition `name` into `c`.
fn read_condition<'de, A: MapAccess<'de>>(
    map: &mut A,
    c: &mut Conditions,
    name: &'static str,
) -> Result<(), A::Error> {
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
        "deviceType" => set_list(map, &mut c.device_type, name)?,
        "platform" => set_list(map, &mut c.platform, name)?,
        "tenant" => set_list(map, &mut c.tenant, name)?,
        "roles" => set_list(map, &mut c.roles, name)?,
        "chat_type" => set_list(map, &mut c.chat_type, name)?,
        _ => {
            set_list(map, &mut c.command, name)?;
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
    Ok(())
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

impl Parse for TimeWindow {
    fn parse(s: &str) -> Result<Self, String> {
        TimeWindow::parse(s)
    }
}

impl Parse for IpNet {
    fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        IpNet::from_str(s)
            .or_else(|_| IpAddr::from_str(s).map(IpNet::from))
            .map_err(|_| {
                format!(
                    "invalid CIDR '{s}'; expected an address or network like 10.0.0.0/8 or ::1/128"
                )
            })
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
