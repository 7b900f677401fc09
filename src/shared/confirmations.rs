//! Pending confirmations shared by every node: a code sent by node A is
//! accepted by node B, exactly once.
//!
//! Key `{prefix}confirm:{who}` (the person id, else `platform:sender`)
//! holds one JSON record: the code's SHA-256 (with `who`, never the code),
//! the tries left, the expiry on Redis's clock, the envelope id and the
//! held Envelope (protobuf, base64). It is written with `SET … PX` for the
//! code's ttl plus a grace period (a late code is answered "expired", as
//! in memory), replacing (and auditing as superseded) any earlier one.
//! An answer is judged by one script that reads the record and deletes it
//! in the same step (`GETDEL`'s guarantee: exactly one node can release
//! it), or counts a wrong try down with `KEEPTTL`.
//!
//! Audit lines are the in-memory store's (`confirm_await`,
//! `confirm_forwarded`, `confirm_wrong`, `confirm_rejected`,
//! `confirm_expired`), except that a code never answered expires inside
//! Redis without one.

use std::sync::LazyLock;
use std::time::Duration;

use base64::Engine as _;
use prost::Message as _;
use redis::Script;
use sha2::{Digest, Sha256};

use super::{key_text, Shared, SharedError};
use crate::context::confirm::{self, ConfirmOutcome, HeldMessage};
use crate::proto::v1::Envelope;

static HOLD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"-- KEYS[1] pending key; ARGV[1] record (JSON, no expiry yet);
-- ARGV[2] ttl (ms); ARGV[3] how long the record is kept (ms).
-- Returns the envelope id of a record this one replaced, if any.
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rec = cjson.decode(ARGV[1])
rec.x = now + tonumber(ARGV[2])
local old = redis.call('SET', KEYS[1], cjson.encode(rec), 'PX', ARGV[3], 'GET')
if old then return cjson.decode(old).id end
return false",
    )
});

static RESPOND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"-- KEYS[1] pending key; ARGV[1] SHA-256 of who and the answer.
-- Returns {'0'} nothing held | {'1', id, envelope} forward (deleted) |
-- {'2', id} expired (deleted) | {'3', id} last try wrong (deleted) |
-- {'4', id, tries left} wrong.
if redis.replicate_commands then redis.replicate_commands() end
local v = redis.call('GET', KEYS[1])
if not v then return {'0'} end
local rec = cjson.decode(v)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if now >= rec.x then
  redis.call('DEL', KEYS[1])
  return {'2', rec.id}
end
if rec.d == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return {'1', rec.id, rec.e}
end
rec.a = rec.a - 1
if rec.a <= 0 then
  redis.call('DEL', KEYS[1])
  return {'3', rec.id}
end
redis.call('SET', KEYS[1], cjson.encode(rec), 'KEEPTTL')
return {'4', rec.id, tostring(rec.a)}",
    )
});

fn digest(who: &str, code: &str) -> String {
    let mut h = Sha256::new();
    h.update(who.as_bytes());
    h.update(b"\n");
    h.update(code.trim().as_bytes());
    hex::encode(h.finalize())
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl Shared {
    /// Holds `envelope` for `who` for `ttl` with `attempts` tries and
    /// returns the code to send them.
    pub async fn hold(
        &self,
        who: &str,
        envelope: &Envelope,
        ttl: Duration,
        attempts: u32,
    ) -> Result<String, SharedError> {
        let code = confirm::new_code();
        let record = serde_json::json!({
            "d": digest(who, &code),
            "a": attempts.max(1),
            "id": envelope.id,
            "e": base64::engine::general_purpose::STANDARD.encode(envelope.encode_to_vec()),
        })
        .to_string();
        let key = self.key("confirm", &key_text(who));
        let keep = millis(ttl.saturating_add(confirm::grace(ttl)));
        let ttl = millis(ttl);
        let (key, record) = (&key, &record);
        let replaced: Option<String> = self
            .call("confirm_hold", |mut conn| async move {
                HOLD.key(key)
                    .arg(record)
                    .arg(ttl)
                    .arg(keep)
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        if let Some(old) = replaced {
            confirm::audit("confirm_rejected", who, &old, "superseded");
        }
        confirm::audit("confirm_await", who, &envelope.id, "");
        Ok(code)
    }

    /// Interprets the code-shaped `text` from `who` as an answer.
    pub async fn respond(&self, who: &str, text: &str) -> Result<ConfirmOutcome, SharedError> {
        let key = self.key("confirm", &key_text(who));
        let answer = digest(who, text);
        let (key, answer) = (&key, &answer);
        let reply: Vec<String> = self
            .call("confirm_respond", |mut conn| async move {
                RESPOND.key(key).arg(answer).invoke_async(&mut conn).await
            })
            .await?;
        let bad = || SharedError::Unexpected("confirm script");
        let outcome = match reply.as_slice() {
            [zero] if zero == "0" => ConfirmOutcome::NotPending,
            [one, id, envelope] if one == "1" => {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(envelope)
                    .map_err(|_| bad())?;
                let envelope = Envelope::decode(bytes.as_slice()).map_err(|_| bad())?;
                confirm::audit("confirm_forwarded", who, id, "");
                ConfirmOutcome::Forward(Box::new(HeldMessage {
                    envelope,
                    reply: serde_json::Value::Null,
                }))
            }
            [two, id] if two == "2" => {
                confirm::audit("confirm_expired", who, id, "late_code");
                ConfirmOutcome::Expired
            }
            [three, id] if three == "3" => {
                confirm::audit("confirm_rejected", who, id, "wrong_code");
                ConfirmOutcome::Wrong { remaining: 0 }
            }
            [four, id, left] if four == "4" => {
                confirm::audit("confirm_wrong", who, id, "wrong_code");
                ConfirmOutcome::Wrong {
                    remaining: left.parse().map_err(|_| bad())?,
                }
            }
            _ => return Err(bad()),
        };
        Ok(outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stored_digest_binds_the_code_to_its_person() {
        assert_eq!(digest("u1", " 123456\n"), digest("u1", "123456"));
        assert_ne!(digest("u1", "123456"), digest("u2", "123456"));
        assert_ne!(digest("u1", "123456"), digest("u1", "123457"));
        assert!(!digest("u1", "123456").contains("123456"));
    }
}
