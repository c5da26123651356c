//! The YAML file format: what an operator writes, parsed with serde into plain structs.
//!
//! Unknown keys are errors. Parsing reports every unknown key and bad value with its YAML
//! path and line (`routes[3].match.path`, [`parse`]); [`crate::compile`] then reports every
//! semantic fault with its path, so `gateway -t` can list them all at once. This module is
//! the file format only: it imports nothing of the gateway and touches nothing outside.
//!
//! A key that holds a credential has the type [`Secret`] or [`SecretUrl`], so the admin API
//! and the logs never show its value.

mod parse;
mod secret;

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

pub use parse::{parse, read_text};
pub use secret::{Secret, SecretUrl, REDACTED};

/// One fault in a config file, located by its YAML path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted path into the document, e.g. `routes[3].match.path.regex`; empty for the root.
    pub path: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// All faults found in one file.
#[derive(Debug, Clone)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    #[serde(default)]
    pub aggregates: BTreeMap<String, AggregateConfig>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PluginsConfig {
    #[serde(default)]
    pub jwt: Option<JwtConfig>,
    /// Opaque bearer tokens checked at the provider's introspection endpoint (RFC 7662).
    #[serde(default)]
    pub oauth2: Option<OAuth2Config>,
    #[serde(default)]
    pub ip_filter: Option<IpFilterConfig>,
    #[serde(default)]
    pub cors: Option<CorsConfig>,
    /// Every limit must pass.
    #[serde(default)]
    pub rate_limit: Vec<RateLimitConfig>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// `sliding_window`, `token_bucket`, `leaky_bucket` or `concurrency`.
    pub algorithm: String,
    /// `ip`, `route`, `header:NAME` or `claim:NAME`.
    #[serde(default = "default_rate_limit_key")]
    pub key: String,
    /// Requests per window (sliding window), refilled per window (buckets), or in flight
    /// (concurrency).
    pub limit: u64,
    #[serde(default = "default_window_secs")]
    pub window_secs: u64,
    /// Token bucket: its size (default `limit`). Leaky bucket: requests held back and
    /// released at the rate instead of refused (default 0).
    #[serde(default)]
    pub burst: Option<u64>,
    #[serde(default)]
    pub tiers: Option<RateLimitTiersConfig>,
    #[serde(default)]
    pub store: LimitStore,
    #[serde(default)]
    pub on_store_error: OnStoreError,
    /// Keys the local state remembers at most (memory stays bounded under a flood of keys).
    #[serde(default = "default_max_keys")]
    pub max_keys: usize,
    /// The quota headers: `both`, `ratelimit`, `x-ratelimit` or `none`.
    #[serde(default)]
    pub headers: plugins::ratelimit::QuotaHeaders,
}

fn default_rate_limit_key() -> String {
    "ip".into()
}

fn default_window_secs() -> u64 {
    1
}

fn default_max_keys() -> usize {
    65536
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitTiersConfig {
    /// The claim of the verified JWT that names the tier.
    pub claim: String,
    /// Tier value -> limit; a value not listed gets the limit's own `limit`.
    pub limits: BTreeMap<String, u64>,
    /// For requests without the claim; default: the limit's own `limit`.
    #[serde(default)]
    pub anonymous: Option<u64>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitStore {
    /// Each gateway instance counts by itself.
    #[default]
    Local,
    /// One count in `server.redis` for every instance.
    Redis,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnStoreError {
    /// Let the request through.
    #[default]
    Allow,
    /// Refuse it with 503.
    Deny,
    /// Decide with this instance's own counters.
    Local,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// Accepted algorithms: HS256/384/512, RS256/384/512, PS256/384/512, ES256/384, EdDSA.
    pub algorithms: Vec<String>,
    pub keys: JwtKeysConfig,
    #[serde(default)]
    pub issuer: Option<String>,
    #[serde(default)]
    pub audience: Option<String>,
    /// Clock skew allowed on exp, nbf and iat.
    #[serde(default = "default_leeway")]
    pub leeway_secs: u64,
    /// Refuse tokens without an `exp` claim (default true); a present `exp` is always checked.
    #[serde(default = "yes")]
    pub require_exp: bool,
    /// Claim -> header sent upstream; a client-sent header of that name is always removed.
    #[serde(default)]
    pub forward_claims: BTreeMap<String, String>,
    /// Let requests without a token through (a present but invalid token is still refused).
    #[serde(default)]
    pub optional: bool,
    /// Scopes every token must carry (its `scope` string or `scp` list).
    #[serde(default)]
    pub required_scopes: Vec<String>,
    /// Verified tokens remembered, so a token's next use skips the signature check
    /// (`exp` and `nbf` are checked every time); 0 turns the cache off.
    #[serde(default = "default_jwt_cache")]
    pub cache_tokens: usize,
}

fn default_jwt_cache() -> usize {
    4096
}

/// Token introspection (RFC 7662): the bearer token is sent to the provider, and the request
/// is admitted when the answer says `active: true`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OAuth2Config {
    /// The provider's introspection endpoint (`http://` or `https://`) ...
    #[serde(default)]
    pub introspection_url: Option<SecretUrl>,
    /// ... or its OpenID Connect issuer: the endpoint is the `introspection_endpoint` of
    /// `ISSUER/.well-known/openid-configuration`, whose `issuer` must be this exactly.
    #[serde(default)]
    pub issuer: Option<String>,
    /// The gateway's own client at the provider.
    pub client_id: String,
    /// Its secret, or (better) the environment variable that holds it: set exactly one.
    #[serde(default)]
    pub client_secret: Option<Secret>,
    #[serde(default)]
    pub client_secret_env: Option<String>,
    #[serde(default)]
    pub auth_method: ClientAuthMethod,
    /// Scopes every token must carry (its `scope` string or `scp` list).
    #[serde(default)]
    pub required_scopes: Vec<String>,
    /// Claim of the introspection answer -> header sent upstream; a client-sent header of
    /// that name is always removed.
    #[serde(default)]
    pub forward_claims: BTreeMap<String, String>,
    /// An active answer is kept this long (never past the token's `exp`).
    #[serde(default = "default_introspection_ttl")]
    pub cache_ttl_secs: u64,
    /// An inactive answer is kept this long, so a flood of one bad token costs one call.
    #[serde(default = "default_inactive_ttl")]
    pub inactive_ttl_secs: u64,
    /// Answers kept at most (memory stays bounded under a flood of distinct tokens).
    #[serde(default = "default_introspection_entries")]
    pub cache_entries: usize,
    /// Bound on one introspection call.
    #[serde(default = "default_introspection_timeout")]
    pub timeout_ms: u64,
    /// Introspection calls per second at most (tokens not yet known beyond it get 503).
    #[serde(default = "default_introspection_rate")]
    pub max_calls_per_sec: u32,
    /// When the provider cannot answer: `refuse` (503), or `cached`: a token whose answer
    /// was active and whose `exp` has not passed is still admitted after `cache_ttl_secs`.
    #[serde(default)]
    pub on_provider_error: OnProviderError,
    /// CA bundle (PEM) for an `https://` provider; default: the system's roots.
    #[serde(default)]
    pub ca_file: Option<String>,
}

/// How the gateway authenticates to the provider (RFC 6749 section 2.3.1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuthMethod {
    #[default]
    ClientSecretBasic,
    ClientSecretPost,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnProviderError {
    #[default]
    Refuse,
    Cached,
}

fn default_introspection_ttl() -> u64 {
    60
}
fn default_inactive_ttl() -> u64 {
    5
}
fn default_introspection_entries() -> usize {
    10_000
}
fn default_introspection_timeout() -> u64 {
    2000
}
fn default_introspection_rate() -> u32 {
    100
}

fn default_leeway() -> u64 {
    30
}

/// Exactly one of `secret_env`, `public_key_pem`, `jwks_file`, `jwks_url`, `oidc_issuer`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JwtKeysConfig {
    /// Environment variable holding the HMAC secret.
    #[serde(default)]
    pub secret_env: Option<String>,
    /// PEM file of an RSA, EC or Ed25519 public key.
    #[serde(default)]
    pub public_key_pem: Option<String>,
    /// JWKS file; read again on every reload.
    #[serde(default)]
    pub jwks_file: Option<String>,
    /// JWKS URL (`http://` or `https://`), fetched in the background every `refresh_secs`
    /// and again when a token names an unknown `kid`.
    #[serde(default)]
    pub jwks_url: Option<SecretUrl>,
    /// An OpenID Connect issuer (`https://auth.example.com`): its discovery document
    /// (`ISSUER/.well-known/openid-configuration`, whose `issuer` must be this exactly)
    /// names the JWKS, fetched and refreshed as `jwks_url` is. Also the `issuer` tokens
    /// must carry, unless `issuer` says otherwise.
    #[serde(default)]
    pub oidc_issuer: Option<String>,
    #[serde(default = "default_jwks_refresh")]
    pub refresh_secs: u64,
    /// Fetches for unknown key ids are at least this far apart.
    #[serde(default = "default_jwks_refetch")]
    pub refetch_min_secs: u64,
    /// Bound on one fetch.
    #[serde(default = "default_jwks_timeout")]
    pub timeout_ms: u64,
    /// CA bundle (PEM) for an `https://` JWKS URL; default: the system's roots.
    #[serde(default)]
    pub ca_file: Option<String>,
}

fn default_jwks_refresh() -> u64 {
    300
}

fn default_jwks_refetch() -> u64 {
    10
}

fn default_jwks_timeout() -> u64 {
    2000
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IpFilterConfig {
    /// Addresses or CIDRs (IPv4 and IPv6); when set, everything else is refused.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Refused even when allowed.
    #[serde(default)]
    pub deny: Vec<String>,
    /// More denied addresses, one address or CIDR a line; read again on every reload.
    #[serde(default)]
    pub deny_file: Option<String>,
    /// Refuse for a while an address that keeps getting refused.
    #[serde(default)]
    pub auto_ban: Option<AutoBanConfig>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AutoBanConfig {
    /// More refusals (401, 403, 429) than this within the window ban the address.
    pub threshold: u32,
    #[serde(default = "default_ban_window")]
    pub window_secs: u64,
    #[serde(default = "default_ban_secs")]
    pub ban_secs: u64,
    /// Addresses tracked at most (memory stays bounded).
    #[serde(default = "default_ban_entries")]
    pub max_entries: usize,
}

fn default_ban_window() -> u64 {
    60
}

fn default_ban_secs() -> u64 {
    600
}

fn default_ban_entries() -> usize {
    100_000
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CorsConfig {
    /// `https://app.example.com`, `https://*.example.com`, or `*`.
    pub origins: Vec<String>,
    /// Default GET, HEAD, POST.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Request headers a preflight may ask for.
    #[serde(default)]
    pub headers: Vec<String>,
    #[serde(default)]
    pub expose_headers: Vec<String>,
    #[serde(default)]
    pub credentials: bool,
    #[serde(default = "default_cors_max_age")]
    pub max_age_secs: u64,
}

fn default_cors_max_age() -> u64 {
    600
}

/// A fan-out: several backends called in parallel, their JSON merged into one answer.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AggregateConfig {
    /// Deadline of the whole fan-out.
    #[serde(default = "default_aggregate_timeout")]
    pub timeout_ms: u64,
    /// Backend calls in flight at once, per request.
    #[serde(default = "default_max_concurrency")]
    pub max_concurrency: usize,
    /// How long a backend's last good answer may stand in with `fallback: cache`.
    #[serde(default = "default_cache_ttl")]
    pub cache_ttl_secs: u64,
    /// Request headers passed on to every backend (besides X-Request-Id and traceparent).
    #[serde(default)]
    pub forward_headers: Vec<String>,
    pub backends: Vec<AggregateBackendConfig>,
}

fn default_aggregate_timeout() -> u64 {
    1000
}
fn default_max_concurrency() -> usize {
    16
}
fn default_cache_ttl() -> u64 {
    300
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AggregateBackendConfig {
    /// The key of this backend's answer in `data`.
    pub key: String,
    pub upstream: String,
    /// Path and query, with `{query.NAME}`, `{path.NAME}` (a named group of the route's
    /// regex) and `{header.NAME}` filled from the request.
    pub path: String,
    /// A failed required backend fails the whole answer (502, or 504 on a timeout).
    #[serde(default)]
    pub required: bool,
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// `cache`: when this optional backend fails, serve its last good answer.
    #[serde(default)]
    pub fallback: Option<Fallback>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fallback {
    Cache,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[:PASSWORD@]HOST:PORT[/DB]` (the password is never shown).
    pub url: SecretUrl,
    /// Bound on every Redis call; past it the call counts as failed.
    #[serde(default = "default_redis_timeout")]
    pub timeout_ms: u64,
}

fn default_redis_timeout() -> u64 {
    50
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FanoutConfig {
    /// Listener of the fan-out service in this process; needed when `aggregates` are set.
    #[serde(default)]
    pub listen: Option<String>,
    /// Where the proxy sends aggregate routes, `IP:PORT`; default: `listen`. Point it at
    /// fan-out instances run apart with `gateway --fanout-only`.
    #[serde(default)]
    pub target: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Plain listeners; each speaks HTTP/1.1 and h2c (prior knowledge).
    #[serde(default = "default_listen")]
    pub listen: Vec<ListenConfig>,
    /// HTTPS listeners; HTTP/1.1 and h2 chosen by ALPN.
    #[serde(default)]
    pub tls: Vec<TlsListenerConfig>,
    /// Worker threads of the proxy service.
    #[serde(default = "default_threads")]
    pub threads: usize,
    /// How long a stopping or upgrading process keeps serving requests already accepted.
    #[serde(default = "default_grace_period")]
    pub grace_period_secs: u64,
    /// After the grace period, how long in-flight requests get before the process exits.
    #[serde(default = "default_shutdown_timeout")]
    pub graceful_shutdown_timeout_secs: u64,
    #[serde(default = "default_upgrade_sock")]
    pub upgrade_sock: String,
    #[serde(default = "default_pid_file")]
    pub pid_file: String,
    /// `stdout`, `off`, or a file path; one JSON object a line.
    #[serde(default = "default_access_log")]
    pub access_log: String,
    /// The daemon's own log (and, with `-d`, its stderr): a file path; default stderr.
    #[serde(default)]
    pub error_log: Option<String>,
    /// Peers whose `X-Forwarded-For` names the real client (for ip_filter and `ip` keys).
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// Allow/deny lists applied to every request before routing.
    #[serde(default)]
    pub ip_filter: Option<IpFilterConfig>,
    /// The aggregation (fan-out) service.
    #[serde(default)]
    pub fanout: FanoutConfig,
    /// Shared state for every gateway instance (aggregate fallbacks).
    #[serde(default)]
    pub redis: Option<RedisConfig>,
    /// Admin listener: /metrics, /healthz, /readyz, /admin/*. Absent: no admin listener.
    #[serde(default)]
    pub admin: Option<String>,
    /// Bearer token that /admin/* requires (never shown).
    #[serde(default)]
    pub admin_token: Option<Secret>,
    /// ... or the name of the environment variable that holds it.
    #[serde(default)]
    pub admin_token_env: Option<String>,
    /// Watch the config file and reload it when it changes (default true).
    #[serde(default = "yes")]
    pub watch_config: bool,
    /// Idle connections kept per upstream target for reuse.
    #[serde(default = "default_keepalive_pool")]
    pub upstream_keepalive_pool_size: usize,
    /// A request body larger than this is refused with 413.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: u64,
    /// A request head (request line and headers) larger than this is refused with 431.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// More header fields than this is refused with 431.
    #[serde(default = "default_max_headers")]
    pub max_headers: usize,
    /// From the connection (or the first byte of a next request) to the end of the request
    /// head; a slower client is disconnected.
    #[serde(default = "default_header_timeout")]
    pub client_header_timeout_ms: u64,
    /// The longest wait between two reads of a request body (nginx `client_body_timeout`);
    /// past it the request gets 408 and the upstream is not blamed.
    #[serde(default = "default_body_timeout")]
    pub client_body_timeout_ms: u64,
    /// How request paths are normalized before routing.
    #[serde(default)]
    pub paths: PathsConfig,
    /// How long a client connection may stay idle between two requests (nginx
    /// `keepalive_timeout`); 0 closes every connection after its answer. Per listener too.
    #[serde(default = "default_keepalive_timeout")]
    pub keepalive_timeout_secs: u64,
    /// Requests served on one client connection before it is closed after an answer (nginx
    /// `keepalive_requests`); 0: no cap. Per listener too.
    #[serde(default = "default_keepalive_requests")]
    pub keepalive_requests: u32,
    /// Export a trace of requests over OTLP (absent: no spans are made).
    #[serde(default)]
    pub tracing: Option<TracingConfig>,
    /// Upstreams, routes and aggregates from an etcd key shared by every node; this file
    /// keeps the node's own `server` block.
    #[serde(default)]
    pub config_source: Option<ConfigSourceConfig>,
}

/// `server.config_source`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigSourceConfig {
    /// `etcd://HOST:PORT[,HOST:PORT]/KEY` (`etcds://` for https).
    pub etcd: String,
    /// Every shared config applied is written here; a node that starts while etcd is down
    /// serves it.
    #[serde(default)]
    pub cache_file: Option<String>,
}

/// `server.tracing`: OpenTelemetry traces over OTLP/HTTP with protocol buffers.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TracingConfig {
    /// The collector's OTLP/HTTP traces URL; a URL with no path gets `/v1/traces`. Shown
    /// with any credentials in it redacted.
    pub endpoint: SecretUrl,
    /// Headers sent with every export (an API key, a tenant); never shown.
    #[serde(default)]
    pub headers: BTreeMap<String, Secret>,
    /// Headers whose values come from environment variables: header -> variable.
    #[serde(default)]
    pub headers_env: BTreeMap<String, String>,
    /// The resource's `service.name`.
    #[serde(default = "default_service_name")]
    pub service_name: String,
    /// More resource attributes (`deployment.environment`, `service.namespace`, ...).
    #[serde(default)]
    pub resource: BTreeMap<String, String>,
    /// Share of new traces sampled, 0.0 to 1.0; a request with a `traceparent` follows its
    /// sampled flag.
    #[serde(default = "default_sample_ratio")]
    pub sample_ratio: f64,
    /// Spans one export carries at most.
    #[serde(default = "default_batch_spans")]
    pub batch_spans: usize,
    /// Spans waiting for export at most; past it new spans are dropped and counted.
    #[serde(default = "default_queue_spans")]
    pub queue_spans: usize,
    /// The longest a span waits before it is exported.
    #[serde(default = "default_flush_ms")]
    pub flush_ms: u64,
    /// One export's bound: connect, send and the collector's answer.
    #[serde(default = "default_export_timeout_ms")]
    pub timeout_ms: u64,
    /// CA bundle for an https endpoint (default: the system's roots).
    #[serde(default)]
    pub ca_file: Option<String>,
}

fn default_service_name() -> String {
    "gateway".into()
}

fn default_sample_ratio() -> f64 {
    1.0
}

fn default_batch_spans() -> usize {
    512
}

fn default_queue_spans() -> usize {
    8192
}

fn default_flush_ms() -> u64 {
    1000
}

fn default_export_timeout_ms() -> u64 {
    5000
}

fn default_keepalive_timeout() -> u64 {
    75
}

fn default_keepalive_requests() -> u32 {
    1000
}

/// A plain listener: `"IP:PORT"`, or `{ addr, keepalive_timeout_secs, keepalive_requests }`
/// to give it its own keep-alive settings.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum ListenConfig {
    Addr(String),
    Full(ListenerConfig),
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    pub addr: String,
    #[serde(default)]
    pub keepalive_timeout_secs: Option<u64>,
    #[serde(default)]
    pub keepalive_requests: Option<u32>,
}

impl ListenConfig {
    pub fn addr(&self) -> &str {
        match self {
            ListenConfig::Addr(a) => a,
            ListenConfig::Full(l) => &l.addr,
        }
    }

    /// This listener's own keep-alive settings, where it has them.
    pub fn keepalive(&self) -> (Option<u64>, Option<u32>) {
        match self {
            ListenConfig::Addr(_) => (None, None),
            ListenConfig::Full(l) => (l.keepalive_timeout_secs, l.keepalive_requests),
        }
    }
}

/// Path normalization (dot segments and unreserved escapes are always resolved; these
/// settings choose the rest).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PathsConfig {
    /// Merge repeated slashes into one (nginx `merge_slashes`).
    #[serde(default = "yes")]
    pub merge_slashes: bool,
    /// What `%2F` and `%5C` in a path get.
    #[serde(default)]
    pub escaped_slashes: EscapedSlashes,
}

impl Default for PathsConfig {
    fn default() -> Self {
        PathsConfig {
            merge_slashes: true,
            escaped_slashes: EscapedSlashes::Reject,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EscapedSlashes {
    /// 400: an origin that decodes them would see other segments than were routed.
    #[default]
    Reject,
    /// Forwarded encoded; they never split a segment for matching.
    Keep,
}

fn default_max_body() -> u64 {
    10 * 1024 * 1024
}

fn default_max_header_bytes() -> usize {
    32 * 1024
}

fn default_max_headers() -> usize {
    100
}

fn default_header_timeout() -> u64 {
    10_000
}

fn default_body_timeout() -> u64 {
    60_000
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            tls: Vec::new(),
            threads: default_threads(),
            grace_period_secs: default_grace_period(),
            graceful_shutdown_timeout_secs: default_shutdown_timeout(),
            upgrade_sock: default_upgrade_sock(),
            pid_file: default_pid_file(),
            access_log: default_access_log(),
            error_log: None,
            trusted_proxies: Vec::new(),
            ip_filter: None,
            fanout: FanoutConfig::default(),
            redis: None,
            admin: None,
            admin_token: None,
            admin_token_env: None,
            watch_config: true,
            upstream_keepalive_pool_size: default_keepalive_pool(),
            max_body_bytes: default_max_body(),
            max_header_bytes: default_max_header_bytes(),
            max_headers: default_max_headers(),
            client_header_timeout_ms: default_header_timeout(),
            client_body_timeout_ms: default_body_timeout(),
            paths: PathsConfig::default(),
            keepalive_timeout_secs: default_keepalive_timeout(),
            keepalive_requests: default_keepalive_requests(),
            tracing: None,
            config_source: None,
        }
    }
}

fn default_listen() -> Vec<ListenConfig> {
    vec![ListenConfig::Addr("127.0.0.1:8080".into())]
}
fn default_threads() -> usize {
    2
}
fn default_grace_period() -> u64 {
    30
}
fn default_shutdown_timeout() -> u64 {
    5
}
fn default_upgrade_sock() -> String {
    "/tmp/gateway-upgrade.sock".into()
}
fn default_pid_file() -> String {
    "/tmp/gateway.pid".into()
}
fn default_access_log() -> String {
    "stdout".into()
}
fn default_keepalive_pool() -> usize {
    128
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsListenerConfig {
    pub listen: String,
    pub cert: String,
    pub key: String,
    /// Offer h2 by ALPN (default true).
    #[serde(default = "yes")]
    pub h2: bool,
    /// This listener's own `keepalive_timeout_secs` and `keepalive_requests`.
    #[serde(default)]
    pub keepalive_timeout_secs: Option<u64>,
    #[serde(default)]
    pub keepalive_requests: Option<u32>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Fixed targets ...
    #[serde(default)]
    pub targets: Vec<TargetConfig>,
    /// ... or targets found in DNS.
    #[serde(default)]
    pub discovery: Option<DiscoveryConfig>,
    #[serde(default)]
    pub lb: LbAlgorithm,
    /// For `consistent_hash`: `header:NAME`, `ip`, or `path`.
    #[serde(default)]
    pub hash_key: Option<String>,
    /// Connect to the targets with TLS.
    #[serde(default)]
    pub tls: bool,
    /// SNI and the name the certificate is checked against; defaults to the target host.
    #[serde(default)]
    pub sni: Option<String>,
    /// Verify the target's certificate (default true).
    #[serde(default = "yes")]
    pub verify: bool,
    /// PEM file of the CAs that sign the targets' certificates; default: the system store.
    #[serde(default)]
    pub ca_file: Option<String>,
    #[serde(default)]
    pub timeouts: TimeoutsConfig,
    #[serde(default)]
    pub health_check: Option<HealthCheckConfig>,
    /// After a connect failure, timeout or broken connection, a target is passed over by
    /// new requests and retries for this long (while another target is available); 0 turns
    /// this passive tracking off.
    #[serde(default = "default_failure_eject_ms")]
    pub failure_eject_ms: u64,
    /// Targets that keep failing are ejected (Envoy's outlier detection).
    #[serde(default)]
    pub outlier_detection: OutlierDetectionConfig,
    #[serde(default)]
    pub circuit_breaker: Option<BreakerConfigYaml>,
    #[serde(default)]
    pub retry: Option<RetryConfigYaml>,
}

fn default_failure_eject_ms() -> u64 {
    1000
}

/// What an empty definition (`{}`) means; only the targets are missing.
impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            targets: Vec::new(),
            discovery: None,
            lb: LbAlgorithm::default(),
            hash_key: None,
            tls: false,
            sni: None,
            verify: yes(),
            ca_file: None,
            timeouts: TimeoutsConfig::default(),
            health_check: None,
            failure_eject_ms: default_failure_eject_ms(),
            outlier_detection: OutlierDetectionConfig::default(),
            circuit_breaker: None,
            retry: None,
        }
    }
}

/// A target whose tries end in a 5xx or no answer `consecutive_5xx` times in a row is passed
/// over for `base_ejection_ms` times its ejections in a row (at most `max_ejection_ms`); at
/// most `max_ejection_percent` of the targets (at least one) are out at a time.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OutlierDetectionConfig {
    /// 0 turns it off.
    #[serde(default = "default_consecutive_5xx")]
    pub consecutive_5xx: u32,
    #[serde(default = "default_base_ejection_ms")]
    pub base_ejection_ms: u64,
    #[serde(default = "default_max_ejection_ms")]
    pub max_ejection_ms: u64,
    #[serde(default = "default_max_ejection_percent")]
    pub max_ejection_percent: u8,
}

impl Default for OutlierDetectionConfig {
    fn default() -> Self {
        OutlierDetectionConfig {
            consecutive_5xx: default_consecutive_5xx(),
            base_ejection_ms: default_base_ejection_ms(),
            max_ejection_ms: default_max_ejection_ms(),
            max_ejection_percent: default_max_ejection_percent(),
        }
    }
}

fn default_consecutive_5xx() -> u32 {
    5
}
fn default_base_ejection_ms() -> u64 {
    30_000
}
fn default_max_ejection_ms() -> u64 {
    300_000
}
fn default_max_ejection_percent() -> u8 {
    50
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerConfigYaml {
    /// Open after this many failures in a row.
    #[serde(default = "default_cb_consecutive")]
    pub consecutive_failures: u32,
    /// ... or when this share of the requests in the window failed,
    #[serde(default = "default_cb_rate")]
    pub failure_rate: f64,
    /// ... the window being this many seconds,
    #[serde(default = "default_cb_window")]
    pub window_secs: u32,
    /// ... once at least this many requests were seen in it.
    #[serde(default = "default_cb_min")]
    pub min_requests: u32,
    /// Stay open this long, then go half-open.
    #[serde(default = "default_cb_open")]
    pub open_secs: u64,
    /// Probes let through when half-open; all succeed: closed; any fails: open.
    #[serde(default = "default_cb_probes")]
    pub half_open_requests: u32,
}

fn default_cb_consecutive() -> u32 {
    5
}
fn default_cb_rate() -> f64 {
    0.5
}
fn default_cb_window() -> u32 {
    10
}
fn default_cb_min() -> u32 {
    20
}
fn default_cb_open() -> u64 {
    30
}
fn default_cb_probes() -> u32 {
    3
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfigYaml {
    /// Retries after the first try.
    #[serde(default = "default_retry_attempts")]
    pub attempts: u32,
    #[serde(default)]
    pub backoff: BackoffConfig,
    /// `connect_failure`, `timeout`, and upstream status codes.
    #[serde(default = "default_retry_on")]
    pub on: Vec<RetryOn>,
    #[serde(default = "yes")]
    pub idempotent_only: bool,
    /// Retries may add at most this share on top of the requests of the last 10 s.
    #[serde(default = "default_budget")]
    pub budget_ratio: f64,
    /// The whole request, every try and backoff included, ends by this deadline.
    /// Default: the upstream's connect_ms + read_ms.
    #[serde(default)]
    pub deadline_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum RetryOn {
    Status(u16),
    Condition(RetryCondition),
}

/// A failure a retry policy names by word; any other word is kept for the checks to refuse
/// with its path.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RetryCondition {
    ConnectFailure,
    Timeout,
    #[serde(untagged)]
    Unknown(String),
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BackoffConfig {
    #[serde(default = "default_backoff_base")]
    pub base_ms: u64,
    #[serde(default = "default_backoff_max")]
    pub max_ms: u64,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        Self {
            base_ms: default_backoff_base(),
            max_ms: default_backoff_max(),
        }
    }
}

fn default_retry_attempts() -> u32 {
    2
}
fn default_retry_on() -> Vec<RetryOn> {
    vec![
        RetryOn::Condition(RetryCondition::ConnectFailure),
        RetryOn::Condition(RetryCondition::Timeout),
    ]
}
fn default_budget() -> f64 {
    0.2
}
fn default_backoff_base() -> u64 {
    25
}
fn default_backoff_max() -> u64 {
    250
}

/// Where an upstream's targets come from when they are not listed: DNS (`type: a` or
/// `srv`, polled), an etcd prefix (`type: etcd`, watched) or a Consul service (`type:
/// consul`, blocking queries). Each type takes its own keys; the compile step refuses the
/// others.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DiscoveryConfig {
    #[serde(default, rename = "type")]
    pub kind: DiscoveryKind,
    /// DNS: `NAME:PORT` for A/AAAA records, `NAME` for SRV records.
    #[serde(default)]
    pub dns: Option<String>,
    /// DNS: ask again this often; targets that appear or vanish join or leave the pool.
    #[serde(default = "default_refresh_secs")]
    pub refresh_secs: u64,
    /// DNS: `IP:PORT` of the DNS server; default: the first nameserver of /etc/resolv.conf.
    #[serde(default)]
    pub resolver: Option<String>,
    /// One lookup or call (a Consul blocking query adds its `wait_secs`).
    #[serde(default = "default_hc_timeout")]
    pub timeout_ms: u64,
    /// etcd: client URLs (`http://IP:2379`), tried in turn.
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// etcd: every key under this prefix is a target, its value `{"addr": "IP:PORT",
    /// "weight": N}`.
    #[serde(default)]
    pub prefix: Option<String>,
    /// etcd: user for etcd's authentication (with `password_env`).
    #[serde(default)]
    pub username: Option<String>,
    /// etcd: the environment variable holding the password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// Consul: the service's name.
    #[serde(default)]
    pub service: Option<String>,
    /// Consul: the agent's HTTP API (`http://127.0.0.1:8500`).
    #[serde(default)]
    pub address: Option<String>,
    /// Consul: the datacenter (default: the agent's).
    #[serde(default)]
    pub datacenter: Option<String>,
    /// Consul: only instances with this tag.
    #[serde(default)]
    pub tag: Option<String>,
    /// Consul: the environment variable holding an ACL token.
    #[serde(default)]
    pub token_env: Option<String>,
    /// Consul: only instances whose checks all pass (default true).
    #[serde(default = "yes")]
    pub passing_only: bool,
    /// Consul: how long one blocking query waits for a change.
    #[serde(default = "default_consul_wait")]
    pub wait_secs: u64,
    /// etcd and Consul over https: CA bundle (default: the system's roots).
    #[serde(default)]
    pub ca_file: Option<String>,
}

fn default_consul_wait() -> u64 {
    30
}

fn default_refresh_secs() -> u64 {
    10
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DiscoveryKind {
    /// DNS A/AAAA records of `dns: NAME:PORT`.
    #[default]
    A,
    /// DNS SRV records of `dns: NAME` (ports and weights from the records).
    Srv,
    /// The keys under an etcd prefix.
    Etcd,
    /// A Consul service's healthy instances.
    Consul,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    /// `IP:PORT` or `HOST:PORT` (a host name is resolved once, when the config is loaded).
    pub addr: String,
    #[serde(default = "one")]
    pub weight: usize,
}

fn one() -> usize {
    1
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LbAlgorithm {
    #[default]
    WeightedRoundRobin,
    ConsistentHash,
    Random,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutsConfig {
    #[serde(default = "default_connect_ms")]
    pub connect_ms: u64,
    #[serde(default = "default_read_ms")]
    pub read_ms: u64,
    #[serde(default = "default_write_ms")]
    pub write_ms: u64,
    #[serde(default = "default_idle_ms")]
    pub idle_ms: u64,
}

impl Default for TimeoutsConfig {
    fn default() -> Self {
        Self {
            connect_ms: default_connect_ms(),
            read_ms: default_read_ms(),
            write_ms: default_write_ms(),
            idle_ms: default_idle_ms(),
        }
    }
}

fn default_connect_ms() -> u64 {
    1000
}
fn default_read_ms() -> u64 {
    30000
}
fn default_write_ms() -> u64 {
    30000
}
fn default_idle_ms() -> u64 {
    60000
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthCheckKind {
    Http,
    Tcp,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    #[serde(rename = "type")]
    pub kind: HealthCheckKind,
    /// Path of the HTTP probe (a GET); a 2xx answer is healthy.
    #[serde(default = "default_hc_path")]
    pub path: String,
    /// Host header of the HTTP probe; defaults to the target address.
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default = "default_hc_interval")]
    pub interval_ms: u64,
    /// Each probe's connect and read timeout.
    #[serde(default = "default_hc_timeout")]
    pub timeout_ms: u64,
    /// Consecutive successes that bring an unhealthy target back.
    #[serde(default = "default_hc_healthy")]
    pub healthy: usize,
    /// Consecutive failures that take a healthy target out.
    #[serde(default = "default_hc_unhealthy")]
    pub unhealthy: usize,
}

fn default_hc_path() -> String {
    "/".into()
}
fn default_hc_interval() -> u64 {
    2000
}
fn default_hc_timeout() -> u64 {
    1000
}
fn default_hc_healthy() -> usize {
    2
}
fn default_hc_unhealthy() -> usize {
    3
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub name: String,
    #[serde(default, rename = "match")]
    pub matcher: MatchConfig,
    /// Higher wins; between equal priorities: exact path > regex > longest prefix.
    #[serde(default)]
    pub priority: i32,
    /// The upstream that serves the route ...
    #[serde(default)]
    pub upstream: Option<String>,
    /// ... or a weighted split across several (canary, blue/green).
    #[serde(default)]
    pub split: Option<Vec<SplitArmConfig>>,
    /// With `split`: `header:NAME`, `ip` or `path`; one key always lands on the same side.
    #[serde(default)]
    pub sticky_key: Option<String>,
    /// Policies applied to this route.
    #[serde(default)]
    pub plugins: PluginsConfig,
    /// ... or an aggregate (fan-out) that answers the route.
    #[serde(default)]
    pub aggregate: Option<String>,
    /// Send a copy of a share of the requests to a shadow upstream.
    #[serde(default)]
    pub mirror: Option<MirrorConfig>,
    /// Removed from the front of the path before it goes upstream.
    #[serde(default)]
    pub strip_prefix: Option<String>,
    #[serde(default)]
    pub headers: HeaderRulesConfig,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SplitArmConfig {
    pub upstream: String,
    pub weight: u32,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorConfig {
    pub upstream: String,
    /// Share of the route's requests copied, 0 to 100 (default 100).
    #[serde(default = "hundred")]
    pub percent: f64,
}

fn hundred() -> f64 {
    100.0
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MatchConfig {
    /// Exact names or `*.example.com`; empty matches every host.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Absent matches every path.
    #[serde(default)]
    pub path: Option<PathMatchConfig>,
    /// Empty matches every method.
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, HeaderMatchConfig>,
}

/// Exactly one of `exact`, `prefix`, `regex`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PathMatchConfig {
    #[serde(default)]
    pub exact: Option<String>,
    #[serde(default)]
    pub prefix: Option<String>,
    #[serde(default)]
    pub regex: Option<String>,
}

/// A path matcher after validation: which kind, and its pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathMatch<'a> {
    Exact(&'a str),
    Prefix(&'a str),
    Regex(&'a str),
}

impl PathMatchConfig {
    /// The one matcher set, or `None` when zero or several are set.
    pub fn get(&self) -> Option<PathMatch<'_>> {
        match (&self.exact, &self.prefix, &self.regex) {
            (Some(e), None, None) => Some(PathMatch::Exact(e)),
            (None, Some(p), None) => Some(PathMatch::Prefix(p)),
            (None, None, Some(r)) => Some(PathMatch::Regex(r)),
            _ => None,
        }
    }
}

/// A header value to match: a plain string is an exact match.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum HeaderMatchConfig {
    Exact(String),
    Rule(HeaderRuleConfig),
}

/// Exactly one of `regex`, `present`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderRuleConfig {
    #[serde(default)]
    pub regex: Option<String>,
    /// `true`: the header must be there; `false`: it must be absent.
    #[serde(default)]
    pub present: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderRulesConfig {
    #[serde(default)]
    pub request: HeaderOpsConfig,
    #[serde(default)]
    pub response: HeaderOpsConfig,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderOpsConfig {
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    #[serde(default)]
    pub remove: Vec<String>,
}

impl ServerConfig {
    /// The admin bearer token, from the file or the environment.
    pub fn admin_token(&self) -> Option<String> {
        self.admin_token
            .as_ref()
            .map(|t| t.expose().to_string())
            .or_else(|| {
                self.admin_token_env
                    .as_ref()
                    .and_then(|v| std::env::var(v).ok())
                    .filter(|t| !t.is_empty())
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_conditions_are_words_and_statuses_and_unknown_words_are_kept() {
        let on: Vec<RetryOn> =
            serde_yaml::from_str("[connect_failure, timeout, 503, sometimes]").unwrap();
        assert_eq!(
            on,
            vec![
                RetryOn::Condition(RetryCondition::ConnectFailure),
                RetryOn::Condition(RetryCondition::Timeout),
                RetryOn::Status(503),
                RetryOn::Condition(RetryCondition::Unknown("sometimes".into())),
            ]
        );
    }

    #[test]
    fn an_empty_upstream_definition_is_the_default() {
        let parsed: UpstreamConfig = serde_yaml::from_str("{}").unwrap();
        assert_eq!(parsed, UpstreamConfig::default());
    }
}
