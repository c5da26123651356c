//! The Runtime: everything a request needs, compiled from one validated config.
//!
//! A request loads the current Runtime once and keeps that snapshot to its end, so swapping
//! in a new one never changes a request halfway.

use crate::config::Config;
use crate::router::Router;
use crate::upstream::Upstream;
use arc_swap::ArcSwap;
use plugins::HeaderOps;
use std::collections::HashMap;
use std::sync::Arc;

/// The shared, swappable pointer to the current Runtime.
pub type RuntimeHandle = Arc<ArcSwap<Runtime>>;

pub struct Route {
    pub name: String,
    pub upstream: Arc<Upstream>,
    pub strip_prefix: Option<String>,
    pub request_headers: HeaderOps,
    pub response_headers: HeaderOps,
}

pub struct Runtime {
    pub router: Router,
    pub routes: Vec<Route>,
    pub upstreams: HashMap<String, Arc<Upstream>>,
    pub generation: u64,
}

impl Runtime {
    /// Compile a config that [`crate::config::validate`] accepted. Upstreams that
    /// `previous` defines identically are taken over as they are, with their health state,
    /// breaker and connection pool.
    pub fn build(
        config: &Config,
        generation: u64,
        previous: Option<&Runtime>,
    ) -> Result<Runtime, String> {
        let mut upstreams = HashMap::new();
        for (name, cfg) in &config.upstreams {
            let kept = previous
                .and_then(|p| p.upstreams.get(name))
                .filter(|up| up.cfg == *cfg)
                .cloned();
            let up = match kept {
                Some(up) => up,
                None => Arc::new(
                    Upstream::new(name, cfg).map_err(|e| format!("upstreams.{name}: {e}"))?,
                ),
            };
            upstreams.insert(name.clone(), up);
        }
        let mut routes = Vec::with_capacity(config.routes.len());
        for (i, r) in config.routes.iter().enumerate() {
            let upstream = upstreams.get(&r.upstream).cloned().ok_or_else(|| {
                format!("routes[{i}].upstream: unknown upstream {:?}", r.upstream)
            })?;
            let h = &r.headers;
            routes.push(Route {
                name: r.name.clone(),
                upstream,
                strip_prefix: r.strip_prefix.clone(),
                request_headers: HeaderOps::new(&h.request.set, &h.request.remove)
                    .map_err(|e| format!("routes[{i}].headers.request: {e}"))?,
                response_headers: HeaderOps::new(&h.response.set, &h.response.remove)
                    .map_err(|e| format!("routes[{i}].headers.response: {e}"))?,
            });
        }
        Ok(Runtime {
            router: Router::new(&config.routes)?,
            routes,
            upstreams,
            generation,
        })
    }
}
