//! Stage: is this sender, address, tenant or route over its limit? Runs
//! after identity (limits follow the person) and before any costly stage.
//!
//! Which limits apply depends on who vouches for the message:
//!
//! - A verified platform webhook (every route whose adapter's channel is
//!   [`Channel::Webhook`]) comes from the platform's servers: its socket
//!   address is the platform's egress, shared by every user of the platform.
//!   `per_ip` would count the platform, and one chatty user could silence it
//!   for everyone, so it does not apply; `per_user` (the platform user, keyed
//!   with the tenant where ids are per tenant), `per_tenant`, `per_route` and
//!   `global` do.
//! - The generic API ([`Channel::Api`]) is called by clients themselves:
//!   `per_ip` applies as well.
//! - A request that fails verification (bad signature or token, on any
//!   route) spends one unit of its address's `per_ip` budget and nothing
//!   else ([`unverified`]); once that budget is spent, such requests get 429
//!   instead of the verification error. The check runs after verification,
//!   never before it: a platform's egress address that also carries forged
//!   or foreign traffic (anyone can point a Telegram bot at any URL) must not
//!   get the platform's verified messages refused. On the API, a spent
//!   budget also refuses verified requests from that address (the rate stage
//!   checks `per_ip` there), so a token guesser learns nothing once over it.
//!
//! With `shared:` the counters are in Redis (`crate::shared::limits`), so
//! every node spends the same budgets. While Redis fails, `on_error`
//! decides: `allow` admits, `deny` answers 503, `local` falls back to this
//! node's own limiter (each node then enforces the limits on its own).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use super::identity::Who;
use super::routes::Route;
use super::stop::Stop;
use crate::config::OnError;
use crate::platform::{Channel, PlatformMessage};
use crate::policy::rate::{Applicable, Limited, RateKeys};
use crate::policy::PolicySet;
use crate::shared::Shared;

/// Decides `limits` on the shared tier when there is one, else (or when it
/// fails and `on_error` is `local`) with `local`. `Err` is the stop that
/// `on_error: deny` means.
async fn decide(
    shared: Option<&Arc<Shared>>,
    limits: impl FnOnce() -> Vec<Applicable>,
    local: impl FnOnce() -> Result<(), Limited>,
) -> Result<Result<(), Limited>, Stop> {
    let Some(shared) = shared else {
        return Ok(local());
    };
    match shared.limit(&limits()).await {
        Ok(verdict) => Ok(verdict),
        Err(_) => match shared.on_error() {
            OnError::Allow => Ok(Ok(())),
            OnError::Deny => Err(Stop::SharedUnavailable),
            OnError::Local => Ok(local()),
        },
    }
}

/// Consumes one unit of every limit that applies to a verified message on
/// `route`, or stops the message.
pub async fn limit(
    policies: &PolicySet,
    shared: Option<&Arc<Shared>>,
    who: &Who,
    msg: &PlatformMessage,
    ip: IpAddr,
    route: &Route,
) -> Result<(), Stop> {
    let keys = RateKeys {
        ip: (route.adapter.channel() == Channel::Api).then_some(ip),
        user: Some(who.user_key.as_str()),
        tenant: Some(msg.tenant.as_str()).filter(|t| !t.is_empty()),
        route: &route.path,
    };
    let now = Instant::now();
    let verdict = decide(
        shared,
        || policies.rate.applicable(&keys),
        || policies.rate.check(&keys, now),
    )
    .await?;
    match verdict {
        Ok(()) => Ok(()),
        Err(limited) => Err(Stop::RateLimited {
            scope: limited.scope,
            retry_after: limited.retry_after_secs(),
            // A webhook user hears about it once per window, not per message.
            notify: policies.rate.should_notify(&who.user_key, now),
        }),
    }
}

/// A request from `ip` that authentication stopped: a verification failure
/// spends one unit of `per_ip`, and becomes a 429 once that is spent. Other
/// stops (URL challenges, ignored events) pass unchanged.
pub async fn unverified(
    policies: &PolicySet,
    shared: Option<&Arc<Shared>>,
    ip: IpAddr,
    stop: Stop,
) -> Stop {
    if !matches!(stop, Stop::Rejected(_)) {
        return stop;
    }
    let verdict = decide(
        shared,
        || {
            policies
                .rate
                .applicable_unverified(ip)
                .into_iter()
                .collect()
        },
        || policies.rate.check_unverified(ip, Instant::now()),
    )
    .await;
    match verdict {
        // Redis failing under `deny` does not turn a forgery into a 503.
        Err(_) | Ok(Ok(())) => stop,
        Ok(Err(limited)) => Stop::RateLimited {
            scope: limited.scope,
            retry_after: limited.retry_after_secs(),
            // Nobody verified to tell: the answer is a plain 429.
            notify: false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::path::testkit;
    use crate::platform::{Rejection, WebhookResponse};
    use futures::executor::block_on;

    #[test]
    fn failed_verifications_spend_per_ip_then_get_429() {
        let policies = testkit::policies(&[(
            "security_policy.yaml",
            "rate_limiting:\n  per_ip: { window: 60s, max_requests: 2 }\n",
        )]);
        let ip: IpAddr = "192.0.2.7".parse().expect("static");
        let forged = || Stop::Rejected(Rejection::BadSignature("test"));
        for _ in 0..2 {
            assert!(matches!(
                block_on(unverified(&policies, None, ip, forged())),
                Stop::Rejected(_)
            ));
        }
        match block_on(unverified(&policies, None, ip, forged())) {
            Stop::RateLimited {
                scope,
                retry_after,
                notify,
            } => {
                assert_eq!((scope, notify), ("per_ip", false));
                assert!((1..=61).contains(&retry_after));
            }
            other => panic!("{other:?}"),
        }
        // Verified handshakes and ignored events are not failures.
        let ignored = Stop::Ignored {
            response: WebhookResponse::text("ok"),
            reason: "bot_message",
        };
        assert!(matches!(
            block_on(unverified(&policies, None, ip, ignored)),
            Stop::Ignored { .. }
        ));
        // Another address has its own budget.
        let other: IpAddr = "192.0.2.8".parse().expect("static");
        assert!(matches!(
            block_on(unverified(&policies, None, other, forged())),
            Stop::Rejected(_)
        ));
    }
}
