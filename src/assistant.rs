//! The reference Assistant: `moltgate assistant --listen ADDR`, and the
//! `embedded` node inside the gateway.
//!
//! It answers `accepted`, then one text part, `echo: <text> (turn N)`, where
//! N is 1 plus the earlier user turns in `Envelope.context`. Echoing shows
//! users and tests exactly what the AI saw (after masking, with context).

use std::net::SocketAddr;
use std::pin::Pin;

use futures::Stream;
use tonic::{Request, Response, Status};

use crate::proto::v1::assistant_server::{Assistant, AssistantServer};
use crate::proto::v1::{reply, Accepted, Envelope, Final, Reply, TextPart};

/// The stream of replies to one envelope.
pub type ReplyStream = Pin<Box<dyn Stream<Item = Result<Reply, Status>> + Send>>;

/// The demo assistant.
#[derive(Debug, Clone, Default)]
pub struct DemoAssistant;

impl DemoAssistant {
    /// The replies the demo gives to `env`.
    pub fn replies(env: &Envelope) -> Vec<Reply> {
        let text = env.content.as_ref().map(|c| c.text.as_str()).unwrap_or("");
        let earlier_user_turns = env
            .context
            .as_ref()
            .map(|c| c.turns.iter().filter(|t| t.role == "user").count())
            .unwrap_or(0);
        let part = |kind| Reply {
            envelope_id: env.id.clone(),
            kind: Some(kind),
        };
        vec![
            part(reply::Kind::Accepted(Accepted {})),
            part(reply::Kind::Text(TextPart {
                text: format!("echo: {text} (turn {})", earlier_user_turns + 1),
            })),
            part(reply::Kind::Final(Final::default())),
        ]
    }

    /// The demo's replies as a stream, as a gRPC node would send them.
    pub fn stream(env: &Envelope) -> ReplyStream {
        Box::pin(tokio_stream::iter(Self::replies(env).into_iter().map(Ok)))
    }
}

#[tonic::async_trait]
impl Assistant for DemoAssistant {
    type HandleStream = ReplyStream;

    async fn handle(
        &self,
        request: Request<Envelope>,
    ) -> Result<Response<Self::HandleStream>, Status> {
        Ok(Response::new(Self::stream(request.get_ref())))
    }
}

/// Serves the demo assistant, with the standard gRPC health service, on
/// `addr` until `shutdown` resolves.
pub async fn serve(
    addr: SocketAddr,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_serving::<AssistantServer<DemoAssistant>>()
        .await;
    tonic::transport::Server::builder()
        .add_service(health)
        .add_service(AssistantServer::new(DemoAssistant))
        .serve_with_shutdown(addr, shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::v1::{Content, Context, Turn};

    #[test]
    fn echoes_text_and_counts_user_turns() {
        let mut env = Envelope {
            id: "e1".into(),
            content: Some(Content {
                text: "hi".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let r = DemoAssistant::replies(&env);
        assert!(matches!(r[0].kind, Some(reply::Kind::Accepted(_))));
        assert_eq!(
            r[1].kind,
            Some(reply::Kind::Text(TextPart {
                text: "echo: hi (turn 1)".into()
            }))
        );
        let turn = |role: &str| Turn {
            role: role.into(),
            text: "t".into(),
            ..Default::default()
        };
        env.context = Some(Context {
            turns: vec![
                turn("user"),
                turn("assistant"),
                turn("user"),
                turn("assistant"),
            ],
            ..Default::default()
        });
        let r = DemoAssistant::replies(&env);
        assert_eq!(
            r[1].kind,
            Some(reply::Kind::Text(TextPart {
                text: "echo: hi (turn 3)".into()
            }))
        );
        assert!(r.iter().all(|p| p.envelope_id == "e1"));
    }
}
