//! The Runtime: everything a request needs, compiled from one validated config.
//!
//! A request loads the current Runtime once and keeps that snapshot to its end, so swapping
//! in a new one never changes a request halfway.

use crate::aggregate::Aggregate;
use crate::config::{Config, CorsConfig, IpFilterConfig, JwtConfig, RedisConfig, UpstreamConfig};
use crate::jwks::RemoteJwks;
use crate::policy::ban::Ban;
use crate::policy::jwt::Jwt;
use crate::policy::ratelimit::{RateLimits, RouteLimit};
use crate::policy::{Chain, Member};
use crate::router::Router;
use crate::store::RedisStore;
use crate::upstream::{HashKey, Upstream};
use arc_swap::ArcSwap;
use http::HeaderValue;
use plugins::autoban::{AutoBan, AutoBanSettings};
use plugins::cors::Cors;
use plugins::ipfilter::IpFilter;
use plugins::jwt::{JwtSettings, JwtVerifier, KeySource};
use plugins::{HeaderOps, HeaderRules};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// The name of the built-in upstream that reaches the fan-out service.
pub const FANOUT_UPSTREAM: &str = "fanout";

/// Where this process's own fan-out service listens when `server.fanout` names no address
/// (a loopback port the OS chose at start); every config compiled in the process uses it.
static LOCAL_FANOUT: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Set once at start, before the first compile.
pub fn set_local_fanout(addr: String) {
    let _ = LOCAL_FANOUT.set(addr);
}

/// The shared, swappable pointer to the current Runtime.
pub type RuntimeHandle = Arc<ArcSwap<Runtime>>;

pub struct Route {
    pub name: String,
    /// This route's `gateway_request_duration_seconds` series, looked up once.
    pub duration: pingora_prometheus::prometheus::Histogram,
    /// This route's `gateway_requests_total` series.
    pub requests: crate::metrics::RequestCounters,
    /// The upstreams serving the route with the end of each one's weight range; a route
    /// with a plain `upstream` has one arm.
    pub arms: Vec<(Arc<Upstream>, u32)>,
    total_weight: u32,
    /// With a split: what keeps one client on one side.
    pub sticky: Option<HashKey>,
    pub mirror: Option<Mirror>,
    /// With `aggregate`: the aggregate's name, sent to the fan-out service.
    pub aggregate: Option<HeaderValue>,
    /// The route's path regex, for `{path.NAME}` in aggregate templates.
    pub path_regex: Option<regex::Regex>,
    /// The route's policies, in the order they run (see [`crate::policy`]).
    pub chain: Chain,
    pub strip_prefix: Option<String>,
}

#[derive(Debug, Clone, Copy)]
pub struct RequestLimits {
    pub max_body_bytes: u64,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    /// How paths are normalized before routing.
    pub paths: crate::path::PathOptions,
    /// The longest wait between two reads of a request body.
    pub client_body_timeout: Duration,
}

/// Keep-alive of HTTP/1 client connections: the server's setting, and the listeners that
/// have their own.
#[derive(Debug, Clone, Default)]
pub struct Keepalive {
    default: KeepaliveRule,
    listeners: Vec<(std::net::SocketAddr, KeepaliveRule)>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeepaliveRule {
    /// Idle seconds allowed between two requests; 0: close after each answer.
    pub timeout_secs: u64,
    /// Requests per connection; 0: no cap.
    pub requests: u32,
}

impl Keepalive {
    pub fn new(s: &crate::config::ServerConfig) -> Keepalive {
        let default = KeepaliveRule {
            timeout_secs: s.keepalive_timeout_secs,
            requests: s.keepalive_requests,
        };
        let own = |addr: &str, (timeout, requests): (Option<u64>, Option<u32>)| {
            let addr = addr.parse().ok()?;
            (timeout.is_some() || requests.is_some()).then(|| {
                let rule = KeepaliveRule {
                    timeout_secs: timeout.unwrap_or(default.timeout_secs),
                    requests: requests.unwrap_or(default.requests),
                };
                (addr, rule)
            })
        };
        let listeners =
            s.listen
                .iter()
                .filter_map(|l| own(l.addr(), l.keepalive()))
                .chain(s.tls.iter().filter_map(|t| {
                    own(&t.listen, (t.keepalive_timeout_secs, t.keepalive_requests))
                }))
                .collect();
        Keepalive { default, listeners }
    }

    /// The rule of the listener that accepted a connection (by its local address; a listener
    /// on `0.0.0.0` or `[::]` matches by port). Almost always the server's: no listener has
    /// its own, and nothing is looked up.
    pub fn rule(&self, local: Option<std::net::SocketAddr>) -> KeepaliveRule {
        if self.listeners.is_empty() {
            return self.default;
        }
        let Some(local) = local else {
            return self.default;
        };
        self.listeners
            .iter()
            .find(|(l, _)| {
                l.port() == local.port() && (l.ip() == local.ip() || l.ip().is_unspecified())
            })
            .map_or(self.default, |(_, r)| *r)
    }
}

pub struct Mirror {
    pub upstream: Arc<Upstream>,
    /// Share of requests copied, 0.0 to 1.0.
    pub share: f64,
}

impl Route {
    pub fn upstream(&self, arm: usize) -> &Arc<Upstream> {
        &self.arms[arm].0
    }

    /// Choose the arm of a split: by the sticky key's hash when there is one, at random
    /// (weighted) otherwise.
    pub fn pick(&self, sticky: Option<&[u8]>) -> usize {
        if self.arms.len() == 1 {
            return 0;
        }
        let point = match sticky {
            Some(key) => {
                use std::hash::{Hash, Hasher};
                // A fixed hasher: the same key picks the same side in every process.
                let mut h = std::collections::hash_map::DefaultHasher::new();
                key.hash(&mut h);
                (h.finish() % u64::from(self.total_weight)) as u32
            }
            None => fastrand::u32(..self.total_weight),
        };
        self.arms
            .iter()
            .position(|(_, end)| point < *end)
            .unwrap_or(0)
    }
}

pub struct Runtime {
    pub router: Router,
    pub routes: Vec<Route>,
    pub upstreams: HashMap<String, Arc<Upstream>>,
    pub aggregates: HashMap<String, Arc<Aggregate>>,
    /// Peers whose X-Forwarded-For is believed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Bounds on what a client may send.
    pub limits: RequestLimits,
    /// Keep-alive of client connections.
    pub keepalive: Keepalive,
    /// The server's policies, run on every request before routing: its `ip_filter` and the
    /// bans earned by refusals on any route.
    pub chain: Chain,
    /// The shared store, with the settings it was made from (kept across reloads).
    pub redis: Option<(RedisConfig, Arc<RedisStore>)>,
    pub generation: u64,
}

impl Runtime {
    /// Every ban tracker with its scope: `server`, or the route's name.
    pub fn ban_scopes(&self) -> impl Iterator<Item = (&str, &Arc<AutoBan>)> {
        std::iter::once(&self.chain)
            .chain(self.routes.iter().map(|r| &r.chain))
            .filter_map(|c| c.bans().map(|b| (b.scope.as_str(), &b.bans)))
    }

    /// Compile a config that [`crate::compile::validate`] accepted (through
    /// [`crate::compile::compile`], which names the fault's YAML path). Upstreams that
    /// `previous` defines identically are taken over as they are, with their health state,
    /// breaker and connection pool.
    pub fn build(
        config: &Config,
        generation: u64,
        previous: Option<&Runtime>,
    ) -> Result<Runtime, String> {
        let redis = match &config.server.redis {
            Some(cfg) => Some(
                match previous
                    .and_then(|p| p.redis.as_ref())
                    .filter(|(c, _)| c == cfg)
                {
                    Some(kept) => kept.clone(),
                    None => (
                        cfg.clone(),
                        Arc::new(
                            RedisStore::new(
                                cfg.url.expose(),
                                Duration::from_millis(cfg.timeout_ms),
                            )
                            .map_err(|e| format!("server.redis.url: {e}"))?,
                        ),
                    ),
                },
            ),
            None => None,
        };
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
        // Aggregate routes are proxied to the fan-out service, reached as one more upstream:
        // the one `server.fanout` names, or this process's own.
        let fanout = &config.server.fanout;
        let named = fanout.target.as_ref().or(fanout.listen.as_ref());
        let local = LOCAL_FANOUT.get().filter(|_| !config.aggregates.is_empty());
        if let Some(addr) = named.or(local) {
            let longest = config
                .aggregates
                .values()
                .map(|a| a.timeout_ms)
                .max()
                .unwrap_or(0);
            let cfg: UpstreamConfig = serde_yaml::from_str(&format!(
                // Its 5xx answers are the aggregates' (a required backend failed): nothing to
                // eject, and it is the one target anyway.
                "targets: [{{ addr: \"{addr}\" }}]\ntimeouts: {{ read_ms: {} }}\nfailure_eject_ms: 0\noutlier_detection: {{ consecutive_5xx: 0 }}",
                longest + 1000
            ))
            .map_err(|e| format!("server.fanout: {e}"))?;
            let kept = previous
                .and_then(|p| p.upstreams.get(FANOUT_UPSTREAM))
                .filter(|up| up.cfg == cfg)
                .cloned();
            let up = match kept {
                Some(up) => up,
                None => Arc::new(Upstream::new(FANOUT_UPSTREAM, &cfg)?),
            };
            upstreams.insert(FANOUT_UPSTREAM.to_string(), up);
        }
        let mut aggregates = HashMap::new();
        for (name, cfg) in &config.aggregates {
            aggregates.insert(
                name.clone(),
                Arc::new(Aggregate::new(name, cfg, &upstreams)?),
            );
        }
        let mut routes = Vec::with_capacity(config.routes.len());
        for (i, r) in config.routes.iter().enumerate() {
            let find = |name: &str| {
                upstreams
                    .get(name)
                    .cloned()
                    .ok_or_else(|| format!("routes[{i}]: unknown upstream {name:?}"))
            };
            let mut arms = Vec::new();
            let mut total_weight = 0u32;
            match (&r.upstream, &r.split) {
                (Some(u), _) => {
                    total_weight = 1;
                    arms.push((find(u)?, 1));
                }
                (None, None) if r.aggregate.is_some() => {
                    total_weight = 1;
                    arms.push((find(FANOUT_UPSTREAM)?, 1));
                }
                (None, Some(split)) => {
                    for arm in split.iter().filter(|a| a.weight > 0) {
                        total_weight += arm.weight;
                        arms.push((find(&arm.upstream)?, total_weight));
                    }
                }
                (None, None) => return Err(format!("routes[{i}]: no upstream")),
            }
            let sticky = match &r.sticky_key {
                Some(k) => Some(HashKey::parse(k).map_err(|e| format!("routes[{i}]: {e}"))?),
                None => None,
            };
            let mirror = match &r.mirror {
                Some(m) => Some(Mirror {
                    upstream: find(&m.upstream)?,
                    share: m.percent / 100.0,
                }),
                None => None,
            };
            let before = previous
                .and_then(|p| p.routes.iter().find(|old| old.name == r.name))
                .map(|old| &old.chain);
            let chain = route_chain(r, before, redis.as_ref().map(|(_, s)| s))
                .map_err(|e| format!("routes[{i}].{e}"))?;
            routes.push(Route {
                duration: crate::metrics::METRICS
                    .request_duration
                    .with_label_values(&[r.name.as_str()]),
                requests: crate::metrics::RequestCounters::new(&r.name),
                name: r.name.clone(),
                arms,
                total_weight,
                sticky,
                mirror,
                aggregate: match &r.aggregate {
                    Some(a) => Some(
                        HeaderValue::from_str(a)
                            .map_err(|_| format!("routes[{i}].aggregate: bad name"))?,
                    ),
                    None => None,
                },
                chain,
                path_regex: match r.matcher.path.as_ref().and_then(|p| p.regex.as_ref()) {
                    Some(re) => {
                        Some(regex::Regex::new(re).map_err(|e| format!("routes[{i}]: {e}"))?)
                    }
                    None => None,
                },
                strip_prefix: r.strip_prefix.clone(),
            });
        }
        Ok(Runtime {
            router: Router::new(&config.routes)?,
            routes,
            upstreams,
            aggregates,
            keepalive: Keepalive::new(&config.server),
            limits: RequestLimits {
                max_body_bytes: config.server.max_body_bytes,
                max_header_bytes: config.server.max_header_bytes,
                max_headers: config.server.max_headers,
                client_body_timeout: Duration::from_millis(
                    config.server.client_body_timeout_ms.max(1),
                ),
                paths: crate::path::PathOptions {
                    merge_slashes: config.server.paths.merge_slashes,
                    escaped_slashes: match config.server.paths.escaped_slashes {
                        crate::config::EscapedSlashes::Reject => {
                            crate::path::EscapedSlashes::Reject
                        }
                        crate::config::EscapedSlashes::Keep => crate::path::EscapedSlashes::Keep,
                    },
                },
            },
            trusted_proxies: config
                .server
                .trusted_proxies
                .iter()
                .map(|n| plugins::ipfilter::parse_net(n))
                .collect::<Result<_, _>>()?,
            chain: Chain::new(
                filter_members(
                    "server",
                    config.server.ip_filter.as_ref(),
                    previous.map(|p| &p.chain),
                )
                .map_err(|(p, e)| format!("server.ip_filter.{p}: {e}"))?,
            ),
            redis,
            generation,
        })
    }
}

/// The members an `ip_filter` block makes: the filter, and the ban tracker (the previous
/// one, with its bans, when the settings did not change).
fn filter_members(
    scope: &str,
    f: Option<&IpFilterConfig>,
    before: Option<&Chain>,
) -> Result<Vec<Member>, (String, String)> {
    let Some(f) = f else {
        return Ok(Vec::new());
    };
    let mut members = vec![Member::IpFilter(ip_filter(f)?)];
    if let Some(b) = &f.auto_ban {
        let settings = AutoBanSettings {
            threshold: b.threshold,
            window: Duration::from_secs(b.window_secs),
            ban: Duration::from_secs(b.ban_secs),
            max_entries: b.max_entries,
        };
        let bans = match before
            .and_then(Chain::bans)
            .filter(|p| p.bans.settings == settings)
        {
            Some(kept) => kept.bans.clone(),
            None => Arc::new(AutoBan::new(settings)),
        };
        members.push(Member::Ban(Ban {
            scope: scope.to_string(),
            bans,
        }));
    }
    Ok(members)
}

/// A route's chain, in the order [`crate::policy`] documents; what the previous chain of
/// the same route holds is kept where its settings did not change. The error starts with
/// the YAML path below the route.
fn route_chain(
    r: &crate::config::RouteConfig,
    before: Option<&Chain>,
    redis: Option<&Arc<RedisStore>>,
) -> Result<Chain, String> {
    let p = &r.plugins;
    let mut members = filter_members(&r.name, p.ip_filter.as_ref(), before)
        .map_err(|(f, e)| format!("plugins.ip_filter.{f}: {e}"))?;
    if let Some(c) = &p.cors {
        members.push(Member::Cors(
            cors(c).map_err(|e| format!("plugins.cors: {e}"))?,
        ));
    }
    if let Some(j) = route_jwt(r, before).map_err(|(f, e)| format!("plugins.jwt.{f}: {e}"))? {
        members.push(Member::Jwt(j));
    }
    if !p.rate_limit.is_empty() {
        members.push(Member::RateLimit(RateLimits {
            limits: route_limits(r, before).map_err(|e| format!("plugins.rate_limit{e}"))?,
            redis: redis.cloned(),
        }));
    }
    let h = &r.headers;
    let rules = HeaderRules {
        request: HeaderOps::new(&h.request.set, &h.request.remove)
            .map_err(|e| format!("headers.request: {e}"))?,
        response: HeaderOps::new(&h.response.set, &h.response.remove)
            .map_err(|e| format!("headers.response: {e}"))?,
    };
    if !rules.request.is_empty() || !rules.response.is_empty() {
        members.push(Member::Headers(rules));
    }
    Ok(Chain::new(members))
}

/// Compile an `ip_filter` block; the error names the field (`allow[2]`, `deny_file`).
pub fn ip_filter(cfg: &IpFilterConfig) -> Result<IpFilter, (String, String)> {
    let parse = |list: &[String], field: &str| -> Result<Vec<ipnet::IpNet>, (String, String)> {
        list.iter()
            .enumerate()
            .map(|(i, n)| plugins::ipfilter::parse_net(n).map_err(|e| (format!("{field}[{i}]"), e)))
            .collect()
    };
    let allow = parse(&cfg.allow, "allow")?;
    let mut deny = parse(&cfg.deny, "deny")?;
    if let Some(file) = &cfg.deny_file {
        let text = std::fs::read_to_string(file)
            .map_err(|e| ("deny_file".to_string(), format!("cannot read {file}: {e}")))?;
        deny.extend(
            plugins::ipfilter::parse_list(&text)
                .map_err(|e| ("deny_file".to_string(), format!("{file}: {e}")))?,
        );
    }
    Ok(IpFilter::new(allow, deny))
}

/// Compile a `jwt` block, reading its key; the error names the field.
pub fn jwt(cfg: &JwtConfig) -> Result<JwtVerifier, (String, String)> {
    let k = &cfg.keys;
    let owned: Vec<u8>;
    let text: String;
    let source = match (&k.secret_env, &k.public_key_pem, &k.jwks_file) {
        (None, None, None) if k.jwks_url.is_some() => {
            let url = k
                .jwks_url
                .clone()
                .unwrap_or_else(|| crate::config::SecretUrl::new(""));
            crate::jwks::JwksUrl::parse(&url).map_err(|e| ("keys.jwks_url".into(), e))?;
            if let Some(ca) = &k.ca_file {
                crate::upstream::load_ca(ca).map_err(|e| ("keys.ca_file".into(), e))?;
            }
            KeySource::JwksLater
        }
        _ if k.jwks_url.is_some() => {
            return Err((
                "keys".into(),
                "set exactly one of secret_env, public_key_pem, jwks_file, jwks_url".into(),
            ))
        }
        (Some(var), None, None) => {
            owned = std::env::var(var)
                .map_err(|_| {
                    (
                        "keys.secret_env".into(),
                        format!("environment variable {var} is not set"),
                    )
                })?
                .into_bytes();
            KeySource::Secret(&owned)
        }
        (None, Some(file), None) => {
            owned = std::fs::read(file).map_err(|e| {
                (
                    "keys.public_key_pem".into(),
                    format!("cannot read {file}: {e}"),
                )
            })?;
            KeySource::PublicPem(&owned)
        }
        (None, None, Some(file)) => {
            text = std::fs::read_to_string(file)
                .map_err(|e| ("keys.jwks_file".into(), format!("cannot read {file}: {e}")))?;
            KeySource::Jwks(&text)
        }
        _ => {
            return Err((
                "keys".into(),
                "set exactly one of secret_env, public_key_pem, jwks_file, jwks_url".into(),
            ))
        }
    };
    let forward: Vec<(String, String)> = cfg
        .forward_claims
        .iter()
        .map(|(c, h)| (c.clone(), h.clone()))
        .collect();
    JwtVerifier::new(
        source,
        &JwtSettings {
            algorithms: &cfg.algorithms,
            issuer: cfg.issuer.as_deref(),
            audience: cfg.audience.as_deref(),
            leeway_secs: cfg.leeway_secs,
            require_exp: cfg.require_exp,
            optional: cfg.optional,
            forward_claims: &forward,
            cache_size: cfg.cache_tokens,
        },
    )
}

/// The route's JWT policy. Keys from a URL are kept across a reload that leaves the `jwt`
/// block as it was, so a reload never drops to an empty key set.
fn route_jwt(
    r: &crate::config::RouteConfig,
    before: Option<&Chain>,
) -> Result<Option<Jwt>, (String, String)> {
    let Some(cfg) = &r.plugins.jwt else {
        return Ok(None);
    };
    let Some(url) = &cfg.keys.jwks_url else {
        return Ok(Some(Jwt {
            verifier: Arc::new(jwt(cfg)?),
            remote: None,
        }));
    };
    let kept = before
        .and_then(Chain::jwt)
        .filter(|old| old.remote.as_ref().is_some_and(|(c, _)| c == cfg));
    if let Some(old) = kept {
        return Ok(Some(Jwt {
            verifier: old.verifier.clone(),
            remote: old.remote.clone(),
        }));
    }
    let verifier = Arc::new(jwt(cfg)?);
    let k = &cfg.keys;
    let remote = RemoteJwks::new(
        &r.name,
        url,
        verifier.clone(),
        Duration::from_secs(k.refresh_secs.max(1)),
        Duration::from_secs(k.refetch_min_secs),
        Duration::from_millis(k.timeout_ms.max(1)),
        k.ca_file.as_deref(),
    )
    .map_err(|e| ("keys.jwks_url".to_string(), e))?;
    Ok(Some(Jwt {
        verifier,
        remote: Some((cfg.clone(), Arc::new(remote))),
    }))
}

/// The route's limits; an unchanged limit keeps its counters wherever it moved in the
/// list: matched by its settings, each old one taken once.
fn route_limits(
    r: &crate::config::RouteConfig,
    before: Option<&Chain>,
) -> Result<Vec<Arc<RouteLimit>>, String> {
    let old: &[Arc<RouteLimit>] = before
        .and_then(Chain::rate_limits)
        .map_or(&[], |l| &l.limits);
    let mut taken = vec![false; old.len()];
    r.plugins
        .rate_limit
        .iter()
        .enumerate()
        .map(|(j, cfg)| {
            let kept = old
                .iter()
                .enumerate()
                .position(|(i, l)| !taken[i] && l.cfg == *cfg)
                .map(|i| {
                    taken[i] = true;
                    old[i].clone()
                });
            match kept {
                Some(kept) => Ok(kept),
                None => RouteLimit::new(&r.name, j, cfg)
                    .map(Arc::new)
                    .map_err(|e| format!("[{j}].{e}")),
            }
        })
        .collect()
}

/// Compile a `cors` block.
pub fn cors(c: &CorsConfig) -> Result<Cors, String> {
    Cors::new(
        &c.origins,
        &c.methods,
        &c.headers,
        &c.expose_headers,
        c.credentials,
        c.max_age_secs,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(yaml: &str, previous: Option<&Runtime>) -> Runtime {
        let config = crate::config::parse(yaml).expect("config parses");
        crate::compile::validate(&config).expect("config is valid");
        Runtime::build(&config, 1, previous).expect("config compiles")
    }

    #[test]
    fn a_reload_keeps_the_state_of_what_did_not_change_wherever_it_moved() {
        let first = build(
            r#"
upstreams:
  a: { targets: [{ addr: "127.0.0.1:9001" }], circuit_breaker: { consecutive_failures: 3 } }
routes:
  - name: one
    upstream: a
    plugins: { rate_limit: [{ algorithm: sliding_window, limit: 5 }] }
"#,
            None,
        );
        // A route inserted before, a limit inserted before the old one, an upstream added.
        let second = build(
            r#"
upstreams:
  b: { targets: [{ addr: "127.0.0.1:9002" }] }
  a: { targets: [{ addr: "127.0.0.1:9001" }], circuit_breaker: { consecutive_failures: 3 } }
routes:
  - { name: zero, upstream: b }
  - name: one
    upstream: a
    plugins:
      rate_limit:
        - { algorithm: token_bucket, limit: 9 }
        - { algorithm: sliding_window, limit: 5 }
"#,
            Some(&first),
        );
        let limits = |rt: &Runtime, route: &str| {
            let r = rt.routes.iter().find(|r| r.name == route).unwrap();
            r.chain.rate_limits().unwrap().limits.clone()
        };
        let (old_one, new_one) = (limits(&first, "one"), limits(&second, "one"));
        assert!(Arc::ptr_eq(&old_one[0], &new_one[1]), "counters kept");
        assert!(!Arc::ptr_eq(&old_one[0], &new_one[0]));
        assert!(
            Arc::ptr_eq(&first.upstreams["a"], &second.upstreams["a"]),
            "pool, health and breaker kept"
        );
        // A changed limit starts afresh.
        let third = build(
            r#"
upstreams:
  a: { targets: [{ addr: "127.0.0.1:9001" }], circuit_breaker: { consecutive_failures: 3 } }
routes:
  - name: one
    upstream: a
    plugins: { rate_limit: [{ algorithm: sliding_window, limit: 6 }] }
"#,
            Some(&second),
        );
        assert!(!Arc::ptr_eq(&new_one[1], &limits(&third, "one")[0]));
    }
}
