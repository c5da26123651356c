//! The background service that runs active health checks, DNS discovery refreshes and
//! JWKS refreshes, and starts each etcd or Consul discovery's task (which ends by itself
//! when a reload drops its upstream).
//!
//! It reads the current [`crate::runtime::Runtime`] on every tick, so upstreams that a reload adds or
//! removes are picked up without restarting anything. Each upstream is probed at its own
//! `interval_ms`; a round that is still running is never started twice.

use crate::runtime::RuntimeHandle;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::time::Duration;

/// How often the service looks for due probes; bounds how late a probe can start.
const TICK: Duration = Duration::from_millis(50);

pub struct RefreshService {
    runtime: RuntimeHandle,
}

impl RefreshService {
    pub fn new(runtime: RuntimeHandle) -> Self {
        Self { runtime }
    }
}

#[async_trait]
impl BackgroundService for RefreshService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(TICK);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {}
            }
            let now_ms = crate::clock::now_ms();
            let rt = self.runtime.load();
            for (_, jwks) in rt
                .routes
                .iter()
                .filter_map(|r| r.chain.jwt()?.remote.as_ref())
            {
                if jwks.refresh_due(now_ms) {
                    let jwks = jwks.clone();
                    tokio::spawn(async move { jwks.refresh().await });
                }
            }
            for up in rt.upstreams.values() {
                if let Some(registry) = up.watch_start() {
                    let up = std::sync::Arc::downgrade(up);
                    tokio::spawn(crate::upstream::registry::watch(up, registry));
                }
                if up.refresh_due(now_ms) {
                    let up = up.clone();
                    tokio::spawn(async move { up.refresh().await });
                }
                if up.probe_due(now_ms) {
                    let up = up.clone();
                    tokio::spawn(async move { up.probe().await });
                }
            }
        }
    }
}
