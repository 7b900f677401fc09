//! Stage: is this sender, address, tenant or route over its limit? Runs
//! after identity (limits follow the person) and before any costly stage.

use std::net::IpAddr;
use std::time::Instant;

use super::identity::Who;
use super::stop::Stop;
use crate::platform::PlatformMessage;
use crate::policy::rate::RateKeys;
use crate::policy::PolicySet;

/// Consumes one unit of every limit that applies, or stops the message.
pub fn limit(
    policies: &PolicySet,
    who: &Who,
    msg: &PlatformMessage,
    ip: IpAddr,
    route: &str,
) -> Result<(), Stop> {
    let keys = RateKeys {
        ip,
        user: Some(who.user_key.as_str()),
        tenant: Some(msg.tenant.as_str()).filter(|t| !t.is_empty()),
        route,
    };
    let now = Instant::now();
    match policies.rate.check(&keys, now) {
        Ok(()) => Ok(()),
        Err(limited) => Err(Stop::RateLimited {
            scope: limited.scope,
            retry_after: limited.retry_after_secs(),
            // A webhook user hears about it once per window, not per message.
            notify: policies.rate.should_notify(&who.user_key, now),
        }),
    }
}
