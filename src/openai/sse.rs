//! Server-Sent Events framing, as far as an OpenAI-compatible stream needs
//! it: bytes in any cut, whole events out, each with the exact bytes it
//! came in (so an event nothing changed is forwarded as it arrived).
//!
//! Events end at a blank line (`\n\n`, `\r\n\r\n` or `\r\r`); `data:` lines
//! are joined with `\n`; comments (`:`), `event:`, `id:` and `retry:` lines
//! are kept in the raw bytes and otherwise ignored (WHATWG HTML, "Server-sent
//! events", the parsing rules). One event is at most [`MAX_EVENT`] bytes: a
//! longer one cannot be inspected, which the caller treats as a failure.

/// The largest event held while it is incomplete.
pub const MAX_EVENT: usize = 1 << 20;

/// One complete event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The event's bytes as they arrived, its terminating blank line included.
    pub raw: Vec<u8>,
    /// Its `data:` lines, joined by `\n` (`None` when it has none).
    pub data: Option<String>,
}

/// Why the stream cannot be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    /// An event grew past [`MAX_EVENT`] without ending.
    #[error("an event of the stream is larger than {MAX_EVENT} bytes")]
    TooLarge,
    /// An event is not UTF-8.
    #[error("an event of the stream is not UTF-8")]
    NotUtf8,
}

/// Splits a byte stream into events.
#[derive(Debug, Default)]
pub struct SseParser {
    buf: Vec<u8>,
}

impl SseParser {
    /// Takes the next bytes; returns the events they complete.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<Event>, SseError> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(end) = event_end(&self.buf) {
            let raw: Vec<u8> = self.buf.drain(..end).collect();
            out.push(event(raw)?);
        }
        if self.buf.len() > MAX_EVENT {
            return Err(SseError::TooLarge);
        }
        Ok(out)
    }

    /// The stream ended: an unterminated last event, if any.
    pub fn finish(&mut self) -> Result<Option<Event>, SseError> {
        if self.buf.iter().all(|b| b.is_ascii_whitespace()) {
            self.buf.clear();
            return Ok(None);
        }
        let raw = std::mem::take(&mut self.buf);
        event(raw).map(Some)
    }
}

/// Where the first complete event in `buf` ends (after its blank line).
fn event_end(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    // A line ends at \r\n, \n or \r; an empty line ends the event.
    let mut line_start = 0;
    while i < buf.len() {
        let eol = match buf[i] {
            b'\n' => 1,
            b'\r' if buf.get(i + 1) == Some(&b'\n') => 2,
            // A lone \r at the end may be the start of \r\n: wait.
            b'\r' if i + 1 == buf.len() => return None,
            b'\r' => 1,
            _ => {
                i += 1;
                continue;
            }
        };
        if i == line_start {
            return Some(i + eol);
        }
        i += eol;
        line_start = i;
    }
    None
}

fn event(raw: Vec<u8>) -> Result<Event, SseError> {
    let text = std::str::from_utf8(&raw).map_err(|_| SseError::NotUtf8)?;
    let mut data: Option<String> = None;
    for line in text.split(['\n', '\r']) {
        let value = match line.strip_prefix("data") {
            Some("") => "",
            Some(rest) => match rest.strip_prefix(':') {
                Some(v) => v.strip_prefix(' ').unwrap_or(v),
                None => continue,
            },
            None => continue,
        };
        match &mut data {
            Some(d) => {
                d.push('\n');
                d.push_str(value);
            }
            None => data = Some(value.to_string()),
        }
    }
    Ok(Event { raw, data })
}

/// One `data:` event, as written.
pub fn data_event(data: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 8);
    for line in data.split('\n') {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
    }
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(parts: &[&[u8]]) -> Vec<Event> {
        let mut p = SseParser::default();
        let mut out = Vec::new();
        for part in parts {
            out.extend(p.push(part).unwrap());
        }
        out.extend(p.finish().unwrap());
        out
    }

    #[test]
    fn events_in_any_cut() {
        let stream = b"data: {\"a\":1}\n\n: keep-alive\n\nevent: x\r\ndata: one\r\ndata: two\r\n\r\ndata: [DONE]\n\n";
        let whole = all(&[stream]);
        let datas: Vec<Option<&str>> = whole.iter().map(|e| e.data.as_deref()).collect();
        assert_eq!(
            datas,
            [Some("{\"a\":1}"), None, Some("one\ntwo"), Some("[DONE]")]
        );
        for cut in 0..stream.len() {
            let (a, b) = stream.split_at(cut);
            assert_eq!(all(&[a, b]), whole, "cut at {cut}");
        }
        let raw: Vec<u8> = whole.iter().flat_map(|e| e.raw.clone()).collect();
        assert_eq!(raw, stream, "the raw bytes add up to the stream");
    }

    #[test]
    fn an_unterminated_last_event_and_limits() {
        assert_eq!(all(&[b"data: tail"])[0].data.as_deref(), Some("tail"));
        let mut p = SseParser::default();
        assert_eq!(p.push(&vec![b'x'; MAX_EVENT + 1]), Err(SseError::TooLarge));
        let mut p = SseParser::default();
        assert_eq!(p.push(b"data: \xff\n\n"), Err(SseError::NotUtf8));
        assert_eq!(data_event("a\nb"), b"data: a\ndata: b\n\n");
    }
}
