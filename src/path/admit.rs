//! Stage: may this address talk to us at all? Runs on the request's headers,
//! before a byte of the body is read. A forwarding header (`X-Forwarded-For`,
//! or `Forwarded` when `client_ip_headers` says so), every line of it, is
//! honoured only from `trusted_proxies`.

use std::net::IpAddr;

use http::HeaderMap;
use ipnet::IpNet;

use super::stop::Stop;
use crate::policy::ip::IpDecision;
use crate::policy::PolicySet;

/// The client's address (socket peer, or the forwarding header from a trusted
/// proxy), and whether the IP policy admits it, and the route's own allow
/// list (`route_allow`, an adapter file's `ip_allow`) when it has one.
pub fn admit(
    policies: &PolicySet,
    route_allow: &[IpNet],
    peer: IpAddr,
    headers: &HeaderMap,
) -> (IpAddr, Result<(), Stop>) {
    let ip = policies.ip.client_ip_in(peer, headers);
    match policies.ip.check(ip) {
        IpDecision::Allowed
            if !route_allow.is_empty() && !route_allow.iter().any(|n| n.contains(&ip)) =>
        {
            (
                ip,
                Err(Stop::IpDenied {
                    reason: "route_ip_allow",
                }),
            )
        }
        IpDecision::Allowed => (ip, Ok(())),
        IpDecision::Denied { reason } => (
            ip,
            Err(Stop::IpDenied {
                reason: reason.as_str(),
            }),
        ),
    }
}
