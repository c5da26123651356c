//! The connection guard: a deadline on reading each request head, before Pingora sees the
//! connection.
//!
//! Pingora's HTTP/1 server times each read on its own, so a client that sends a header
//! byte every few seconds holds its connection (and its buffer) forever. The guard wraps
//! every accepted stream and watches the bytes of a request head go by: from the accept (or,
//! on a kept-alive connection, from the first byte of the next request) to the blank line
//! that ends the head, the client has `client_header_timeout`; past it, reads fail and the
//! connection is closed. Bodies are not timed here (Pingora times each body read with
//! `client_body_timeout_ms`).
//!
//! Between two requests on a kept-alive connection the guard also bounds the idle time
//! (`keepalive_timeout_secs`): past it, the next read ends as if the client had closed, and
//! Pingora closes the connection quietly. The timer is not touched per request: it is armed
//! once and, when it fires early, re-armed for what is left of the idle time measured from
//! the end of the last request.
//!
//! On a plain listener that also speaks h2c, Pingora first waits for 24 bytes to tell the
//! HTTP/2 preface from HTTP/1. The guard answers that question itself as soon as the bytes
//! differ from the preface, so a short HTTP/1 request is served at once, and within the
//! same deadline otherwise. HTTP/2 connections are left alone once recognised.

use crate::logging::HEAD_TIMED_OUT;
use crate::runtime::KeepaliveRule;
use async_trait::async_trait;
use bytes::{Buf, BytesMut};
use pingora::apps::ServerApp;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::TlsRef;
use pingora::protocols::Stream;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use pingora::server::ShutdownWatch;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Wraps a Pingora app so that every connection it serves is guarded.
pub struct Guarded<A> {
    inner: Arc<A>,
    header_timeout: Duration,
    /// The keep-alive rule of the listener a connection came in on (from the config when
    /// the connection starts).
    keepalive: Box<dyn Fn(Option<std::net::SocketAddr>) -> KeepaliveRule + Send + Sync>,
}

impl<A> Guarded<A> {
    pub fn new(
        inner: A,
        header_timeout: Duration,
        keepalive: impl Fn(Option<std::net::SocketAddr>) -> KeepaliveRule + Send + Sync + 'static,
    ) -> Self {
        Guarded {
            inner: Arc::new(inner),
            header_timeout,
            keepalive: Box::new(keepalive),
        }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Guarded<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let stream: Stream = if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            stream
        } else {
            let local = stream
                .get_socket_digest()
                .and_then(|d| d.local_addr().and_then(|a| a.as_inet().copied()));
            let keepalive = (self.keepalive)(local);
            Box::new(HeadDeadline::new(stream, self.header_timeout, keepalive))
        };
        self.inner.process_new(stream, shutdown).await
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Phase {
    /// Reading a request head, against the deadline.
    Head,
    /// The head is in; the body (if any) is being read and the request served. No deadline
    /// until the request has ended.
    Body,
    /// The request ended ([`request_done`]); the next byte starts the next head.
    Idle,
    /// HTTP/2: not timed here.
    Off,
}

/// The phase, shared with the proxy's hooks (which see the stream only by reference).
#[derive(Debug)]
struct SharedPhase(AtomicU8);

impl SharedPhase {
    fn get(&self) -> Phase {
        match self.0.load(Ordering::Relaxed) {
            0 => Phase::Head,
            1 => Phase::Body,
            2 => Phase::Idle,
            _ => Phase::Off,
        }
    }

    fn set(&self, p: Phase) {
        self.0.store(p as u8, Ordering::Relaxed);
    }
}

/// How often the framing fields appeared in the request head as the client sent it.
/// Pingora drops `Content-Length` when `Transfer-Encoding` is present (as RFC 9112 allows);
/// the gateway refuses such requests outright, so it counts them here.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Framing {
    pub content_length: u8,
    pub transfer_encoding: u8,
    /// The request line was not `METHOD SP TARGET SP VERSION`: a raw space in the target
    /// (which Pingora would percent-encode and pass), a control byte, or a bare CR.
    pub bad_request_line: bool,
}

const CONTENT_LENGTH: &[u8] = b"content-length";
const TRANSFER_ENCODING: &[u8] = b"transfer-encoding";

/// Finds the blank line that ends a request head (CRLF or bare LF line ends; empty lines
/// before the request line are skipped, as parsers do), counting the framing fields.
#[derive(Debug, Default)]
struct HeadEnd {
    seen_text: bool,
    line_empty: bool,
    /// Position in the current header line, and whether it may still be one of the two
    /// framing fields.
    col: usize,
    maybe_cl: bool,
    maybe_te: bool,
    framing: Framing,
    /// The request line has ended; until then its bytes are checked one by one.
    request_line_done: bool,
    request_line_spaces: u8,
    /// A CR was seen on the request line: only its line feed may follow.
    request_line_cr: bool,
}

/// Match one byte of a line against a field name followed by a colon.
fn field_byte(maybe: &mut bool, name: &[u8], col: usize, b: u8, count: &mut u8) {
    if !*maybe {
        return;
    }
    if col < name.len() {
        *maybe = b.to_ascii_lowercase() == name[col];
    } else {
        if b == b':' {
            *count = count.saturating_add(1);
        }
        *maybe = false;
    }
}

impl HeadEnd {
    /// Whether `data` holds the end of the head. Jumps from line end to line end; only the
    /// first bytes of a line are looked at, for the framing fields.
    fn feed(&mut self, data: &[u8]) -> bool {
        let mut rest = data;
        loop {
            let Some(i) = memchr::memchr(b'\n', rest) else {
                self.text(rest);
                return false;
            };
            self.text(&rest[..i]);
            if self.seen_text && !self.request_line_done {
                self.request_line_done = true;
                if self.request_line_spaces != 2 {
                    self.framing.bad_request_line = true;
                }
            }
            if self.seen_text && self.line_empty {
                return true;
            }
            self.line_empty = true;
            self.col = 0;
            self.maybe_cl = self.seen_text;
            self.maybe_te = self.seen_text;
            rest = &rest[i + 1..];
        }
    }

    /// A piece of a line (no line feed in it).
    fn text(&mut self, seg: &[u8]) {
        if seg.iter().any(|b| *b != b'\r') {
            self.seen_text = true;
            self.line_empty = false;
        }
        if self.seen_text && !self.request_line_done {
            self.request_line(seg);
            return;
        }
        for &b in seg {
            if !(self.maybe_cl || self.maybe_te) {
                break;
            }
            let f = &mut self.framing;
            field_byte(
                &mut self.maybe_cl,
                CONTENT_LENGTH,
                self.col,
                b,
                &mut f.content_length,
            );
            field_byte(
                &mut self.maybe_te,
                TRANSFER_ENCODING,
                self.col,
                b,
                &mut f.transfer_encoding,
            );
            self.col += 1;
        }
    }
}

impl HeadEnd {
    /// A piece of the request line: exactly two spaces, no control byte, CR only at the end.
    fn request_line(&mut self, seg: &[u8]) {
        let (mut spaces, mut cr, mut bad) = (
            self.request_line_spaces,
            self.request_line_cr,
            self.framing.bad_request_line,
        );
        for &b in seg {
            bad |= cr;
            // Most bytes are visible ASCII: one comparison each.
            if b > b' ' && b != 0x7f {
                continue;
            }
            match b {
                b' ' => spaces = spaces.saturating_add(1),
                b'\r' => cr = true,
                _ => bad = true,
            }
        }
        self.request_line_spaces = spaces;
        self.request_line_cr = cr;
        self.framing.bad_request_line = bad;
    }
}

/// The request on this connection has ended (its response sent, its body read or the
/// connection about to close): the next byte from the client starts the next head, with a
/// fresh deadline. Called from the proxy's last hook, so a response that goes out while the
/// client is still sending its body does not put the rest of the body under the deadline.
pub fn request_done(stream: &Stream) {
    if let Some(h) = stream.as_any().downcast_ref::<HeadDeadline>() {
        if h.phase.get() != Phase::Off {
            h.phase.set(Phase::Idle);
        }
    }
}

/// What the guard knows of a guarded (HTTP/1) connection and its current request head.
#[derive(Debug, Clone, Copy, Default)]
pub struct HeadInfo {
    pub framing: Framing,
    /// The connection's keep-alive rule, looked up once when it was accepted.
    pub keepalive: KeepaliveRule,
}

/// The connection's [`HeadInfo`], when the connection is guarded (HTTP/1).
pub fn head_info(stream: &Stream) -> Option<HeadInfo> {
    stream
        .as_any()
        .downcast_ref::<HeadDeadline>()
        .map(|h| HeadInfo {
            framing: h.head.framing,
            keepalive: h.keepalive,
        })
}

#[derive(Debug)]
pub struct HeadDeadline {
    inner: Stream,
    timeout: Duration,
    phase: SharedPhase,
    head: HeadEnd,
    /// When the current head must be in. The timer below is set to it only when a read
    /// has to wait: most heads arrive in one read and never touch the timer.
    due: Instant,
    deadline: Pin<Box<Sleep>>,
    /// Bytes read while telling h2c from HTTP/1, served before anything else.
    replay: BytesMut,
    /// The idle time allowed between requests (`timeout_secs`, 0: none) and the requests
    /// per connection.
    keepalive: KeepaliveRule,
    /// When the connection became idle (the last request ended), once a read saw it.
    idle_since: Option<Instant>,
    /// The timer holds this task's waker: it was polled since it was last set. The
    /// connection is served by one task, so it need not be polled again until it fires.
    timer_polled: bool,
}

impl HeadDeadline {
    fn new(inner: Stream, timeout: Duration, keepalive: KeepaliveRule) -> Self {
        let due = Instant::now() + timeout;
        HeadDeadline {
            inner,
            timeout,
            phase: SharedPhase(AtomicU8::new(Phase::Head as u8)),
            head: HeadEnd::default(),
            due,
            deadline: Box::pin(tokio::time::sleep_until(due)),
            replay: BytesMut::new(),
            keepalive,
            idle_since: None,
            timer_polled: false,
        }
    }

    /// Set the timer, which then needs a poll to hold the waker.
    fn arm(&mut self, at: Instant) {
        self.deadline.as_mut().reset(at);
        self.timer_polled = false;
    }

    /// Whether the timer has fired; polled (to leave the waker with it) only when needed.
    fn timer_fired(&mut self, cx: &mut Context<'_>) -> bool {
        if self.timer_polled {
            return self.deadline.is_elapsed();
        }
        let fired = self.deadline.as_mut().poll(cx).is_ready();
        self.timer_polled = !fired;
        fired
    }

    /// A read found no byte of the next request: whether the connection has been idle for
    /// longer than allowed. Arms the timer only when it would fire later than the idle
    /// deadline or has already fired; a timer that fires early is re-armed here.
    fn idle_expired(&mut self, cx: &mut Context<'_>) -> bool {
        if self.keepalive.timeout_secs == 0 {
            // Keep-alive is off: Pingora closes after each answer.
            return false;
        }
        let since = *self.idle_since.get_or_insert_with(Instant::now);
        let due = since + Duration::from_secs(self.keepalive.timeout_secs);
        loop {
            let armed = self.deadline.deadline();
            if armed > due || armed <= since {
                self.arm(due);
            }
            if !self.timer_fired(cx) {
                return false;
            }
            if Instant::now() >= due {
                return true;
            }
            // Fired early (set for an earlier idle spell or a head): wait for the rest.
            self.arm(due);
        }
    }

    /// Account for bytes that just arrived from the client.
    fn arrived(&mut self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        if self.phase.get() == Phase::Idle {
            self.phase.set(Phase::Head);
            self.head = HeadEnd::default();
            self.due = Instant::now() + self.timeout;
            self.idle_since = None;
        }
        if self.phase.get() == Phase::Head && self.head.feed(data) {
            self.phase.set(Phase::Body);
        }
    }

    fn timed_out() -> io::Error {
        crate::metrics::METRICS
            .client_timeouts
            .with_label_values(&["header"])
            .inc();
        io::Error::new(io::ErrorKind::TimedOut, HEAD_TIMED_OUT)
    }
}

impl AsyncRead for HeadDeadline {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.replay.is_empty() {
            let n = this.replay.len().min(buf.remaining());
            buf.put_slice(&this.replay[..n]);
            this.replay.advance(n);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if matches!(this.phase.get(), Phase::Head | Phase::Idle) {
                    this.arrived(&buf.filled()[before..]);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                match this.phase.get() {
                    Phase::Head => {
                        if this.deadline.deadline() != this.due {
                            let due = this.due;
                            this.arm(due);
                        }
                        if this.timer_fired(cx) {
                            return Poll::Ready(Err(Self::timed_out()));
                        }
                    }
                    // Nothing read: to Pingora, the client closed between two requests.
                    Phase::Idle if this.idle_expired(cx) => return Poll::Ready(Ok(())),
                    _ => {}
                }
                Poll::Pending
            }
        }
    }
}

impl AsyncWrite for HeadDeadline {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl Peek for HeadDeadline {
    /// Fill `buf` from the client for Pingora's h2c check, but stop as soon as the bytes
    /// cannot be the HTTP/2 preface (the rest of `buf` stays zero, so the check says
    /// HTTP/1), or at the head deadline.
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        while self.replay.len() < buf.len() && H2_PREFACE.starts_with(&self.replay) {
            let start = self.replay.len();
            let read = self.inner.read_buf(&mut self.replay);
            let n = match tokio::time::timeout_at(self.due, read).await {
                Ok(r) => r?,
                Err(_) => return Err(Self::timed_out()),
            };
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            let replay = std::mem::take(&mut self.replay);
            self.arrived(&replay[start..]);
            self.replay = replay;
        }
        if self.replay.starts_with(H2_PREFACE) {
            self.phase.set(Phase::Off);
        }
        let n = self.replay.len().min(buf.len());
        buf[..n].copy_from_slice(&self.replay[..n]);
        Ok(true)
    }
}

#[async_trait]
impl Shutdown for HeadDeadline {
    async fn shutdown(&mut self) {
        Shutdown::shutdown(&mut *self.inner).await
    }
}

impl UniqueID for HeadDeadline {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for HeadDeadline {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }
    fn get_ssl_digest(&self) -> Option<Arc<pingora::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }
    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for HeadDeadline {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }
    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }
    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for HeadDeadline {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for HeadDeadline {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }
    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

#[cfg(test)]
mod tests {
    use super::HeadEnd;

    #[test]
    fn head_end_with_crlf_bare_lf_and_split_reads() {
        assert!(HeadEnd::default().feed(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"));
        let mut h = HeadEnd::default();
        assert!(h.feed(b"POST / HTTP/1.1\r\nContent-Length: 1\r\nX-Content-Length: 2\r\ntransfer-encoding:chunked\r\ncontent-length : 3\r\n\r\n"));
        assert_eq!(
            h.framing,
            super::Framing {
                content_length: 1,
                transfer_encoding: 1,
                bad_request_line: false,
            }
        );
        assert!(HeadEnd::default().feed(b"GET / HTTP/1.1\nHost: a\n\n"));
        assert!(!HeadEnd::default().feed(b"GET / HTTP/1.1\r\nHost: a\r\n"));
        // Empty lines before the request line do not end anything.
        assert!(!HeadEnd::default().feed(b"\r\n\r\n"));
        let mut h = HeadEnd::default();
        for part in [&b"GET / HT"[..], b"TP/1.1\r", b"\nHost: a\r\n\r", b"\n"] {
            if h.feed(part) {
                return;
            }
        }
        panic!("head end not found across reads");
    }

    #[test]
    fn request_lines_with_raw_spaces_or_control_bytes_are_flagged() {
        let bad = |head: &[u8]| {
            let mut h = HeadEnd::default();
            assert!(h.feed(head), "{}", head.escape_ascii());
            h.framing.bad_request_line
        };
        assert!(!bad(b"GET /a?b=c HTTP/1.1\r\nHost: a\r\n\r\n"));
        assert!(!bad(b"\r\nGET / HTTP/1.1\nHost: a b\n\n"));
        assert!(bad(b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n"));
        assert!(bad(b"GET  / HTTP/1.1\r\n\r\n"));
        assert!(bad(b"GET /a\tb HTTP/1.1\r\n\r\n"));
        assert!(bad(b"GET /a\x00 HTTP/1.1\r\n\r\n"));
        assert!(bad(b"GET /a\rb HTTP/1.1\r\n\r\n"));
        assert!(bad(b"GET /\r\r\n\r\n"));
        // Split across reads.
        let mut h = HeadEnd::default();
        for part in [&b"GET /a"[..], b" b HT", b"TP/1.1\r", b"\n\r\n"] {
            if h.feed(part) {
                assert!(h.framing.bad_request_line);
                return;
            }
        }
        panic!("head end not found across reads");
    }
}
