//! The runtime half of the verification menu (`crate::adapters` builds
//! and checks a [`Scheme`] at load; this checks requests with it): HMAC and
//! Ed25519 over the signed-message template, the token compare (constant
//! time), the JWT bearer through the request's verifier, and the replay
//! window. Re-signing for passthrough is here too.

use base64::Engine;
use ed25519_dalek::{Signature, Verifier};
use hmac::{Hmac, Mac};
use subtle::ConstantTimeEq;

use super::super::adapter::{check_replay_window, Principal, WebhookRequest};
use super::super::Rejection;
use crate::adapters::verify::{Location, MsgPiece, Scheme, Secret, Signed, Timestamp};
use crate::adapters::{Encoding, HmacAlgorithm, TimeUnit};

impl Location {
    fn read(&self, req: &WebhookRequest<'_>) -> Option<String> {
        match self {
            Location::Header(h) => req.header(h).map(str::to_string),
            Location::Query(q) => req.query_param(q),
        }
    }
}

impl Scheme {
    /// Checks the request. `Ok(Some(principal))` for a JWT.
    pub(crate) fn verify(&self, req: &WebhookRequest<'_>) -> Result<Option<Principal>, Rejection> {
        match self {
            Scheme::Hmac {
                algorithm,
                secret,
                signed,
            } => {
                let presented = signed.presented(req)?;
                let message = signed.message_bytes(req, None)?;
                let ok = hmac_check(*algorithm, secret, &message, &presented);
                ok.then_some(None)
                    .ok_or(Rejection::BadSignature("hmac signature mismatch"))
            }
            Scheme::Token { at, prefix, secret } => {
                let presented = at
                    .read(req)
                    .ok_or(Rejection::Missing("token").unverified())?;
                let token = presented.strip_prefix(prefix.as_str()).unwrap_or("");
                let ok =
                    !secret.0.is_empty() && bool::from(token.as_bytes().ct_eq(secret.0.as_bytes()));
                ok.then_some(None)
                    .ok_or(Rejection::BadSignature("token mismatch"))
            }
            Scheme::Ed25519 { key, signed } => {
                let presented = signed.presented(req)?;
                let message = signed.message_bytes(req, None)?;
                let sig = Signature::from_slice(&presented)
                    .map_err(|_| Rejection::BadSignature("ed25519 signature is malformed"))?;
                key.verify(&message, &sig)
                    .map(|()| None)
                    .map_err(|_| Rejection::BadSignature("ed25519 signature mismatch"))
            }
            Scheme::Jwt { header } => {
                let verifier = req
                    .bearer
                    .ok_or(Rejection::BadSignature("no JWT verifier for this request"))?;
                verifier.verify(req.header(header)).map(Some)
            }
            Scheme::None => Ok(None),
        }
    }

    /// Headers that make `body` verify again, for passthrough after DLP
    /// changed it: `None` when the scheme cannot be re-signed here
    /// (Ed25519: no private key; a signature or timestamp in the query).
    pub(crate) fn reseal_headers(
        &self,
        req: &WebhookRequest<'_>,
        body: &[u8],
    ) -> Option<Vec<(String, String)>> {
        match self {
            Scheme::None | Scheme::Jwt { .. } => Some(Vec::new()),
            Scheme::Token { at, prefix, secret } => match at {
                Location::Header(h) => Some(vec![(h.clone(), format!("{prefix}{}", secret.0))]),
                Location::Query(_) => None,
            },
            Scheme::Ed25519 { .. } => None,
            Scheme::Hmac {
                algorithm,
                secret,
                signed,
            } => {
                let Location::Header(sig_header) = &signed.at else {
                    return None;
                };
                let mut headers = Vec::new();
                let now = match &signed.timestamp {
                    Some(Timestamp {
                        at: Location::Header(h),
                        unit,
                        ..
                    }) => {
                        let secs = req.now_secs();
                        let now = match unit {
                            TimeUnit::Seconds => secs.to_string(),
                            TimeUnit::Milliseconds => (secs.saturating_mul(1000)).to_string(),
                        };
                        headers.push((h.clone(), now.clone()));
                        Some(now)
                    }
                    Some(_) => return None,
                    None => None,
                };
                let message = signed.message_with(req, body, now.as_deref()).ok()?;
                let mac = hmac_bytes(*algorithm, secret, &message)?;
                let encoded = match signed.encoding {
                    Encoding::Hex => hex::encode(mac),
                    Encoding::Base64 => base64::engine::general_purpose::STANDARD.encode(mac),
                };
                headers.push((sig_header.clone(), format!("{}{encoded}", signed.prefix)));
                Some(headers)
            }
        }
    }
}

/// The HMAC of `message` under `secret`.
fn hmac_bytes(algorithm: HmacAlgorithm, secret: &Secret, message: &[u8]) -> Option<Vec<u8>> {
    let key = secret.0.as_bytes();
    Some(match algorithm {
        HmacAlgorithm::Sha256 => {
            let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).ok()?;
            mac.update(message);
            mac.finalize().into_bytes().to_vec()
        }
        HmacAlgorithm::Sha1 => {
            let mut mac = Hmac::<sha1::Sha1>::new_from_slice(key).ok()?;
            mac.update(message);
            mac.finalize().into_bytes().to_vec()
        }
    })
}

/// Constant-time check of a presented HMAC.
fn hmac_check(algorithm: HmacAlgorithm, secret: &Secret, message: &[u8], presented: &[u8]) -> bool {
    hmac_bytes(algorithm, secret, message)
        .is_some_and(|expected| bool::from(expected.as_slice().ct_eq(presented)))
}

impl Signed {
    /// The decoded signature, after the replay window is checked.
    fn presented(&self, req: &WebhookRequest<'_>) -> Result<Vec<u8>, Rejection> {
        let raw = self
            .at
            .read(req)
            .ok_or(Rejection::Missing("signature").unverified())?;
        if let Some(ts) = &self.timestamp {
            ts.check(req)?;
        }
        let encoded = raw
            .trim()
            .strip_prefix(self.prefix.as_str())
            .ok_or(Rejection::BadSignature("signature prefix mismatch"))?;
        decode(self.encoding, encoded).ok_or(Rejection::BadSignature(
            "signature is not encoded as configured",
        ))
    }

    /// The signed message for the request as received.
    fn message_bytes(
        &self,
        req: &WebhookRequest<'_>,
        ts: Option<&str>,
    ) -> Result<Vec<u8>, Rejection> {
        self.message_with(req, req.body, ts)
    }

    /// The signed message with `body` (and, when given, `ts` as the timestamp).
    fn message_with(
        &self,
        req: &WebhookRequest<'_>,
        body: &[u8],
        ts: Option<&str>,
    ) -> Result<Vec<u8>, Rejection> {
        let mut out = Vec::with_capacity(body.len() + 64);
        let missing = || Rejection::Missing("signed value").unverified();
        for piece in &self.message {
            match piece {
                MsgPiece::Lit(s) => out.extend_from_slice(s.as_bytes()),
                MsgPiece::Body => out.extend_from_slice(body),
                MsgPiece::Timestamp => {
                    let v = match (ts, &self.timestamp) {
                        (Some(t), _) => t.to_string(),
                        (None, Some(t)) => t.at.read(req).ok_or_else(missing)?,
                        (None, None) => return Err(missing()),
                    };
                    out.extend_from_slice(v.as_bytes());
                }
                MsgPiece::Header(h) => {
                    out.extend_from_slice(req.header(h).ok_or_else(missing)?.as_bytes())
                }
                MsgPiece::Query(q) => {
                    out.extend_from_slice(req.query_param(q).ok_or_else(missing)?.as_bytes())
                }
            }
        }
        Ok(out)
    }
}

impl Timestamp {
    fn check(&self, req: &WebhookRequest<'_>) -> Result<(), Rejection> {
        let raw = self
            .at
            .read(req)
            .ok_or(Rejection::Missing("timestamp").unverified())?;
        let n: i64 = raw
            .trim()
            .parse()
            .map_err(|_| Rejection::Malformed("timestamp is not a number".into()).unverified())?;
        let secs = match self.unit {
            TimeUnit::Seconds => n,
            TimeUnit::Milliseconds => n.div_euclid(1000),
        };
        check_replay_window(secs, req.now_secs(), self.window)
    }
}

/// Decodes a presented signature.
fn decode(encoding: Encoding, s: &str) -> Option<Vec<u8>> {
    match encoding {
        Encoding::Hex => hex::decode(s).ok(),
        Encoding::Base64 => base64::engine::general_purpose::STANDARD
            .decode(s)
            .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(s))
            .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s))
            .ok(),
    }
}
