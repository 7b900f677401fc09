//! The message path for one frame of a proxied WebSocket connection
//! (`platform: websocket`, `mode: passthrough`).
//!
//! The connection was admitted (IP) and authenticated (JWT) at the upgrade.
//! Each frame that carries a message (or that inspection refused) is then
//! a message like any other: the token again (it may have expired since the
//! upgrade), identity, rate limits, authorisation, and DLP ingress (done by
//! `websocket::inspect` before, which found the text), then the same finish
//! (one audit line, one set of metrics). The bot behind it answers on the
//! connection, not here, so there is no dispatch stage: a frame that passes
//! is forwarded by the caller.

use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::Response;

use super::answer::Done;
use super::authenticate::JwtBearer;
use super::stop::Stop;
use super::{authorize, identity, rate, Exchange, Gateway};
use crate::platform::{BearerVerifier, PlatformMessage, Rejection};
use crate::policy::findings::Found;

/// Why inspection refused a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameRefusal {
    /// A DLP `block` rule matched the user's text.
    Blocked(Arc<str>),
    /// Not a frame of the profile's shape (not JSON).
    Malformed(&'static str),
}

/// One inspected client frame, with what its connection proved at the upgrade.
pub struct Frame<'a> {
    /// The route's path.
    pub route: &'a str,
    /// The upgrade request's `Authorization` header.
    pub authorization: Option<&'a str>,
    /// The client address the upgrade was admitted from.
    pub client_ip: IpAddr,
    /// The frame's own id, if it has one.
    pub id: Option<&'a str>,
    /// The user's text (masked), when the frame is a message.
    pub message: Option<&'a str>,
    /// What inspection found (rules, never values).
    pub found: &'a [Found],
    /// Inspection refused it.
    pub refusal: Option<&'a FrameRefusal>,
    /// Inspection masked something in it.
    pub masked: bool,
}

impl Gateway {
    /// Runs a message frame through the path and finishes it. `Ok` to
    /// forward it; else the answer to render as an error frame.
    pub async fn frame(&self, frame: Frame<'_>) -> Result<(), Response<Bytes>> {
        let mut ex = self.begin(frame.route);
        ex.client_ip = Some(frame.client_ip);
        let end = self.run_frame(&mut ex, &frame).await;
        let passed = end.is_ok();
        let response = self.finish(ex, end).await;
        if passed {
            Ok(())
        } else {
            Err(response)
        }
    }

    async fn run_frame(&self, ex: &mut Exchange, frame: &Frame<'_>) -> Result<Done, Stop> {
        let route = ex.route.clone().ok_or(Stop::UnknownPath)?;
        let policies = ex.policies.clone();
        for f in frame.found {
            ex.rules.push(format!("dlp:{}:{}", f.rule, f.action));
        }
        ex.found.extend(frame.found.iter().cloned());
        if let Some(FrameRefusal::Malformed(why)) = frame.refusal {
            let stop = Stop::Rejected(Rejection::Malformed((*why).into()));
            ex.record_stop(&stop);
            return Err(stop);
        }
        let principal = JwtBearer(&policies.jwt)
            .verify(frame.authorization)
            .map_err(Stop::Rejected)
            .inspect_err(|stop| ex.record_stop(stop))?;
        let msg = PlatformMessage {
            message_id: frame.id.unwrap_or_default().to_owned(),
            tenant: principal.tenant.clone(),
            sender_id: principal.id.clone(),
            text: frame.message.unwrap_or_default().to_owned(),
            principal: Some(principal),
            ..Default::default()
        };
        ex.heard(&msg);
        let who = identity::identify(&policies, route.platform_name(), &msg);
        rate::limit(
            &policies,
            self.shared.as_ref(),
            &who,
            &msg,
            frame.client_ip,
            &route,
        )
        .await
        .inspect_err(|stop| ex.record_stop(stop))?;
        let access = authorize::access_request(
            route.platform_name(),
            &who,
            &msg,
            &route.path,
            frame.client_ip,
        );
        let grant = authorize::authorize(&policies, &access, ex)?;
        if grant.confirm {
            // A frame cannot be held for a confirmation: fail closed.
            return Err(Stop::Denied {
                rule: "confirm_unsupported_in_passthrough".into(),
            });
        }
        if let Some(FrameRefusal::Blocked(rule)) = frame.refusal {
            return Err(Stop::Blocked { rule: rule.clone() });
        }
        Ok(Done {
            // Never written: the frame goes on to the upstream; the
            // status is the audit line's.
            response: Response::new(Bytes::new()),
            decision: "proxied",
            note: if frame.masked {
                "frame_masked"
            } else {
                "frame"
            },
            settles: true,
        })
    }
}
