//! A route's rate limits as a chain member: each limit decides locally or in Redis, and a
//! limit whose store cannot answer in time follows its `on_store_error`. The quota nearest
//! to running out is told in the answer's headers.

use crate::config::{LimitStore, OnStoreError, RateLimitConfig};
use crate::metrics::METRICS;
use crate::store::RedisStore;
use pingora_prometheus::prometheus::IntCounter;
use plugins::policy::{Reply, Request};
use plugins::ratelimit::shared::Script;
use plugins::ratelimit::Guard;
use plugins::ratelimit::{
    Algorithm, LimitKey, LimitSpec, Limiter, QuotaHeaders, RequestKeys, Subject, Tiers, Verdict,
};
use plugins::{Facts, Flow, GatewayError, HeaderTarget, Policy};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

static WINDOW: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(Script::Window.source()));
static BUCKET: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(Script::Bucket.source()));

/// Every `rate_limit` entry of a route; all must pass.
pub struct RateLimits {
    pub limits: Vec<Arc<RouteLimit>>,
    /// The shared store, for `store: redis` limits.
    pub redis: Option<Arc<RedisStore>>,
}

impl Policy for RateLimits {
    async fn request(&self, req: &Request<'_>, facts: &mut Facts) -> Flow {
        let keys = RequestKeys {
            ip: req.client_ip,
            headers: req.headers,
            claims: facts.claims.as_deref(),
        };
        match check(&self.limits, self.redis.as_deref(), &keys).await {
            Ok(admitted) => {
                facts.quota = admitted.quota;
                facts.held = admitted.guards;
                if !admitted.delay.is_zero() {
                    // A leaky bucket releases the request at its rate.
                    tokio::time::sleep(admitted.delay).await;
                }
                Flow::Continue
            }
            Err(e) => Flow::Respond(e),
        }
    }

    /// The quota headers; a 429 of the gateway's carries its own.
    fn response(&self, facts: &Facts, reply: Reply, headers: &mut impl HeaderTarget) {
        let Some(q) = &facts.quota else { return };
        if !reply.proxied && reply.status == 429 {
            return;
        }
        for (name, value) in q.header_fields() {
            headers.set_static(name, value);
        }
    }
}

/// One `rate_limit` entry of a route, with the local state it counts in. Kept across
/// reloads while the route keeps the same entry at the same place.
pub struct RouteLimit {
    pub cfg: RateLimitConfig,
    pub limiter: Limiter,
    /// Names the limit in Redis: the same for every instance serving the same config.
    prefix: String,
    rejected: IntCounter,
    store_errors: IntCounter,
    /// When a store error was last logged (ms of uptime): at most one line per interval.
    logged_ms: AtomicU64,
}

/// Between two log lines about the same limit's store errors.
const STORE_ERROR_LOG_EVERY_MS: u64 = 5_000;

impl RouteLimit {
    /// The limit of `cfg`, which the checks compiled into `spec`.
    pub fn new(route: &str, index: usize, cfg: &RateLimitConfig, spec: LimitSpec) -> RouteLimit {
        RouteLimit {
            cfg: cfg.clone(),
            limiter: Limiter::new(spec),
            prefix: format!("gw:rl:{route}:{index}"),
            rejected: METRICS.rate_limited.with_label_values(&[route]),
            store_errors: METRICS.rate_limit_store_errors.with_label_values(&[route]),
            logged_ms: AtomicU64::new(0),
        }
    }
}

impl RouteLimit {
    /// Count a store error; log it at most once per interval.
    fn store_error(&self, e: &str) {
        self.store_errors.inc();
        let now = crate::clock::uptime().as_millis() as u64;
        let last = self.logged_ms.load(Ordering::Relaxed);
        if (last == 0 || now.saturating_sub(last) >= STORE_ERROR_LOG_EVERY_MS)
            && self
                .logged_ms
                .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            log::warn!(
                "rate limit {}: {e}; on_store_error decides (counted in gateway_rate_limit_store_errors_total)",
                self.prefix
            );
        }
    }
}

/// What the limits let through.
#[derive(Default)]
pub struct Admitted {
    /// The quota nearest to running out, for the response headers.
    pub quota: Option<Verdict>,
    /// Concurrency slots held until the request ends.
    pub guards: Vec<Guard>,
    /// How long a leaky bucket holds the request back.
    pub delay: Duration,
}

/// Apply every limit; the first refusal ends the check with its answer.
pub async fn check(
    limits: &[Arc<RouteLimit>],
    redis: Option<&RedisStore>,
    req: &RequestKeys<'_>,
) -> Result<Admitted, GatewayError> {
    let mut out = Admitted::default();
    for limit in limits {
        let subject = limit.limiter.subject(req);
        let verdict = match (limit.cfg.store, redis) {
            (LimitStore::Redis, Some(store)) => match shared(limit, store, &subject).await {
                Ok(v) => Some(v),
                Err(e) => {
                    limit.store_error(&e);
                    match limit.cfg.on_store_error {
                        OnStoreError::Allow => None,
                        OnStoreError::Deny => return Err(store_unavailable()),
                        OnStoreError::Local => Some(local(limit, &subject, &mut out)),
                    }
                }
            },
            _ => Some(local(limit, &subject, &mut out)),
        };
        let Some(v) = verdict else { continue };
        if !v.allowed {
            limit.rejected.inc();
            return Err(v.rejection());
        }
        out.delay = out.delay.max(v.delay);
        // A limit with `headers: none` does not speak for the others either.
        if v.headers != QuotaHeaders::None {
            out.quota = Some(match out.quota {
                Some(q) => q.tighter(v),
                None => v,
            });
        }
    }
    Ok(out)
}

/// Decide in Redis, every instance counting together.
async fn shared(
    limit: &RouteLimit,
    store: &RedisStore,
    subject: &Subject,
) -> Result<Verdict, String> {
    let call = limit.limiter.shared_call(&limit.prefix, subject);
    let script = match call.script {
        Script::Window => &*WINDOW,
        Script::Bucket => &*BUCKET,
    };
    let reply = store.eval(script, &call.key, &call.args).await?;
    limit
        .limiter
        .shared_verdict(subject, &reply)
        .ok_or_else(|| format!("unexpected script reply {reply:?}"))
}

fn store_unavailable() -> GatewayError {
    GatewayError::new(503, "rate limit store unavailable").with_retry_after(1)
}

fn local(limit: &RouteLimit, subject: &Subject, out: &mut Admitted) -> Verdict {
    let (v, guard) = limit.limiter.check_local(subject);
    out.guards.extend(guard);
    v
}

/// Compile one `rate_limit` entry into its spec; the error names the field.
pub fn rate_limit(c: &RateLimitConfig) -> Result<LimitSpec, (String, String)> {
    let algorithm = Algorithm::parse(&c.algorithm).map_err(|e| ("algorithm".into(), e))?;
    let key = LimitKey::parse(&c.key).map_err(|e| ("key".into(), e))?;
    Ok(LimitSpec {
        algorithm,
        key,
        limit: c.limit,
        window: Duration::from_secs(c.window_secs),
        burst: c.burst,
        tiers: c.tiers.as_ref().map(|t| Tiers {
            claim: t.claim.clone(),
            limits: t.limits.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            anonymous: t.anonymous,
        }),
        max_keys: c.max_keys,
        headers: c.headers,
    })
}
