//! What goes upstream besides the client's request: the target in origin form (a route's
//! `strip_prefix` applied), the forwarding headers, the hand-off to the fan-out service
//! for an aggregate route, the next hop of the trace; and the copy a mirror sends.

use super::head::{path_and_query, peer_ip, request_host};
use super::Ctx;
use crate::runtime::Route;
use crate::upstream::HashKey;
use crate::wire::{TRACEPARENT, X_AGGREGATE, X_CLAIMS, X_REQUEST_ID, X_ROUTE};
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use pingora::http::RequestHeader;
use pingora::proxy::Session;
use pingora::{Error, ErrorType, Result};
use plugins::HeaderTarget;
use std::net::IpAddr;

// Inserted as names, not text: Pingora then stores them without parsing them again
// (third_party/patches/pingora-http/0001).
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Run `f` on the bytes of a hash key (`header:NAME`, `ip`, `path`) of this request. `ip` is
/// the client's address as resolved through `server.trusted_proxies`, not the socket peer:
/// behind a load balancer every request would hash alike.
pub fn with_key<R>(
    session: &Session,
    client: Option<IpAddr>,
    key: &HashKey,
    f: impl FnOnce(&[u8]) -> R,
) -> R {
    match key {
        HashKey::Header(name) => f(session
            .req_header()
            .headers
            .get(name)
            .map_or(b"", |v| v.as_bytes())),
        HashKey::Path => f(session.req_header().uri.path().as_bytes()),
        HashKey::Ip => match client {
            Some(ip) => f(plugins::ipfilter::IpText::new(ip).as_str().as_bytes()),
            None => f(b""),
        },
    }
}

/// The request target upstream: origin form, without the route's `strip_prefix`. h2 and
/// absolute-form requests carry the authority in the URI; an HTTP/1.1 upstream wants it in
/// Host. Returns that authority, for `X-Forwarded-Host`.
pub fn target(route: &Route, up: &mut RequestHeader) -> Result<Option<http::uri::Authority>> {
    let authority = up.uri.authority().cloned();
    if let Some(a) = &authority {
        if !up.headers.contains_key(HOST) {
            up.insert_header(HOST, a.as_str())?;
        }
    }
    let strip = route
        .strip_prefix
        .as_deref()
        .filter(|p| up.uri.path().starts_with(p));
    if strip.is_some() || authority.is_some() {
        let path = up.uri.path();
        let path = match strip {
            Some(p) => &path[p.len()..],
            None => path,
        };
        let mut target = String::with_capacity(path.len() + 64);
        if !path.starts_with('/') {
            target.push('/');
        }
        target.push_str(path);
        if let Some(q) = up.uri.query() {
            target.push('?');
            target.push_str(q);
        }
        let uri = target
            .parse()
            .map_err(|_| Error::explain(ErrorType::HTTPStatus(400), "bad request target"))?;
        up.set_uri(uri);
    }
    Ok(authority)
}

/// `X-Forwarded-For` (the socket peer appended), `-Proto`, `-Host`, the request id, and the
/// next hop of the trace. Header names as static strings: Pingora keeps their case as
/// given, without copying them (it copies the text of a HeaderName that is not a standard
/// one).
pub fn forwarding_headers(
    session: &Session,
    ctx: &Ctx,
    authority: Option<&http::uri::Authority>,
    up: &mut RequestHeader,
) -> Result<()> {
    if let Some(ip) = peer_ip(session) {
        let prev = up.headers.get(&X_FORWARDED_FOR);
        let mut v = Vec::with_capacity(prev.map_or(0, |p| p.len() + 2) + 39);
        if let Some(prev) = prev {
            v.extend_from_slice(prev.as_bytes());
            v.extend_from_slice(b", ");
        }
        v.extend_from_slice(plugins::ipfilter::IpText::new(ip).as_str().as_bytes());
        if let Ok(xff) = HeaderValue::from_maybe_shared(Bytes::from(v)) {
            up.insert_header(&X_FORWARDED_FOR, xff)?;
        }
    }
    let tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
    up.insert_header(
        &X_FORWARDED_PROTO,
        HeaderValue::from_static(if tls { "https" } else { "http" }),
    )?;
    let host = authority
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        .or_else(|| session.req_header().headers.get(HOST).cloned());
    if let Some(h) = host {
        up.insert_header(&X_FORWARDED_HOST, h)?;
    }
    up.insert_header(&X_REQUEST_ID, ctx.ids.request_id.clone())?;
    up.insert_header(&TRACEPARENT, ctx.ids.traceparent(ctx.attempt.span_id()))?;
    Ok(())
}

/// Only the proxy names the aggregate, route and claims to the fan-out service: a client's
/// copies are dropped, and an aggregate route sends its own.
pub fn aggregate_hand_off(route: &Route, ctx: &Ctx, up: &mut RequestHeader) -> Result<()> {
    // One look at the names is cheaper than three lookups, and almost never finds one.
    if up
        .headers
        .keys()
        .any(|n| n.as_str().starts_with("x-gateway-"))
    {
        for name in [&X_AGGREGATE, &X_ROUTE, &X_CLAIMS] {
            up.remove_header(name);
        }
    }
    if let Some(agg) = &route.aggregate {
        up.insert_header(X_AGGREGATE.clone(), agg.clone())?;
        up.insert_header(X_ROUTE.clone(), route.name.as_str())?;
        if let Some(claims) = &ctx.facts.claims {
            if let Ok(v) = HeaderValue::from_bytes(claims.to_string().as_bytes()) {
                up.insert_header(X_CLAIMS.clone(), v)?;
            }
        }
    }
    Ok(())
}

/// Copy the request to the route's shadow upstream: origin-form target, `Host` with
/// `-shadow` appended (as Envoy does, so the shadow can tell copies apart), the whole
/// body with its length.
pub fn send_mirror(
    mirrorer: &std::sync::Arc<crate::mirror::Mirrorer>,
    session: &Session,
    ctx: &Ctx,
    body: Vec<u8>,
) {
    let Some(route) = ctx.route() else { return };
    let Some(mirror) = &route.mirror else { return };
    let orig = session.req_header();
    let Ok(mut req) =
        RequestHeader::build(orig.method.clone(), path_and_query(orig).as_bytes(), None)
    else {
        return;
    };
    for (name, value) in orig.headers.iter() {
        if name != HOST && name != TRANSFER_ENCODING && name != CONTENT_LENGTH {
            let _ = req.append_header(name.clone(), value.clone());
        }
    }
    let host = request_host(orig).ok().flatten().unwrap_or("");
    let _ = req.insert_header(HOST, format!("{host}-shadow"));
    let _ = req.insert_header(CONTENT_LENGTH, body.len());
    let _ = req.insert_header(X_REQUEST_ID.clone(), ctx.ids.request_id.clone());
    mirrorer.send(&route.name, mirror.upstream.clone(), req, body);
}

/// Wraps a Pingora header so policies can edit it.
pub struct ReqHeaders<'a>(pub &'a mut RequestHeader);
pub struct RespHeaders<'a>(pub &'a mut pingora::http::ResponseHeader);

/// Both heads edit alike; a static name goes in without its text being copied.
macro_rules! header_target {
    ($t:ident) => {
        impl HeaderTarget for $t<'_> {
            fn remove_header(&mut self, name: &HeaderName) {
                self.0.remove_header(name);
            }
            fn set_header(&mut self, name: &HeaderName, value: HeaderValue) {
                let _ = self.0.insert_header(name.clone(), value);
            }
            fn set_static(&mut self, name: &'static str, value: HeaderValue) {
                let _ = self.0.insert_header(name, value);
            }
        }
    };
}

header_target!(ReqHeaders);
header_target!(RespHeaders);
