//! The policy chain's contract: what a policy sees of a request, the phases it may act in,
//! and what it can decide.
//!
//! A route's policies run in a fixed order (the gateway's `policy` module documents it);
//! each phase calls the members in that order. Every hook does nothing by default, so a
//! policy implements only the phases it acts in:
//!
//! | phase              | when                                              | may            |
//! |--------------------|---------------------------------------------------|----------------|
//! | [`request`]        | once, after routing, before any upstream is asked | refuse, answer |
//! | [`upstream_request`] | before each try's head goes upstream            | edit headers   |
//! | [`response`]       | on the answer's head, proxied or the gateway's own | edit headers  |
//! | [`logging`]        | once, after the answer went out                   | count, learn   |
//!
//! [`request`]: Policy::request
//! [`upstream_request`]: Policy::upstream_request
//! [`response`]: Policy::response
//! [`logging`]: Policy::logging
//!
//! What one policy learns for later ones or later phases (the caller's identity, the quota
//! left, the CORS origin) goes in [`Facts`], the request's state that the chain shares;
//! settings and state that outlive a request stay in the policy. Nothing here knows
//! Pingora: the gateway adapts its session to these plain values.

use crate::envelope::GatewayError;
use crate::headers::HeaderTarget;
use crate::ratelimit::{Guard, Verdict};
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use serde_json::Value;
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;

/// What the request phase sees of a request: the head as normalized by the gateway.
pub struct Request<'a> {
    pub method: &'a Method,
    /// The normalized path, the one routing used.
    pub path: &'a str,
    pub headers: &'a HeaderMap,
    /// The client's address, behind trusted proxies the forwarded one.
    pub client_ip: Option<IpAddr>,
    /// For a CORS preflight, the method it announces (the route was chosen by it).
    pub preflight: Option<&'a Method>,
}

/// What a request's policies found, grouped by concern, kept to the request's end.
#[derive(Default)]
pub struct Facts {
    /// Who the caller is: the claims of a verified token.
    pub claims: Option<Arc<Value>>,
    /// The quota nearest to running out, for the answer's headers.
    pub quota: Option<Verdict>,
    /// Concurrency slots held until the request ends (released on drop).
    pub held: Vec<Guard>,
    /// The request's `Origin`, when the route's CORS policy allows it.
    pub cors_origin: Option<HeaderValue>,
    /// Refused for a ban in force: such a refusal does not count toward another ban.
    pub banned: bool,
}

/// The request phase's decision.
#[derive(Debug)]
pub enum Flow {
    /// On to the next policy, then upstream.
    Continue,
    /// Refuse: the gateway answers with this error in the envelope; no upstream is asked.
    Respond(GatewayError),
    /// Answer without an error and without the upstream (a CORS preflight): this status
    /// and these headers, no body.
    Answer(u16, Vec<(HeaderName, HeaderValue)>),
}

/// Which answer is on its way to the client.
#[derive(Debug, Clone, Copy)]
pub struct Reply {
    pub status: u16,
    /// The upstream's answer (`true`) or one the gateway wrote itself (`false`).
    pub proxied: bool,
}

/// How a request ended, for the logging phase.
pub struct Outcome {
    /// The status sent, 0 when none was.
    pub status: u16,
    pub client_ip: Option<IpAddr>,
}

/// One policy of a route's chain. Every hook does nothing by default.
pub trait Policy: Send + Sync {
    /// Admit the request, refuse it, or answer it. Runs once a request, after routing; a
    /// refusal ends the chain there. May wait (a shared store, a key fetch): the wait is
    /// this request's alone.
    fn request(&self, req: &Request<'_>, facts: &mut Facts) -> impl Future<Output = Flow> + Send {
        let _ = (req, facts);
        std::future::ready(Flow::Continue)
    }

    /// Edit the head sent upstream; runs before every try, after the gateway's own
    /// forwarding headers.
    fn upstream_request(&self, facts: &Facts, headers: &mut impl HeaderTarget) {
        let _ = (facts, headers);
    }

    /// Edit the head of the answer: the upstream's, or the gateway's own (a refusal, an
    /// error); runs once, before the head is written.
    fn response(&self, facts: &Facts, reply: Reply, headers: &mut impl HeaderTarget) {
        let _ = (facts, reply, headers);
    }

    /// Learn from how the request ended; runs once, after the answer went out.
    fn logging(&self, facts: &Facts, outcome: &Outcome) {
        let _ = (facts, outcome);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cors::Cors;
    use crate::headers::{HeaderOps, HeaderRules};
    use crate::ipfilter::{parse_net, IpFilter};
    use std::collections::BTreeMap;
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};

    /// These members never wait: one poll decides.
    fn decide(p: &impl Policy, req: &Request<'_>, facts: &mut Facts) -> Flow {
        let mut fut = pin!(p.request(req, facts));
        match fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(flow) => flow,
            Poll::Pending => panic!("a member that needs nothing else waited"),
        }
    }

    fn request<'a>(
        method: &'a Method,
        headers: &'a HeaderMap,
        ip: &str,
        preflight: Option<&'a Method>,
    ) -> Request<'a> {
        Request {
            method,
            path: "/",
            headers,
            client_ip: ip.parse().ok(),
            preflight,
        }
    }

    fn reason(flow: Flow) -> (u16, Value) {
        match flow {
            Flow::Respond(e) => (e.status.as_u16(), e.data["reason"].clone()),
            other => panic!("not refused: {other:?}"),
        }
    }

    #[test]
    fn ip_filter_refuses_with_its_reason_and_passes_an_unknown_address() {
        let filter = IpFilter::new(vec![], vec![parse_net("10.0.0.0/8").unwrap()]);
        let (get, h) = (Method::GET, HeaderMap::new());
        let mut facts = Facts::default();
        let denied = decide(&filter, &request(&get, &h, "10.1.2.3", None), &mut facts);
        assert_eq!(reason(denied), (403, "address denied".into()));
        let other = decide(&filter, &request(&get, &h, "192.0.2.1", None), &mut facts);
        assert!(matches!(other, Flow::Continue));
        let unix = decide(&filter, &request(&get, &h, "", None), &mut facts);
        assert!(matches!(unix, Flow::Continue));
    }

    #[test]
    fn cors_answers_preflights_and_marks_allowed_origins_for_the_answer() {
        let cors = Cors::new(&["https://app.example".into()], &[], &[], &[], false, 60).unwrap();
        let (options, get) = (Method::OPTIONS, Method::GET);
        let mut h = HeaderMap::new();
        h.insert("origin", HeaderValue::from_static("https://app.example"));
        let mut facts = Facts::default();
        match decide(&cors, &request(&options, &h, "", Some(&get)), &mut facts) {
            Flow::Answer(204, headers) => assert!(headers
                .iter()
                .any(|(n, v)| n == "access-control-allow-origin" && v == "https://app.example")),
            other => panic!("{other:?}"),
        }
        let put = Method::PUT;
        let refused = decide(&cors, &request(&options, &h, "", Some(&put)), &mut facts);
        assert_eq!(reason(refused), (403, "method not allowed".into()));
        assert!(
            facts.cors_origin.is_none(),
            "a preflight is not an actual request"
        );

        let flow = decide(&cors, &request(&get, &h, "", None), &mut facts);
        assert!(matches!(flow, Flow::Continue));
        assert_eq!(facts.cors_origin.as_ref().unwrap(), "https://app.example");
        let mut answer = HeaderMap::new();
        let reply = Reply {
            status: 200,
            proxied: true,
        };
        cors.response(&facts, reply, &mut answer);
        assert_eq!(answer["access-control-allow-origin"], "https://app.example");

        h.insert("origin", HeaderValue::from_static("https://evil.example"));
        let mut facts = Facts::default();
        assert!(matches!(
            decide(&cors, &request(&get, &h, "", None), &mut facts),
            Flow::Continue
        ));
        assert!(facts.cors_origin.is_none());
    }

    #[test]
    fn header_rules_edit_the_upstream_request_and_only_the_upstreams_answer() {
        let mut set = BTreeMap::new();
        set.insert("x-env".to_string(), "prod".to_string());
        let rules = HeaderRules {
            request: HeaderOps::new(&set, &["cookie".to_string()]).unwrap(),
            response: HeaderOps::new(&set, &["server".to_string()]).unwrap(),
        };
        let facts = Facts::default();
        let mut up = HeaderMap::new();
        up.insert("cookie", HeaderValue::from_static("a=1"));
        rules.upstream_request(&facts, &mut up);
        assert!(up.get("cookie").is_none());
        assert_eq!(up["x-env"], "prod");
        for proxied in [true, false] {
            let mut answer = HeaderMap::new();
            answer.insert("server", HeaderValue::from_static("app"));
            let reply = Reply {
                status: 200,
                proxied,
            };
            rules.response(&facts, reply, &mut answer);
            assert_eq!(answer.get("server").is_none(), proxied);
            assert_eq!(answer.get("x-env").is_some(), proxied);
        }
    }
}
