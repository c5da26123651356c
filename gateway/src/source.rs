//! Where the config comes from: a file, or one key of etcd that every node of a fleet
//! reads and watches.
//!
//! `gateway -c etcd://HOST:PORT[,HOST:PORT...]/KEY` reads the YAML stored at `KEY` (the
//! whole config under one key, so a change is applied whole or not at all, on every node)
//! and checks it exactly as a file is checked. A background service then watches the key:
//! each new value goes through the same compile-and-swap as a file reload; a value that
//! fails the checks is refused with its YAML paths and the node keeps serving what it had.
//! When etcd is unreachable the node keeps its config and tries again with a growing pause,
//! reading the key afresh before it watches again, so no change is missed. With
//! `--config-cache FILE`, every config applied is also written there, and a node that
//! starts while etcd is down serves the cached one.
//!
//! With `server.config_source` in a node's own file instead, the node keeps its `server`
//! block (listeners, admin, logs: what differs between nodes) and takes `upstreams`,
//! `routes` and `aggregates` from the key ([`merge`]); a change of either is a reload.
//!
//! `etcds://` speaks https (`GATEWAY_ETCD_CA` names a CA bundle); `etcd://USER@...` signs
//! in with the password in `GATEWAY_ETCD_PASSWORD`. `gateway config push FILE etcd://...`
//! checks a file as `-t` does and only then writes it.

use crate::client::{Client, Url};
use crate::config::{Config, ConfigError, ConfigErrors};
use crate::etcd::{Etcd, Event};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One call to etcd (reads and writes; the watch itself has no bound).
const TIMEOUT: Duration = Duration::from_secs(3);

/// A config kept in etcd.
pub struct EtcdSource {
    pub etcd: Etcd,
    pub key: String,
    /// The source as given, with any password left out.
    shown: String,
}

impl EtcdSource {
    /// `etcd://[USER@]HOST:PORT[,HOST:PORT...]/KEY` (or `etcds://`), `None` for anything
    /// that is not such a URL (a file path).
    pub fn parse(arg: &str) -> Option<Result<EtcdSource, String>> {
        let (tls, rest) = if let Some(r) = arg.strip_prefix("etcd://") {
            (false, r)
        } else {
            (true, arg.strip_prefix("etcds://")?)
        };
        Some(Self::parse_parts(tls, rest, arg))
    }

    fn parse_parts(tls: bool, rest: &str, arg: &str) -> Result<EtcdSource, String> {
        let (hosts, key) = rest
            .split_once('/')
            .ok_or_else(|| format!("{arg}: no key (etcd://HOST:PORT/KEY)"))?;
        if key.is_empty() {
            return Err(format!("{arg}: no key (etcd://HOST:PORT/KEY)"));
        }
        let (user, hosts) = match hosts.split_once('@') {
            Some((u, h)) => (Some(u.to_string()), h),
            None => (None, hosts),
        };
        let scheme = if tls { "https" } else { "http" };
        let endpoints = hosts
            .split(',')
            .map(|h| Url::parse(&format!("{scheme}://{h}"), h))
            .collect::<Result<Vec<_>, _>>()?;
        if endpoints.is_empty() {
            return Err(format!("{arg}: no etcd endpoint"));
        }
        let auth = match user {
            Some(u) => Some((
                u,
                std::env::var("GATEWAY_ETCD_PASSWORD")
                    .map_err(|_| format!("{arg}: a user needs GATEWAY_ETCD_PASSWORD"))?,
            )),
            None => None,
        };
        let ca = match std::env::var("GATEWAY_ETCD_CA") {
            Ok(f) if tls => {
                Some(crate::upstream::load_ca(&f).map_err(|e| format!("GATEWAY_ETCD_CA: {e}"))?)
            }
            _ => None,
        };
        Ok(EtcdSource {
            etcd: Etcd {
                endpoints,
                auth,
                ca,
                timeout: TIMEOUT,
            },
            key: format!("/{key}"),
            shown: arg.to_string(),
        })
    }

    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// For tests and tools: a source over `etcd`.
    pub fn new(etcd: Etcd, key: String) -> EtcdSource {
        let shown = format!("etcd key {key}");
        EtcdSource { etcd, key, shown }
    }

    /// The config text and the revision it was written at, from the first endpoint that
    /// answers.
    pub async fn read(&self, client: &Client) -> Result<(String, u64), String> {
        self.on_any_endpoint(|n| self.read_at(client, n)).await
    }

    async fn read_at(&self, client: &Client, n: usize) -> Result<(String, u64), String> {
        let session = self.etcd.session(client, n).await?;
        let (kvs, _) = session.range(self.key.as_bytes(), None).await?;
        let kv = kvs
            .into_iter()
            .next()
            .ok_or_else(|| format!("{}: no config at key {}", session.endpoint(), self.key))?;
        let text = String::from_utf8(kv.value)
            .map_err(|_| format!("the config at {} is not UTF-8", self.key))?;
        Ok((text, kv.mod_revision))
    }

    /// Write a config text; the revision of the write.
    pub async fn write(&self, client: &Client, text: &str) -> Result<u64, String> {
        self.on_any_endpoint(|n| async move {
            let session = self.etcd.session(client, n).await?;
            session.put(self.key.as_bytes(), text.as_bytes()).await
        })
        .await
    }

    /// `call` on each endpoint in turn until one answers; else the last one's error.
    async fn on_any_endpoint<T, F>(&self, call: impl Fn(usize) -> F) -> Result<T, String>
    where
        F: std::future::Future<Output = Result<T, String>>,
    {
        let mut last = String::new();
        for n in 0..self.etcd.endpoints.len() {
            match call(n).await {
                Ok(r) => return Ok(r),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Read the key, then follow its changes until the watch breaks; each new text goes to
    /// `apply`. Returns only on an error; a read resets `backoff`.
    pub async fn follow(
        &self,
        client: &Client,
        endpoint: usize,
        backoff: &mut crate::clock::Backoff,
        applied: &mut u64,
        apply: &impl Fn(String, u64) -> tokio::task::JoinHandle<()>,
    ) -> Result<(), String> {
        let session = self.etcd.session(client, endpoint).await?;
        let (kvs, revision) = session.range(self.key.as_bytes(), None).await?;
        backoff.reset();
        match kvs.into_iter().next() {
            Some(kv) if kv.mod_revision != *applied => {
                *applied = kv.mod_revision;
                let text = String::from_utf8_lossy(&kv.value).into_owned();
                let _ = apply(text, kv.mod_revision).await;
            }
            Some(_) => {}
            None => log::warn!(
                "config source {}: key {} is empty; the running config stays",
                self.shown,
                self.key
            ),
        }
        let mut watch = session
            .watch(self.key.as_bytes(), None, revision + 1)
            .await?;
        loop {
            let (events, _) = watch.next().await?;
            for ev in events {
                match ev {
                    Event::Put(kv) if kv.mod_revision != *applied => {
                        *applied = kv.mod_revision;
                        let text = String::from_utf8_lossy(&kv.value).into_owned();
                        let _ = apply(text, kv.mod_revision).await;
                    }
                    Event::Put(_) => {}
                    Event::Delete(_) => log::warn!(
                        "config source {}: key {} was deleted; the running config stays",
                        self.shown,
                        self.key
                    ),
                }
            }
        }
    }
}

/// Write `text` to `path` whole (aside, then renamed over it).
pub fn write_cache(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    let written = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        log::warn!("config cache {}: cannot write: {e}", path.display());
    }
}

/// The config a node serves with `server.config_source`: its own file's `server` block,
/// and the shared document's `upstreams`, `routes` and `aggregates`. A `server` block in the
/// shared document, or shared sections in the node's file, are faults.
pub fn merge(node: &str, shared: &str) -> Result<String, ConfigErrors> {
    use serde_yaml::{Mapping, Value};
    let fault = |path: &str, msg: &str| ConfigErrors(vec![ConfigError::new(path, msg)]);
    let mapping = |text: &str, what: &str| -> Result<Mapping, ConfigErrors> {
        match serde_yaml::from_str::<Value>(text) {
            Ok(Value::Mapping(m)) => Ok(m),
            Ok(Value::Null) => Ok(Mapping::new()),
            Ok(_) => Err(fault("", &format!("the {what} is not a mapping"))),
            // The whole text is parsed again below, with the line of the fault.
            Err(e) => Err(fault("", &format!("the {what}: {e}"))),
        }
    };
    let mut merged = mapping(node, "node's file")?;
    let shared = mapping(shared, "shared config in etcd")?;
    let mut errs = Vec::new();
    for key in SHARED {
        if merged.contains_key(*key) {
            errs.push(ConfigError::new(
                *key,
                "kept in etcd when server.config_source is set, not in the node's file",
            ));
        }
    }
    for (k, v) in shared {
        match k.as_str() {
            Some(key) if SHARED.contains(&key) => {
                merged.insert(k, v);
            }
            Some("server") => errs.push(ConfigError::new(
                "server",
                "each node's own file holds server; the shared config in etcd holds upstreams, routes and aggregates",
            )),
            _ => errs.push(ConfigError::new(
                k.as_str().unwrap_or(""),
                "unknown section in the shared config",
            )),
        }
    }
    if !errs.is_empty() {
        return Err(ConfigErrors(errs));
    }
    serde_yaml::to_string(&Value::Mapping(merged)).map_err(|e| fault("", &e.to_string()))
}

/// The shared config's latest text from etcd: what the reader serves whole (`-c etcd://`)
/// or merges with the node's file (`server.config_source`); the watch keeps it current.
pub type Slot = Arc<Mutex<String>>;

/// The config a process starts with, and where it came from.
pub struct Loaded {
    pub config: Config,
    /// The node's own file, absent with `-c etcd://`.
    pub node_file: Option<PathBuf>,
    /// With etcd: the source, the shared text, its revision (0 when it came from the
    /// cache) and the cache file.
    pub etcd: Option<Shared>,
}

pub struct Shared {
    pub source: Arc<EtcdSource>,
    pub slot: Slot,
    pub revision: u64,
    pub cache: Option<PathBuf>,
}

/// Why a start has no config: faults with their YAML paths, or another failure (etcd
/// unreachable with no cache, a bad source URL).
pub enum LoadError {
    Faults(ConfigErrors),
    Other(String),
}

/// Read the config named by `-c`: a file (with `server.config_source`, merged with the
/// shared config from etcd) or an etcd key. `cache` is `--config-cache`. Blocking.
pub fn load(conf: &Path, cache: Option<PathBuf>) -> Result<Loaded, LoadError> {
    let faults = |path: &str, msg: String| {
        LoadError::Faults(ConfigErrors(vec![ConfigError::new(path, msg)]))
    };
    let (source, node, cache) = match EtcdSource::parse(&conf.to_string_lossy()) {
        Some(parsed) => (Arc::new(parsed.map_err(LoadError::Other)?), None, cache),
        None => {
            let text = crate::config::read_text(conf).map_err(LoadError::Faults)?;
            let config = crate::config::parse(&text).map_err(LoadError::Faults)?;
            let Some(cs) = config.server.config_source.clone() else {
                return Ok(Loaded {
                    config,
                    node_file: None,
                    etcd: None,
                });
            };
            let source = match EtcdSource::parse(&cs.etcd) {
                Some(parsed) => parsed.map_err(|e| faults("server.config_source.etcd", e))?,
                None => {
                    return Err(faults(
                        "server.config_source.etcd",
                        "not an etcd:// or etcds:// URL".into(),
                    ))
                }
            };
            (
                Arc::new(source),
                Some(text),
                cs.cache_file.map(PathBuf::from),
            )
        }
    };
    let read = block_on(source.read(&Client::default()));
    let (shared, revision) = match (read, &cache) {
        (Ok(r), _) => r,
        (Err(e), Some(file)) if file.exists() => {
            eprintln!(
                "{}: {e}; serving the cached config {} until it answers",
                source.shown(),
                file.display()
            );
            let text = std::fs::read_to_string(file)
                .map_err(|e| LoadError::Other(format!("{}: {e}", file.display())))?;
            (text, 0)
        }
        (Err(e), _) => return Err(LoadError::Other(format!("{}: {e}", source.shown()))),
    };
    let text = match &node {
        Some(node) => merge(node, &shared).map_err(LoadError::Faults)?,
        None => shared.clone(),
    };
    let config = crate::config::parse(&text).map_err(LoadError::Faults)?;
    Ok(Loaded {
        config,
        node_file: node.map(|_| conf.to_path_buf()),
        etcd: Some(Shared {
            source,
            slot: Arc::new(Mutex::new(shared)),
            revision,
            cache,
        }),
    })
}

impl Shared {
    /// Keep the shared config read from etcd in the cache file (a process that serves does
    /// this at start; `-t` does not).
    pub fn cache_now(&self) {
        if let (Some(file), true) = (&self.cache, self.revision > 0) {
            write_cache(file, &self.slot.lock().unwrap_or_else(|p| p.into_inner()));
        }
    }

    /// What a reload reads: the shared text the watch holds, merged with the node's file
    /// read anew when there is one.
    pub fn reader(
        &self,
        node_file: Option<PathBuf>,
    ) -> Box<dyn Fn() -> Result<String, ConfigErrors> + Send + Sync> {
        let slot = self.slot.clone();
        Box::new(move || {
            let shared = slot.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let Some(path) = &node_file else {
                return Ok(shared);
            };
            merge(&crate::config::read_text(path)?, &shared)
        })
    }
}

/// A small runtime for the calls made before the server runs (reads at start, a push).
pub fn block_on<F: std::future::Future<Output = Result<T, String>>, T>(f: F) -> Result<T, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?
        .block_on(f)
}

/// The sections a shared config in etcd holds.
const SHARED: &[&str] = &["upstreams", "routes", "aggregates"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_file_and_the_shared_config_merge_and_refuse_each_others_sections() {
        let node = "server:\n  listen: [\"127.0.0.1:8080\"]\n";
        let shared = "upstreams:\n  u: { targets: [{ addr: \"127.0.0.1:9\" }] }\nroutes:\n  - { name: r, upstream: u }\n";
        let merged = merge(node, shared).unwrap();
        let cfg = crate::config::parse(&merged).unwrap();
        assert_eq!(cfg.routes.len(), 1);
        assert_eq!(cfg.server.listen[0].addr(), "127.0.0.1:8080");
        let e = merge(&format!("{node}{shared}"), "server: {}\nplugins: {}\n").unwrap_err();
        let paths: Vec<&str> = e.0.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["upstreams", "routes", "server", "plugins"]);
    }

    #[test]
    fn etcd_sources_parse_and_files_are_not_sources() {
        assert!(EtcdSource::parse("conf/gateway.yaml").is_none());
        let s = EtcdSource::parse("etcd://127.0.0.1:2379,10.0.0.2:2379/gateway/config")
            .unwrap()
            .unwrap();
        assert_eq!(s.key, "/gateway/config");
        assert_eq!(s.etcd.endpoints.len(), 2);
        assert!(!s.etcd.endpoints[0].tls);
        assert_eq!(s.etcd.endpoints[1].port, 2379);
        let s = EtcdSource::parse("etcds://etcd.internal:2379/c")
            .unwrap()
            .unwrap();
        assert!(s.etcd.endpoints[0].tls);
        assert!(EtcdSource::parse("etcd://127.0.0.1:2379").unwrap().is_err());
        assert!(EtcdSource::parse("etcd://127.0.0.1:2379/")
            .unwrap()
            .is_err());
    }
}
