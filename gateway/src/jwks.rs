//! JWT keys from a JWKS URL: fetched in the background every `refresh_secs`, and again,
//! at most once per `refetch_min_secs`, when a token names a key id the set does not hold
//! (the issuer rotated its keys). A failed fetch keeps the keys already loaded.

use crate::client::Client;
use crate::metrics::METRICS;
use pingora::protocols::tls::CaType;
use plugins::jwt::JwtVerifier;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A JWKS document larger than this is refused.
const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// Where a key set is fetched from: `http://host[:port]/path` or `https://...`.
pub type JwksUrl = crate::client::Url;

/// Where a key set is fetched from, as the compile step's checks compiled it.
pub struct JwksSource {
    /// The JWKS, or with `issuer`, the issuer's discovery document.
    pub url: JwksUrl,
    /// An OpenID Connect issuer: the document at `url` must name it and the JWKS.
    pub issuer: Option<String>,
    /// The CAs that sign the key server's certificate; default: the system store.
    pub ca: Option<Arc<CaType>>,
}

pub struct RemoteJwks {
    /// The JWKS, or with `issuer`, the issuer's discovery document.
    pub url: JwksUrl,
    issuer: Option<String>,
    route: String,
    verifier: Arc<JwtVerifier>,
    refresh: Duration,
    refetch_min: Duration,
    timeout: Duration,
    ca: Option<Arc<CaType>>,
    client: Client,
    /// Milliseconds (on the caller's clock) of the next background refresh.
    next_refresh_ms: AtomicU64,
    /// Milliseconds since the process started of the last fetch that was tried; 0: never.
    last_fetch_ms: AtomicU64,
    /// One fetch at a time; requests waiting for a refetch share it.
    lock: tokio::sync::Mutex<()>,
}

impl RemoteJwks {
    pub fn new(
        route: &str,
        source: JwksSource,
        verifier: Arc<JwtVerifier>,
        refresh: Duration,
        refetch_min: Duration,
        timeout: Duration,
    ) -> RemoteJwks {
        RemoteJwks {
            url: source.url,
            issuer: source.issuer,
            route: route.to_string(),
            verifier,
            refresh,
            refetch_min,
            timeout,
            ca: source.ca,
            client: Client::default(),
            next_refresh_ms: AtomicU64::new(0),
            last_fetch_ms: AtomicU64::new(0),
            lock: tokio::sync::Mutex::new(()),
        }
    }

    /// Whether a background refresh is due at `now_ms` (the caller's clock); when it is,
    /// the next one is scheduled at once so it is not started twice.
    pub fn refresh_due(&self, now_ms: u64) -> bool {
        let next = self.next_refresh_ms.load(Ordering::Relaxed);
        // A fetch under way (a refetch for an unknown kid) counts as this refresh.
        if now_ms < next || self.lock.try_lock().is_err() {
            return false;
        }
        let after = now_ms + self.refresh.as_millis() as u64;
        self.next_refresh_ms
            .compare_exchange(next, after, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }

    /// Fetch the key set and put it in place; the keys stay as they were on failure.
    pub async fn refresh(&self) {
        let _one = self.lock.lock().await;
        self.fetch_now().await;
    }

    /// A token named a key this set does not hold: fetch again unless a fetch was tried
    /// within `refetch_min_secs`. True when a fetch happened (by this call or one it
    /// waited for), so verifying again may now pass.
    pub async fn refetch(&self) -> bool {
        let asked = crate::clock::now_ms();
        let recent = |last: u64| {
            last != 0 && asked.saturating_sub(last) < self.refetch_min.as_millis() as u64
        };
        if recent(self.last_fetch_ms.load(Ordering::Relaxed)) {
            return false;
        }
        let _one = self.lock.lock().await;
        // Someone fetched while this request waited for the lock: use that.
        if self.last_fetch_ms.load(Ordering::Relaxed) >= asked {
            return true;
        }
        if recent(self.last_fetch_ms.load(Ordering::Relaxed)) {
            return false;
        }
        self.fetch_now().await
    }

    async fn fetch_now(&self) -> bool {
        self.last_fetch_ms
            .store(crate::clock::now_ms().max(1), Ordering::Relaxed);
        let result = match tokio::time::timeout(self.timeout, self.fetch()).await {
            Ok(Ok(text)) => self.verifier.replace_jwks(&text),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(format!("no answer within {:?}", self.timeout)),
        };
        let label = match &result {
            Ok(n) => {
                log::info!("route {}: {n} keys from {}", self.route, self.url.host);
                "ok"
            }
            Err(e) => {
                // The path only: a query may carry a key.
                let path = self.url.target.split('?').next().unwrap_or("");
                log::warn!(
                    "route {}: JWKS from {}{path} not loaded, the previous keys stay: {e}",
                    self.route,
                    self.url.host,
                );
                "error"
            }
        };
        METRICS
            .jwks_fetches
            .with_label_values(&[self.route.as_str(), label])
            .inc();
        result.is_ok()
    }

    /// The key set: from the JWKS URL, or from the `jwks_uri` of the issuer's discovery
    /// document (read again each time, so a moved JWKS is followed), whose `issuer` must be
    /// the configured one (OpenID Connect Discovery 1.0, section 4.3).
    async fn fetch(&self) -> Result<String, String> {
        let get = |url| {
            self.client
                .get(url, self.timeout, self.ca.clone(), MAX_JWKS_BYTES)
        };
        let body = match &self.issuer {
            None => get(&self.url).await?,
            Some(issuer) => {
                let doc = get(&self.url).await?;
                get(&crate::oidc::endpoint(&doc, issuer, "jwks_uri")?).await?
            }
        };
        String::from_utf8(body.to_vec()).map_err(|_| "not UTF-8".to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::JwksUrl;
    use crate::config::SecretUrl;

    fn url(s: &SecretUrl) -> Result<JwksUrl, String> {
        JwksUrl::parse(s.expose(), &s.redacted())
    }

    #[test]
    fn urls() {
        let u = url(&SecretUrl::new(
            "https://auth.example.com/.well-known/jwks.json?x=1",
        ))
        .unwrap();
        assert_eq!(
            (u.tls, u.host.as_str(), u.port, u.target.as_str()),
            (true, "auth.example.com", 443, "/.well-known/jwks.json?x=1")
        );
        let u = url(&SecretUrl::new("http://127.0.0.1:8000")).unwrap();
        assert_eq!((u.tls, u.port, u.target.as_str()), (false, 8000, "/"));
        assert!(url(&SecretUrl::new("ftp://x/keys")).is_err());
        assert!(url(&SecretUrl::new("/keys")).is_err());
    }
}
