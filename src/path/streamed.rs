//! A passthrough answer whose body is streamed to the client as it arrives
//! (an OpenAI-compatible `stream: true` answer: Server-Sent Events), through
//! streaming-safe egress DLP ([`ChunkMasker`]).
//!
//! The message path ends (one audit line, `decision: proxied`, note
//! `streamed`) when the answer's header is known; the body then follows:
//! the [`StreamedBody`] marker rides in the response's extensions, and
//! `server` writes each piece [`StreamingAnswer::next_piece`] gives as it
//! comes, so a slow client slows the upstream's reading instead of growing
//! a buffer. Findings are counted when the stream ends.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::StreamExt;

use super::exchange::Found;
use crate::openai::chunks::ChunkMasker;
use crate::upstream::bot::BotError;

/// The rest of a streamed answer, and the masker its pieces go through.
pub struct StreamingAnswer {
    body: futures::stream::BoxStream<'static, Result<Bytes, BotError>>,
    masker: ChunkMasker,
    ended: bool,
}

impl StreamingAnswer {
    /// An answer body to mask as it streams.
    pub fn new(
        body: futures::stream::BoxStream<'static, Result<Bytes, BotError>>,
        masker: ChunkMasker,
    ) -> Self {
        Self {
            body,
            masker,
            ended: false,
        }
    }

    /// The next bytes for the client (possibly empty while a tail is held),
    /// or `None` when the answer is over. An upstream that fails mid-stream
    /// ends it: what was held is flushed, masked.
    pub async fn next_piece(&mut self) -> Option<Bytes> {
        if self.ended {
            return None;
        }
        match self.body.next().await {
            Some(Ok(piece)) if !self.masker.failed() => Some(self.masker.push(&piece).into()),
            Some(Err(e)) => {
                tracing::warn!(error = %e, "a streamed answer ended early");
                self.ended = true;
                Some(self.masker.finish().into())
            }
            Some(Ok(_)) | None => {
                self.ended = true;
                Some(self.masker.finish().into())
            }
        }
    }

    /// The egress findings so far (rules, never values), taken.
    pub fn take_found(&mut self) -> Vec<Found> {
        self.masker.take_found()
    }
}

/// Marks a response whose body follows: taken once by the writer.
#[derive(Clone)]
pub struct StreamedBody(Arc<Mutex<Option<StreamingAnswer>>>);

impl StreamedBody {
    /// The marker for `answer`.
    pub fn new(answer: StreamingAnswer) -> Self {
        Self(Arc::new(Mutex::new(Some(answer))))
    }

    /// The answer, the first time.
    pub fn take(&self) -> Option<StreamingAnswer> {
        self.0.lock().ok().and_then(|mut a| a.take())
    }
}
