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

/// What the compile step's checks compiled of an aggregate, for [`Aggregate::new`].
#[derive(Default)]
pub struct AggregateParts {
    /// Each backend's path template, in the order of `backends`.
    pub paths: Vec<Template>,
    pub forward_headers: Vec<HeaderName>,
}

impl Aggregate {
    pub fn new(
        name: &str,
        cfg: &AggregateConfig,
        upstreams: &HashMap<String, Arc<Upstream>>,
        parts: AggregateParts,
    ) -> Result<Aggregate, String> {
        let mut backends = Vec::new();
        let mut paths = parts.paths.into_iter();
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
                path: paths
                    .next()
                    .ok_or_else(|| format!("aggregates.{name}.backends[{i}].path: not compiled"))?,
                required: b.required,
                timeout: b.timeout_ms.map(Duration::from_millis),
                cache: b.fallback == Some(Fallback::Cache),
            });
        }
        Ok(Aggregate {
            name: name.to_string(),
            timeout: Duration::from_millis(cfg.timeout_ms),
            max_concurrency: cfg.max_concurrency.max(1),
            cache_ttl: Duration::from_secs(cfg.cache_ttl_secs),
            forward_headers: parts.forward_headers,
            backends,
        })
    }
}
