//! Why a message stopped before it was answered: one typed value that every
//! stage returns, rendered in exactly one place per channel
//! (`super::answer`) and audited in exactly one place (`super::finish`).
//!
//! A stage never writes a response, an audit line or a metric itself: it
//! returns a `Stop`, so no stage can refuse a message "quietly" and no
//! refusal can go unaudited.

use std::sync::Arc;

use http::StatusCode;

use crate::platform::{Rejection, WebhookResponse};

/// The end of a message that was not answered by the AI cluster or the bot.
#[derive(Debug, Clone)]
pub enum Stop {
    /// No route for the path.
    UnknownPath,
    /// The route does not take this method.
    MethodNotAllowed {
        /// The methods it takes, for `Allow`.
        allow: String,
    },
    /// The body is over the route's limit (declared or streamed).
    TooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The body did not arrive before the deadline.
    BodyTimeout,
    /// The body could not be read.
    BodyUnreadable,
    /// The IP policy refused the client address.
    IpDenied {
        /// `blacklist` or `not_whitelisted`.
        reason: &'static str,
    },
    /// Verification failed: signature, token, replay window, decryption,
    /// malformed input.
    Rejected(Rejection),
    /// The platform's own handshake (URL challenge, PING), answered by the adapter.
    Handshake {
        /// The adapter's answer.
        response: WebhookResponse,
        /// What it was, for the audit line.
        event: &'static str,
    },
    /// A verified event that is not a message (the bot's own message, an edit).
    Ignored {
        /// The adapter's acknowledgement.
        response: WebhookResponse,
        /// Why, for the audit line and metric.
        reason: &'static str,
    },
    /// A redelivery of a message already handled.
    Duplicate,
    /// A redelivery of a message still being handled.
    DuplicateInFlight,
    /// A rate limit is exhausted.
    RateLimited {
        /// The limit's scope (`global`, `ip`, `user`, …).
        scope: &'static str,
        /// Seconds until it admits again.
        retry_after: u64,
        /// Whether the user should be told (once per window on webhooks).
        notify: bool,
    },
    /// ABAC/RBAC refused, or a rule the route cannot honour.
    Denied {
        /// The rule (or default) that decided.
        rule: String,
    },
    /// A `block` DLP rule matched.
    Blocked {
        /// The rule's name (a policy name, never the value found).
        rule: Arc<str>,
    },
    /// Held until the sender confirms with a one-time code.
    ConfirmRequired {
        /// The code to send back.
        code: String,
        /// Seconds it stays valid.
        expires_in: u64,
    },
    /// A wrong confirmation code; the held message waits.
    ConfirmWrong {
        /// Attempts left.
        remaining: u32,
    },
    /// Too many wrong codes: the held message is dropped.
    ConfirmRejected,
    /// The code came too late.
    ConfirmExpired,
    /// DLP masked a passthrough body whose signature cannot be renewed.
    CannotReseal,
    /// The route's target is missing (a config error caught at run time).
    NoUpstream,
    /// No AI node accepted the message, or the bot could not be reached:
    /// nothing was acknowledged, so the sender must retry.
    Unavailable {
        /// Seconds for `Retry-After`.
        retry_after: u32,
        /// The gRPC code (or -1) for the audit line.
        code: i32,
        /// The HTTP status: 503 for the AI cluster, 502 for a bot.
        status: StatusCode,
    },
    /// The shared tier (Redis) failed and `shared.on_error` is `deny`: a
    /// limit or dedupe check could not be made, so nothing was accepted.
    SharedUnavailable,
}

/// What kind of end a stop is: decides the metric family and whether a
/// webhook gets a notice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopKind {
    /// Bad or forged input: an HTTP error on every channel.
    Refusal,
    /// A policy decision about a verified message: a notice on webhooks.
    Policy,
    /// Handled without forwarding (handshake, ignored, duplicate).
    Settled,
    /// Could not be delivered; the sender retries.
    Retry,
}

impl Stop {
    /// The audit line's `decision`.
    pub fn decision(&self) -> &'static str {
        match self {
            Stop::UnknownPath
            | Stop::MethodNotAllowed { .. }
            | Stop::TooLarge { .. }
            | Stop::BodyTimeout
            | Stop::BodyUnreadable
            | Stop::IpDenied { .. }
            | Stop::Rejected(_) => "rejected",
            Stop::Handshake { .. } => "answered",
            Stop::Ignored { .. } => "ignored",
            Stop::Duplicate => "duplicate",
            Stop::DuplicateInFlight => "duplicate_in_flight",
            Stop::RateLimited { .. } => "rate_limited",
            Stop::Denied { .. } => "denied",
            Stop::Blocked { .. } => "blocked",
            Stop::ConfirmRequired { .. } => "confirm_required",
            Stop::ConfirmWrong { .. } => "confirm_wrong_code",
            Stop::ConfirmRejected => "confirm_rejected",
            Stop::ConfirmExpired => "confirm_expired",
            Stop::CannotReseal => "refused",
            Stop::NoUpstream => "refused",
            Stop::Unavailable { .. } | Stop::SharedUnavailable => "unavailable",
        }
    }

    /// The `outcome` label of `moltgate_requests_total`.
    pub fn outcome(&self) -> &'static str {
        match self {
            Stop::Handshake { .. } => "challenge",
            Stop::Duplicate | Stop::DuplicateInFlight => "duplicate",
            other => other.decision(),
        }
    }

    /// A short, bounded reason for the audit line and metrics. Never
    /// message content.
    pub fn reason(&self) -> String {
        match self {
            Stop::UnknownPath => "unknown_path".into(),
            Stop::MethodNotAllowed { .. } => "method_not_allowed".into(),
            Stop::TooLarge { .. } => "body_too_large".into(),
            Stop::BodyTimeout => "body_timeout".into(),
            Stop::BodyUnreadable => "body_unreadable".into(),
            Stop::IpDenied { reason } => (*reason).into(),
            Stop::Rejected(r) => r.kind().into(),
            Stop::Handshake { event, .. } => (*event).into(),
            Stop::Ignored { reason, .. } => (*reason).into(),
            Stop::Duplicate | Stop::DuplicateInFlight => String::new(),
            Stop::RateLimited { scope, .. } => format!("rate:{scope}"),
            Stop::Denied { rule } => rule.clone(),
            Stop::Blocked { rule } => format!("dlp:{rule}"),
            Stop::ConfirmRequired { .. } => "confirm_required".into(),
            Stop::ConfirmWrong { remaining: 0 } | Stop::ConfirmRejected => {
                "confirmation_rejected".into()
            }
            Stop::ConfirmWrong { .. } => "confirmation_wrong_code".into(),
            Stop::ConfirmExpired => "confirmation_expired".into(),
            Stop::CannotReseal => "cannot_reseal".into(),
            Stop::NoUpstream => "no_upstream".into(),
            Stop::Unavailable { .. } => "no_node_accepted".into(),
            Stop::SharedUnavailable => "shared_state_unavailable".into(),
        }
    }

    /// Which family of end this is.
    pub fn kind(&self) -> StopKind {
        match self {
            Stop::UnknownPath
            | Stop::MethodNotAllowed { .. }
            | Stop::TooLarge { .. }
            | Stop::BodyTimeout
            | Stop::BodyUnreadable
            | Stop::IpDenied { .. }
            | Stop::Rejected(_) => StopKind::Refusal,
            Stop::Handshake { .. } | Stop::Ignored { .. } | Stop::Duplicate => StopKind::Settled,
            Stop::RateLimited { .. }
            | Stop::Denied { .. }
            | Stop::Blocked { .. }
            | Stop::ConfirmRequired { .. }
            | Stop::ConfirmWrong { .. }
            | Stop::ConfirmRejected
            | Stop::ConfirmExpired
            | Stop::CannotReseal => StopKind::Policy,
            Stop::DuplicateInFlight
            | Stop::NoUpstream
            | Stop::Unavailable { .. }
            | Stop::SharedUnavailable => StopKind::Retry,
        }
    }

    /// Whether the message is settled, so its dedupe claim is committed (a
    /// redelivery is answered "duplicate"). A stop the sender must retry
    /// releases the claim, so the redelivery is processed.
    pub fn settles(&self) -> bool {
        !matches!(self.kind(), StopKind::Retry | StopKind::Refusal)
    }

    /// Whether the connection must not be reused (the body may be unread).
    pub fn closes_connection(&self) -> bool {
        matches!(
            self,
            Stop::IpDenied { .. }
                | Stop::TooLarge { .. }
                | Stop::BodyTimeout
                | Stop::BodyUnreadable
        )
    }
}

impl From<Rejection> for Stop {
    fn from(r: Rejection) -> Self {
        Stop::Rejected(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_release_and_decisions_settle() {
        let unavailable = Stop::Unavailable {
            retry_after: 1,
            code: 14,
            status: StatusCode::SERVICE_UNAVAILABLE,
        };
        assert!(!unavailable.settles());
        assert!(!Stop::DuplicateInFlight.settles());
        assert!(Stop::Denied { rule: "r".into() }.settles());
        assert!(Stop::Blocked {
            rule: "card".into()
        }
        .settles());
        assert!(Stop::Duplicate.settles());
    }

    #[test]
    fn reasons_never_carry_content() {
        let blocked = Stop::Blocked {
            rule: "credit_card".into(),
        };
        assert_eq!(blocked.reason(), "dlp:credit_card");
        assert_eq!(blocked.decision(), "blocked");
        let r = Stop::Rejected(Rejection::BadSignature("x"));
        assert_eq!(r.reason(), "bad_signature");
        assert_eq!(r.kind(), StopKind::Refusal);
    }
}
