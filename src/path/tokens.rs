//! Stage: reversible tokenisation (`action: tokenize`, `tokenize:` in
//! `moltgate.yaml`). On the way in, each value a `tokenize` rule finds in
//! the message text becomes its token (`⟨CN_MOBILE:…⟩`), its original
//! sealed in the vault for the message's tenant and conversation; the AI
//! cluster, the context store, logs and audit lines see only tokens. On the
//! way out, after egress DLP, tokens of the same tenant and conversation
//! are restored in what the user gets (never in what is recorded).

use std::sync::Arc;

use super::exchange::{Exchange, Found};
use super::identity::Who;
use super::Gateway;
use crate::config::{Config, FileError};
use crate::platform::PlatformMessage;
use crate::policy::dlp::Direction;
use crate::shared::Shared;
use crate::tokenize::{Known, Labels, MemoryVault, Restorer, Scope, TokenVault, Tokenizer};

/// The tokenizer of `tokenize:`, if configured. Its vault is the shared
/// tier when edge nodes share state (a reply restored on node B finds what
/// node A tokenised), else this node's memory.
pub(super) fn build_tokenizer(
    config: &Config,
    shared: Option<&Arc<Shared>>,
) -> Result<Option<Arc<Tokenizer>>, FileError> {
    let Some(t) = &config.tokenize else {
        return Ok(None);
    };
    let key = t
        .master_key()
        .map_err(|e| FileError::at(&config.source, None, e.to_string()))?;
    let vault: Arc<dyn TokenVault> = match shared {
        Some(s) => Arc::new(crate::shared::tokens::RedisVault::new(s.clone(), t.ttl.0)),
        None => Arc::new(MemoryVault::new(t.ttl.0, t.max_entries)),
    };
    Ok(Some(Arc::new(Tokenizer::new(&key, vault))))
}

/// How to restore the tokens of one conversation in its replies.
#[derive(Clone)]
pub struct Restore {
    tokenizer: Arc<Tokenizer>,
    tenant: String,
    conversation: String,
    labels: Labels,
}

impl Restore {
    /// `text` with this conversation's tokens restored.
    pub async fn text(&self, text: &str) -> String {
        let scope = Scope {
            tenant: &self.tenant,
            conversation: &self.conversation,
        };
        self.tokenizer.restore(scope, &self.labels, text).await
    }
}

impl Gateway {
    /// Tokenises the message text in place (when a tokenizer is configured
    /// and a `tokenize` rule matched); returns how to restore its replies.
    pub(super) async fn tokenize_ingress(
        &self,
        ex: &mut Exchange,
        route: &super::Route,
        msg: &mut PlatformMessage,
        who: &Who,
    ) -> Option<Restore> {
        let tokenizer = self.tokenizer.clone()?;
        let conversation = conversation_of(route, msg, who);
        let policies = ex.policies.clone();
        if policies.dlp.tokenize_rules().next().is_none() {
            return self.restore_for(ex, route, msg, who);
        }
        let outcome = policies.dlp.scan(&msg.text, Direction::Ingress);
        let spans = outcome.token_spans();
        if !outcome.is_blocked() && !spans.is_empty() {
            let scope = Scope {
                tenant: &msg.tenant,
                conversation: &conversation,
            };
            let tokenized = tokenizer.tokenize_outcome(scope, &msg.text, &outcome).await;
            note_tokenized(ex, &spans);
            msg.text = tokenized;
        }
        self.restore_for(ex, route, msg, who)
    }

    /// Passthrough to an OpenAI-compatible server: tokenises every text of
    /// the request (the whole conversation it carries) before ingress DLP
    /// reads it. Returns the texts to use instead, in the walk order of
    /// [`super::inspect::payload`], and the tokens with their values, which
    /// the answer to this request restores (and nothing else: a token the
    /// request did not produce stays a token). Other passthrough routes
    /// mask `tokenize` findings whole: their bots may answer through the
    /// platform's API, where nothing could restore them.
    pub(super) async fn tokenize_payload(
        &self,
        ex: &mut Exchange,
        route: &super::Route,
        req: &super::IncomingRequest,
        msg: &PlatformMessage,
        who: &Who,
    ) -> (Vec<Option<String>>, Option<Arc<Known>>) {
        let tokenizer = match &self.tokenizer {
            Some(t) if route.platform == crate::config::PlatformKind::Openai => t.clone(),
            _ => return (Vec::new(), None),
        };
        let policies = ex.policies.clone();
        if policies.dlp.tokenize_rules().next().is_none() {
            return (Vec::new(), None);
        }
        let conversation = conversation_of(route, msg, who);
        let scope = Scope {
            tenant: &msg.tenant,
            conversation: &conversation,
        };
        let mut known = Known::default();
        let mut replaced = Vec::new();
        for text in super::inspect::payload_texts(route.adapter.as_ref(), req) {
            let outcome = policies.dlp.scan(&text, Direction::Ingress);
            let spans = outcome.token_spans();
            if outcome.is_blocked() || spans.is_empty() {
                replaced.push(None);
                continue;
            }
            note_tokenized(ex, &spans);
            let tokenized = tokenizer
                .tokenize_outcome_into(scope, &text, &outcome, &mut known)
                .await;
            replaced.push(Some(tokenized));
        }
        (replaced, (!known.is_empty()).then(|| Arc::new(known)))
    }

    /// How to restore the tokens of `msg`'s conversation in its reply
    /// (when a tokenizer is configured).
    pub(super) fn restore_for(
        &self,
        ex: &Exchange,
        route: &super::Route,
        msg: &PlatformMessage,
        who: &Who,
    ) -> Option<Restore> {
        Some(Restore {
            tokenizer: self.tokenizer.clone()?,
            tenant: msg.tenant.clone(),
            conversation: conversation_of(route, msg, who),
            labels: Labels::from_rules(ex.policies.dlp.tokenize_rules()),
        })
    }
}

impl Restore {
    /// A restorer for a reply that arrives in pieces (its tokens may be split
    /// across them).
    pub fn streaming(&self) -> Restorer<Arc<Tokenizer>> {
        let scope = Scope {
            tenant: &self.tenant,
            conversation: &self.conversation,
        };
        Restorer::new(self.tokenizer.clone(), scope, self.labels.clone())
    }
}

/// The conversation a message's tokens are kept under: its context key.
/// Derived only when tokenising, off the path of every other message.
fn conversation_of(route: &super::Route, msg: &PlatformMessage, who: &Who) -> String {
    crate::context::conversation_key(route.platform_name(), msg, who.person.as_deref())
}

/// Records tokenised spans: the audit line's rules and the findings counted.
fn note_tokenized(ex: &mut Exchange, spans: &[crate::policy::dlp::TokenSpan]) {
    for span in spans {
        let rule = format!("dlp:{}:tokenize", span.rule);
        if !ex.rules.contains(&rule) {
            ex.rules.push(rule);
        }
        ex.found.push(Found {
            rule: span.rule.clone(),
            action: "tokenize",
            direction: "ingress",
        });
    }
}
