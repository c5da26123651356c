//! The gateway's policies, each usable and testable without a socket.
//!
//! A policy works on plain values (header lists, a status, a JSON payload); the proxy in
//! the `gateway` crate adapts Pingora's session to them and is the only code that writes
//! to the wire.

pub mod envelope;
pub mod headers;

pub use envelope::GatewayError;
pub use headers::{HeaderOps, HeaderRules, HeaderTarget};
pub use policy::{Facts, Flow, Policy};
pub mod autoban;
pub mod breaker;
pub mod cors;
pub mod ipfilter;
pub mod jwt;
pub mod policy;
pub mod ratelimit;
pub mod retry;
pub mod window;
