//! Stage: reversible tokenisation (`action: tokenize`, `tokenize:` in
//! `moltgate.yaml`). On the way in, each value a `tokenize` rule finds in
//! the message text becomes its token (`⟨CN_MOBILE:…⟩`), its original
//! sealed in the vault for the message's tenant and conversation; the AI
//! cluster, the context store, logs and audit lines see only tokens. On the
//! way out, after egress DLP, tokens of the same tenant and conversation
//! are restored in what the user gets (never in what is recorded).

use std::sync::Arc;

use super::exchange::{Exchange, Found};
use super::Gateway;
use crate::platform::PlatformMessage;
use crate::policy::dlp::Direction;
use crate::tokenize::{Labels, Scope, Tokenizer};

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
        msg: &mut PlatformMessage,
        conversation: &str,
    ) -> Option<Restore> {
        let tokenizer = self.tokenizer.clone()?;
        let policies = ex.policies.clone();
        let outcome = policies.dlp.scan(&msg.text, Direction::Ingress);
        let spans = outcome.token_spans();
        if !outcome.is_blocked() && !spans.is_empty() {
            let scope = Scope {
                tenant: &msg.tenant,
                conversation,
            };
            let tokenized = tokenizer.tokenize_outcome(scope, &msg.text, &outcome).await;
            for span in &spans {
                ex.rules.push(format!("dlp:{}:tokenize", span.rule));
                ex.found.push(Found {
                    rule: span.rule.clone(),
                    action: "tokenize",
                    direction: "ingress",
                });
            }
            msg.text = tokenized;
        }
        Some(Restore {
            tokenizer,
            tenant: msg.tenant.clone(),
            conversation: conversation.to_string(),
            labels: Labels::from_rules(policies.dlp.tokenize_rules()),
        })
    }
}
