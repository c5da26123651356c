//! Aggregates compiled from the config: each backend's upstream pool, path template and
//! settings. The fan-out service ([`crate::fanout`]) serves them; the runtime holds them.

pub mod template;

pub use template::Template;

use crate::config::{AggregateConfig, Fallback};
use crate::upstream::Upstream;
use http::HeaderName;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

pub struct AggregateBackend {
    pub key: String,
    pub upstream: Arc<Upstream>,
    pub path: Template,
    pub required: bool,
    pub timeout: Option<Duration>,
    pub cache: bool,
}

/// An aggregate compiled against the upstream pools of one Runtime.
pub struct Aggregate {
    pub name: String,
    pub timeout: Duration,
    pub max_concurrency: usize,
    pub cache_ttl: Duration,
    pub forward_headers: Vec<HeaderName>,
    pub backends: Vec<AggregateBackend>,
}

impl Aggregate {
    pub fn new(
        name: &str,
        cfg: &AggregateConfig,
        upstreams: &HashMap<String, Arc<Upstream>>,
    ) -> Result<Aggregate, String> {
        let mut backends = Vec::new();
        for (i, b) in cfg.backends.iter().enumerate() {
            let upstream = upstreams.get(&b.upstream).cloned().ok_or_else(|| {
                format!(
                    "aggregates.{name}.backends[{i}]: unknown upstream {:?}",
                    b.upstream
                )
            })?;
            backends.push(AggregateBackend {
                key: b.key.clone(),
                upstream,
                path: Template::parse(&b.path)
                    .map_err(|e| format!("aggregates.{name}.backends[{i}].path: {e}"))?,
                required: b.required,
                timeout: b.timeout_ms.map(Duration::from_millis),
                cache: b.fallback == Some(Fallback::Cache),
            });
        }
        let mut forward_headers = Vec::new();
        for h in &cfg.forward_headers {
            forward_headers.push(
                HeaderName::from_bytes(h.as_bytes())
                    .map_err(|_| format!("aggregates.{name}: invalid header {h:?}"))?,
            );
        }
        Ok(Aggregate {
            name: name.to_string(),
            timeout: Duration::from_millis(cfg.timeout_ms),
            max_concurrency: cfg.max_concurrency.max(1),
            cache_ttl: Duration::from_secs(cfg.cache_ttl_secs),
            forward_headers,
            backends,
        })
    }
}
