//! Upstream pools: the targets of one named upstream, how one is picked, how it is reached,
//! and how its health is probed.
//!
//! Selection runs on pingora-load-balancing. Weighted round robin and random use
//! [`Weighted`] selectors (each target appears `weight` times), consistent hashing uses
//! Ketama. Active health checks are pingora's TCP and HTTP checks, run by
//! [`crate::refresh::RefreshService`] at each upstream's own interval.

pub mod dns;
pub mod outlier;
pub mod registry;

use crate::clock::ProcessClock;
use crate::config::{DiscoveryConfig, DiscoveryKind};
use crate::config::{HealthCheckKind, LbAlgorithm, UpstreamConfig};
use crate::config::{RetryCondition, RetryOn};
use crate::metrics::METRICS;
use arc_swap::ArcSwap;
use dns::{DnsDiscovery, Kind};
use http::HeaderName;
use outlier::{OutlierSettings, TargetState};
use pingora::lb::discovery::ServiceDiscovery;
use pingora::lb::health_check::{HttpHealthCheck, TcpHealthCheck};
use pingora::lb::selection::{consistent::KetamaHashing, Random, RoundRobin};
use pingora::lb::{Backend, Backends, LoadBalancer};
use pingora::protocols::l4::socket::SocketAddr as PingoraAddr;
use pingora::protocols::tls::CaType;
use pingora::tls::RootCertStore;
use pingora::upstreams::peer::HttpPeer;
use pingora::utils::tls::{parse_x509, WrappedX509};
use plugins::breaker::{Breaker, BreakerConfig, Clock};
use plugins::retry::{RetryConfig, RetryPolicy};
pub use registry::{Registry, SourceState};
use std::collections::{BTreeSet, HashMap};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// What a consistent hash is computed over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    Header(HeaderName),
    Ip,
    Path,
}

impl HashKey {
    /// `header:NAME`, `ip` or `path` (the grammar of [`plugins::key`]).
    pub fn parse(s: &str) -> Result<HashKey, String> {
        use plugins::key::{Form, Key};
        match Key::parse(s, &[Form::Header, Form::Ip, Form::Path])? {
            Key::Header(name) => Ok(HashKey::Header(name)),
            Key::Ip => Ok(HashKey::Ip),
            Key::Path => Ok(HashKey::Path),
            Key::Route | Key::Claim(_) => Err(format!("unknown key {s:?}")),
        }
    }
}

enum Balancer {
    RoundRobin(LoadBalancer<RoundRobin>),
    Random(LoadBalancer<Random>),
    Hash(LoadBalancer<KetamaHashing>),
}

/// Targets tried before giving up on finding a healthy one.
const MAX_SELECT_ITERATIONS: usize = 256;

/// This upstream's metric series, looked up once when the pool is built.
pub struct UpstreamMetrics {
    pub duration: pingora_prometheus::prometheus::Histogram,
    pub retries: pingora_prometheus::prometheus::IntCounter,
}

pub struct Upstream {
    pub name: String,
    pub metrics: UpstreamMetrics,
    /// The definition this pool was built from; a reload keeps the pool when it is unchanged.
    pub cfg: UpstreamConfig,
    balancer: Balancer,
    pub hash_key: Option<HashKey>,
    tls: bool,
    sni: Option<String>,
    verify: bool,
    ca: Option<Arc<CaType>>,
    /// Keeps this upstream's pooled connections apart from other upstreams' to the same
    /// address, whose TLS trust settings may differ.
    pool_key: u64,
    connect_timeout: Duration,
    read_timeout: Duration,
    write_timeout: Duration,
    idle_timeout: Duration,
    pub breaker: Option<Breaker>,
    pub retry: Option<RetryPolicy>,
    /// Every try and backoff of one request ends by this long after it started.
    pub deadline: Duration,
    clock: Arc<ProcessClock>,
    failure_eject_ms: u64,
    outlier: OutlierSettings,
    /// Passive tracking and outlier detection, per target (see [`outlier`]).
    states: ArcSwap<TargetStates>,
    /// Targets in a run of failures: while none is, a success has nothing to reset and
    /// looks nothing up. A hint: a success racing the first failure of a run may leave that
    /// failure counted.
    failing: std::sync::atomic::AtomicUsize,
    /// The latest end of any ejection: past it, no target is ejected and selection skips
    /// the per-target lookups.
    ejections_end: AtomicU64,
    /// The targets the balancer draws from; DNS discovery replaces them.
    target_set: Arc<ArcSwap<BTreeSet<Backend>>>,
    dns: Option<DnsDiscovery>,
    next_refresh_ms: AtomicU64,
    refreshing: AtomicBool,
    /// An etcd prefix or a Consul service that says when the targets change.
    registry: Option<Arc<Registry>>,
    /// The registry's task is running.
    watching: AtomicBool,
    /// What the admin API shows of the registry.
    source: std::sync::Mutex<SourceState>,
    /// Interval of the active health check, if one is configured.
    pub health_interval: Option<Duration>,
    /// Milliseconds since the process epoch when the next probe round is due.
    next_probe_ms: AtomicU64,
    probing: AtomicBool,
}

/// What the compile step's checks compiled of an upstream definition, for
/// [`Upstream::new`] to take as it is.
#[derive(Default)]
pub struct UpstreamParts {
    /// Each target's addresses, in the order of `targets`.
    pub addrs: Vec<Vec<SocketAddr>>,
    pub dns: Option<DnsDiscovery>,
    /// etcd or Consul discovery.
    pub registry: Option<Registry>,
    pub ca: Option<Arc<CaType>>,
    pub hash_key: Option<HashKey>,
}

impl Upstream {
    /// Build a pool from a checked upstream definition and what the checks compiled of it.
    pub fn new(name: &str, cfg: &UpstreamConfig, parts: UpstreamParts) -> Result<Upstream, String> {
        let clock = Arc::new(ProcessClock);
        let mut set = BTreeSet::new();
        for (t, addrs) in cfg.targets.iter().zip(parts.addrs) {
            for addr in addrs {
                set.insert(backend(addr, t.weight));
            }
        }
        let dns = parts.dns;
        let registry = parts.registry.map(Arc::new);
        if let Some(dns) = &dns {
            // The first lookup happens now; if it fails the pool starts empty (503) and
            // the refresh keeps trying.
            match dns.resolve() {
                Ok(found) => {
                    set = found
                        .into_iter()
                        .map(|f| backend(f.addr, f.weight))
                        .collect()
                }
                Err(e) => log::warn!("upstream {name}: discovery: {e}; retrying every refresh"),
            }
        }
        let ca = parts.ca;
        let states = ArcSwap::from_pointee(target_states(&set, None));
        let target_set = Arc::new(ArcSwap::from_pointee(set));
        let mut backends = Backends::new(Box::new(SharedTargets(target_set.clone())));
        if let Some(hc) = &cfg.health_check {
            let timeout = Duration::from_millis(hc.timeout_ms);
            match hc.kind {
                HealthCheckKind::Tcp => {
                    let mut check = TcpHealthCheck::new();
                    check.consecutive_success = hc.healthy;
                    check.consecutive_failure = hc.unhealthy;
                    check.peer_template.options.connection_timeout = Some(timeout);
                    backends.set_health_check(check);
                }
                HealthCheckKind::Http => {
                    let host = hc
                        .host
                        .clone()
                        .or_else(|| cfg.sni.clone())
                        .unwrap_or_else(|| "localhost".into());
                    let mut check = HttpHealthCheck::new(&host, cfg.tls);
                    check.consecutive_success = hc.healthy;
                    check.consecutive_failure = hc.unhealthy;
                    check.peer_template.options.connection_timeout = Some(timeout);
                    check.peer_template.options.read_timeout = Some(timeout);
                    check.peer_template.options.verify_cert = cfg.verify;
                    check.peer_template.options.verify_hostname = cfg.verify;
                    check.peer_template.options.ca = ca.clone();
                    check.req.set_uri(
                        hc.path
                            .parse()
                            .map_err(|_| format!("invalid health check path {:?}", hc.path))?,
                    );
                    check.validator = Some(Box::new(|resp| {
                        if resp.status.is_success() {
                            Ok(())
                        } else {
                            Err(pingora::Error::explain(
                                pingora::ErrorType::CustomCode(
                                    "health check status",
                                    resp.status.as_u16(),
                                ),
                                "unhealthy status",
                            ))
                        }
                    }));
                    backends.set_health_check(Box::new(check));
                }
            }
        }
        let balancer = match cfg.lb {
            LbAlgorithm::WeightedRoundRobin => Balancer::RoundRobin(build(backends)?),
            LbAlgorithm::Random => Balancer::Random(build(backends)?),
            LbAlgorithm::ConsistentHash => Balancer::Hash(build(backends)?),
        };
        let hash_key = parts.hash_key;
        let t = &cfg.timeouts;
        let breaker = cfg.circuit_breaker.as_ref().map(|cb| {
            let upstream = name.to_string();
            Breaker::with_clock(
                BreakerConfig {
                    consecutive_failures: cb.consecutive_failures,
                    failure_rate: cb.failure_rate,
                    window_secs: cb.window_secs,
                    min_requests: cb.min_requests,
                    open: Duration::from_secs(cb.open_secs),
                    half_open_requests: cb.half_open_requests,
                },
                clock.clone(),
            )
            .on_transition(Box::new(move |from, to| {
                log::warn!(
                    "upstream {upstream}: circuit breaker {} -> {}",
                    from.as_str(),
                    to.as_str()
                );
                METRICS
                    .breaker_transitions
                    .with_label_values(&[upstream.as_str(), to.as_str()])
                    .inc();
            }))
        });
        let retry = cfg.retry.as_ref().map(|r| {
            let mut rc = RetryConfig {
                attempts: r.attempts,
                base: Duration::from_millis(r.backoff.base_ms),
                max: Duration::from_millis(r.backoff.max_ms),
                on_connect_failure: false,
                on_timeout: false,
                on_status: Vec::new(),
                idempotent_only: r.idempotent_only,
                budget_ratio: r.budget_ratio,
            };
            for on in &r.on {
                match on {
                    RetryOn::Status(s) => rc.on_status.push(*s),
                    RetryOn::Condition(RetryCondition::Timeout) => rc.on_timeout = true,
                    RetryOn::Condition(RetryCondition::ConnectFailure) => {
                        rc.on_connect_failure = true
                    }
                    // Refused by the checks.
                    RetryOn::Condition(RetryCondition::Unknown(_)) => {}
                }
            }
            RetryPolicy::new(rc, clock.clone())
        });
        let deadline = Duration::from_millis(
            cfg.retry
                .as_ref()
                .and_then(|r| r.deadline_ms)
                .unwrap_or(t.connect_ms + t.read_ms),
        );
        Ok(Upstream {
            metrics: UpstreamMetrics {
                duration: METRICS.upstream_duration.with_label_values(&[name]),
                retries: METRICS.retries.with_label_values(&[name]),
            },
            cfg: cfg.clone(),
            breaker,
            retry,
            deadline,
            clock,
            failure_eject_ms: cfg.failure_eject_ms,
            outlier: OutlierSettings {
                consecutive_5xx: cfg.outlier_detection.consecutive_5xx,
                base_ejection_ms: cfg.outlier_detection.base_ejection_ms,
                max_ejection_ms: cfg.outlier_detection.max_ejection_ms,
                max_ejection_percent: cfg.outlier_detection.max_ejection_percent,
            },
            states,
            failing: std::sync::atomic::AtomicUsize::new(0),
            ejections_end: AtomicU64::new(0),
            target_set,
            dns,
            next_refresh_ms: AtomicU64::new(0),
            refreshing: AtomicBool::new(false),
            source: std::sync::Mutex::new(SourceState {
                kind: registry.as_ref().map_or("", |r| r.kind()),
                ..SourceState::default()
            }),
            registry,
            watching: AtomicBool::new(false),
            name: name.to_string(),
            balancer,
            hash_key,
            tls: cfg.tls,
            sni: cfg.sni.clone(),
            verify: cfg.verify,
            ca,
            pool_key: {
                use std::hash::{Hash, Hasher};
                let mut h = std::collections::hash_map::DefaultHasher::new();
                name.hash(&mut h);
                cfg.ca_file.hash(&mut h);
                h.finish()
            },
            connect_timeout: Duration::from_millis(t.connect_ms),
            read_timeout: Duration::from_millis(t.read_ms),
            write_timeout: Duration::from_millis(t.write_ms),
            idle_timeout: Duration::from_millis(t.idle_ms),
            health_interval: cfg
                .health_check
                .as_ref()
                .map(|h| Duration::from_millis(h.interval_ms)),
            next_probe_ms: AtomicU64::new(0),
            probing: AtomicBool::new(false),
        })
    }

    fn select_with(&self, key: &[u8], accept: impl Fn(&Backend, bool) -> bool) -> Option<Backend> {
        match &self.balancer {
            Balancer::RoundRobin(lb) => lb.select_with(key, MAX_SELECT_ITERATIONS, accept),
            Balancer::Random(lb) => lb.select_with(key, MAX_SELECT_ITERATIONS, accept),
            Balancer::Hash(lb) => lb.select_with(key, MAX_SELECT_ITERATIONS, accept),
        }
    }

    /// Pick a healthy target; `key` feeds the consistent hash and is ignored otherwise.
    /// Targets in `avoid` (tried already by this request), targets that failed moments ago
    /// and ejected ones are passed over while any other healthy target remains. A retry
    /// (`retry`) of a round-robin or random upstream does not draw from the balancer, so it
    /// never moves the rotation that the next request starts from.
    pub fn select(&self, key: &[u8], avoid: &[SocketAddr], retry: bool) -> Option<Backend> {
        // A single target (a service address, one backend) serves whenever it is healthy,
        // tried or ejected alike: no walk through the balancer, which hashes and allocates
        // to keep its candidates unique.
        let backends = self.backends();
        let all = backends.get_backend();
        if all.len() == 1 {
            return all.first().filter(|b| self.ready(backends, b)).cloned();
        }
        let now = self.clock.now_ms();
        let tried = |b: &Backend| b.addr.as_inet().is_some_and(|a| avoid.contains(a));
        if retry && !matches!(self.balancer, Balancer::Hash(_)) {
            // From a random place in the list, so retries spread over the others.
            let start = fastrand::usize(..all.len());
            let ring = || all.iter().cycle().skip(start).take(all.len());
            let pick = |accept: &dyn Fn(&Backend) -> bool| {
                ring()
                    .find(|b| self.ready(backends, b) && accept(b))
                    .cloned()
            };
            return pick(&|b| !tried(b) && !self.ejected(b, now))
                .or_else(|| pick(&|b| !tried(b)))
                .or_else(|| pick(&|_| true));
        }
        self.select_with(key, |b, healthy| {
            healthy && !tried(b) && !self.ejected(b, now)
        })
        .or_else(|| self.select_with(key, |b, healthy| healthy && !tried(b)))
        .or_else(|| self.select_with(key, |_, healthy| healthy))
    }

    /// Whether the active health check lets `b` serve. Without one nothing takes a target
    /// out (the gateway never disables one by hand), so there is nothing to look up: the
    /// lookup hashes the target twice with SipHash, about 650 instructions a request.
    fn ready(&self, backends: &Backends, b: &Backend) -> bool {
        self.health_interval.is_none() || backends.ready(b)
    }

    fn ejected(&self, b: &Backend, now_ms: u64) -> bool {
        if self.ejections_end.load(Ordering::Relaxed) <= now_ms {
            return false;
        }
        b.addr.as_inet().is_some_and(|a| {
            self.states
                .load()
                .get(a)
                .is_some_and(|s| s.passed_over(now_ms))
        })
    }

    /// How one try on `addr` ended, for passive tracking and outlier detection (see
    /// [`outlier`]): one lookup of the target's state whatever the outcome.
    pub fn record_try(&self, addr: &SocketAddr, end: TryEnd) {
        if end == TryEnd::Ok && self.failing.load(Ordering::Relaxed) == 0 {
            // The common case: nothing to reset.
            return;
        }
        let states = self.states.load();
        let Some(state) = states.get(addr) else {
            return;
        };
        if end == TryEnd::Ok {
            if state.succeeded() {
                self.failing.fetch_sub(1, Ordering::Relaxed);
            }
            return;
        }
        let now = self.clock.now_ms();
        if end == TryEnd::PassOver && self.failure_eject_ms > 0 {
            let until = now + self.failure_eject_ms;
            state.pass_over_until(until);
            self.ejections_end.fetch_max(until, Ordering::Relaxed);
        }
        let ejected_now = states
            .iter()
            .filter(|(a, s)| *a != addr && s.ejected(now))
            .count();
        let (recorded, started) = state.failed(&self.outlier, now, ejected_now, states.len());
        let ended = matches!(recorded, outlier::Recorded::Ejected(_));
        match (started, ended) {
            (true, false) => {
                self.failing.fetch_add(1, Ordering::Relaxed);
            }
            (false, true) => {
                self.failing.fetch_sub(1, Ordering::Relaxed);
            }
            _ => {}
        }
        match recorded {
            outlier::Recorded::Ejected(ms) => {
                self.ejections_end.fetch_max(now + ms, Ordering::Relaxed);
                METRICS
                    .upstream_ejections
                    .with_label_values(&[self.name.as_str()])
                    .inc();
                log::warn!(
                    "upstream {}: target {addr} ejected for {ms} ms after {} failed tries in a row",
                    self.name,
                    self.outlier.consecutive_5xx
                );
            }
            outlier::Recorded::Held | outlier::Recorded::Nothing => {}
        }
    }

    /// Each target's outlier state: milliseconds of ejection left, and ejections so far.
    pub fn ejections(&self) -> HashMap<SocketAddr, (u64, u64)> {
        let now = self.clock.now_ms();
        self.states
            .load()
            .iter()
            .map(|(a, s)| {
                (
                    *a,
                    (
                        s.ejected_for_ms(now),
                        s.ejected_total.load(Ordering::Relaxed),
                    ),
                )
            })
            .collect()
    }

    fn backends(&self) -> &Backends {
        match &self.balancer {
            Balancer::RoundRobin(lb) => lb.backends(),
            Balancer::Random(lb) => lb.backends(),
            Balancer::Hash(lb) => lb.backends(),
        }
    }

    /// Every target with its current health.
    pub fn targets(&self) -> Vec<(SocketAddr, usize, bool)> {
        let b = self.backends();
        b.get_backend()
            .iter()
            .filter_map(|t| t.addr.as_inet().map(|a| (*a, t.weight, b.ready(t))))
            .collect()
    }

    /// The peer to connect to for `backend`, with this upstream's timeouts and TLS settings.
    pub fn peer(&self, backend: &Backend) -> HttpPeer {
        let sni = match (&self.sni, self.tls) {
            (Some(s), _) => s.clone(),
            (None, true) => backend
                .addr
                .as_inet()
                .map(|a| a.ip().to_string())
                .unwrap_or_default(),
            (None, false) => String::new(),
        };
        let mut peer = HttpPeer::new(backend.addr.clone(), self.tls, sni);
        peer.group_key = self.pool_key;
        let o = &mut peer.options;
        o.connection_timeout = Some(self.connect_timeout);
        o.read_timeout = Some(self.read_timeout);
        o.write_timeout = Some(self.write_timeout);
        o.idle_timeout = Some(self.idle_timeout);
        o.verify_cert = self.verify;
        o.verify_hostname = self.verify;
        o.ca = self.ca.clone();
        peer
    }

    /// Run one probe round if its interval has passed and none is running.
    /// Called by the health service's tick; the probes themselves run on a spawned task.
    pub fn probe_due(self: &Arc<Self>, now_ms: u64) -> bool {
        let Some(interval) = self.health_interval else {
            return false;
        };
        if now_ms < self.next_probe_ms.load(Ordering::Relaxed) {
            return false;
        }
        if self.probing.swap(true, Ordering::AcqRel) {
            return false;
        }
        self.next_probe_ms
            .store(now_ms + interval.as_millis() as u64, Ordering::Relaxed);
        true
    }

    /// Whether a DNS refresh is due; marks it started.
    pub fn refresh_due(&self, now_ms: u64) -> bool {
        if self.dns.is_none() {
            return false;
        }
        if now_ms < self.next_refresh_ms.load(Ordering::Relaxed)
            || self.refreshing.swap(true, Ordering::AcqRel)
        {
            return false;
        }
        let every = self.cfg.discovery.as_ref().map_or(10, |d| d.refresh_secs) * 1000;
        self.next_refresh_ms
            .store(now_ms + every, Ordering::Relaxed);
        true
    }

    /// Look the name up again; targets that appeared join, those that vanished leave,
    /// those that stayed keep their health. A failed lookup keeps the last good set.
    pub async fn refresh(&self) {
        let Some(dns) = self.dns.clone() else { return };
        let result = tokio::task::spawn_blocking(move || dns.resolve())
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
        let label = match result {
            Ok(found) => {
                let set: BTreeSet<Backend> = found
                    .into_iter()
                    .map(|f| backend(f.addr, f.weight))
                    .collect();
                self.set_targets(set).await;
                "ok"
            }
            Err(e) => {
                log::warn!(
                    "upstream {}: discovery failed, keeping the last good targets: {e}",
                    self.name
                );
                "error"
            }
        };
        registry::count(&self.name, label);
        self.refreshing.store(false, Ordering::Release);
    }

    /// Replace the targets: those that appeared join, those that vanished leave, those
    /// that stayed keep their health and passive state.
    async fn set_targets(&self, set: BTreeSet<Backend>) {
        if set == **self.target_set.load() {
            return;
        }
        let list: Vec<String> = set.iter().map(|b| b.addr.to_string()).collect();
        log::info!("upstream {}: discovery: targets now {list:?}", self.name);
        self.states
            .store(Arc::new(target_states(&set, Some(&self.states.load()))));
        self.target_set.store(Arc::new(set));
        let updated = match &self.balancer {
            Balancer::RoundRobin(lb) => lb.update().await,
            Balancer::Random(lb) => lb.update().await,
            Balancer::Hash(lb) => lb.update().await,
        };
        if let Err(e) = updated {
            log::error!(
                "upstream {}: cannot apply discovered targets: {e}",
                self.name
            );
        }
    }

    /// The registry's task, the first time this is asked (the refresh service starts it).
    pub fn watch_start(&self) -> Option<Arc<Registry>> {
        let registry = self.registry.as_ref()?;
        (!self.watching.swap(true, Ordering::AcqRel)).then(|| registry.clone())
    }

    /// The registry answered: these targets, at this revision or index.
    pub async fn discovered(&self, set: BTreeSet<Backend>, index: u64) {
        let n = set.len();
        self.set_targets(set).await;
        {
            let mut s = self.source.lock().unwrap_or_else(|p| p.into_inner());
            s.index = index;
            s.targets = n;
            s.last_error = None;
        }
        METRICS
            .discovery_index
            .with_label_values(&[self.name.as_str()])
            .set(index as i64);
        registry::count(&self.name, "ok");
    }

    /// The registry failed: the last good targets stay.
    pub fn discovery_failed(&self, e: &str) {
        let mut s = self.source.lock().unwrap_or_else(|p| p.into_inner());
        if s.last_error.as_deref() != Some(e) {
            log::warn!(
                "upstream {}: {} discovery failed, keeping the last good targets: {e}",
                self.name,
                s.kind
            );
        }
        s.last_error = Some(e.to_string());
        drop(s);
        registry::count(&self.name, "error");
    }

    /// The registry's state, for the admin API (`None` without one).
    pub fn source_state(&self) -> Option<SourceState> {
        self.registry.as_ref()?;
        Some(
            self.source
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }

    pub async fn probe(&self) {
        self.backends().run_health_check(true).await;
        self.probing.store(false, Ordering::Release);
    }
}

fn backend(addr: SocketAddr, weight: usize) -> Backend {
    Backend {
        addr: PingoraAddr::Inet(addr),
        weight,
        ext: Default::default(),
    }
}

/// How a try on a target ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TryEnd {
    /// It succeeded (or failed in a way not held against the target): ends a run of failures.
    Ok,
    /// It failed (a 5xx answer): counts toward ejection.
    Failed,
    /// It failed and the target is passed over for `failure_eject_ms` too (no answer at all,
    /// or the request's last 5xx).
    PassOver,
}

/// Looked up on every upstream try: a fast hash, since the keys are our own targets.
type TargetStates = HashMap<SocketAddr, Arc<TargetState>, foldhash::fast::FixedState>;

/// Resolve `HOST:PORT` (or `IP:PORT`) to its addresses.
pub fn resolve(addr: &str) -> Result<Vec<SocketAddr>, String> {
    if let Ok(a) = addr.parse::<SocketAddr>() {
        return Ok(vec![a]);
    }
    match addr.to_socket_addrs() {
        Ok(list) => {
            let list: Vec<_> = list.collect();
            if list.is_empty() {
                Err(format!("{addr:?} resolves to no address"))
            } else {
                Ok(list)
            }
        }
        Err(e) => Err(format!("{addr:?} is not a reachable HOST:PORT: {e}")),
    }
}

/// A state per target, keeping the states of targets that stay.
fn target_states(set: &BTreeSet<Backend>, old: Option<&TargetStates>) -> TargetStates {
    set.iter()
        .filter_map(|b| b.addr.as_inet())
        .map(|a| {
            let state = old.and_then(|o| o.get(a).cloned()).unwrap_or_default();
            (*a, state)
        })
        .collect()
}

/// The balancer's view of a target set that discovery can replace.
struct SharedTargets(Arc<ArcSwap<BTreeSet<Backend>>>);

#[async_trait::async_trait]
impl ServiceDiscovery for SharedTargets {
    async fn discover(
        &self,
    ) -> pingora::Result<(BTreeSet<Backend>, std::collections::HashMap<u64, bool>)> {
        Ok(((**self.0.load()).clone(), std::collections::HashMap::new()))
    }
}

/// Compile a DNS `discovery` block (`type: a` or `srv`).
pub fn dns_discovery(d: &DiscoveryConfig) -> Result<DnsDiscovery, String> {
    let dns = d.dns.as_deref().ok_or("type a and srv need dns")?;
    let kind = match d.kind {
        DiscoveryKind::A => {
            let (_, port) = dns
                .rsplit_once(':')
                .ok_or_else(|| format!("{dns:?}: type a needs NAME:PORT"))?;
            Kind::Address {
                port: port.parse().map_err(|_| format!("{dns:?}: bad port"))?,
            }
        }
        DiscoveryKind::Srv => Kind::Srv,
        DiscoveryKind::Etcd | DiscoveryKind::Consul => {
            return Err("not a DNS discovery".into());
        }
    };
    let name = match kind {
        Kind::Address { .. } => dns.rsplit_once(':').map_or("", |(n, _)| n),
        Kind::Srv => dns,
    };
    if name.is_empty() || name.contains(':') {
        return Err(format!("{dns:?} is not a DNS name"));
    }
    let resolver = match &d.resolver {
        Some(r) => r
            .parse()
            .map_err(|_| format!("resolver {r:?} is not IP:PORT"))?,
        None => dns::system_resolver().ok_or("no resolver set and none in /etc/resolv.conf")?,
    };
    Ok(DnsDiscovery {
        name: name.to_string(),
        kind,
        resolver,
        timeout: Duration::from_millis(d.timeout_ms.max(1)),
    })
}

/// Read a PEM file of CA certificates for verifying upstream targets.
pub fn load_ca(path: &str) -> Result<Arc<CaType>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let mut certs = Vec::new();
    for item in rustls_pemfile::certs(&mut pem.as_slice()) {
        let der = item.map_err(|e| format!("{path}: bad PEM: {e}"))?;
        // webpki accepting the certificate is what verification needs; it also guards the
        // parser below, which panics on malformed DER.
        RootCertStore::empty()
            .add(der.clone())
            .map_err(|e| format!("{path}: not a usable CA certificate: {e}"))?;
        certs.push(WrappedX509::new(der.to_vec(), parse_x509));
    }
    if certs.is_empty() {
        return Err(format!("{path}: no certificate found"));
    }
    Ok(Arc::from(certs.into_boxed_slice()))
}

fn build<S>(backends: Backends) -> Result<LoadBalancer<S>, String>
where
    S: pingora::lb::selection::BackendSelection + 'static,
    S::Iter: pingora::lb::selection::BackendIter,
{
    use futures::FutureExt;
    let lb = LoadBalancer::from_backends(backends);
    // A static discovery answers without waiting, so one poll fills the selector.
    match lb.update().now_or_never() {
        Some(Ok(())) => Ok(lb),
        Some(Err(e)) => Err(format!("cannot load targets: {e}")),
        None => Err("target discovery did not answer at once".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(yaml: &str) -> Upstream {
        let cfg: UpstreamConfig = serde_yaml::from_str(yaml).unwrap();
        let parts = UpstreamParts {
            addrs: cfg
                .targets
                .iter()
                .map(|t| resolve(&t.addr).unwrap())
                .collect(),
            hash_key: cfg.hash_key.as_deref().map(|k| HashKey::parse(k).unwrap()),
            ..UpstreamParts::default()
        };
        Upstream::new("u", &cfg, parts).unwrap()
    }

    #[test]
    fn weighted_round_robin_follows_weights() {
        let u = upstream(
            "targets: [{ addr: \"127.0.0.1:1001\", weight: 3 }, { addr: \"127.0.0.1:1002\", weight: 1 }]",
        );
        let mut first = 0;
        for _ in 0..10_000 {
            let b = u.select(b"", &[], false).unwrap();
            if b.addr.as_inet().unwrap().port() == 1001 {
                first += 1;
            }
        }
        assert!((7300..=7700).contains(&first), "{first}");
    }

    #[tokio::test]
    async fn a_single_target_serves_while_healthy() {
        // Nothing listens on the address: the TCP check marks it down after one probe.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let u = upstream(&format!(
            "targets: [{{ addr: \"127.0.0.1:{port}\" }}]\nhealth_check: {{ type: tcp, unhealthy: 1 }}"
        ));
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        // Tried already or ejected, it is still the only choice.
        u.record_try(&addr, TryEnd::PassOver);
        let b = u.select(b"", &[addr], false).unwrap();
        assert_eq!(b.addr.as_inet(), Some(&addr));
        u.probe().await;
        assert!(
            u.select(b"", &[], false).is_none(),
            "an unhealthy single target was chosen"
        );
    }

    #[test]
    fn consistent_hash_is_stable() {
        let u = upstream(
            "targets: [{ addr: \"127.0.0.1:1001\" }, { addr: \"127.0.0.1:1002\" }, { addr: \"127.0.0.1:1003\" }]\nlb: consistent_hash\nhash_key: \"header:x-user\"",
        );
        for key in ["alice", "bob", "carol", "dave"] {
            let a = u.select(key.as_bytes(), &[], false).unwrap();
            for _ in 0..50 {
                assert_eq!(u.select(key.as_bytes(), &[], false).unwrap().addr, a.addr);
            }
        }
    }
}
