//! Targets from a registry that says when they change: the keys under an etcd prefix
//! (read, then watched from the revision read) or a Consul service's instances (blocking
//! queries on the health endpoint). One task an upstream, started by the refresh service
//! and ended when its upstream is gone (a reload replaced it). When the registry fails, the
//! last good targets stay and the task tries again with a growing pause; an etcd watch that
//! breaks is resumed by reading the prefix again (so no change is missed), a Consul index
//! that goes backwards (the agent restarted) starts the queries over.

use super::{backend, Upstream};
use crate::client::{Client, Url};
use crate::metrics::METRICS;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use bytes::Bytes;
use pingora::http::RequestHeader;
use pingora::lb::Backend;
use pingora::protocols::tls::CaType;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

const MIN_PAUSE: Duration = Duration::from_millis(200);
const MAX_PAUSE: Duration = Duration::from_secs(10);
/// An answer from a registry larger than this is refused.
const MAX_ANSWER: usize = 8 * 1024 * 1024;

pub enum Registry {
    Etcd(Etcd),
    Consul(Consul),
}

pub struct Etcd {
    pub endpoints: Vec<Url>,
    pub prefix: String,
    /// User and password for etcd's authentication.
    pub auth: Option<(String, String)>,
    pub ca: Option<Arc<CaType>>,
    pub timeout: Duration,
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
    let mut pause = MIN_PAUSE;
    let mut consul_index = 0u64;
    let mut endpoint = 0usize;
    loop {
        if up.strong_count() == 0 {
            return;
        }
        let result = match &*registry {
            Registry::Consul(c) => c.query(&client, &up, &mut consul_index).await,
            Registry::Etcd(e) => {
                let url = &e.endpoints[endpoint % e.endpoints.len()];
                let r = e.sync(&client, url, &up).await;
                if r.is_err() {
                    endpoint += 1;
                }
                r
            }
        };
        match result {
            Ok(()) => pause = MIN_PAUSE,
            Err(e) => {
                let Some(u) = up.upgrade() else { return };
                u.discovery_failed(&e);
                drop(u);
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(MAX_PAUSE);
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
        let mut req = get(&target, &self.url)?;
        if let Some(t) = &self.token {
            req.insert_header("x-consul-token", t.as_str())
                .map_err(|e| e.to_string())?;
        }
        let mut answer = client
            .open(&peer, req, None)
            .await
            .map_err(|e| e.to_string())?;
        let body = read_all(&mut answer).await?;
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
    /// the watch breaks (an error) or the upstream is gone (`Ok`).
    async fn sync(&self, client: &Client, url: &Url, up: &Weak<Upstream>) -> Result<(), String> {
        let token = match &self.auth {
            Some((user, password)) => {
                let v = self
                    .post(
                        client,
                        url,
                        "/v3/auth/authenticate",
                        None,
                        json!({"name": user, "password": password}),
                    )
                    .await?;
                Some(v["token"].as_str().ok_or("etcd gave no token")?.to_string())
            }
            None => None,
        };
        let (key, range_end) = (
            B64.encode(&self.prefix),
            B64.encode(prefix_end(&self.prefix)),
        );
        let v = self
            .post(
                client,
                url,
                "/v3/kv/range",
                token.as_deref(),
                json!({"key": key, "range_end": range_end}),
            )
            .await?;
        let mut revision = revision_of(&v)?;
        let mut targets: BTreeMap<String, (SocketAddr, usize)> = BTreeMap::new();
        for kv in v["kvs"].as_array().into_iter().flatten() {
            if let Some((k, t)) = self.target(kv) {
                targets.insert(k, t);
            }
        }
        match up.upgrade() {
            Some(u) => u.discovered(to_set(&targets), revision).await,
            None => return Ok(()),
        }

        // The watch, from the revision after the one read.
        let body = json!({"create_request": {"key": key, "range_end": range_end, "start_revision": revision + 1}});
        let mut peer = url.peer(self.timeout, self.ca.clone()).await?;
        // A watch is quiet while nothing changes: no read timeout; liveness below.
        peer.options.read_timeout = None;
        let mut req = post_header(url, "/v3/watch", token.as_deref())?;
        let body = Bytes::from(body.to_string());
        req.insert_header(http::header::CONTENT_LENGTH, body.len())
            .map_err(|e| e.to_string())?;
        let mut stream = client
            .open(&peer, req, Some(body))
            .await
            .map_err(|e| e.to_string())?;
        if stream.status != 200 {
            return Err(format!("watch: status {}", stream.status));
        }
        let mut buf: Vec<u8> = Vec::new();
        loop {
            let chunk = tokio::select! {
                c = stream.chunk() => c.map_err(|e| e.to_string())?,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {
                    if up.strong_count() == 0 {
                        return Ok(());
                    }
                    continue;
                }
            };
            let Some(chunk) = chunk else {
                return Err("the watch ended".into());
            };
            buf.extend_from_slice(&chunk);
            if buf.len() > MAX_ANSWER {
                return Err("watch message too large".into());
            }
            // One JSON object a line.
            while let Some(end) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=end).collect();
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let msg: Value = serde_json::from_slice(&line)
                    .map_err(|e| format!("watch message is not JSON: {e}"))?;
                if let Some(err) = msg.get("error") {
                    return Err(format!("watch: {err}"));
                }
                let result = &msg["result"];
                if result["canceled"].as_bool() == Some(true)
                    || result.get("compact_revision").is_some()
                {
                    return Err(format!(
                        "watch canceled: {}",
                        result["cancel_reason"].as_str().unwrap_or("compacted")
                    ));
                }
                let Some(events) = result["events"].as_array() else {
                    continue;
                };
                for ev in events {
                    let kv = &ev["kv"];
                    let key = kv["key"].as_str().unwrap_or_default().to_string();
                    if ev["type"].as_str() == Some("DELETE") {
                        targets.remove(&key);
                    } else if let Some((k, t)) = self.target(kv) {
                        targets.insert(k, t);
                    } else {
                        targets.remove(&key);
                    }
                }
                revision = revision_of(result).unwrap_or(revision);
                match up.upgrade() {
                    Some(u) => u.discovered(to_set(&targets), revision).await,
                    None => return Ok(()),
                }
            }
        }
    }

    /// A key's target: its value `{"addr": "IP:PORT", "weight": N}`; a bad one is skipped.
    fn target(&self, kv: &Value) -> Option<(String, (SocketAddr, usize))> {
        let key = kv["key"].as_str()?.to_string();
        let value = B64.decode(kv["value"].as_str().unwrap_or_default()).ok()?;
        let parsed: Option<(SocketAddr, usize)> =
            serde_json::from_slice::<Value>(&value).ok().and_then(|v| {
                let addr = v["addr"].as_str()?.parse().ok()?;
                let weight = v["weight"].as_u64().unwrap_or(1).max(1) as usize;
                Some((addr, weight))
            });
        if parsed.is_none() {
            let shown = B64
                .decode(&key)
                .map(|k| String::from_utf8_lossy(&k).into_owned())
                .unwrap_or_default();
            log::warn!(
                "etcd key {shown:?} under {:?} is not {{\"addr\": \"IP:PORT\", \"weight\": N}}: skipped",
                self.prefix
            );
        }
        Some((key, parsed?))
    }

    async fn post(
        &self,
        client: &Client,
        url: &Url,
        path: &str,
        token: Option<&str>,
        body: Value,
    ) -> Result<Value, String> {
        let peer = url.peer(self.timeout, self.ca.clone()).await?;
        let body = Bytes::from(body.to_string());
        let mut req = post_header(url, path, token)?;
        req.insert_header(http::header::CONTENT_LENGTH, body.len())
            .map_err(|e| e.to_string())?;
        let answer = tokio::time::timeout(
            self.timeout,
            client.call(
                &peer,
                req,
                Some(body),
                crate::client::Body::Keep(MAX_ANSWER),
            ),
        )
        .await
        .map_err(|_| format!("{path}: no answer within {:?}", self.timeout))?
        .map_err(|e| format!("{path}: {e}"))?;
        let v: Value = serde_json::from_slice(&answer.body)
            .map_err(|e| format!("{path}: answer is not JSON: {e}"))?;
        if answer.status != 200 {
            return Err(format!(
                "{path}: status {}: {}",
                answer.status,
                v["message"].as_str().or(v["error"].as_str()).unwrap_or("")
            ));
        }
        Ok(v)
    }
}

fn revision_of(v: &Value) -> Result<u64, String> {
    // The gateway writes 64-bit numbers as strings.
    let r = &v["header"]["revision"];
    r.as_str()
        .and_then(|s| s.parse().ok())
        .or_else(|| r.as_u64())
        .ok_or_else(|| "answer without a revision".to_string())
}

/// The end of the range of keys starting with `prefix` (etcd's "prefix + 1").
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte 0xff (or empty): to the end of the keyspace.
    vec![0]
}

fn to_set(targets: &BTreeMap<String, (SocketAddr, usize)>) -> BTreeSet<Backend> {
    targets.values().map(|(a, w)| backend(*a, *w)).collect()
}

fn get(target: &str, url: &Url) -> Result<RequestHeader, String> {
    let mut req =
        RequestHeader::build("GET", target.as_bytes(), Some(3)).map_err(|e| e.to_string())?;
    req.insert_header(http::header::HOST, url.host_header())
        .map_err(|e| e.to_string())?;
    req.insert_header(http::header::ACCEPT, "application/json")
        .map_err(|e| e.to_string())?;
    Ok(req)
}

fn post_header(url: &Url, path: &str, token: Option<&str>) -> Result<RequestHeader, String> {
    let target = format!("{}{path}", url.target.trim_end_matches('/'));
    let mut req =
        RequestHeader::build("POST", target.as_bytes(), Some(4)).map_err(|e| e.to_string())?;
    req.insert_header(http::header::HOST, url.host_header())
        .map_err(|e| e.to_string())?;
    req.insert_header(http::header::CONTENT_TYPE, "application/json")
        .map_err(|e| e.to_string())?;
    if let Some(t) = token {
        req.insert_header(http::header::AUTHORIZATION, t)
            .map_err(|e| e.to_string())?;
    }
    Ok(req)
}

async fn read_all(answer: &mut crate::client::Streaming) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    while let Some(chunk) = answer.chunk().await.map_err(|e| e.to_string())? {
        if body.len() + chunk.len() > MAX_ANSWER {
            return Err("answer too large".into());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_range_of_a_prefix_ends_past_its_last_key() {
        assert_eq!(prefix_end("/services/users/"), b"/services/users0".to_vec());
        assert_eq!(prefix_end("a\u{7f}"), b"a\x80".to_vec());
        assert_eq!(prefix_end(""), vec![0]);
    }
}
