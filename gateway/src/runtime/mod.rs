//! The Runtime: everything a request needs, compiled from one validated config.
//!
//! A request loads the current Runtime once and keeps that snapshot to its end, so swapping
//! in a new one never changes a request halfway.

use crate::aggregate::{Aggregate, AggregateParts};
use crate::config::{
    Config, IpFilterConfig, OutlierDetectionConfig, RedisConfig, TargetConfig, TimeoutsConfig,
    UpstreamConfig,
};
use crate::jwks::{JwksSource, RemoteJwks};
use crate::policy::ban::Ban;
use crate::policy::jwt::Jwt;
use crate::policy::oauth2::{OAuth2, OAuth2Source};
use crate::policy::ratelimit::{RateLimits, RouteLimit};
use crate::policy::{Chain, Member};
use crate::router::Router;
use crate::store::RedisStore;
use crate::upstream::{HashKey, Upstream, UpstreamParts};
use arc_swap::ArcSwap;
use http::HeaderValue;
use plugins::autoban::{AutoBan, AutoBanSettings};
use plugins::cors::Cors;
use plugins::ipfilter::IpFilter;
use plugins::jwt::JwtVerifier;
use plugins::ratelimit::LimitSpec;
use plugins::scope::Scopes;
use plugins::HeaderRules;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

mod carry;
pub use carry::Carry;

/// The name of the built-in upstream that reaches the fan-out service.
pub const FANOUT_UPSTREAM: &str = "fanout";

/// Where this process's own fan-out service listens when `server.fanout` names no address
/// (a loopback port the OS chose at start); every config compiled in the process uses it.
static LOCAL_FANOUT: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Set once at start, before the first compile.
pub fn set_local_fanout(addr: String) {
    let _ = LOCAL_FANOUT.set(addr);
}

/// What the compile step's checks compiled on their way (a fault each where they could
/// not), for [`Runtime::build`] to use as it is: each of these compilers runs once a config.
#[derive(Default)]
pub struct Parts {
    /// The store `server.redis` names (unconnected until its first call).
    pub redis: Option<RedisStore>,
    /// `server.ip_filter`.
    pub ip_filter: Option<IpFilter>,
    /// By route, in the order of `routes`.
    pub routes: Vec<RouteParts>,
    /// By upstream name.
    pub upstreams: HashMap<String, UpstreamParts>,
    /// By aggregate name.
    pub aggregates: HashMap<String, AggregateParts>,
    /// `server.tracing`.
    pub tracer: Option<crate::telemetry::Tracer>,
}

/// One route's compiled pieces.
#[derive(Default)]
pub struct RouteParts {
    pub sticky: Option<HashKey>,
    /// The path regex, for `{path.NAME}` in aggregate templates.
    pub path_regex: Option<regex::Regex>,
    pub ip_filter: Option<IpFilter>,
    pub cors: Option<Cors>,
    pub jwt: Option<JwtVerifier>,
    /// With `keys.jwks_url`: where the keys come from.
    pub jwks: Option<JwksSource>,
    /// The JWT's required scopes.
    pub jwt_scopes: Option<Scopes>,
    /// With `oauth2`: the endpoint and the client secret.
    pub oauth2: Option<OAuth2Source>,
    /// One a `rate_limit` entry, in order.
    pub limits: Vec<LimitSpec>,
    pub headers: HeaderRules,
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
    /// Route names to their index in `routes` (names are unique).
    by_name: HashMap<String, usize>,
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
    /// With `server.tracing`: the sampler and the export settings.
    pub tracing: Option<Arc<crate::telemetry::Tracer>>,
    pub generation: u64,
}

impl Runtime {
    /// The route of this name.
    pub fn route_named(&self, name: &str) -> Option<&Route> {
        self.by_name.get(name).map(|&i| &self.routes[i])
    }

    /// Every ban tracker with its scope: `server`, or the route's name.
    pub fn ban_scopes(&self) -> impl Iterator<Item = (&str, &Arc<AutoBan>)> {
        std::iter::once(&self.chain)
            .chain(self.routes.iter().map(|r| &r.chain))
            .filter_map(|c| c.bans().map(|b| (b.scope.as_str(), &b.bans)))
    }

    /// Build the runtime of a config the checks accepted, from the `parts` they compiled
    /// (through [`crate::compile::compile`], which names a fault's YAML path). The state
    /// `previous` holds passes over as [`Carry`] decides.
    pub fn build(
        config: &Config,
        generation: u64,
        previous: Option<&Runtime>,
        parts: Parts,
    ) -> Result<Runtime, String> {
        let mut carry = Carry::new(previous);
        let kept_redis = config.server.redis.as_ref().and_then(|c| carry.redis(c));
        let redis = match (&config.server.redis, kept_redis, parts.redis) {
            (_, Some(kept), _) => Some(kept),
            (Some(cfg), None, Some(store)) => Some((cfg.clone(), Arc::new(store))),
            (Some(_), None, None) => return Err("server.redis.url: not compiled".into()),
            (None, ..) => None,
        };
        let mut upstreams = HashMap::new();
        let mut upstream_parts = parts.upstreams;
        for (name, cfg) in &config.upstreams {
            let up = match carry.upstream(name, cfg) {
                Some(up) => up,
                None => {
                    let parts = upstream_parts.remove(name).unwrap_or_default();
                    Arc::new(
                        Upstream::new(name, cfg, parts)
                            .map_err(|e| format!("upstreams.{name}: {e}"))?,
                    )
                }
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
            // Its 5xx answers are the aggregates' (a required backend failed): nothing to
            // eject, and it is the one target anyway.
            let cfg = UpstreamConfig {
                targets: vec![TargetConfig {
                    addr: addr.clone(),
                    weight: 1,
                }],
                timeouts: TimeoutsConfig {
                    read_ms: longest + 1000,
                    ..TimeoutsConfig::default()
                },
                failure_eject_ms: 0,
                outlier_detection: OutlierDetectionConfig {
                    consecutive_5xx: 0,
                    ..OutlierDetectionConfig::default()
                },
                ..UpstreamConfig::default()
            };
            let up = match carry.upstream(FANOUT_UPSTREAM, &cfg) {
                Some(up) => up,
                None => {
                    let addrs = crate::upstream::resolve(addr)
                        .map_err(|e| format!("server.fanout: {e}"))?;
                    let parts = UpstreamParts {
                        addrs: vec![addrs],
                        ..UpstreamParts::default()
                    };
                    Arc::new(Upstream::new(FANOUT_UPSTREAM, &cfg, parts)?)
                }
            };
            upstreams.insert(FANOUT_UPSTREAM.to_string(), up);
        }
        let mut aggregates = HashMap::new();
        let mut aggregate_parts = parts.aggregates;
        for (name, cfg) in &config.aggregates {
            let parts = aggregate_parts.remove(name).unwrap_or_default();
            aggregates.insert(
                name.clone(),
                Arc::new(Aggregate::new(name, cfg, &upstreams, parts)?),
            );
        }
        let mut routes = Vec::with_capacity(config.routes.len());
        let mut route_parts = parts.routes.into_iter();
        for (i, r) in config.routes.iter().enumerate() {
            let mut rp = route_parts.next().unwrap_or_default();
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
            let sticky = rp.sticky.take();
            let path_regex = rp.path_regex.take();
            let mirror = match &r.mirror {
                Some(m) => Some(Mirror {
                    upstream: find(&m.upstream)?,
                    share: m.percent / 100.0,
                }),
                None => None,
            };
            let chain = route_chain(r, &mut carry, redis.as_ref().map(|(_, s)| s), rp);
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
                path_regex,
                strip_prefix: r.strip_prefix.clone(),
            });
        }
        Ok(Runtime {
            router: Router::new(&config.routes)?,
            by_name: routes
                .iter()
                .enumerate()
                .map(|(i, r)| (r.name.clone(), i))
                .collect(),
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
            chain: Chain::new(filter_members(
                None,
                config.server.ip_filter.as_ref(),
                parts.ip_filter,
                &carry,
            )),
            redis,
            tracing: parts.tracer.map(Arc::new),
            generation,
        })
    }
}

/// The members an `ip_filter` block makes: the filter, and the ban tracker.
fn filter_members(
    route: Option<&str>,
    f: Option<&IpFilterConfig>,
    filter: Option<IpFilter>,
    carry: &Carry,
) -> Vec<Member> {
    let (Some(f), Some(filter)) = (f, filter) else {
        return Vec::new();
    };
    let mut members = vec![Member::IpFilter(filter)];
    if let Some(b) = &f.auto_ban {
        let settings = AutoBanSettings {
            threshold: b.threshold,
            window: Duration::from_secs(b.window_secs),
            ban: Duration::from_secs(b.ban_secs),
            max_entries: b.max_entries,
        };
        let bans = carry
            .bans(route, &settings)
            .unwrap_or_else(|| Arc::new(AutoBan::new(settings)));
        members.push(Member::Ban(Ban {
            scope: route.unwrap_or("server").to_string(),
            bans,
        }));
    }
    members
}

/// A route's chain, in the order [`crate::policy`] documents.
fn route_chain(
    r: &crate::config::RouteConfig,
    carry: &mut Carry,
    redis: Option<&Arc<RedisStore>>,
    parts: RouteParts,
) -> Chain {
    let p = &r.plugins;
    let mut members = filter_members(Some(&r.name), p.ip_filter.as_ref(), parts.ip_filter, carry);
    if let Some(c) = parts.cors {
        members.push(Member::Cors(c));
    }
    if let Some(j) = route_jwt(r, carry, parts.jwt, parts.jwks, parts.jwt_scopes) {
        members.push(Member::Jwt(j));
    }
    if let (Some(cfg), Some(source)) = (&p.oauth2, parts.oauth2) {
        let policy = carry
            .oauth2(&r.name, cfg)
            .unwrap_or_else(|| Arc::new(OAuth2::new(&r.name, cfg, source)));
        members.push(Member::OAuth2(policy));
    }
    if !p.rate_limit.is_empty() {
        let limits = p
            .rate_limit
            .iter()
            .zip(parts.limits)
            .enumerate()
            .map(|(j, (cfg, spec))| {
                carry
                    .limit(&r.name, cfg)
                    .unwrap_or_else(|| Arc::new(RouteLimit::new(&r.name, j, cfg, spec)))
            })
            .collect();
        members.push(Member::RateLimit(RateLimits {
            limits,
            redis: redis.cloned(),
        }));
    }
    let rules = parts.headers;
    if !rules.request.is_empty() || !rules.response.is_empty() {
        members.push(Member::Headers(rules));
    }
    Chain::new(members)
}

/// The route's JWT policy; keys from a URL are carried over while the `jwt` block stays
/// as it was, so a reload never drops to an empty key set.
fn route_jwt(
    r: &crate::config::RouteConfig,
    carry: &Carry,
    verifier: Option<JwtVerifier>,
    source: Option<JwksSource>,
    scopes: Option<Scopes>,
) -> Option<Jwt> {
    let (Some(cfg), Some(verifier)) = (&r.plugins.jwt, verifier) else {
        return None;
    };
    let Some(source) = source else {
        return Some(Jwt {
            verifier: Arc::new(verifier),
            remote: None,
            scopes,
        });
    };
    if let Some(kept) = carry.jwt(&r.name, cfg) {
        return Some(kept);
    }
    let verifier = Arc::new(verifier);
    let k = &cfg.keys;
    let remote = RemoteJwks::new(
        &r.name,
        source,
        verifier.clone(),
        Duration::from_secs(k.refresh_secs.max(1)),
        Duration::from_secs(k.refetch_min_secs),
        Duration::from_millis(k.timeout_ms.max(1)),
    );
    Some(Jwt {
        verifier,
        remote: Some((cfg.clone(), Arc::new(remote))),
        scopes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(yaml: &str, previous: Option<&Runtime>) -> Runtime {
        let config = crate::config::parse(yaml).expect("config parses");
        crate::compile::compile(&config, 1, previous).expect("config compiles")
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

    #[test]
    fn bans_are_kept_by_scope_and_a_route_named_server_has_its_own() {
        let yaml = |extra: &str| {
            format!(
                r#"
server:
  ip_filter: {{ auto_ban: {{ threshold: 3 }} }}
upstreams:
  a: {{ targets: [{{ addr: "127.0.0.1:9001" }}] }}
routes:
{extra}  - name: server
    upstream: a
    plugins: {{ ip_filter: {{ auto_ban: {{ threshold: 3 }} }} }}
"#
            )
        };
        let bans = |rt: &Runtime| -> Vec<(String, Arc<AutoBan>)> {
            rt.ban_scopes()
                .map(|(scope, b)| (scope.to_string(), b.clone()))
                .collect()
        };
        let first = build(&yaml(""), None);
        let second = build(&yaml("  - { name: zero, upstream: a }\n"), Some(&first));
        let (before, after) = (bans(&first), bans(&second));
        assert_eq!(before.len(), 2);
        assert!(!Arc::ptr_eq(&before[0].1, &before[1].1), "two tables");
        for ((s1, b1), (s2, b2)) in before.iter().zip(&after) {
            assert_eq!(s1, s2);
            assert!(Arc::ptr_eq(b1, b2), "{s1}: kept");
        }
        // Other settings: a new table.
        let third = build(
            &yaml("").replace("threshold: 3 } }\nupstreams", "threshold: 4 } }\nupstreams"),
            Some(&second),
        );
        let third = bans(&third);
        assert!(!Arc::ptr_eq(&after[0].1, &third[0].1));
        assert!(Arc::ptr_eq(&after[1].1, &third[1].1));
    }
}
