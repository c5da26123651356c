//! The gateway's own HTTP client, for the calls it makes itself rather than proxies: the
//! fan-out's backend calls, the mirror's copies, JWKS and discovery fetches, token
//! introspection, trace export. One exchange at a time on Pingora's connector, with
//! its connection pool: a connection goes back to the pool only after a whole answer was
//! read. A leaf: it imports nothing of the gateway.
//!
//! Timeouts are the peer's (`connection_timeout`, `read_timeout`); a caller that needs a
//! deadline over the whole exchange wraps the call in one.

use bytes::{Bytes, BytesMut};
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::protocols::tls::CaType;
use pingora::upstreams::peer::{HttpPeer, Peer};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// Where a call goes: `http://host[:port]/path` or `https://...`, split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// Path and query.
    pub target: String,
}

impl Url {
    /// Parse `url`; errors show it as `shown` (with its credentials redacted).
    pub fn parse(url: &str, shown: &str) -> Result<Url, String> {
        let uri: http::Uri = url.parse().map_err(|_| format!("{shown:?} is not a URL"))?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(format!("{shown:?}: the scheme must be http or https")),
        };
        let host = uri
            .host()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| format!("{shown:?} names no host"))?;
        Ok(Url {
            tls,
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            port: uri.port_u16().unwrap_or(if tls { 443 } else { 80 }),
            target: uri
                .path_and_query()
                .map_or("/".to_string(), |p| p.as_str().to_string()),
        })
    }

    /// The `Host` header: the port only when it is not the scheme's own.
    pub fn host_header(&self) -> String {
        if (self.tls && self.port == 443) || (!self.tls && self.port == 80) {
            self.host.clone()
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// A peer for one call: the host resolved now, connect and read bounded by `timeout`.
    /// A GET of `target` on this server, asking for JSON.
    pub fn json_get(&self, target: &str) -> Result<RequestHeader, String> {
        let text = |e: Box<pingora::Error>| e.to_string();
        let mut req = RequestHeader::build("GET", target.as_bytes(), Some(3)).map_err(text)?;
        req.insert_header(http::header::HOST, self.host_header())
            .map_err(text)?;
        req.insert_header(http::header::ACCEPT, "application/json")
            .map_err(text)?;
        Ok(req)
    }

    pub async fn peer(
        &self,
        timeout: Duration,
        ca: Option<Arc<CaType>>,
    ) -> Result<HttpPeer, String> {
        let addr = tokio::net::lookup_host((self.host.as_str(), self.port))
            .await
            .map_err(|e| format!("cannot resolve {}: {e}", self.host))?
            .next()
            .ok_or_else(|| format!("{} resolves to no address", self.host))?;
        let mut peer = HttpPeer::new(addr, self.tls, self.host.clone());
        peer.options.connection_timeout = Some(timeout);
        peer.options.read_timeout = Some(timeout);
        peer.options.ca = ca;
        Ok(peer)
    }
}

/// What to do with an answer's body.
#[derive(Debug, Clone, Copy)]
pub enum Body {
    /// Keep it, up to this many bytes; a longer one fails the call.
    Keep(usize),
    /// Read it to its end and drop it (the connection can then be reused).
    Discard,
}

/// An answer: its status and, when kept, its body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Bytes,
}

/// Where an exchange failed.
#[derive(Debug)]
pub enum CallError {
    /// No connection (refused, timed out, TLS).
    Connect(String),
    /// The request could not be sent.
    Send(String),
    /// The answer could not be read (reset, timeout, malformed).
    Read(String),
    /// The body was longer than the caller keeps.
    TooLarge(usize),
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::Connect(e) => write!(f, "connect: {e}"),
            CallError::Send(e) => write!(f, "send: {e}"),
            CallError::Read(e) => write!(f, "read: {e}"),
            CallError::TooLarge(max) => write!(f, "answer larger than {max} bytes"),
        }
    }
}

pub struct Client {
    connector: Connector,
}

impl Default for Client {
    fn default() -> Client {
        Client {
            connector: Connector::new(None),
        }
    }
}

impl Client {
    /// GET `url` for JSON: the body of a 200 answer, at most `max` bytes.
    pub async fn get(
        &self,
        url: &Url,
        timeout: Duration,
        ca: Option<Arc<CaType>>,
        max: usize,
    ) -> Result<Bytes, String> {
        let peer = url.peer(timeout, ca).await?;
        let req = url.json_get(&url.target)?;
        let answer = self
            .call(&peer, req, None, Body::Keep(max))
            .await
            .map_err(|e| e.to_string())?;
        if answer.status != 200 {
            return Err(format!("status {}", answer.status));
        }
        Ok(answer.body)
    }

    /// Send `req` (with `body`, if any) to `peer` and read the answer.
    pub async fn call(
        &self,
        peer: &HttpPeer,
        req: RequestHeader,
        body: Option<Bytes>,
        keep: Body,
    ) -> Result<Answer, CallError> {
        let mut answer = self.open(peer, req, body).await?;
        let body = answer.read_to_end(keep).await?;
        self.connector
            .release_http_session(answer.session, peer, peer.idle_timeout())
            .await;
        Ok(Answer {
            status: answer.status,
            body,
        })
    }

    /// Send `req` and read the answer's head; its body is read as it arrives
    /// ([`Streaming::chunk`]), for a watch or a long poll. The connection is not reused.
    pub async fn open(
        &self,
        peer: &HttpPeer,
        req: RequestHeader,
        body: Option<Bytes>,
    ) -> Result<Streaming, CallError> {
        let text = |e: Box<pingora::Error>| e.to_string();
        let (mut session, _reused) = self
            .connector
            .get_http_session(peer)
            .await
            .map_err(|e| CallError::Connect(text(e)))?;
        session
            .write_request_header(Box::new(req))
            .await
            .map_err(|e| CallError::Send(text(e)))?;
        if let Some(b) = body.filter(|b| !b.is_empty()) {
            session
                .write_request_body(b, true)
                .await
                .map_err(|e| CallError::Send(text(e)))?;
        }
        session
            .finish_request_body()
            .await
            .map_err(|e| CallError::Send(text(e)))?;
        session
            .read_response_header()
            .await
            .map_err(|e| CallError::Read(text(e)))?;
        let (status, headers) = session
            .response_header()
            .map_or((0, http::HeaderMap::new()), |r| {
                (r.status.as_u16(), r.headers.clone())
            });
        Ok(Streaming {
            session,
            status,
            headers,
        })
    }
}

/// An answer whose body is read as it arrives.
pub struct Streaming {
    session: pingora::protocols::http::client::HttpSession,
    pub status: u16,
    pub headers: http::HeaderMap,
}

impl Streaming {
    /// The rest of the body, kept or dropped as `keep` says.
    pub async fn read_to_end(&mut self, keep: Body) -> Result<Bytes, CallError> {
        let mut kept = BytesMut::new();
        while let Some(chunk) = self.chunk().await? {
            if let Body::Keep(max) = keep {
                if kept.len() + chunk.len() > max {
                    return Err(CallError::TooLarge(max));
                }
                kept.extend_from_slice(&chunk);
            }
        }
        Ok(kept.freeze())
    }

    /// The next piece of the body; `None` at its end.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, CallError> {
        self.session
            .read_response_body()
            .await
            .map_err(|e| CallError::Read(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server that answers every request on a connection with `answer`, and counts the
    /// connections it accepted.
    async fn server(answer: &'static [u8]) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let mut seen = Vec::new();
                    loop {
                        let Ok(n) = s.read(&mut buf).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        seen.extend_from_slice(&buf[..n]);
                        if seen.windows(4).any(|w| w == b"\r\n\r\n") {
                            seen.clear();
                            if s.write_all(answer).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        (addr, task)
    }

    fn get() -> RequestHeader {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("host", "t").unwrap();
        req
    }

    #[tokio::test]
    async fn keeps_discards_or_refuses_the_body_by_its_size() {
        let (addr, server) =
            server(b"HTTP/1.1 503 Busy\r\nContent-Length: 10\r\n\r\n0123456789").await;
        let peer = HttpPeer::new(addr, false, String::new());
        let client = Client::default();
        let kept = client
            .call(&peer, get(), None, Body::Keep(10))
            .await
            .unwrap();
        assert_eq!((kept.status, &kept.body[..]), (503, &b"0123456789"[..]));
        let dropped = client
            .call(&peer, get(), None, Body::Discard)
            .await
            .unwrap();
        assert_eq!((dropped.status, dropped.body.len()), (503, 0));
        let refused = client.call(&peer, get(), None, Body::Keep(9)).await;
        assert!(
            matches!(refused, Err(CallError::TooLarge(9))),
            "{refused:?}"
        );
        server.abort();
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let peer = HttpPeer::new(("127.0.0.1", port), false, String::new());
        let e = Client::default()
            .call(&peer, get(), None, Body::Discard)
            .await
            .unwrap_err();
        assert!(matches!(e, CallError::Connect(_)), "{e}");
    }
}
