//! What survives a reload, decided here and nowhere else: the state a running config holds
//! that outlives one config (pools with their health, breaker and outlier state; limiter
//! counters; ban tables; keys fetched from a URL; the Redis connection) passes to the new
//! runtime when its owner has the same name and the same settings. Anything else starts
//! afresh, and what the new config no longer names is dropped with the old runtime once the
//! last request that holds it ends.
//!
//! | state                 | keyed by                       | kept when                  |
//! |-----------------------|--------------------------------|----------------------------|
//! | upstream pool         | upstream name                  | its definition is the same |
//! | Redis connection      | (one)                          | `server.redis` is the same |
//! | ban table             | scope (`server` or route name) | `auto_ban` is the same     |
//! | JWKS keys             | route name                     | its `jwt` block is the same |
//! | introspection answers | route name                     | its `oauth2` block is the same |
//! | rate-limit counters   | route name                     | an entry with the same settings (each taken once, wherever it moved in the list) |
//!
//! Never by position: a route or limit inserted before another leaves each one's state
//! with its owner.

use super::Runtime;
use crate::config::{JwtConfig, OAuth2Config, RateLimitConfig, RedisConfig, UpstreamConfig};
use crate::policy::jwt::Jwt;
use crate::policy::oauth2::OAuth2;
use crate::policy::ratelimit::RouteLimit;
use crate::policy::Chain;
use crate::store::RedisStore;
use crate::upstream::Upstream;
use plugins::autoban::{AutoBan, AutoBanSettings};
use std::collections::HashMap;
use std::sync::Arc;

/// The previous runtime's state, looked up by name; limits are handed out once each.
pub struct Carry<'a> {
    previous: Option<&'a Runtime>,
    /// Limits already handed out, by route name and index in its list.
    taken: HashMap<&'a str, Vec<bool>>,
}

impl<'a> Carry<'a> {
    pub fn new(previous: Option<&'a Runtime>) -> Carry<'a> {
        Carry {
            previous,
            taken: HashMap::new(),
        }
    }

    /// The server's chain (`route: None`) or a route's.
    fn chain(&self, route: Option<&str>) -> Option<&'a Chain> {
        let p = self.previous?;
        match route {
            None => Some(&p.chain),
            Some(name) => p.route_named(name).map(|r| &r.chain),
        }
    }

    pub fn upstream(&self, name: &str, cfg: &UpstreamConfig) -> Option<Arc<Upstream>> {
        self.previous?
            .upstreams
            .get(name)
            .filter(|up| up.cfg == *cfg)
            .cloned()
    }

    pub fn redis(&self, cfg: &RedisConfig) -> Option<(RedisConfig, Arc<RedisStore>)> {
        self.previous?
            .redis
            .as_ref()
            .filter(|(c, _)| c == cfg)
            .cloned()
    }

    /// The ban table of the server (`route: None`) or of a route.
    pub fn bans(&self, route: Option<&str>, settings: &AutoBanSettings) -> Option<Arc<AutoBan>> {
        self.chain(route)?
            .bans()
            .filter(|b| b.bans.settings == *settings)
            .map(|b| b.bans.clone())
    }

    /// A route's JWT policy with keys from a URL, when its `jwt` block is the same.
    pub fn jwt(&self, route: &str, cfg: &JwtConfig) -> Option<Jwt> {
        let old = self.chain(Some(route))?.jwt()?;
        old.remote.as_ref().filter(|(c, _)| c == cfg)?;
        Some(Jwt {
            verifier: old.verifier.clone(),
            remote: old.remote.clone(),
            scopes: old.scopes.clone(),
        })
    }

    /// A route's introspection policy (with its answer cache), when its `oauth2` block is
    /// the same.
    pub fn oauth2(&self, route: &str, cfg: &OAuth2Config) -> Option<Arc<OAuth2>> {
        self.chain(Some(route))?
            .oauth2()
            .filter(|o| o.cfg == *cfg)
            .cloned()
    }

    /// A limit of `route` with these settings that is not handed out yet.
    pub fn limit(&mut self, route: &str, cfg: &RateLimitConfig) -> Option<Arc<RouteLimit>> {
        let chain = self.chain(Some(route))?;
        let old = &chain.rate_limits()?.limits;
        let key = self.previous?.route_named(route)?.name.as_str();
        let taken = self
            .taken
            .entry(key)
            .or_insert_with(|| vec![false; old.len()]);
        let i = old
            .iter()
            .enumerate()
            .position(|(i, l)| !taken[i] && l.cfg == *cfg)?;
        taken[i] = true;
        Some(old[i].clone())
    }
}
