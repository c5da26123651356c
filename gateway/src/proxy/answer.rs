//! The answers the gateway writes itself: every error in the one envelope
//! (`{code, message, data}`) with the request id, and a policy's plain answer (a CORS
//! preflight). The route's policies see these heads too (CORS and quota headers).

use super::forward::RespHeaders;
use super::head::request_has_body;
use super::Ctx;
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::Result;
use plugins::policy::Reply;
use plugins::GatewayError;

static JSON: HeaderValue = HeaderValue::from_static("application/json");

/// Write a gateway-generated response in the JSON envelope.
pub async fn respond(session: &mut Session, ctx: &mut Ctx, err: GatewayError) -> Result<()> {
    ctx.error = Some(err.message);
    let status = err.status;
    let (mut resp, body) = envelope(err, ctx.ids.request_id.clone(), std::iter::empty())?;
    ctx.policies_see(&mut resp, false);
    // A body the client already started sending would otherwise be read as the next
    // request on this connection; close instead of guessing where it ends.
    let has_body = request_has_body(session.req_header());
    // After a malformed request nothing on this connection can be trusted.
    if has_body || status == http::StatusCode::BAD_REQUEST || super::is_draining() {
        session.set_keepalive(None);
    }
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await?;
    Ok(())
}

/// A policy's answer without a body (a CORS preflight's 204), with the request id.
pub async fn plain(
    session: &mut Session,
    ctx: &Ctx,
    status: u16,
    headers: Vec<(HeaderName, HeaderValue)>,
) -> Result<()> {
    let mut resp = ResponseHeader::build(status, Some(headers.len() + 2))?;
    for (name, value) in headers {
        resp.insert_header(name, value)?;
    }
    resp.insert_header(&crate::wire::X_REQUEST_ID, ctx.ids.request_id.clone())?;
    if request_has_body(session.req_header()) {
        session.set_keepalive(None);
    }
    session.write_response_header(Box::new(resp), true).await?;
    Ok(())
}

/// An answer of the gateway in the envelope: its head (status, JSON type, length, request
/// id, the error's own fields, then `more`) and its body.
pub fn envelope(
    err: GatewayError,
    request_id: HeaderValue,
    more: impl Iterator<Item = (HeaderName, HeaderValue)>,
) -> Result<(ResponseHeader, Bytes)> {
    let body = Bytes::from(err.body());
    let mut resp = ResponseHeader::build(err.status, Some(4 + err.headers.len()))?;
    resp.insert_header(CONTENT_TYPE, JSON.clone())?;
    resp.insert_header(CONTENT_LENGTH, body.len())?;
    resp.insert_header("x-request-id", request_id)?;
    for (name, value) in err.headers.into_iter().chain(more) {
        resp.insert_header(name, value)?;
    }
    Ok((resp, body))
}

/// The answer for an error status the proxy raised without a better one.
pub fn status_error(code: u16) -> GatewayError {
    match code {
        400 => GatewayError::new(400, "bad request"),
        404 => GatewayError::new(404, "no route"),
        408 => GatewayError::new(408, "request timed out"),
        413 => GatewayError::new(413, "request body too large"),
        502 => GatewayError::new(502, "upstream failed"),
        503 => GatewayError::new(503, "no healthy upstream target").with_retry_after(1),
        504 => GatewayError::new(504, "upstream timed out"),
        _ => GatewayError::new(code, "gateway error"),
    }
}

impl Ctx {
    /// Let the route's policies, then the server's, edit an answer's head.
    pub(super) fn policies_see(&self, resp: &mut ResponseHeader, proxied: bool) {
        let reply = Reply {
            status: resp.status.as_u16(),
            proxied,
        };
        let headers = &mut RespHeaders(resp);
        if let Some(route) = self.route() {
            route.chain.response(&self.facts, reply, headers);
        }
        if !self.rt.chain.is_empty() {
            self.rt.chain.response(&self.facts, reply, headers);
        }
    }
}
