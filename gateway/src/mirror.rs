//! Mirroring: a copy of a share of a route's requests, body included, goes to a shadow
//! upstream. The copy is sent after the client has its answer, on its own task, so the
//! shadow's latency, answer and failures never reach or slow the client. At most
//! [`MAX_IN_FLIGHT`] copies are in flight per process; beyond that, and for bodies over
//! [`MAX_MIRROR_BODY`], copies are dropped and counted.

use crate::client::{Body, Client};
use crate::metrics::METRICS;
use crate::upstream::Upstream;
use bytes::Bytes;
use pingora::http::RequestHeader;
use pingora::{Error, ErrorType, Result};
use std::sync::Arc;
use tokio::sync::Semaphore;

pub const MAX_MIRROR_BODY: usize = 1024 * 1024;
pub const MAX_IN_FLIGHT: usize = 1024;

pub struct Mirrorer {
    client: Client,
    slots: Arc<Semaphore>,
}

impl Default for Mirrorer {
    fn default() -> Self {
        Self {
            client: Client::default(),
            slots: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        }
    }
}

/// Count one mirrored request by route and result.
pub fn count(route: &str, result: &str) {
    METRICS
        .mirror_requests
        .with_label_values(&[route, result])
        .inc();
}

impl Mirrorer {
    /// Send `req` with `body` to a target of `up`, in the background.
    pub fn send(
        self: &Arc<Self>,
        route: &str,
        up: Arc<Upstream>,
        req: RequestHeader,
        body: Vec<u8>,
    ) {
        let Ok(permit) = self.slots.clone().try_acquire_owned() else {
            count(route, "dropped");
            return;
        };
        let this = self.clone();
        let route = route.to_string();
        tokio::spawn(async move {
            let _permit = permit;
            let result = tokio::time::timeout(up.deadline, this.send_once(&up, req, body)).await;
            let label = match result {
                Ok(Ok(())) => "ok",
                Ok(Err(e)) => {
                    log::debug!("mirror of route {route} to {}: {e}", up.name);
                    "error"
                }
                Err(_) => "timeout",
            };
            count(&route, label);
        });
    }

    async fn send_once(&self, up: &Upstream, req: RequestHeader, body: Vec<u8>) -> Result<()> {
        let Some(backend) = up.select(b"", &[], false) else {
            return Error::e_explain(ErrorType::HTTPStatus(503), "no healthy mirror target");
        };
        let peer = up.peer(&backend);
        self.client
            .call(&peer, req, Some(Bytes::from(body)), Body::Discard)
            .await
            .map_err(|e| Error::explain(ErrorType::ConnectError, e.to_string()))?;
        Ok(())
    }
}
