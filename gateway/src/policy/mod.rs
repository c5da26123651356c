//! A route's compiled policy chain, and the members that need the gateway (a clock, metrics,
//! a key fetch, the shared store). The contract, [`plugins::Policy`], and the members that
//! need nothing else (IP filter, CORS, header rules) live in `plugins`.
//!
//! The order is fixed, cheapest and broadest first, so a refusal costs as little as it can:
//!
//! 1. `ip_filter`: allow and deny lists (403);
//! 2. bans earned by refusals (403 with `Retry-After`), learned in the logging phase;
//! 3. `cors`: a preflight is answered here; an allowed origin is noted for the answer;
//! 4. `jwt`: the token verified, its claims kept for the members after it (401);
//! 5. `oauth2`: an opaque token introspected at the provider, its answer's claims kept
//!    the same way (401, 403 for missing scopes, 503 when the provider cannot answer);
//! 6. `rate_limit`: every limit of the route, keyed by address, header or claim (429);
//! 7. header rules: the request's before it goes upstream, the upstream's answer's.
//!
//! The server's own chain (its `ip_filter` and bans) runs before routing. The request and
//! upstream-request phases run a chain forwards; the response phase runs it backwards, as
//! Envoy runs its encoder filters: the member nearest the upstream sees the answer first.
//!
//! A new policy is a file here (or in `plugins`) implementing [`Policy`], a variant of
//! [`Member`], and its place in the list `runtime::route_chain` builds. Dispatch is a `match`,
//! not a virtual call: no future is boxed, and a route without policies skips its chain.

pub mod ban;
pub mod jwt;
pub mod oauth2;
pub mod ratelimit;

use plugins::cors::Cors;
use plugins::ipfilter::IpFilter;
use plugins::policy::{Outcome, Reply, Request};
use plugins::{Facts, Flow, HeaderRules, HeaderTarget, Policy};

/// One policy of a chain.
pub enum Member {
    IpFilter(IpFilter),
    Ban(ban::Ban),
    Cors(Cors),
    Jwt(jwt::Jwt),
    /// Shared with the next runtime while its settings stay (its answer cache).
    OAuth2(std::sync::Arc<oauth2::OAuth2>),
    RateLimit(ratelimit::RateLimits),
    Headers(HeaderRules),
}

/// Run `$body` with `$p` bound to the member's policy, whatever its type.
macro_rules! each {
    ($member:expr, $p:ident => $body:expr) => {
        match $member {
            Member::IpFilter($p) => $body,
            Member::Ban($p) => $body,
            Member::Cors($p) => $body,
            Member::Jwt($p) => $body,
            Member::OAuth2($p) => $body,
            Member::RateLimit($p) => $body,
            Member::Headers($p) => $body,
        }
    };
}

/// Policies in the order they run (see the module doc).
#[derive(Default)]
pub struct Chain {
    members: Vec<Member>,
}

impl Chain {
    pub fn new(members: Vec<Member>) -> Chain {
        Chain { members }
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The request phase: each member in order until one refuses or answers.
    pub async fn request(&self, req: &Request<'_>, facts: &mut Facts) -> Flow {
        for m in &self.members {
            match each!(m, p => p.request(req, facts).await) {
                Flow::Continue => {}
                decided => return decided,
            }
        }
        Flow::Continue
    }

    pub fn upstream_request(&self, facts: &Facts, headers: &mut impl HeaderTarget) {
        for m in &self.members {
            each!(m, p => p.upstream_request(facts, headers));
        }
    }

    /// Backwards: the member nearest the upstream first.
    pub fn response(&self, facts: &Facts, reply: Reply, headers: &mut impl HeaderTarget) {
        for m in self.members.iter().rev() {
            each!(m, p => p.response(facts, reply, headers));
        }
    }

    pub fn logging(&self, facts: &Facts, outcome: &Outcome) {
        for m in &self.members {
            each!(m, p => p.logging(facts, outcome));
        }
    }

    /// The ban tracker of this chain, if it has one.
    pub fn bans(&self) -> Option<&ban::Ban> {
        self.members.iter().find_map(|m| match m {
            Member::Ban(b) => Some(b),
            _ => None,
        })
    }

    pub fn jwt(&self) -> Option<&jwt::Jwt> {
        self.members.iter().find_map(|m| match m {
            Member::Jwt(j) => Some(j),
            _ => None,
        })
    }

    pub fn oauth2(&self) -> Option<&std::sync::Arc<oauth2::OAuth2>> {
        self.members.iter().find_map(|m| match m {
            Member::OAuth2(o) => Some(o),
            _ => None,
        })
    }

    pub fn rate_limits(&self) -> Option<&ratelimit::RateLimits> {
        self.members.iter().find_map(|m| match m {
            Member::RateLimit(r) => Some(r),
            _ => None,
        })
    }
}
