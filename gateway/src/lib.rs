//! The gateway daemon as a library: config, routing, upstream pools and the proxy.
//! The `gateway` binary only wires these together.

pub mod access_log;
pub mod admin;
pub mod aggregate;
pub mod clock;
pub mod compile;
pub mod config;
pub mod fanout;
pub mod guard;
pub mod jwks;
pub mod logging;
pub mod metrics;
pub mod mirror;
pub mod path;
pub mod policy;
pub mod proxy;
pub mod refresh;
pub mod reload;
pub mod router;
pub mod runtime;
pub mod store;
pub mod upstream;
pub mod wire;
