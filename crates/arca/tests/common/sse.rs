//! A Server-Sent Events client for the tests: opens a stream with reqwest
//! and parses it as the format says (fields, comments, blank lines ending
//! an event), so a test awaits the next event instead of sleeping.

use std::time::Duration;

use super::{Server, client};

/// One event of a stream.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// `id:` (absent when the event had none).
    pub id: Option<String>,
    /// `event:` (`message` when absent, as browsers do).
    pub event: String,
    /// `data:` lines joined with newlines.
    pub data: String,
}

impl Event {
    /// `data` parsed as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.data)
            .unwrap_or_else(|e| panic!("event data is not JSON ({e}): {:?}", self.data))
    }

    /// The id as a number.
    pub fn seq(&self) -> u64 {
        self.id
            .as_deref()
            .and_then(|i| i.parse().ok())
            .unwrap_or_else(|| panic!("event without a numeric id: {self:?}"))
    }
}

/// What the stream gave next.
#[derive(Debug)]
pub enum Next {
    /// An event.
    Event(Event),
    /// The server closed the stream.
    Ended,
    /// Nothing within the time given.
    Quiet,
}

/// An open stream.
pub struct Sse {
    res: reqwest::Response,
    buf: String,
    ended: bool,
    /// The `retry:` value, once seen.
    pub retry: Option<u64>,
    /// Comment lines seen (`: keep-alive`).
    pub comments: usize,
    /// The response headers.
    pub headers: reqwest::header::HeaderMap,
}

/// How long a test waits for an event it expects.
pub const WAIT: Duration = Duration::from_secs(15);

impl Sse {
    /// Opens `path` with these headers; panics unless it is a 200 event
    /// stream.
    pub async fn open(server: &Server, path: &str, headers: &[(&str, &str)]) -> Self {
        let res = Self::request(server, path, headers).await;
        let status = res.status();
        if status != 200 {
            let body = res.text().await.unwrap_or_default();
            panic!("GET {path}: {status} {body}");
        }
        Self::of(res)
    }

    /// The stream of an already answered request.
    pub fn of(res: reqwest::Response) -> Self {
        let headers = res.headers().clone();
        let ct = headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        assert_eq!(ct, "text/event-stream", "{headers:?}");
        Self {
            res,
            buf: String::new(),
            ended: false,
            retry: None,
            comments: 0,
            headers,
        }
    }

    /// Sends the request and returns the response as it is (for tests of
    /// refusals).
    pub async fn request(
        server: &Server,
        path: &str,
        headers: &[(&str, &str)],
    ) -> reqwest::Response {
        let mut req = client().get(server.url(path));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    /// `open` with a bearer token (and a `Last-Event-ID` when given).
    pub async fn subscribe(server: &Server, coll: &str, token: &str, last: Option<&str>) -> Self {
        let auth = format!("Bearer {token}");
        let mut headers = vec![("authorization", auth.as_str())];
        if let Some(id) = last {
            headers.push(("last-event-id", id));
        }
        Self::open(server, &format!("/v1/collections/{coll}/events"), &headers).await
    }

    /// The next event, the end of the stream, or quiet after `within`.
    pub async fn next_within(&mut self, within: Duration) -> Next {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(ev) = self.parse_one() {
                return Next::Event(ev);
            }
            if self.ended {
                return Next::Ended;
            }
            match tokio::time::timeout_at(deadline, self.res.chunk()).await {
                Err(_) => return Next::Quiet,
                Ok(Ok(Some(bytes))) => self.buf.push_str(&String::from_utf8_lossy(&bytes)),
                Ok(Ok(None)) | Ok(Err(_)) => self.ended = true,
            }
        }
    }

    /// The next event; panics if none comes within `WAIT`.
    pub async fn next(&mut self) -> Event {
        match self.next_within(WAIT).await {
            Next::Event(e) => e,
            other => panic!("expected an event, got {other:?}"),
        }
    }

    /// Asserts that the stream ends (after any events, returned) within
    /// `within`.
    pub async fn until_end(&mut self, within: Duration) -> Vec<Event> {
        let deadline = tokio::time::Instant::now() + within;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_within(left).await {
                Next::Event(e) => seen.push(e),
                Next::Ended => return seen,
                Next::Quiet => panic!("the stream did not end within {within:?}; saw {seen:?}"),
            }
        }
    }

    /// Takes one whole event out of the buffer, if one is there.
    fn parse_one(&mut self) -> Option<Event> {
        loop {
            let normalized = self.buf.replace("\r\n", "\n");
            if normalized.len() != self.buf.len() {
                self.buf = normalized;
            }
            let end = self.buf.find("\n\n")?;
            let block: String = self.buf.drain(..end + 2).collect();
            let mut id = None;
            let mut event = None;
            let mut data: Vec<String> = Vec::new();
            let mut any = false;
            for line in block.lines() {
                if line.is_empty() {
                    continue;
                }
                if line.starts_with(':') {
                    self.comments += 1;
                    continue;
                }
                let (name, value) = line.split_once(':').unwrap_or((line, ""));
                let value = value.strip_prefix(' ').unwrap_or(value);
                match name {
                    "id" => {
                        id = Some(value.to_owned());
                        any = true;
                    }
                    "event" => {
                        event = Some(value.to_owned());
                        any = true;
                    }
                    "data" => {
                        data.push(value.to_owned());
                        any = true;
                    }
                    "retry" => self.retry = value.parse().ok(),
                    _ => {}
                }
            }
            if any {
                return Some(Event {
                    id,
                    event: event.unwrap_or_else(|| "message".into()),
                    data: data.join("\n"),
                });
            }
        }
    }
}
