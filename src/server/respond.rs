//! Writing an answer to the client: whole (`Content-Length`), or streamed
//! piece by piece as the path produces it. Shared by the public listener's
//! request handling (`proxy`) and the OpenAI front (`openai`).

use bytes::Bytes;
use http::{header, Response};
use pingora::http::ResponseHeader;
use pingora::prelude::*;

use crate::path::egress;
use crate::path::streamed::StreamingAnswer;

/// Writes `resp` to the client.
pub async fn write_response(session: &mut Session, resp: Response<Bytes>) -> Result<()> {
    let (parts, body) = resp.into_parts();
    let mut header = ResponseHeader::build(parts.status, Some(parts.headers.len() + 2))?;
    for (name, value) in &parts.headers {
        header.append_header(name.clone(), value.clone())?;
    }
    header.insert_header(header::CONTENT_LENGTH, body.len().to_string())?;
    session
        .write_response_header(Box::new(header), body.is_empty())
        .await?;
    if !body.is_empty() {
        session.write_response_body(Some(body), true).await?;
    }
    Ok(())
}

/// Writes a streamed answer: its header now, then each piece as the path
/// produces it (no `Content-Length`: HTTP/1.1 chunks it, HTTP/2 frames it);
/// its egress findings are counted when it ends.
pub async fn write_streamed(
    session: &mut Session,
    resp: Response<Bytes>,
    mut answer: StreamingAnswer,
    metrics: &crate::observe::Metrics,
) -> Result<()> {
    let (parts, _) = resp.into_parts();
    let mut header = ResponseHeader::build(parts.status, Some(parts.headers.len() + 1))?;
    for (name, value) in &parts.headers {
        header.append_header(name.clone(), value.clone())?;
    }
    session
        .write_response_header(Box::new(header), false)
        .await?;
    let written = async {
        while let Some(piece) = answer.next_piece().await {
            if !piece.is_empty() {
                session.write_response_body(Some(piece), false).await?;
            }
        }
        session.write_response_body(None, true).await
    }
    .await;
    egress::count(metrics, &answer.take_found());
    written
}
