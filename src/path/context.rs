//! Stage: the conversation's context, attached to the Envelope on the way
//! to the AI cluster and extended with each exchange on the way back.
//!
//! Without `shared:` it lives in this node's `ContextStore`. With it, in
//! Redis (`crate::shared::conversations`), so a conversation continues on
//! whichever node its next message reaches. While Redis fails, this node's
//! store stands in whatever `on_error` says (`on_error` is about limits and
//! dedupe; a conversation that loses a few turns is not a security
//! decision), and the conversation continues there until Redis is back.

use std::collections::HashMap;
use std::sync::Arc;

use crate::context::ContextStore;
use crate::envelope;
use crate::proto::v1::Envelope;
use crate::shared::{conversations, Shared};

/// Where conversations are kept.
#[derive(Clone)]
pub struct Conversations {
    /// This node's store: the only one without `shared:`, the stand-in while Redis fails.
    pub local: Arc<ContextStore>,
    /// The shared tier, if configured.
    pub shared: Option<Arc<Shared>>,
}

impl Conversations {
    /// `env` with its conversation's context attached.
    pub async fn attach(&self, mut env: Envelope) -> Envelope {
        let Some(conversation) = env.conversation.as_ref().map(|c| c.id.clone()) else {
            return env;
        };
        if let Some(shared) = &self.shared {
            if let Ok(context) = shared.snapshot(&conversation).await {
                let found = !context.turns.is_empty() || !context.state.is_empty();
                self.local.count_lookup(found);
                env.context = Some(context);
                return env;
            }
        }
        env.context = Some(self.local.snapshot(&conversation));
        env
    }

    /// Appends one exchange to `env`'s conversation: the user's text as the
    /// assistant saw it (masked) and the replies as the user saw them.
    pub async fn record(
        &self,
        env: &Envelope,
        user_text: &str,
        replies: &[String],
        state: &HashMap<String, String>,
    ) {
        let Some(conversation) = &env.conversation else {
            return;
        };
        let at = envelope::now_millis();
        if let Some(shared) = &self.shared {
            let exchange = conversations::Exchange {
                user_turn: user_text,
                replies,
                state,
                platform: &env.platform,
                at,
            };
            if let Ok(dropped) = shared
                .record(&conversation.id, self.local.limits(), exchange)
                .await
            {
                self.local.count_state_dropped(dropped);
                return;
            }
        }
        self.local.record_exchange(
            &conversation.id,
            user_text,
            replies,
            state.iter(),
            &env.platform,
            at,
        );
    }
}
