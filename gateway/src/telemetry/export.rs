//! The export task: a background service that posts the queued spans to the collector in
//! batches, with the running config's settings (read anew before every export, so a reload
//! changes the endpoint, headers, sizes and timeout at once).

use super::{otlp, take_queued, ExportSettings, Span, Tracer, QUEUE};
use crate::client::{Body, Client};
use crate::metrics::METRICS;
use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::RequestHeader;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How often the task looks again while tracing is off.
const IDLE: Duration = Duration::from_secs(1);

pub struct Exporter<F> {
    /// The running config's tracer, if tracing is on.
    current: F,
    client: Client,
    /// The last export failed: the log says so once, and again when exports work again.
    failing: AtomicBool,
}

impl<F> Exporter<F>
where
    F: Fn() -> Option<Arc<Tracer>> + Send + Sync,
{
    pub fn new(current: F) -> Exporter<F> {
        Exporter {
            current,
            client: Client::default(),
            failing: AtomicBool::new(false),
        }
    }

    /// Post everything queued, a batch at a time.
    async fn flush(&self, tracer: Option<&Tracer>) {
        let spans = take_queued();
        if spans.is_empty() {
            return;
        }
        let Some(tracer) = tracer else {
            // Spans of requests that began before tracing was turned off.
            drop_spans("tracing_off", spans.len());
            return;
        };
        let s = &tracer.export;
        for batch in spans.chunks(s.batch.max(1)) {
            let result = match tokio::time::timeout(s.timeout, self.post(s, batch)).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(("error", e)),
                Err(_) => Err(("timeout", format!("no answer within {:?}", s.timeout))),
            };
            match result {
                Ok(()) => {
                    METRICS.trace_exports.with_label_values(&["ok"]).inc();
                    METRICS.trace_spans_exported.inc_by(batch.len() as u64);
                    if self.failing.swap(false, Ordering::Relaxed) {
                        log::info!("trace export to {} works again", s.url.host_header());
                    }
                }
                Err((result, e)) => {
                    METRICS.trace_exports.with_label_values(&[result]).inc();
                    drop_spans("export_failed", batch.len());
                    if !self.failing.swap(true, Ordering::Relaxed) {
                        log::warn!(
                            "trace export to {} failed: {e}; spans are dropped until it works \
                             (gateway_trace_spans_dropped_total)",
                            s.url.host_header()
                        );
                    }
                }
            }
        }
    }

    async fn post(&self, s: &ExportSettings, spans: &[Span]) -> Result<(), String> {
        let body = Bytes::from(otlp::export_request(&s.resource, spans));
        let peer = s.url.peer(s.timeout, s.ca.clone()).await?;
        let mut req =
            RequestHeader::build("POST", s.url.target.as_bytes(), Some(4 + s.headers.len()))
                .map_err(|e| e.to_string())?;
        let text = |e: Box<pingora::Error>| e.to_string();
        req.insert_header(http::header::HOST, s.url.host_header())
            .map_err(text)?;
        req.insert_header(http::header::CONTENT_TYPE, "application/x-protobuf")
            .map_err(text)?;
        req.insert_header(http::header::CONTENT_LENGTH, body.len())
            .map_err(text)?;
        for (name, value) in &s.headers {
            req.insert_header(name.clone(), value.clone())
                .map_err(text)?;
        }
        let answer = self
            .client
            .call(&peer, req, Some(body), Body::Discard)
            .await
            .map_err(|e| e.to_string())?;
        match answer.status {
            200..=299 => Ok(()),
            status => Err(format!("status {status}")),
        }
    }
}

fn drop_spans(reason: &str, n: usize) {
    METRICS
        .trace_spans_dropped
        .with_label_values(&[reason])
        .inc_by(n as u64);
}

#[async_trait]
impl<F> BackgroundService for Exporter<F>
where
    F: Fn() -> Option<Arc<Tracer>> + Send + Sync,
{
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            let tracer = (self.current)();
            let wait = match &tracer {
                Some(t) => {
                    QUEUE.limit.store(t.export.queue, Ordering::Relaxed);
                    QUEUE.batch.store(t.export.batch, Ordering::Relaxed);
                    t.export.flush
                }
                None => IDLE,
            };
            tokio::select! {
                _ = shutdown.changed() => {
                    // The spans of the last requests, within one export timeout.
                    self.flush((self.current)().as_deref()).await;
                    return;
                }
                _ = QUEUE.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
            self.flush((self.current)().as_deref()).await;
        }
    }
}
