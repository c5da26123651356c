//! JWT as a chain member: the bearer token verified (keys from a URL fetched again, rate
//! limited, when the token names a key not yet known), its claims kept for the members
//! after it, and the configured claims forwarded upstream in headers a client cannot spoof.

use crate::config::JwtConfig;
use crate::jwks::RemoteJwks;
use plugins::jwt::JwtVerifier;
use plugins::policy::Request;
use plugins::scope::Scopes;
use plugins::{Facts, Flow, HeaderTarget, Policy};
use std::sync::Arc;

pub struct Jwt {
    pub verifier: Arc<JwtVerifier>,
    /// With `keys.jwks_url`: where the keys come from, and the settings they were made with
    /// (both kept across reloads that leave the `jwt` block as it was).
    pub remote: Option<(JwtConfig, Arc<RemoteJwks>)>,
    pub scopes: Option<Scopes>,
}

impl Policy for Jwt {
    async fn request(&self, req: &Request<'_>, facts: &mut Facts) -> Flow {
        let auth = req
            .headers
            .get(http::header::AUTHORIZATION)
            .map(|v| v.as_bytes());
        let mut verdict = self.verifier.verify(auth);
        if let (Err(e), Some((_, jwks))) = (&verdict, &self.remote) {
            // Keys from a URL may have rotated: fetch them again (rate-limited) and retry.
            if self.verifier.refetch_may_help(e) && jwks.refetch().await {
                verdict = self.verifier.verify(auth);
            }
        }
        match verdict {
            Ok(claims) => {
                if let (Some(scopes), Some(c)) = (&self.scopes, &claims) {
                    if let Err(e) = scopes.check(c) {
                        return Flow::Respond(e);
                    }
                }
                facts.claims = claims;
                Flow::Continue
            }
            Err(e) => Flow::Respond(e),
        }
    }

    /// A client-sent header of a forwarded claim's name never passes.
    fn upstream_request(&self, facts: &Facts, headers: &mut impl HeaderTarget) {
        self.verifier
            .forward_claims()
            .apply(facts.claims.as_deref(), headers);
    }
}
