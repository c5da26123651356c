//! An etcd v3 client over etcd's JSON API (`/v3/kv/range`, `/v3/kv/put`, `/v3/watch`,
//! `/v3/auth/authenticate`; etcd 3.4 and later), on the gateway's own HTTP client: what the
//! etcd discovery and the etcd config source need, nothing more. Keys and values travel
//! base64-encoded; a watch is a stream of JSON objects, one a line. A leaf beside the client.

use crate::client::{Body, Client, Streaming, Url};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use bytes::Bytes;
use pingora::http::RequestHeader;
use pingora::protocols::tls::CaType;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

/// An answer from etcd larger than this is refused.
const MAX_ANSWER: usize = 8 * 1024 * 1024;

/// Where etcd is and how to talk to it.
#[derive(Clone)]
pub struct Etcd {
    /// Client URLs, tried in turn.
    pub endpoints: Vec<Url>,
    /// User and password for etcd's authentication.
    pub auth: Option<(String, String)>,
    pub ca: Option<Arc<CaType>>,
    /// One call's bound (a watch's connect; its stream has none).
    pub timeout: Duration,
}

/// A key and its value, as read.
#[derive(Debug, Clone)]
pub struct Kv {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub mod_revision: u64,
}

/// A change a watch saw.
#[derive(Debug, Clone)]
pub enum Event {
    Put(Kv),
    Delete(Vec<u8>),
}

/// A connection to one endpoint, authenticated when etcd wants it.
pub struct Session<'a> {
    etcd: &'a Etcd,
    client: &'a Client,
    url: &'a Url,
    token: Option<String>,
}

impl Etcd {
    /// Talk to the `n`-th endpoint (modulo their number).
    pub async fn session<'a>(
        &'a self,
        client: &'a Client,
        n: usize,
    ) -> Result<Session<'a>, String> {
        let url = &self.endpoints[n % self.endpoints.len()];
        let mut s = Session {
            etcd: self,
            client,
            url,
            token: None,
        };
        if let Some((user, password)) = &self.auth {
            let v = s
                .post(
                    "/v3/auth/authenticate",
                    json!({"name": user, "password": password}),
                )
                .await?;
            s.token = Some(v["token"].as_str().ok_or("etcd gave no token")?.to_string());
        }
        Ok(s)
    }
}

impl Session<'_> {
    /// Where this session talks to.
    pub fn endpoint(&self) -> String {
        self.url.host_header()
    }

    /// The keys from `key` up to `range_end` (only `key` without one), and the revision
    /// they were read at.
    pub async fn range(
        &self,
        key: &[u8],
        range_end: Option<&[u8]>,
    ) -> Result<(Vec<Kv>, u64), String> {
        let mut body = json!({"key": B64.encode(key)});
        if let Some(end) = range_end {
            body["range_end"] = json!(B64.encode(end));
        }
        let v = self.post("/v3/kv/range", body).await?;
        let kvs = v["kvs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(kv)
            .collect();
        Ok((kvs, revision(&v["header"])?))
    }

    /// Write `value` at `key`; the revision of the write.
    pub async fn put(&self, key: &[u8], value: &[u8]) -> Result<u64, String> {
        let v = self
            .post(
                "/v3/kv/put",
                json!({"key": B64.encode(key), "value": B64.encode(value)}),
            )
            .await?;
        revision(&v["header"])
    }

    /// Follow the changes of the keys from `key` up to `range_end` (only `key` without
    /// one), from revision `start`.
    pub async fn watch(
        &self,
        key: &[u8],
        range_end: Option<&[u8]>,
        start: u64,
    ) -> Result<Watch, String> {
        let mut create = json!({"key": B64.encode(key), "start_revision": start});
        if let Some(end) = range_end {
            create["range_end"] = json!(B64.encode(end));
        }
        let body = Bytes::from(json!({ "create_request": create }).to_string());
        let mut peer = self
            .url
            .peer(self.etcd.timeout, self.etcd.ca.clone())
            .await?;
        // A watch is quiet while nothing changes: no read timeout (the caller watches the
        // time it cares about).
        peer.options.read_timeout = None;
        let req = self.header("/v3/watch", body.len())?;
        let stream = self
            .client
            .open(&peer, req, Some(body))
            .await
            .map_err(|e| e.to_string())?;
        if stream.status != 200 {
            return Err(format!("watch: status {}", stream.status));
        }
        Ok(Watch {
            stream,
            buf: Vec::new(),
        })
    }

    async fn post(&self, path: &str, body: Value) -> Result<Value, String> {
        let peer = self
            .url
            .peer(self.etcd.timeout, self.etcd.ca.clone())
            .await?;
        let body = Bytes::from(body.to_string());
        let req = self.header(path, body.len())?;
        let answer = tokio::time::timeout(
            self.etcd.timeout,
            self.client
                .call(&peer, req, Some(body), Body::Keep(MAX_ANSWER)),
        )
        .await
        .map_err(|_| format!("{path}: no answer within {:?}", self.etcd.timeout))?
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

    fn header(&self, path: &str, len: usize) -> Result<RequestHeader, String> {
        let target = format!("{}{path}", self.url.target.trim_end_matches('/'));
        let text = |e: Box<pingora::Error>| e.to_string();
        let mut req = RequestHeader::build("POST", target.as_bytes(), Some(4)).map_err(text)?;
        req.insert_header(http::header::HOST, self.url.host_header())
            .map_err(text)?;
        req.insert_header(http::header::CONTENT_TYPE, "application/json")
            .map_err(text)?;
        req.insert_header(http::header::CONTENT_LENGTH, len)
            .map_err(text)?;
        if let Some(t) = &self.token {
            req.insert_header(http::header::AUTHORIZATION, t.as_str())
                .map_err(text)?;
        }
        Ok(req)
    }
}

/// An open watch.
pub struct Watch {
    stream: Streaming,
    buf: Vec<u8>,
}

impl Watch {
    /// The next changes and the revision they bring the keys to (`Ok` with no events for
    /// etcd's own messages). An error when the watch ended or etcd canceled it (the keys
    /// were compacted past its start): read the keys again.
    pub async fn next(&mut self) -> Result<(Vec<Event>, Option<u64>), String> {
        loop {
            if let Some(end) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=end).collect();
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
                let events = result["events"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|ev| {
                        let kv = &ev["kv"];
                        if ev["type"].as_str() == Some("DELETE") {
                            let key = B64.decode(kv["key"].as_str()?).ok()?;
                            Some(Event::Delete(key))
                        } else {
                            self::kv(kv).map(Event::Put)
                        }
                    })
                    .collect();
                return Ok((events, revision(&result["header"]).ok()));
            }
            let chunk = self
                .stream
                .chunk()
                .await
                .map_err(|e| e.to_string())?
                .ok_or("the watch ended")?;
            self.buf.extend_from_slice(&chunk);
            if self.buf.len() > MAX_ANSWER {
                return Err("watch message too large".into());
            }
        }
    }
}

fn kv(v: &Value) -> Option<Kv> {
    Some(Kv {
        key: B64.decode(v["key"].as_str()?).ok()?,
        value: B64.decode(v["value"].as_str().unwrap_or_default()).ok()?,
        mod_revision: v["mod_revision"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
    })
}

/// A header's revision (etcd's JSON API writes 64-bit numbers as strings).
fn revision(header: &Value) -> Result<u64, String> {
    let r = &header["revision"];
    r.as_str()
        .and_then(|s| s.parse().ok())
        .or_else(|| r.as_u64())
        .ok_or_else(|| "answer without a revision".to_string())
}

/// The end of the range of keys starting with `prefix` (etcd's "prefix + 1").
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte 0xff (or empty): to the end of the keyspace.
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_range_of_a_prefix_ends_past_its_last_key() {
        assert_eq!(
            prefix_end(b"/services/users/"),
            b"/services/users0".to_vec()
        );
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b""), vec![0]);
    }
}
