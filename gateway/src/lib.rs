//! The gateway daemon as a library; the `gateway` binary only wires these together.
//!
//! A config flows one way: [`config`] (the file format) -> [`compile`] (every fault with its
//! YAML path, or the build) -> [`runtime`] (routes, their [`policy`] chains, upstreams),
//! which [`proxy`] reads, one snapshot a request. A reload compiles a new runtime against
//! the running one, keeping the state of what did not change, and swaps it in.
//!
//! A request: [`guard`] times the head; [`proxy`] checks it, normalizes the [`path`], runs
//! the server's policies, asks the [`router`], runs the route's chain, then tries the
//! [`upstream`] (breaker, retries, passive and outlier tracking) or hands an aggregate to
//! [`fanout`]; [`access_log`], [`metrics`] and, when it is traced, [`telemetry`] see its end.

pub mod access_log;
pub mod admin;
pub mod aggregate;
pub mod client;
pub mod clock;
pub mod compile;
pub mod config;
pub mod etcd;
pub mod fanout;
pub mod guard;
pub mod jwks;
pub mod logging;
pub mod metrics;
pub mod mirror;
pub mod oidc;
pub mod path;
pub mod policy;
pub mod proxy;
pub mod refresh;
pub mod reload;
pub mod router;
pub mod runtime;
pub mod source;
pub mod store;
pub mod telemetry;
pub mod upstream;
pub mod wire;
