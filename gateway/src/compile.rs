//! The compile step: a parsed [`Config`] becomes the [`Runtime`] requests use, or every
//! semantic fault comes back with its YAML path (one error type, [`ConfigErrors`]).
//!
//! [`check`] walks the config once and finds what serde cannot (references, addresses,
//! regexes, header names, key files, settings that contradict each other); what it compiles
//! on its way (addresses, discovery, CA files, the Redis store, IP filters, CORS, JWT
//! verifiers and key URLs, rate-limit specs, hash keys, path regexes, templates, header
//! rules) it keeps in [`Parts`], and [`Runtime::build`] takes those as they are: each of
//! these compilers runs once a config. (The router builds its own regex set from the
//! patterns.) `gateway -t`, the start and every reload go through [`compile`]; a reload
//! builds against the running runtime, so what did not change keeps its state. The config
//! module below this one is the file format only and imports nothing of the gateway.

use crate::aggregate::{AggregateParts, Template};
use crate::client::Url;
use crate::config::OAuth2Config;
use crate::config::{
    parse, Config, ConfigError, ConfigErrors, HeaderMatchConfig, HeaderOpsConfig, LbAlgorithm,
    PathMatch, RetryCondition, RetryOn, UpstreamConfig,
};
use crate::config::{
    CorsConfig, DiscoveryConfig, DiscoveryKind, IpFilterConfig, JwtConfig, TracingConfig,
};
use crate::jwks::{JwksSource, JwksUrl};
use crate::policy::oauth2::{Endpoint, OAuth2Source};
use crate::runtime::{Parts, RouteParts, Runtime};
use crate::store::RedisStore;
use crate::telemetry::{ExportSettings, Tracer};
use crate::upstream::registry::{Consul, Etcd, Registry};
use crate::upstream::resolve;
use crate::upstream::{HashKey, UpstreamParts};
use pingora::protocols::tls::CaType;
use plugins::claims::ForwardClaims;
use plugins::cors::Cors;
use plugins::ipfilter::IpFilter;
use plugins::jwt::{JwtSettings, JwtVerifier, KeySource};
use plugins::ratelimit::LimitSpec;
use plugins::scope::Scopes;
use plugins::{HeaderOps, HeaderRules};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Read and parse a config file (the file format only; [`compile`] checks the rest).
pub fn read(path: &Path) -> Result<Config, ConfigErrors> {
    parse(&crate::config::read_text(path)?)
}

/// Compile a parsed config: the runtime, or every fault with its YAML path. `previous` is
/// the running runtime on a reload: what did not change keeps its state.
pub fn compile(
    config: &Config,
    generation: u64,
    previous: Option<&Runtime>,
) -> Result<Runtime, ConfigErrors> {
    let parts = check(config)?;
    build(config, generation, previous, parts)
}

/// The build half of [`compile`]: the runtime, from the parts [`check`] compiled.
pub fn build(
    config: &Config,
    generation: u64,
    previous: Option<&Runtime>,
    parts: Parts,
) -> Result<Runtime, ConfigErrors> {
    Runtime::build(config, generation, previous, parts).map_err(|e| ConfigErrors(vec![at_path(&e)]))
}

/// A compiler's `path: message` as a fault at that path.
fn at_path(e: &str) -> ConfigError {
    match e.split_once(": ") {
        Some((path, msg)) if !path.is_empty() && !path.contains(' ') => ConfigError::new(path, msg),
        _ => ConfigError::new("", e),
    }
}

/// Retries per request; Pingora caps the tries of one request at 16.
pub const MAX_RETRY_ATTEMPTS: u32 = 10;

/// The checks, compiling on their way what the build takes as it is ([`Parts`]): every
/// fault with its YAML path, or the parts.
pub fn check(config: &Config) -> Result<Parts, ConfigErrors> {
    let mut errs = Vec::new();
    let mut parts = Parts::default();
    let s = &config.server;
    if s.listen.is_empty() && s.tls.is_empty() {
        errs.push(ConfigError::new(
            "server.listen",
            "no listener: set server.listen or server.tls",
        ));
    }
    for (i, l) in s.listen.iter().enumerate() {
        let p = match l {
            crate::config::ListenConfig::Addr(_) => format!("server.listen[{i}]"),
            crate::config::ListenConfig::Full(_) => format!("server.listen[{i}].addr"),
        };
        check_listen(&mut errs, &p, l.addr());
    }
    if let Some(path) = &s.error_log {
        let opened = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path);
        if let Err(e) = opened {
            errs.push(ConfigError::new(
                "server.error_log",
                format!("cannot open {path}: {e}"),
            ));
        }
    }
    for (i, tls) in s.tls.iter().enumerate() {
        let p = format!("server.tls[{i}]");
        check_listen(&mut errs, &format!("{p}.listen"), &tls.listen);
        check_pem(
            &mut errs,
            &format!("{p}.cert"),
            &tls.cert,
            PemKind::Certificate,
        );
        check_pem(
            &mut errs,
            &format!("{p}.key"),
            &tls.key,
            PemKind::PrivateKey,
        );
    }
    if let Some(admin) = &s.admin {
        check_listen(&mut errs, "server.admin", admin);
    }
    if s.admin_token.is_some() && s.admin_token_env.is_some() {
        errs.push(ConfigError::new(
            "server.admin_token_env",
            "set admin_token or admin_token_env, not both",
        ));
    }
    if s.admin_token
        .as_ref()
        .is_some_and(|t| t.expose().is_empty())
    {
        errs.push(ConfigError::new("server.admin_token", "must not be empty"));
    }
    if let Some(var) = &s.admin_token_env {
        env_value(&mut errs, "server.admin_token_env".into(), var, false);
    }
    nonzero(
        &mut errs,
        "server",
        &[
            ("max_header_bytes", s.max_header_bytes as u64),
            ("max_headers", s.max_headers as u64),
            ("client_header_timeout_ms", s.client_header_timeout_ms),
        ],
        AT_LEAST_ONE,
    );
    if s.max_headers > 256 {
        errs.push(ConfigError::new(
            "server.max_headers",
            "at most 256 (the HTTP parser's own limit)",
        ));
    }
    if let Some(r) = &s.redis {
        match RedisStore::new(r.url.expose(), Duration::from_millis(r.timeout_ms)) {
            Ok(store) => parts.redis = Some(store),
            Err(e) => errs.push(ConfigError::new("server.redis.url", e)),
        }
        nonzero(
            &mut errs,
            "server.redis",
            &[("timeout_ms", r.timeout_ms)],
            ABOVE_ZERO,
        );
    }
    for (i, net) in s.trusted_proxies.iter().enumerate() {
        if let Err(e) = plugins::ipfilter::parse_net(net) {
            errs.push(ConfigError::new(format!("server.trusted_proxies[{i}]"), e));
        }
    }
    if let Some(f) = &s.ip_filter {
        match ip_filter(f) {
            Ok(filter) => parts.ip_filter = Some(filter),
            Err((path, e)) => errs.push(ConfigError::new(format!("server.ip_filter.{path}"), e)),
        }
        check_auto_ban(&mut errs, "server.ip_filter", f);
    }
    if let Some(t) = &s.tracing {
        parts.tracer = check_tracing(&mut errs, "server.tracing", t);
    }
    if let Some(cs) = &s.config_source {
        match crate::source::EtcdSource::parse(&cs.etcd) {
            Some(Ok(_)) => {}
            Some(Err(e)) => errs.push(ConfigError::new("server.config_source.etcd", e)),
            None => errs.push(ConfigError::new(
                "server.config_source.etcd",
                "not an etcd:// or etcds:// URL",
            )),
        }
    }
    if s.threads == 0 {
        errs.push(ConfigError::new("server.threads", AT_LEAST_ONE));
    }
    if s.access_log.is_empty() {
        errs.push(ConfigError::new(
            "server.access_log",
            "must be stdout, off or a file path",
        ));
    }

    for (name, up) in &config.upstreams {
        let compiled = check_upstream(&mut errs, &format!("upstreams.{name}"), up);
        parts.upstreams.insert(name.clone(), compiled);
        if name == crate::runtime::FANOUT_UPSTREAM {
            errs.push(ConfigError::new(
                format!("upstreams.{name}"),
                "the name is reserved for the fan-out service",
            ));
        }
    }

    let mut names = HashSet::new();
    for (i, r) in config.routes.iter().enumerate() {
        let p = format!("routes[{i}]");
        let mut rp = RouteParts::default();
        if r.name.is_empty() {
            errs.push(ConfigError::new(format!("{p}.name"), "must not be empty"));
        } else if !names.insert(r.name.as_str()) {
            errs.push(ConfigError::new(
                format!("{p}.name"),
                format!("duplicate route name {:?}", r.name),
            ));
        }
        let known = |errs: &mut Vec<ConfigError>, path: String, name: &str| {
            if !config.upstreams.contains_key(name) {
                errs.push(ConfigError::new(path, format!("unknown upstream {name:?}")));
            }
        };
        match (&r.upstream, &r.split, &r.aggregate) {
            (Some(u), None, None) => known(&mut errs, format!("{p}.upstream"), u),
            (None, None, Some(a)) => {
                if !config.aggregates.contains_key(a) {
                    errs.push(ConfigError::new(
                        format!("{p}.aggregate"),
                        format!("unknown aggregate {a:?}"),
                    ));
                }
                if r.mirror.is_some() {
                    errs.push(ConfigError::new(
                        format!("{p}.mirror"),
                        "not used with aggregate",
                    ));
                }
            }
            (None, Some(arms), None) => {
                if arms.is_empty() || arms.iter().all(|a| a.weight == 0) {
                    errs.push(ConfigError::new(
                        format!("{p}.split"),
                        "needs at least one upstream with a weight above 0",
                    ));
                }
                for (j, arm) in arms.iter().enumerate() {
                    known(&mut errs, format!("{p}.split[{j}].upstream"), &arm.upstream);
                }
            }
            _ => errs.push(ConfigError::new(
                format!("{p}.upstream"),
                "set exactly one of upstream, split, aggregate",
            )),
        }
        if let Some(k) = &r.sticky_key {
            if r.split.is_none() {
                errs.push(ConfigError::new(
                    format!("{p}.sticky_key"),
                    "only used with split",
                ));
            } else {
                match HashKey::parse(k) {
                    Ok(key) => rp.sticky = Some(key),
                    Err(e) => errs.push(ConfigError::new(format!("{p}.sticky_key"), e)),
                }
            }
        }
        if let Some(m) = &r.mirror {
            known(&mut errs, format!("{p}.mirror.upstream"), &m.upstream);
            if !(m.percent > 0.0 && m.percent <= 100.0) {
                errs.push(ConfigError::new(
                    format!("{p}.mirror.percent"),
                    "must be above 0 and at most 100",
                ));
            }
        }
        let m = &r.matcher;
        for (j, h) in m.hosts.iter().enumerate() {
            if let Err(e) = check_host_pattern(h) {
                errs.push(ConfigError::new(format!("{p}.match.hosts[{j}]"), e));
            }
        }
        if let Some(path) = &m.path {
            let pp = format!("{p}.match.path");
            match path.get() {
                None => errs.push(ConfigError::new(
                    &pp,
                    "set exactly one of exact, prefix, regex",
                )),
                Some(PathMatch::Exact(v)) if !v.starts_with('/') => {
                    errs.push(ConfigError::new(format!("{pp}.exact"), "must start with /"))
                }
                Some(PathMatch::Prefix(v)) if !v.starts_with('/') => errs.push(ConfigError::new(
                    format!("{pp}.prefix"),
                    "must start with /",
                )),
                Some(PathMatch::Regex(re)) => match regex::Regex::new(re) {
                    Ok(compiled) => rp.path_regex = Some(compiled),
                    Err(e) => errs.push(ConfigError::new(format!("{pp}.regex"), regex_error(&e))),
                },
                Some(_) => {}
            }
        }
        for (j, method) in m.methods.iter().enumerate() {
            if method.is_empty() || http::Method::from_bytes(method.as_bytes()).is_err() {
                errs.push(ConfigError::new(
                    format!("{p}.match.methods[{j}]"),
                    format!("invalid method {method:?}"),
                ));
            }
        }
        for (h, rule) in &m.headers {
            let hp = format!("{p}.match.headers.{h}");
            if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
                errs.push(ConfigError::new(&hp, "invalid header name"));
            }
            match rule {
                HeaderMatchConfig::Rule(r) => match (&r.regex, r.present) {
                    (Some(re), None) => {
                        if let Err(e) = regex::Regex::new(re) {
                            errs.push(ConfigError::new(format!("{hp}.regex"), regex_error(&e)));
                        }
                    }
                    (None, Some(_)) => {}
                    _ => errs.push(ConfigError::new(
                        &hp,
                        "set a value, or exactly one of regex, present",
                    )),
                },
                HeaderMatchConfig::Exact(v) => {
                    if http::HeaderValue::from_str(v).is_err() {
                        errs.push(ConfigError::new(&hp, "invalid header value"));
                    }
                }
            }
        }
        if let Some(j) = &r.plugins.jwt {
            rp.jwt_scopes = scopes(&mut errs, &format!("{p}.plugins.jwt"), &j.required_scopes);
            match jwt(j) {
                Ok((verifier, remote)) => {
                    rp.jwt = Some(verifier);
                    rp.jwks = remote;
                }
                Err((path, e)) => {
                    let at = if path.is_empty() {
                        format!("{p}.plugins.jwt")
                    } else {
                        format!("{p}.plugins.jwt.{path}")
                    };
                    errs.push(ConfigError::new(at, e));
                }
            }
        }
        if let Some(o) = &r.plugins.oauth2 {
            let op = format!("{p}.plugins.oauth2");
            if r.plugins.jwt.is_some() {
                errs.push(ConfigError::new(&op, "set jwt or oauth2, not both"));
            }
            rp.oauth2 = check_oauth2(&mut errs, &op, o);
        }
        if let Some(f) = &r.plugins.ip_filter {
            match ip_filter(f) {
                Ok(filter) => rp.ip_filter = Some(filter),
                Err((path, e)) => {
                    errs.push(ConfigError::new(format!("{p}.plugins.ip_filter.{path}"), e))
                }
            }
            check_auto_ban(&mut errs, &format!("{p}.plugins.ip_filter"), f);
        }
        if let Some(c) = &r.plugins.cors {
            if c.origins.is_empty() {
                errs.push(ConfigError::new(
                    format!("{p}.plugins.cors.origins"),
                    "needs at least one origin",
                ));
            }
            if c.credentials && c.origins.iter().any(|o| o == "*") {
                errs.push(ConfigError::new(
                    format!("{p}.plugins.cors.credentials"),
                    "browsers refuse credentials with a * origin; list the origins",
                ));
            }
            match cors(c) {
                Ok(cors) => rp.cors = Some(cors),
                Err(e) => errs.push(ConfigError::new(format!("{p}.plugins.cors"), e)),
            }
        }
        for (j, l) in r.plugins.rate_limit.iter().enumerate() {
            let at = format!("{p}.plugins.rate_limit[{j}]");
            if let Some(spec) = check_rate_limit(&mut errs, &at, l, r, config) {
                rp.limits.push(spec);
            }
        }
        if let Some(sp) = &r.strip_prefix {
            if !sp.starts_with('/') || sp.len() < 2 {
                errs.push(ConfigError::new(
                    format!("{p}.strip_prefix"),
                    "must start with / and not be / alone",
                ));
            }
        }
        rp.headers = HeaderRules {
            request: header_ops(
                &mut errs,
                &format!("{p}.headers.request"),
                &r.headers.request,
            ),
            response: header_ops(
                &mut errs,
                &format!("{p}.headers.response"),
                &r.headers.response,
            ),
        };
        parts.routes.push(rp);
    }

    for (field, addr) in [("listen", &s.fanout.listen), ("target", &s.fanout.target)] {
        if let Some(a) = addr {
            check_listen(&mut errs, &format!("server.fanout.{field}"), a);
        }
    }
    for (name, agg) in &config.aggregates {
        let ap = format!("aggregates.{name}");
        if agg.backends.is_empty() {
            errs.push(ConfigError::new(
                format!("{ap}.backends"),
                "needs at least one backend",
            ));
        }
        nonzero(
            &mut errs,
            &ap,
            &[("max_concurrency", agg.max_concurrency as u64)],
            AT_LEAST_ONE,
        );
        nonzero(
            &mut errs,
            &ap,
            &[("timeout_ms", agg.timeout_ms)],
            ABOVE_ZERO,
        );
        let mut compiled = AggregateParts::default();
        for (i, h) in agg.forward_headers.iter().enumerate() {
            match http::HeaderName::from_bytes(h.as_bytes()) {
                Ok(n) => compiled.forward_headers.push(n),
                Err(_) => errs.push(ConfigError::new(
                    format!("{ap}.forward_headers[{i}]"),
                    "invalid header name",
                )),
            }
        }
        let mut keys = HashSet::new();
        for (i, b) in agg.backends.iter().enumerate() {
            let bp = format!("{ap}.backends[{i}]");
            if b.key.is_empty() || !keys.insert(b.key.as_str()) {
                errs.push(ConfigError::new(
                    format!("{bp}.key"),
                    "must be unique and not empty",
                ));
            }
            if !config.upstreams.contains_key(&b.upstream) {
                errs.push(ConfigError::new(
                    format!("{bp}.upstream"),
                    format!("unknown upstream {:?}", b.upstream),
                ));
            }
            match Template::parse(&b.path) {
                Ok(t) => compiled.paths.push(t),
                Err(e) => errs.push(ConfigError::new(format!("{bp}.path"), e)),
            }
            if b.required && b.fallback.is_some() {
                errs.push(ConfigError::new(
                    format!("{bp}.fallback"),
                    "a required backend has no fallback; make it optional",
                ));
            }
            if let Some(t) = b.timeout_ms {
                nonzero(&mut errs, &bp, &[("timeout_ms", t)], ABOVE_ZERO);
            }
        }
        parts.aggregates.insert(name.clone(), compiled);
    }

    if errs.is_empty() {
        Ok(parts)
    } else {
        Err(ConfigErrors(errs))
    }
}

fn regex_error(e: &regex::Error) -> String {
    // The regex crate's message spans several lines with a caret diagram; keep the last,
    // which states the fault.
    let text = e.to_string();
    let last = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    last.trim_start_matches("error: ").to_string()
}

fn check_listen(errs: &mut Vec<ConfigError>, path: &str, addr: &str) {
    if addr.parse::<SocketAddr>().is_err() {
        errs.push(ConfigError::new(
            path,
            format!("{addr:?} is not IP:PORT (e.g. 127.0.0.1:8080 or [::1]:8080)"),
        ));
    }
}

enum PemKind {
    Certificate,
    PrivateKey,
}

/// The file must hold what a TLS listener needs: a certificate chain, or a private key.
fn check_pem(errs: &mut Vec<ConfigError>, path: &str, file: &str, kind: PemKind) {
    let pem = match std::fs::read(file) {
        Ok(p) => p,
        Err(e) => {
            errs.push(ConfigError::new(path, format!("cannot read {file}: {e}")));
            return;
        }
    };
    let ok = match kind {
        PemKind::Certificate => rustls_pemfile::certs(&mut pem.as_slice())
            .next()
            .is_some_and(|c| c.is_ok()),
        PemKind::PrivateKey => matches!(
            rustls_pemfile::private_key(&mut pem.as_slice()),
            Ok(Some(_))
        ),
    };
    if !ok {
        let what = match kind {
            PemKind::Certificate => "no PEM certificate",
            PemKind::PrivateKey => "no PEM private key",
        };
        errs.push(ConfigError::new(path, format!("{file}: {what} found")));
    }
}

/// The checks of one upstream; what they compile (addresses, discovery, CA, hash key) is
/// kept for the build.
fn check_upstream(errs: &mut Vec<ConfigError>, p: &str, up: &UpstreamConfig) -> UpstreamParts {
    let mut parts = UpstreamParts::default();
    match (&up.discovery, up.targets.is_empty()) {
        (None, true) => errs.push(ConfigError::new(
            format!("{p}.targets"),
            "needs at least one target (or discovery)",
        )),
        (Some(_), false) => errs.push(ConfigError::new(
            format!("{p}.discovery"),
            "set targets or discovery, not both",
        )),
        (Some(d), true) => check_discovery(errs, &format!("{p}.discovery"), d, &mut parts),
        (None, false) => {}
    }
    for (i, t) in up.targets.iter().enumerate() {
        match resolve(&t.addr) {
            Ok(addrs) => parts.addrs.push(addrs),
            Err(e) => {
                parts.addrs.push(Vec::new());
                errs.push(ConfigError::new(format!("{p}.targets[{i}].addr"), e));
            }
        }
        nonzero(
            errs,
            &format!("{p}.targets[{i}]"),
            &[("weight", t.weight as u64)],
            AT_LEAST_ONE,
        );
    }
    match (&up.lb, &up.hash_key) {
        (LbAlgorithm::ConsistentHash, None) => errs.push(ConfigError::new(
            format!("{p}.hash_key"),
            "lb: consistent_hash needs a hash_key (header:NAME, ip or path)",
        )),
        (LbAlgorithm::ConsistentHash, Some(k)) => match HashKey::parse(k) {
            Ok(key) => parts.hash_key = Some(key),
            Err(e) => errs.push(ConfigError::new(format!("{p}.hash_key"), e)),
        },
        (_, Some(_)) => errs.push(ConfigError::new(
            format!("{p}.hash_key"),
            "only used with lb: consistent_hash",
        )),
        _ => {}
    }
    if let Some(ca) = &up.ca_file {
        if !up.tls {
            errs.push(ConfigError::new(
                format!("{p}.ca_file"),
                "only used with tls: true",
            ));
        } else {
            match crate::upstream::load_ca(ca) {
                Ok(loaded) => parts.ca = Some(loaded),
                Err(e) => errs.push(ConfigError::new(format!("{p}.ca_file"), e)),
            }
        }
    }
    if let Some(cb) = &up.circuit_breaker {
        let cp = format!("{p}.circuit_breaker");
        nonzero(
            errs,
            &cp,
            &[("consecutive_failures", u64::from(cb.consecutive_failures))],
            AT_LEAST_ONE,
        );
        if !(cb.failure_rate > 0.0 && cb.failure_rate <= 1.0) {
            errs.push(ConfigError::new(
                format!("{cp}.failure_rate"),
                "must be in (0, 1]",
            ));
        }
        if cb.window_secs == 0 || cb.window_secs > 3600 {
            errs.push(ConfigError::new(
                format!("{cp}.window_secs"),
                "must be 1 to 3600",
            ));
        }
        nonzero(
            errs,
            &cp,
            &[
                ("open_secs", cb.open_secs),
                ("half_open_requests", u64::from(cb.half_open_requests)),
            ],
            AT_LEAST_ONE,
        );
    }
    if let Some(r) = &up.retry {
        let rp = format!("{p}.retry");
        if r.attempts > MAX_RETRY_ATTEMPTS {
            errs.push(ConfigError::new(
                format!("{rp}.attempts"),
                format!("at most {MAX_RETRY_ATTEMPTS}"),
            ));
        }
        if r.backoff.base_ms > r.backoff.max_ms {
            errs.push(ConfigError::new(
                format!("{rp}.backoff.base_ms"),
                "must not exceed max_ms",
            ));
        }
        if !(0.0..=10.0).contains(&r.budget_ratio) {
            errs.push(ConfigError::new(
                format!("{rp}.budget_ratio"),
                "must be in [0, 10]",
            ));
        }
        if let Some(d) = r.deadline_ms {
            nonzero(errs, &rp, &[("deadline_ms", d)], ABOVE_ZERO);
        }
        for (i, on) in r.on.iter().enumerate() {
            match on {
                RetryOn::Status(s) if (500..=599).contains(s) => {}
                RetryOn::Status(_) => errs.push(ConfigError::new(
                    format!("{rp}.on[{i}]"),
                    "only 5xx statuses are retried",
                )),
                RetryOn::Condition(RetryCondition::ConnectFailure | RetryCondition::Timeout) => {}
                RetryOn::Condition(RetryCondition::Unknown(c)) => errs.push(ConfigError::new(
                    format!("{rp}.on[{i}]"),
                    format!("{c:?} is not connect_failure, timeout or a 5xx status"),
                )),
            }
        }
    }
    let t = &up.timeouts;
    nonzero(
        errs,
        &format!("{p}.timeouts"),
        &[
            ("connect_ms", t.connect_ms),
            ("read_ms", t.read_ms),
            ("write_ms", t.write_ms),
            ("idle_ms", t.idle_ms),
        ],
        ABOVE_ZERO,
    );
    if let Some(hc) = &up.health_check {
        let hp = format!("{p}.health_check");
        nonzero(
            errs,
            &hp,
            &[
                ("interval_ms", hc.interval_ms),
                ("timeout_ms", hc.timeout_ms),
            ],
            ABOVE_ZERO,
        );
        nonzero(
            errs,
            &hp,
            &[
                ("healthy", hc.healthy as u64),
                ("unhealthy", hc.unhealthy as u64),
            ],
            AT_LEAST_ONE,
        );
        if !hc.path.starts_with('/') {
            errs.push(ConfigError::new(format!("{hp}.path"), "must start with /"));
        }
    }
    parts
}

/// Refuse zero in each `(field, value)` under `base`, in order, with `message`.
fn nonzero(errs: &mut Vec<ConfigError>, base: &str, fields: &[(&str, u64)], message: &str) {
    for (field, v) in fields {
        if *v == 0 {
            errs.push(ConfigError::new(format!("{base}.{field}"), message));
        }
    }
}

/// A `discovery` block: the keys of its type, compiled into the parts.
fn check_discovery(
    errs: &mut Vec<ConfigError>,
    p: &str,
    d: &DiscoveryConfig,
    parts: &mut UpstreamParts,
) {
    let before = errs.len();
    // Keys that belong to another type are a mistake, not silently ignored.
    let set: [(&str, bool, &[DiscoveryKind]); 12] = [
        (
            "dns",
            d.dns.is_some(),
            &[DiscoveryKind::A, DiscoveryKind::Srv],
        ),
        (
            "resolver",
            d.resolver.is_some(),
            &[DiscoveryKind::A, DiscoveryKind::Srv],
        ),
        ("endpoints", !d.endpoints.is_empty(), &[DiscoveryKind::Etcd]),
        ("prefix", d.prefix.is_some(), &[DiscoveryKind::Etcd]),
        ("username", d.username.is_some(), &[DiscoveryKind::Etcd]),
        (
            "password_env",
            d.password_env.is_some(),
            &[DiscoveryKind::Etcd],
        ),
        ("service", d.service.is_some(), &[DiscoveryKind::Consul]),
        ("address", d.address.is_some(), &[DiscoveryKind::Consul]),
        (
            "datacenter",
            d.datacenter.is_some(),
            &[DiscoveryKind::Consul],
        ),
        ("tag", d.tag.is_some(), &[DiscoveryKind::Consul]),
        ("token_env", d.token_env.is_some(), &[DiscoveryKind::Consul]),
        (
            "ca_file",
            d.ca_file.is_some(),
            &[DiscoveryKind::Etcd, DiscoveryKind::Consul],
        ),
    ];
    let kind = serde_yaml::to_string(&d.kind).unwrap_or_default();
    for (key, present, kinds) in set {
        if present && !kinds.contains(&d.kind) {
            errs.push(ConfigError::new(
                format!("{p}.{key}"),
                format!("not a key of type {}", kind.trim()),
            ));
        }
    }
    let env = |errs: &mut Vec<ConfigError>, key: &str, var: &Option<String>| {
        var.as_ref()
            .and_then(|v| env_value(errs, format!("{p}.{key}"), v, true))
    };
    let ca = ca_file(errs, p, &d.ca_file);
    let timeout = Duration::from_millis(d.timeout_ms.max(1));
    nonzero(errs, p, &[("timeout_ms", d.timeout_ms)], AT_LEAST_ONE);
    match d.kind {
        DiscoveryKind::A | DiscoveryKind::Srv => {
            match crate::upstream::dns_discovery(d) {
                Ok(dns) => parts.dns = Some(dns),
                Err(e) => errs.push(ConfigError::new(p, e)),
            }
            nonzero(errs, p, &[("refresh_secs", d.refresh_secs)], AT_LEAST_ONE);
        }
        DiscoveryKind::Etcd => {
            if d.endpoints.is_empty() {
                errs.push(ConfigError::new(
                    format!("{p}.endpoints"),
                    "type etcd needs endpoints (http://IP:2379)",
                ));
            }
            let mut endpoints = Vec::new();
            for (i, e) in d.endpoints.iter().enumerate() {
                match Url::parse(e, e) {
                    Ok(u) => endpoints.push(u),
                    Err(msg) => errs.push(ConfigError::new(format!("{p}.endpoints[{i}]"), msg)),
                }
            }
            let prefix = d.prefix.clone().unwrap_or_default();
            if prefix.is_empty() {
                errs.push(ConfigError::new(
                    format!("{p}.prefix"),
                    "type etcd needs a prefix (/services/NAME/)",
                ));
            }
            let password = env(errs, "password_env", &d.password_env);
            if d.username.is_some() != d.password_env.is_some() {
                errs.push(ConfigError::new(
                    format!("{p}.username"),
                    "set username and password_env together",
                ));
            }
            if errs.len() == before {
                parts.registry = Some(Registry::Etcd(Etcd {
                    etcd: crate::etcd::Etcd {
                        endpoints,
                        auth: d.username.clone().zip(password),
                        ca,
                        timeout,
                    },
                    prefix,
                }));
            }
        }
        DiscoveryKind::Consul => {
            let service = d.service.clone().unwrap_or_default();
            let safe = |s: &str| {
                !s.is_empty()
                    && s.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            };
            if !safe(&service) {
                errs.push(ConfigError::new(
                    format!("{p}.service"),
                    "type consul needs a service name (letters, digits, - _ .)",
                ));
            }
            for (key, v) in [("datacenter", &d.datacenter), ("tag", &d.tag)] {
                if v.as_deref().is_some_and(|v| !safe(v)) {
                    errs.push(ConfigError::new(
                        format!("{p}.{key}"),
                        "letters, digits, - _ . only",
                    ));
                }
            }
            let address = d.address.as_deref().unwrap_or("http://127.0.0.1:8500");
            let url = Url::parse(address, address)
                .map_err(|e| errs.push(ConfigError::new(format!("{p}.address"), e)))
                .ok();
            let token = env(errs, "token_env", &d.token_env);
            if !(1..=600).contains(&d.wait_secs) {
                errs.push(ConfigError::new(
                    format!("{p}.wait_secs"),
                    "between 1 and 600",
                ));
            }
            if let (Some(url), true) = (url, errs.len() == before) {
                parts.registry = Some(Registry::Consul(Consul {
                    url,
                    service,
                    datacenter: d.datacenter.clone(),
                    tag: d.tag.clone(),
                    token,
                    passing_only: d.passing_only,
                    wait: Duration::from_secs(d.wait_secs),
                    ca,
                    timeout,
                }));
            }
        }
    }
}

/// `server.tracing`: the tracer, or its faults.
fn check_tracing(errs: &mut Vec<ConfigError>, p: &str, t: &TracingConfig) -> Option<Tracer> {
    let before = errs.len();
    let url = match Url::parse(t.endpoint.expose(), &t.endpoint.redacted()) {
        // A collector's base URL (as OTEL_EXPORTER_OTLP_ENDPOINT) gets the traces path.
        Ok(mut url) if url.target == "/" => {
            url.target = "/v1/traces".into();
            Some(url)
        }
        Ok(url) => Some(url),
        Err(e) => {
            errs.push(ConfigError::new(format!("{p}.endpoint"), e));
            None
        }
    };
    let mut headers = Vec::new();
    let mut values: Vec<(&String, String, String)> = t
        .headers
        .iter()
        .map(|(name, v)| (name, v.expose().to_string(), format!("{p}.headers.{name}")))
        .collect();
    for (name, var) in &t.headers_env {
        let at = format!("{p}.headers_env.{name}");
        if let Some(value) = env_value(errs, at.clone(), var, true) {
            values.push((name, value, at));
        }
    }
    for (name, value, at) in values {
        match (
            http::HeaderName::from_bytes(name.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            (Ok(n), Ok(v)) => headers.push((n, v)),
            (Err(_), _) => errs.push(ConfigError::new(at, "not a header name")),
            (_, Err(_)) => errs.push(ConfigError::new(at, "not a valid header value")),
        }
    }
    if !(0.0..=1.0).contains(&t.sample_ratio) {
        errs.push(ConfigError::new(
            format!("{p}.sample_ratio"),
            "must be between 0.0 and 1.0",
        ));
    }
    nonzero(
        errs,
        p,
        &[
            ("batch_spans", t.batch_spans as u64),
            ("queue_spans", t.queue_spans as u64),
            ("flush_ms", t.flush_ms),
            ("timeout_ms", t.timeout_ms),
        ],
        AT_LEAST_ONE,
    );
    if t.service_name.is_empty() {
        errs.push(ConfigError::new(
            format!("{p}.service_name"),
            "must not be empty",
        ));
    }
    let ca = ca_file(errs, p, &t.ca_file);
    if errs.len() > before {
        return None;
    }
    let resource: Vec<(String, String)> = t
        .resource
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Some(Tracer::new(
        t.sample_ratio,
        &t.service_name,
        &resource,
        ExportSettings {
            url: url?,
            headers,
            resource: Vec::new(),
            batch: t.batch_spans,
            queue: t.queue_spans,
            flush: Duration::from_millis(t.flush_ms),
            timeout: Duration::from_millis(t.timeout_ms),
            ca,
        },
    ))
}

fn check_auto_ban(errs: &mut Vec<ConfigError>, p: &str, f: &crate::config::IpFilterConfig) {
    if let Some(b) = &f.auto_ban {
        nonzero(
            errs,
            &format!("{p}.auto_ban"),
            &[
                ("threshold", u64::from(b.threshold)),
                ("window_secs", b.window_secs),
                ("ban_secs", b.ban_secs),
                ("max_entries", b.max_entries as u64),
            ],
            AT_LEAST_ONE,
        );
    }
}

fn check_rate_limit(
    errs: &mut Vec<ConfigError>,
    p: &str,
    l: &crate::config::RateLimitConfig,
    route: &crate::config::RouteConfig,
    config: &Config,
) -> Option<LimitSpec> {
    use plugins::ratelimit::Algorithm;
    let spec = match crate::policy::ratelimit::rate_limit(l) {
        Ok(spec) => spec,
        Err((field, e)) => {
            errs.push(ConfigError::new(format!("{p}.{field}"), e));
            return None;
        }
    };
    let algorithm = spec.algorithm;
    nonzero(
        errs,
        p,
        &[
            ("limit", l.limit),
            ("window_secs", l.window_secs),
            ("max_keys", l.max_keys as u64),
        ],
        AT_LEAST_ONE,
    );
    if let Some(t) = &l.tiers {
        for (tier, limit) in &t.limits {
            nonzero(
                errs,
                &format!("{p}.tiers.limits"),
                &[(tier, *limit)],
                AT_LEAST_ONE,
            );
        }
        if t.anonymous == Some(0) {
            errs.push(ConfigError::new(
                format!("{p}.tiers.anonymous"),
                AT_LEAST_ONE,
            ));
        }
    }
    if l.burst.is_some() && !matches!(algorithm, Algorithm::TokenBucket | Algorithm::LeakyBucket) {
        errs.push(ConfigError::new(
            format!("{p}.burst"),
            "burst applies to token_bucket and leaky_bucket",
        ));
    }
    if algorithm == Algorithm::TokenBucket && l.burst == Some(0) {
        errs.push(ConfigError::new(format!("{p}.burst"), AT_LEAST_ONE));
    }
    let needs_claims =
        matches!(spec.key, plugins::ratelimit::LimitKey::Claim(_)) || l.tiers.is_some();
    if needs_claims && route.plugins.jwt.is_none() && route.plugins.oauth2.is_none() {
        errs.push(ConfigError::new(
            format!("{p}.{}", if l.tiers.is_some() { "tiers" } else { "key" }),
            "claims come from a verified JWT or an introspected token: set plugins.jwt or plugins.oauth2 on this route",
        ));
    }
    if l.store == crate::config::LimitStore::Redis {
        if algorithm == Algorithm::Concurrency {
            errs.push(ConfigError::new(
                format!("{p}.store"),
                "concurrency is counted by each instance: use store: local",
            ));
        } else if config.server.redis.is_none() {
            errs.push(ConfigError::new(
                format!("{p}.store"),
                "store: redis needs server.redis",
            ));
        }
    }
    Some(spec)
}

const AT_LEAST_ONE: &str = "must be at least 1";

/// The value of environment variable `var`, which the key at `at` names; a fault there when
/// it is not set (or, unless `empty_ok`, empty).
fn env_value(errs: &mut Vec<ConfigError>, at: String, var: &str, empty_ok: bool) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if empty_ok || !v.is_empty() => Some(v),
        _ => {
            errs.push(ConfigError::new(
                at,
                format!("environment variable {var} is not set"),
            ));
            None
        }
    }
}

/// The CA bundle `file` names (the `ca_file` key under `p`); a fault there when it cannot
/// be read.
fn ca_file(errs: &mut Vec<ConfigError>, p: &str, file: &Option<String>) -> Option<Arc<CaType>> {
    let f = file.as_ref()?;
    crate::upstream::load_ca(f)
        .map_err(|e| errs.push(ConfigError::new(format!("{p}.ca_file"), e)))
        .ok()
}
const ABOVE_ZERO: &str = "must be greater than 0";

fn check_host_pattern(h: &str) -> Result<(), String> {
    let name = h.strip_prefix("*.").unwrap_or(h);
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{h:?} is not a host name or a *.suffix wildcard (ports are not part of the match)"
        ))
    }
}

/// The checks of an `oauth2` block; the endpoint, its CA and the secret when they pass.
fn check_oauth2(errs: &mut Vec<ConfigError>, p: &str, o: &OAuth2Config) -> Option<OAuth2Source> {
    let before = errs.len();
    let endpoint = match (&o.introspection_url, &o.issuer) {
        (Some(url), None) => Url::parse(url.expose(), &url.redacted())
            .map(Endpoint::Fixed)
            .map_err(|e| errs.push(ConfigError::new(format!("{p}.introspection_url"), e)))
            .ok(),
        (None, Some(issuer)) => crate::oidc::document_url(issuer)
            .map(|doc| Endpoint::discovered(doc, issuer.clone()))
            .map_err(|e| errs.push(ConfigError::new(format!("{p}.issuer"), e)))
            .ok(),
        _ => {
            errs.push(ConfigError::new(
                p,
                "set exactly one of introspection_url, issuer",
            ));
            None
        }
    };
    if o.client_id.is_empty() {
        errs.push(ConfigError::new(
            format!("{p}.client_id"),
            "must not be empty",
        ));
    }
    let secret = match (&o.client_secret, &o.client_secret_env) {
        (Some(s), None) => Some(s.expose().to_string()),
        (None, Some(var)) => env_value(errs, format!("{p}.client_secret_env"), var, false),
        _ => {
            errs.push(ConfigError::new(
                p,
                "set exactly one of client_secret, client_secret_env",
            ));
            None
        }
    };
    let ca = ca_file(errs, p, &o.ca_file);
    let scopes = scopes(errs, p, &o.required_scopes);
    let forward = ForwardClaims::new(&o.forward_claims)
        .map_err(|(path, e)| errs.push(ConfigError::new(format!("{p}.{path}"), e)))
        .ok();
    nonzero(
        errs,
        p,
        &[
            ("cache_entries", o.cache_entries as u64),
            ("timeout_ms", o.timeout_ms),
            ("max_calls_per_sec", u64::from(o.max_calls_per_sec)),
        ],
        AT_LEAST_ONE,
    );
    if errs.len() > before {
        return None;
    }
    Some(OAuth2Source {
        endpoint: endpoint?,
        ca,
        secret: secret?,
        scopes,
        forward: forward?,
    })
}

/// A `required_scopes` list, checked.
fn scopes(errs: &mut Vec<ConfigError>, p: &str, required: &[String]) -> Option<Scopes> {
    Scopes::new(required)
        .map_err(|(i, e)| errs.push(ConfigError::new(format!("{p}.required_scopes[{i}]"), e)))
        .ok()
        .flatten()
}

/// The header rules of one direction: each name and value checked, the valid ones kept.
fn header_ops(errs: &mut Vec<ConfigError>, p: &str, ops: &HeaderOpsConfig) -> HeaderOps {
    let mut out = HeaderOps::default();
    for (name, value) in &ops.set {
        let n = http::HeaderName::from_bytes(name.as_bytes());
        if n.is_err() {
            errs.push(ConfigError::new(
                format!("{p}.set.{name}"),
                "invalid header name",
            ));
        }
        let v = http::HeaderValue::from_str(value);
        if v.is_err() {
            errs.push(ConfigError::new(
                format!("{p}.set.{name}"),
                "invalid header value",
            ));
        }
        if let (Ok(n), Ok(v)) = (n, v) {
            out.set.push((n, v));
        }
    }
    for (i, name) in ops.remove.iter().enumerate() {
        match http::HeaderName::from_bytes(name.as_bytes()) {
            Ok(n) => out.remove.push(n),
            Err(_) => errs.push(ConfigError::new(
                format!("{p}.remove[{i}]"),
                "invalid header name",
            )),
        }
    }
    out
}

/// Compile an `ip_filter` block; the error names the field (`allow[2]`, `deny_file`).
fn ip_filter(cfg: &IpFilterConfig) -> Result<IpFilter, (String, String)> {
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
fn jwt(cfg: &JwtConfig) -> Result<(JwtVerifier, Option<JwksSource>), (String, String)> {
    let k = &cfg.keys;
    let owned: Vec<u8>;
    let text: String;
    let mut remote = None;
    const ONE_OF: &str =
        "set exactly one of secret_env, public_key_pem, jwks_file, jwks_url, oidc_issuer";
    // Keys fetched from a URL: the JWKS itself, or the one an OIDC issuer's discovery names.
    let fetched = match (&k.jwks_url, &k.oidc_issuer) {
        (Some(_), Some(_)) => return Err(("keys".into(), ONE_OF.into())),
        (Some(url), None) => Some((
            JwksUrl::parse(url.expose(), &url.redacted())
                .map_err(|e| ("keys.jwks_url".into(), e))?,
            None,
        )),
        (None, Some(issuer)) => {
            let url =
                crate::oidc::document_url(issuer).map_err(|e| ("keys.oidc_issuer".into(), e))?;
            Some((url, Some(issuer.clone())))
        }
        (None, None) => None,
    };
    let source = match (
        &k.secret_env,
        &k.public_key_pem,
        &k.jwks_file,
        fetched.is_some(),
    ) {
        (None, None, None, true) => {
            let ca = match &k.ca_file {
                Some(ca) => {
                    Some(crate::upstream::load_ca(ca).map_err(|e| ("keys.ca_file".into(), e))?)
                }
                None => None,
            };
            if let Some((url, issuer)) = fetched {
                remote = Some(JwksSource { url, ca, issuer });
            }
            KeySource::JwksLater
        }
        (Some(var), None, None, false) => {
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
        (None, Some(file), None, false) => {
            owned = std::fs::read(file).map_err(|e| {
                (
                    "keys.public_key_pem".into(),
                    format!("cannot read {file}: {e}"),
                )
            })?;
            KeySource::PublicPem(&owned)
        }
        (None, None, Some(file), false) => {
            text = std::fs::read_to_string(file)
                .map_err(|e| ("keys.jwks_file".into(), format!("cannot read {file}: {e}")))?;
            KeySource::Jwks(&text)
        }
        _ => return Err(("keys".into(), ONE_OF.into())),
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
            issuer: cfg.issuer.as_deref().or(k.oidc_issuer.as_deref()),
            audience: cfg.audience.as_deref(),
            leeway_secs: cfg.leeway_secs,
            require_exp: cfg.require_exp,
            optional: cfg.optional,
            forward_claims: &forward,
            cache_size: cfg.cache_tokens,
        },
    )
    .map(|verifier| (verifier, remote))
}

/// Compile a `cors` block.
fn cors(c: &CorsConfig) -> Result<Cors, String> {
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
    use crate::config::parse;

    fn errors(yaml: &str) -> Vec<String> {
        match parse(yaml).and_then(|c| check(&c)) {
            Ok(_) => vec![],
            Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
        }
    }

    const UP: &str = "upstreams:\n  u:\n    targets: [{ addr: \"127.0.0.1:9\" }]\n";

    #[test]
    fn unknown_key_names_its_path() {
        let e = errors(&format!(
            "{UP}routes:\n  - name: a\n    upstream: u\n    match: {{ pth: {{ prefix: / }} }}\n"
        ));
        assert_eq!(e.len(), 1);
        assert!(
            e[0].starts_with("routes[0].match: unknown field `pth`"),
            "{e:?}"
        );
        assert!(e[0].contains("at line 7 column"), "{e:?}");
    }

    #[test]
    fn bad_regex_and_unknown_upstream_are_all_reported() {
        let e = errors(&format!(
            "{UP}routes:\n  - name: a\n    upstream: nope\n  - name: b\n    upstream: u\n    match: {{ path: {{ regex: \"^/(a\" }} }}\n"
        ));
        assert_eq!(e.len(), 2, "{e:?}");
        assert_eq!(e[0], "routes[0].upstream: unknown upstream \"nope\"");
        assert!(e[1].starts_with("routes[1].match.path.regex: "), "{e:?}");
        assert!(e[1].contains("unclosed group"), "{e:?}");
    }

    #[test]
    fn path_needs_exactly_one_kind() {
        let e = errors(&format!(
            "{UP}routes:\n  - name: a\n    upstream: u\n    match: {{ path: {{ prefix: /a, exact: /b }} }}\n  - name: b\n    upstream: u\n    match: {{ path: {{ prefix: a }} }}\n"
        ));
        assert_eq!(
            e,
            vec![
                "routes[0].match.path: set exactly one of exact, prefix, regex".to_string(),
                "routes[1].match.path.prefix: must start with /".to_string()
            ]
        );
    }

    #[test]
    fn duplicate_names_methods_hosts() {
        let e = errors(&format!(
            "{UP}routes:\n  - {{ name: a, upstream: u }}\n  - name: a\n    upstream: u\n    match: {{ methods: [\"G T\"], hosts: [\"a*b\"] }}\n"
        ));
        assert!(e.contains(&"routes[1].name: duplicate route name \"a\"".to_string()));
        assert!(e
            .iter()
            .any(|m| m.starts_with("routes[1].match.methods[0]")));
        assert!(e.iter().any(|m| m.starts_with("routes[1].match.hosts[0]")));
    }

    #[test]
    fn upstream_faults() {
        let e = errors(
            "upstreams:\n  u:\n    targets: [{ addr: \"nonsense\", weight: 0 }]\n    lb: consistent_hash\n    health_check: { type: http, interval_ms: 0 }\n",
        );
        assert!(e
            .iter()
            .any(|m| m.starts_with("upstreams.u.targets[0].addr")));
        assert!(e
            .iter()
            .any(|m| m.starts_with("upstreams.u.targets[0].weight")));
        assert!(e.iter().any(|m| m.starts_with("upstreams.u.hash_key")));
        assert!(e
            .iter()
            .any(|m| m.starts_with("upstreams.u.health_check.interval_ms")));
    }

    #[test]
    fn wrong_type_and_unknown_enum() {
        let e =
            errors("upstreams:\n  u:\n    targets: [{ addr: \"127.0.0.1:9\" }]\n    lb: fastest\n");
        assert!(
            e[0].starts_with("upstreams.u.lb: unknown variant `fastest`"),
            "{e:?}"
        );
        let e = errors("server:\n  threads: many\n");
        assert!(e[0].starts_with("server.threads: invalid type"), "{e:?}");
    }

    #[test]
    fn discovery_faults_name_the_key_of_each_type() {
        let e = errors(
            "upstreams:\n  e:\n    discovery: { type: etcd, endpoints: [\"ftp://x\"], dns: \"a:1\", username: u }\n  c:\n    discovery: { type: consul, service: \"a b\", prefix: /x/, token_env: GW_UNIT_NO_SUCH_VAR, wait_secs: 0 }\n  d:\n    discovery: { type: srv, service: s }\nroutes:\n  - { name: r, upstream: e }\n",
        );
        for want in [
            "upstreams.e.discovery.endpoints[0]: \"ftp://x\": the scheme must be http or https",
            "upstreams.e.discovery.dns: not a key of type etcd",
            "upstreams.e.discovery.prefix: type etcd needs a prefix",
            "upstreams.e.discovery.username: set username and password_env together",
            "upstreams.c.discovery.service: type consul needs a service name",
            "upstreams.c.discovery.prefix: not a key of type consul",
            "upstreams.c.discovery.token_env: environment variable GW_UNIT_NO_SUCH_VAR is not set",
            "upstreams.c.discovery.wait_secs: between 1 and 600",
            "upstreams.d.discovery.service: not a key of type srv",
            "upstreams.d.discovery: type a and srv need dns",
        ] {
            assert!(
                e.iter().any(|m| m.starts_with(want)),
                "missing {want:?} in {e:?}"
            );
        }
    }

    #[test]
    fn tracing_faults_and_the_default_path() {
        let e = errors(&format!(
            "server:\n  tracing: {{ endpoint: \"udp://c:4317\", sample_ratio: 1.5, batch_spans: 0, flush_ms: 0, service_name: \"\", headers: {{ \"bad name\": x, ok: \"a\\nb\" }}, headers_env: {{ x-key: GW_UNIT_NO_SUCH_VAR }}, ca_file: /nonexistent }}\n{UP}"
        ));
        for want in [
            "server.tracing.endpoint: \"udp://c:4317\": the scheme must be http or https",
            "server.tracing.sample_ratio: must be between 0.0 and 1.0",
            "server.tracing.batch_spans: must be at least 1",
            "server.tracing.flush_ms: must be at least 1",
            "server.tracing.service_name: must not be empty",
            "server.tracing.headers.bad name: not a header name",
            "server.tracing.headers.ok: not a valid header value",
            "server.tracing.headers_env.x-key: environment variable GW_UNIT_NO_SUCH_VAR is not set",
            "server.tracing.ca_file:",
        ] {
            assert!(
                e.iter().any(|m| m.starts_with(want)),
                "missing {want:?} in {e:?}"
            );
        }
        let config = parse(&format!(
            "server:\n  tracing: {{ endpoint: \"http://collector:4318\" }}\n{UP}"
        ))
        .unwrap();
        let tracer = check(&config).unwrap().tracer.unwrap();
        assert_eq!(tracer.export.url.target, "/v1/traces");
        assert_eq!(tracer.export.url.port, 4318);
        assert_eq!(tracer.sample_ratio, 1.0);
    }

    #[test]
    fn oauth2_faults() {
        let e = errors(&format!(
            "{UP}routes:\n  - name: a\n    upstream: u\n    plugins:\n      jwt: {{ algorithms: [HS256], keys: {{ jwks_file: /nonexistent }} }}\n      oauth2: {{ introspection_url: \"ftp://x/introspect\", client_id: \"\", client_secret_env: GW_UNIT_NO_SUCH_VAR, required_scopes: [\"a b\"], forward_claims: {{ sub: \"bad header\" }}, max_calls_per_sec: 0 }}\n"
        ));
        for want in [
            "routes[0].plugins.oauth2: set jwt or oauth2, not both",
            "routes[0].plugins.oauth2.introspection_url: \"ftp://x/introspect\": the scheme must be http or https",
            "routes[0].plugins.oauth2.client_id: must not be empty",
            "routes[0].plugins.oauth2.client_secret_env: environment variable GW_UNIT_NO_SUCH_VAR is not set",
            "routes[0].plugins.oauth2.required_scopes[0]: a scope is printable ASCII",
            "routes[0].plugins.oauth2.forward_claims.sub: invalid header name",
            "routes[0].plugins.oauth2.max_calls_per_sec: must be at least 1",
        ] {
            assert!(e.iter().any(|m| m.starts_with(want)), "missing {want:?} in {e:?}");
        }
        let e = errors(&format!(
            "{UP}routes:\n  - name: a\n    upstream: u\n    plugins:\n      oauth2: {{ introspection_url: \"http://127.0.0.1:1/i\", client_id: g }}\n"
        ));
        assert_eq!(
            e,
            vec!["routes[0].plugins.oauth2: set exactly one of client_secret, client_secret_env"]
        );
    }
}
