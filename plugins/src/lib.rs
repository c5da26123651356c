//! The gateway's policies, each usable and testable without a socket.
//!
//! [`Policy`] is the contract of a route's chain: phase hooks that do nothing by default
//! (request, upstream request, response, logging) on plain values (a request view, header
//! targets, a status), and a decision, [`Flow`]. The members that need nothing of the
//! gateway implement it here (IP filter, CORS, header rules); the gateway's `policy` module
//! holds the chain and the members that need its clock, metrics or stores. The proxy adapts
//! Pingora's session to these values and is the only code that writes to the wire.

pub mod envelope;
pub mod headers;

pub use envelope::GatewayError;
pub use headers::{HeaderOps, HeaderRules, HeaderTarget};
pub use policy::{Facts, Flow, Policy};
pub mod autoban;
pub mod breaker;
pub mod claims;
pub mod cors;
pub mod ipfilter;
pub mod jwt;
pub mod key;
pub mod policy;
pub mod ratelimit;
pub mod retry;
pub mod scope;
pub mod window;
