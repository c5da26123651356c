//! Header names the gateway's parts speak to each other and to upstreams with: the proxy
//! sets them, the fan-out service reads them. A leaf: it imports nothing of the gateway.

use http::HeaderName;

/// The request id, kept from a client that sent a sound one, else made by the gateway.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// W3C trace context.
pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// Set by the proxy on requests it sends to the fan-out service: the aggregate and route.
pub static X_AGGREGATE: HeaderName = HeaderName::from_static("x-gateway-aggregate");
pub static X_ROUTE: HeaderName = HeaderName::from_static("x-gateway-route");
/// The verified JWT claims of the request, as JSON.
pub static X_CLAIMS: HeaderName = HeaderName::from_static("x-gateway-claims");
