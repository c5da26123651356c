//! Targets from a registry that says when they change: the keys under an etcd prefix
//! (read, then watched from the revision read) or a Consul service's instances (blocking
//! queries on the health endpoint). One task an upstream, started by the refresh service
//! and ended when its upstream is gone (a reload replaced it). When the registry fails, the
//! last good targets stay and the task tries again with a growing pause; an etcd watch that
//! breaks is resumed by reading the prefix again (so no change is missed), a Consul index
//! that goes backwards (the agent restarted) starts the queries over.

use super::{backend, Upstream};
use crate::client::{Client, Url};
use crate::clock::Backoff;
use crate::etcd::{prefix_end, Event, Kv};
use crate::metrics::METRICS;
use pingora::lb::Backend;
use pingora::protocols::tls::CaType;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

/// An answer from a registry larger than this is refused.
const MAX_ANSWER: usize = 8 * 1024 * 1024;

pub enum Registry {
    Etcd(Etcd),
    Consul(Consul),
}

pub struct Etcd {
    pub etcd: crate::etcd::Etcd,
    pub prefix: String,
}

pub struct Consul {
    pub url: Url,
    pub service: String,
    pub datacenter: Option<String>,
    pub tag: Option<String>,
    pub token: Option<String>,
    pub passing_only: bool,
    pub wait: Duration,
    pub ca: Option<Arc<CaType>>,
    pub timeout: Duration,
}

/// What the admin API shows of a registry.
#[derive(Debug, Clone, Default)]
pub struct SourceState {
    /// `etcd` or `consul`.
    pub kind: &'static str,
    /// The etcd revision or Consul index of the targets in use.
    pub index: u64,
    pub targets: usize,
    /// The last failure, until the next success.
    pub last_error: Option<String>,
}

impl Registry {
    pub fn kind(&self) -> &'static str {
        match self {
            Registry::Etcd(_) => "etcd",
            Registry::Consul(_) => "consul",
        }
    }
}

/// Keep `up`'s targets in step with `registry` while the upstream lives.
pub async fn watch(up: Weak<Upstream>, registry: Arc<Registry>) {
    let client = Client::default();
    let mut backoff = Backoff::new();
    let mut consul_index = 0u64;
    let mut endpoint = 0usize;
    loop {
        if up.strong_count() == 0 {
            return;
        }
        let result = match &*registry {
            Registry::Consul(c) => c.query(&client, &up, &mut consul_index).await,
            Registry::Etcd(e) => {
                let r = e.sync(&client, endpoint, &up, &mut backoff).await;
                if r.is_err() {
                    endpoint += 1;
                }
                r
            }
        };
        match result {
            Ok(()) => backoff.reset(),
            Err(e) => {
                let Some(u) = up.upgrade() else { return };
                u.discovery_failed(&e);
                drop(u);
                tokio::time::sleep(backoff.pause()).await;
            }
        }
    }
}

impl Consul {
    /// One blocking query: returns when the service changed, `wait` passed, or it failed.
    async fn query(
        &self,
        client: &Client,
        up: &Weak<Upstream>,
        index: &mut u64,
    ) -> Result<(), String> {
        let mut target = format!(
            "{}/v1/health/service/{}?index={}&wait={}s",
            self.url.target.trim_end_matches('/'),
            self.service,
            *index,
            self.wait.as_secs()
        );
        if self.passing_only {
            target.push_str("&passing=1");
        }
        if let Some(dc) = &self.datacenter {
            target.push_str(&format!("&dc={dc}"));
        }
        if let Some(tag) = &self.tag {
            target.push_str(&format!("&tag={tag}"));
        }
        let mut peer = self.url.peer(self.timeout, self.ca.clone()).await?;
        // Consul holds a blocking query up to `wait` plus a sixteenth of it.
        peer.options.read_timeout = Some(self.wait + self.wait / 16 + self.timeout);
        let mut req = self.url.json_get(&target)?;
        if let Some(t) = &self.token {
            req.insert_header("x-consul-token", t.as_str())
                .map_err(|e| e.to_string())?;
        }
        let mut answer = client
            .open(&peer, req, None)
            .await
            .map_err(|e| e.to_string())?;
        let body = answer
            .read_to_end(crate::client::Body::Keep(MAX_ANSWER))
            .await
            .map_err(|e| e.to_string())?;
        if answer.status != 200 {
            return Err(format!(
                "status {}: {}",
                answer.status,
                String::from_utf8_lossy(&body[..body.len().min(200)])
            ));
        }
        let new_index: u64 = answer
            .headers
            .get("x-consul-index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .ok_or("answer without X-Consul-Index")?;
        if new_index < *index {
            // The agent restarted (or the raft index was reset): start over from 0, as
            // Consul's documentation on blocking queries says.
            log::info!(
                "upstream {}: consul index went back from {} to {new_index}; querying afresh",
                self.service,
                *index
            );
            *index = 0;
            return Ok(());
        }
        let entries: Vec<Value> =
            serde_json::from_slice(&body).map_err(|e| format!("answer is not JSON: {e}"))?;
        let mut set = BTreeSet::new();
        for e in &entries {
            let service = &e["Service"];
            let addr = service["Address"]
                .as_str()
                .filter(|a| !a.is_empty())
                .or_else(|| e["Node"]["Address"].as_str())
                .unwrap_or("");
            let Some(port) = service["Port"].as_u64().and_then(|p| u16::try_from(p).ok()) else {
                continue;
            };
            let weight = service["Weights"]["Passing"].as_u64().unwrap_or(1).max(1) as usize;
            match resolve(addr, port).await {
                Some(a) => {
                    set.insert(backend(a, weight));
                }
                None => log::warn!(
                    "upstream {}: consul instance {:?} has no usable address {addr:?}",
                    self.service,
                    service["ID"]
                ),
            }
        }
        // Consul's advice: an index of 0 (or less) is not a valid wait point.
        *index = new_index.max(1);
        let Some(u) = up.upgrade() else {
            return Ok(());
        };
        u.discovered(set, new_index).await;
        Ok(())
    }
}

impl Etcd {
    /// Read every key under the prefix, then follow the changes from that revision until
    /// the watch breaks (an error) or the upstream is gone (`Ok`). A read resets `backoff`.
    async fn sync(
        &self,
        client: &Client,
        endpoint: usize,
        up: &Weak<Upstream>,
        backoff: &mut Backoff,
    ) -> Result<(), String> {
        let session = self.etcd.session(client, endpoint).await?;
        let (prefix, end) = (self.prefix.as_bytes(), prefix_end(self.prefix.as_bytes()));
        let (kvs, mut revision) = session.range(prefix, Some(&end)).await?;
        backoff.reset();
        let mut targets: BTreeMap<Vec<u8>, (SocketAddr, usize)> = BTreeMap::new();
        for kv in &kvs {
            if let Some(t) = self.target(kv) {
                targets.insert(kv.key.clone(), t);
            }
        }
        match up.upgrade() {
            Some(u) => u.discovered(to_set(&targets), revision).await,
            None => return Ok(()),
        }
        let mut watch = session.watch(prefix, Some(&end), revision + 1).await?;
        loop {
            let (events, at) = tokio::select! {
                next = watch.next() => next?,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {
                    if up.strong_count() == 0 {
                        return Ok(());
                    }
                    continue;
                }
            };
            if events.is_empty() {
                continue;
            }
            for ev in events {
                match ev {
                    Event::Delete(key) => {
                        targets.remove(&key);
                    }
                    Event::Put(kv) => match self.target(&kv) {
                        Some(t) => {
                            targets.insert(kv.key, t);
                        }
                        None => {
                            targets.remove(&kv.key);
                        }
                    },
                }
            }
            revision = at.unwrap_or(revision);
            match up.upgrade() {
                Some(u) => u.discovered(to_set(&targets), revision).await,
                None => return Ok(()),
            }
        }
    }

    /// A key's target: its value `{"addr": "IP:PORT", "weight": N}`; a bad one is skipped.
    fn target(&self, kv: &Kv) -> Option<(SocketAddr, usize)> {
        let parsed = serde_json::from_slice::<Value>(&kv.value)
            .ok()
            .and_then(|v| {
                let addr = v["addr"].as_str()?.parse().ok()?;
                let weight = v["weight"].as_u64().unwrap_or(1).max(1) as usize;
                Some((addr, weight))
            });
        if parsed.is_none() {
            log::warn!(
                "etcd key {:?} under {:?} is not {{\"addr\": \"IP:PORT\", \"weight\": N}}: skipped",
                String::from_utf8_lossy(&kv.key),
                self.prefix
            );
        }
        parsed
    }
}

fn to_set(targets: &BTreeMap<Vec<u8>, (SocketAddr, usize)>) -> BTreeSet<Backend> {
    targets.values().map(|(a, w)| backend(*a, *w)).collect()
}

/// An instance's address: an IP, or a name resolved now.
async fn resolve(addr: &str, port: u16) -> Option<SocketAddr> {
    if let Ok(ip) = addr.parse::<std::net::IpAddr>() {
        return Some(SocketAddr::new(ip, port));
    }
    if addr.is_empty() {
        return None;
    }
    tokio::net::lookup_host((addr, port)).await.ok()?.next()
}

/// Record a registry's answer in the metrics.
pub fn count(upstream: &str, result: &str) {
    METRICS
        .discovery_refreshes
        .with_label_values(&[upstream, result])
        .inc();
}
