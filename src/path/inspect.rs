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
///
/// `replaced` holds, in walk order, texts to use instead of the body's (its
/// tokenised texts, see [`payload_texts`]); a replaced body is re-sealed.
pub fn payload(
    policies: &PolicySet,
    adapter: &dyn PlatformAdapter,
    req: &IncomingRequest,
    replaced: &[Option<String>],
) -> (Inspection, Result<Option<Resealed>, Stop>) {
    let mut out = Inspection::default();
    let webhook = req.as_webhook(SystemTime::now(), None);
    let mut payload = match adapter.payload(&webhook) {
        Ok(p) => p,
        Err(e) => return (out, Err(e.into())),
    };
    let mut next = replaced.iter();
    let walked = payload.texts_mut(adapter.opaque_keys(), &mut |text: &mut String| {
        if let Some(Some(instead)) = next.next() {
            text.clone_from(instead);
            out.masked = true;
        }
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

/// Every text of a passthrough body that [`payload`] scans, in its walk
/// order (what tokenising reads before it).
pub fn payload_texts(adapter: &dyn PlatformAdapter, req: &IncomingRequest) -> Vec<String> {
    let webhook = req.as_webhook(SystemTime::now(), None);
    let mut texts = Vec::new();
    if let Ok(mut payload) = adapter.payload(&webhook) {
        // An unwalkable body is refused by `payload` itself.
        let _ = payload.texts_mut(adapter.opaque_keys(), &mut |text: &mut String| {
            texts.push(text.clone());
        });
    }
    texts
}

#[cfg(test)]
mod tests {
    use super::super::testkit::{json_request, policies, JsonAdapter, CARD, DLP};
    use super::*;
    use serde_json::json;

    #[test]
    fn every_field_the_envelope_carries_is_masked() {
        let p = policies(&[("dlp.yaml", DLP)]);
        let mut msg = PlatformMessage {
            text: format!("pay {CARD} now"),
            sender_name: format!("card {CARD}"),
            ..Default::default()
        };
        msg.attributes
            .insert("attachment.0".into(), format!("file|u|{CARD}.pdf|pdf"));
        let out = message(&p, &mut msg);
        assert!(out.masked && out.blocked_by.is_none());
        for field in [&msg.text, &msg.sender_name, &msg.attributes["attachment.0"]] {
            assert!(!field.contains(CARD), "{field}");
            assert!(field.contains("1111"), "{field}");
        }
        assert_eq!(out.text_findings.len(), 1);
        assert_eq!(out.text_findings[0].start, 4);
        assert_eq!(out.found.len(), 3);
    }

    #[test]
    fn a_block_rule_anywhere_stops_the_message() {
        let p = policies(&[("dlp.yaml", DLP)]);
        let mut msg = PlatformMessage {
            text: "hello".into(),
            ..Default::default()
        };
        msg.attributes
            .insert("title".into(), "TOPSECRET plans".into());
        let out = message(&p, &mut msg);
        assert!(matches!(out.verdict(), Err(Stop::Blocked { .. })));
    }

    #[test]
    fn passthrough_scans_fields_the_adapter_never_parsed() {
        let p = policies(&[("dlp.yaml", DLP)]);
        let body = json!({"update_id": 987654321, "message": {"message_id": "4111111111111111", "text": "hi",
            "caption": format!("see {CARD}"),
            "reply_to_message": {"text": format!("quoted {CARD}")}}});
        let (out, sealed) = payload(&p, &JsonAdapter { reseal: true }, &json_request(&body), &[]);
        let sealed = sealed.unwrap().expect("masked, so rebuilt");
        let forwarded = String::from_utf8(sealed.body.to_vec()).unwrap();
        assert!(!forwarded.contains(&format!("see {CARD}")), "{forwarded}");
        assert!(
            !forwarded.contains(&format!("quoted {CARD}")),
            "{forwarded}"
        );
        // Ids are not text: an id that looks like a card survives.
        assert!(
            forwarded.contains(r#""message_id":"4111111111111111""#),
            "{forwarded}"
        );
        assert_eq!(out.found.len(), 2);
    }

    #[test]
    fn an_unchanged_body_is_forwarded_as_received() {
        let p = policies(&[("dlp.yaml", DLP)]);
        let body = json!({"message": {"text": "nothing to see"}});
        let (out, sealed) = payload(&p, &JsonAdapter { reseal: true }, &json_request(&body), &[]);
        assert!(sealed.unwrap().is_none());
        assert!(!out.masked);
    }

    #[test]
    fn masked_content_that_cannot_be_resigned_is_refused() {
        let p = policies(&[("dlp.yaml", DLP)]);
        let body = json!({"content": format!("card {CARD}")});
        let (_, sealed) = payload(
            &p,
            &JsonAdapter { reseal: false },
            &json_request(&body),
            &[],
        );
        assert!(matches!(sealed, Err(Stop::CannotReseal)));
        let body = json!({"content": "TOPSECRET"});
        let (_, sealed) = payload(&p, &JsonAdapter { reseal: true }, &json_request(&body), &[]);
        assert!(matches!(sealed, Err(Stop::Blocked { .. })));
    }
}
