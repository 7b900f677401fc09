//! Stage: DLP on the way in. What is forwarded is what was scanned:
//!
//! - to the AI cluster, the Envelope carries the message's text, the
//!   sender's name and the platform attributes, so each of them is scanned
//!   and masked here;
//! - to a bot (passthrough), the whole body is forwarded, so every string a
//!   person or a bot could read in it is scanned, not only the text the
//!   adapter extracted; a masked body is rebuilt and re-signed by the
//!   adapter, or refused when the platform's signature cannot be renewed.

use std::sync::Arc;
use std::time::SystemTime;

use super::exchange::{Found, IncomingRequest};
use super::stop::Stop;
use crate::platform::adapter::Resealed;
use crate::platform::{PlatformAdapter, PlatformMessage};
use crate::policy::dlp::{Direction, DlpOutcome};
use crate::policy::PolicySet;
use crate::proto::v1::DlpFinding;

/// What ingress DLP found and did.
#[derive(Debug, Default)]
pub struct Inspection {
    /// Findings to count.
    pub found: Vec<Found>,
    /// `dlp:<rule>:<action>` for the audit line.
    pub rules: Vec<String>,
    /// Findings in the message text, for the Envelope's verdict.
    pub text_findings: Vec<DlpFinding>,
    /// The first `block` rule that matched.
    pub blocked_by: Option<Arc<str>>,
    /// Whether anything was masked.
    pub masked: bool,
}

impl Inspection {
    fn absorb(&mut self, scan: &DlpOutcome) {
        for f in &scan.findings {
            self.found.push(Found {
                rule: f.rule.clone(),
                action: f.action.as_str(),
                direction: "ingress",
            });
            self.rules
                .push(format!("dlp:{}:{}", f.rule, f.action.as_str()));
        }
        if self.blocked_by.is_none() {
            self.blocked_by = scan.blocked_by.clone();
        }
    }

    /// The stop for a `block` finding, if any.
    pub fn verdict(&self) -> Result<(), Stop> {
        match &self.blocked_by {
            Some(rule) => Err(Stop::Blocked { rule: rule.clone() }),
            None => Ok(()),
        }
    }
}

/// Scans and masks, in place, every human-readable field of `msg` that the
/// Envelope carries.
pub fn message(policies: &PolicySet, msg: &mut PlatformMessage) -> Inspection {
    let mut out = Inspection::default();
    let scan = policies.dlp.scan(&msg.text, Direction::Ingress);
    out.text_findings = scan
        .findings
        .iter()
        .map(|f| DlpFinding {
            r#type: f.rule.to_string(),
            start: f.start as u32,
            end: f.end as u32,
            action: f.action.as_str().into(),
        })
        .collect();
    out.absorb(&scan);
    if let Some(masked) = scan.masked {
        msg.text = masked;
        out.masked = true;
    }
    let others = std::iter::once(&mut msg.sender_name).chain(msg.attributes.values_mut());
    for field in others {
        let scan = policies.dlp.scan(field, Direction::Ingress);
        out.absorb(&scan);
        if let Some(masked) = scan.masked {
            *field = masked;
            out.masked = true;
        }
    }
    out
}

/// Scans every readable string of a passthrough body. Returns the
/// inspection and, when something was masked, the rebuilt and re-sealed
/// request; `Stop::Blocked`, or `Stop::CannotReseal` when the platform
/// cannot re-sign it.
pub fn payload(
    policies: &PolicySet,
    adapter: &dyn PlatformAdapter,
    req: &IncomingRequest,
) -> (Inspection, Result<Option<Resealed>, Stop>) {
    let mut out = Inspection::default();
    let webhook = req.as_webhook(SystemTime::now(), None);
    let mut payload = match adapter.payload(&webhook) {
        Ok(p) => p,
        Err(e) => return (out, Err(e.into())),
    };
    let walked = payload.texts_mut(adapter.opaque_keys(), &mut |text: &mut String| {
        let scan = policies.dlp.scan(text, Direction::Ingress);
        out.absorb(&scan);
        if let Some(masked) = scan.masked {
            *text = masked;
            out.masked = true;
        }
    });
    if let Err(e) = walked {
        return (out, Err(e.into()));
    }
    if let Err(stop) = out.verdict() {
        return (out, Err(stop));
    }
    if !out.masked {
        return (out, Ok(None));
    }
    let sealed = adapter.reseal_payload(&webhook, &payload);
    (out, sealed.map(Some).ok_or(Stop::CannotReseal))
}
