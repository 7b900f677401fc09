//! Stage: may this address talk to us at all? Runs on the request's headers,
//! before a byte of the body is read. A forwarding header (`X-Forwarded-For`,
//! or `Forwarded` when `client_ip_headers` says so), every line of it, is
//! honoured only from `trusted_proxies`.

use std::net::IpAddr;

use http::HeaderMap;

use super::stop::Stop;
use crate::policy::ip::IpDecision;
use crate::policy::PolicySet;

/// The client's address (socket peer, or the forwarding header from a trusted
/// proxy), and whether the IP policy admits it.
pub fn admit(
    policies: &PolicySet,
    peer: IpAddr,
    headers: &HeaderMap,
) -> (IpAddr, Result<(), Stop>) {
    let ip = policies.ip.client_ip_in(peer, headers);
    match policies.ip.check(ip) {
        IpDecision::Allowed => (ip, Ok(())),
        IpDecision::Denied { reason } => (
            ip,
            Err(Stop::IpDenied {
                reason: reason.as_str(),
            }),
        ),
    }
}
