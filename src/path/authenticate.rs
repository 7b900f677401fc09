//! Stage: who sent this, and is it really from them? The route's adapter
//! verifies the platform's signature, token or replay window, decrypts and
//! parses; the generic API's adapter checks the bearer JWT through
//! [`JwtBearer`]. Nothing unverified goes further.

use std::time::SystemTime;

use super::exchange::IncomingRequest;
use super::routes::Route;
use super::stop::Stop;
use crate::platform::{BearerVerifier, Inbound, PlatformMessage, Principal, Rejection};
use crate::policy::jwt::JwtVerifier;
use crate::policy::PolicySet;

/// The JWT policy of one policy snapshot, as adapters see it.
pub struct JwtBearer<'a>(pub &'a JwtVerifier);

impl BearerVerifier for JwtBearer<'_> {
    fn verify(&self, authorization: Option<&str>) -> Result<Principal, Rejection> {
        match self.0.verify(authorization) {
            Ok(s) => Ok(Principal {
                id: s.id,
                tenant: s.tenant,
                roles: s.roles,
                device_type: s.device_type,
                claims: s.claims,
            }),
            Err(e) => Err(Rejection::Unauthorized {
                kind: e.kind(),
                message: e.to_string(),
                challenge: e.www_authenticate(),
            }),
        }
    }
}

/// Verifies and parses `req` with the route's adapter.
pub fn authenticate(
    route: &Route,
    req: &IncomingRequest,
    policies: &PolicySet,
) -> Result<PlatformMessage, Stop> {
    let bearer = JwtBearer(&policies.jwt);
    let webhook = req.as_webhook(SystemTime::now(), Some(&bearer));
    match route.adapter.receive(&webhook)? {
        Inbound::Message(m) => Ok(*m),
        Inbound::Answer { response, event } => Err(Stop::Handshake { response, event }),
        Inbound::Skip { response, reason } => Err(Stop::Ignored { response, reason }),
    }
}
