//! Reloading the config without a restart: SIGHUP, a change of the file (polled and
//! debounced; an atomic rename or a symlink swap counts, since the path is read anew),
//! `POST /admin/reload`, or a new value of the etcd key the config lives in
//! ([`crate::source`], through [`Reloader::apply_text`]). The new text is parsed, validated
//! and compiled first; a faulty one is refused with its YAML paths and the running config
//! keeps serving. Upstreams whose definition did not change keep their pool, health state
//! and breaker.

use crate::config::{self, Config, ConfigError, ConfigErrors};
use crate::metrics::METRICS;
use crate::runtime::RuntimeHandle;
use crate::source::{EtcdSource, Slot};
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde_json::json;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What a reload did.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// A new config serves from now on. `needs_upgrade` names changed settings that only
    /// take effect in a new process (listeners, threads, ...).
    Applied {
        generation: u64,
        needs_upgrade: Vec<&'static str>,
    },
    /// The file holds the config already serving.
    Unchanged { generation: u64 },
}

struct State {
    config: Config,
    generation: u64,
    /// Hash of the file text last tried, good or bad, so a bad file is not retried on every
    /// poll.
    tried_hash: u64,
    last_error: Option<Vec<ConfigError>>,
    last_ok_unix: f64,
}

/// Reads the config's text anew (a file, or the etcd key); faults with their YAML paths.
pub type Read = Box<dyn Fn() -> Result<String, ConfigErrors> + Send + Sync>;

pub struct Reloader {
    /// Where the config comes from, as shown in logs and `/admin/config`.
    shown: String,
    read: Read,
    /// A file to watch for changes.
    path: Option<PathBuf>,
    /// The text read is that file merged with the shared config from etcd.
    merged: bool,
    handle: RuntimeHandle,
    state: Mutex<State>,
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

fn text_hash(text: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}

fn read_hash(path: &PathBuf) -> Option<u64> {
    std::fs::read_to_string(path).ok().map(|t| text_hash(&t))
}

impl Reloader {
    /// A config file; `config` is what `handle` serves now (generation 1).
    pub fn new(path: PathBuf, handle: RuntimeHandle, config: Config) -> Self {
        let read_path = path.clone();
        let read: Read = Box::new(move || config::read_text(&read_path));
        let tried_hash = read_hash(&path).unwrap_or(0);
        Self::build(
            path.display().to_string(),
            read,
            Some(path),
            handle,
            config,
            tried_hash,
        )
    }

    /// A config read by `read` (the etcd key, with the node's file `path` when there is
    /// one, watched as a config file is), shown as `shown`; `text` is what `read` gives now.
    pub fn with_reader(
        shown: String,
        read: Read,
        path: Option<PathBuf>,
        handle: RuntimeHandle,
        config: Config,
        text: &str,
    ) -> Self {
        let tried_hash = match &path {
            Some(p) => read_hash(p).unwrap_or(0),
            None => text_hash(text),
        };
        Reloader {
            merged: path.is_some(),
            ..Self::build(shown, read, path, handle, config, tried_hash)
        }
    }

    fn build(
        shown: String,
        read: Read,
        path: Option<PathBuf>,
        handle: RuntimeHandle,
        config: Config,
        tried_hash: u64,
    ) -> Self {
        let now = unix_now();
        METRICS.last_reload_success.set(now);
        METRICS.config_generation.set(1);
        Reloader {
            shown,
            read,
            merged: false,
            path,
            handle,
            state: Mutex::new(State {
                config,
                generation: 1,
                tried_hash,
                last_error: None,
                last_ok_unix: now,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Read the config anew and, if it is valid and different, serve it. Blocking (file,
    /// etcd and DNS).
    pub fn reload(&self, trigger: &str) -> Result<Outcome, ConfigErrors> {
        self.finish(trigger, (self.read)())
    }

    /// Serve `text` if it is valid and different, as a reload does. Blocking.
    pub fn apply_text(&self, text: &str, trigger: &str) -> Result<Outcome, ConfigErrors> {
        self.finish(trigger, Ok(text.to_string()))
    }

    fn finish(
        &self,
        trigger: &str,
        text: Result<String, ConfigErrors>,
    ) -> Result<Outcome, ConfigErrors> {
        // Every reload also opens the log files again, as SIGUSR1 does (logrotate).
        crate::logging::request_reopen();
        let mut st = self.lock();
        let result = text.and_then(|t| self.try_apply(&mut st, &t));
        if let Err(errs) = &result {
            // Also a text that could not be read or put together (a node file and the
            // shared config that refuse each other's sections).
            st.last_error = Some(errs.0.clone());
        }
        match &result {
            Ok(Outcome::Applied {
                generation,
                needs_upgrade,
            }) => {
                METRICS.reloads.with_label_values(&["ok"]).inc();
                METRICS.last_reload_success.set(st.last_ok_unix);
                METRICS.config_generation.set(*generation as i64);
                log::info!(
                    "config reloaded ({trigger}): generation {generation} serves {}",
                    self.shown
                );
                if !needs_upgrade.is_empty() {
                    log::warn!(
                        "config reload ({trigger}): {} changed; these take effect only after a graceful upgrade (gateway -u)",
                        needs_upgrade.join(", ")
                    );
                }
            }
            Ok(Outcome::Unchanged { .. }) => {
                METRICS.reloads.with_label_values(&["unchanged"]).inc();
            }
            Err(errs) => {
                METRICS.reloads.with_label_values(&["error"]).inc();
                for e in &errs.0 {
                    log::error!(
                        "config reload ({trigger}) refused, the running config stays: {}: {e}",
                        self.shown
                    );
                }
            }
        }
        result
    }

    fn try_apply(&self, st: &mut State, text: &str) -> Result<Outcome, ConfigErrors> {
        // What the file watch compares with: the file as it is now (with a node file and a
        // shared config, the text read is not the file's).
        st.tried_hash = match (&self.path, self.merged) {
            (Some(p), true) => read_hash(p).unwrap_or_else(|| text_hash(text)),
            _ => text_hash(text),
        };
        let outcome = self.prepare(st, text);
        match outcome {
            Ok((None, _)) => {
                st.last_error = None;
                Ok(Outcome::Unchanged {
                    generation: st.generation,
                })
            }
            Ok((Some((cfg, rt)), needs_upgrade)) => {
                self.handle.store(Arc::new(rt));
                st.generation += 1;
                st.config = cfg;
                st.last_error = None;
                st.last_ok_unix = unix_now();
                Ok(Outcome::Applied {
                    generation: st.generation,
                    needs_upgrade,
                })
            }
            Err(errs) => {
                st.last_error = Some(errs.0.clone());
                Err(errs)
            }
        }
    }

    /// The new config and its runtime (`None` when it is the one serving), and the
    /// settings that need a graceful upgrade.
    #[allow(clippy::type_complexity)]
    fn prepare(
        &self,
        st: &State,
        text: &str,
    ) -> Result<(Option<(Config, crate::runtime::Runtime)>, Vec<&'static str>), ConfigErrors> {
        let cfg = config::parse(text)?;
        // Checked before anything else: a file the config names may have gone.
        let parts = crate::compile::check(&cfg)?;
        // Deny files and JWKS files live outside the YAML: with one, a reload always rebuilds.
        let reads_files = cfg
            .server
            .ip_filter
            .as_ref()
            .is_some_and(|f| f.deny_file.is_some())
            || cfg.routes.iter().any(|r| {
                r.plugins
                    .ip_filter
                    .as_ref()
                    .is_some_and(|f| f.deny_file.is_some())
                    || r.plugins
                        .jwt
                        .as_ref()
                        .is_some_and(|j| j.keys.jwks_file.is_some())
            });
        if cfg == st.config && !reads_files {
            return Ok((None, Vec::new()));
        }
        let prev = self.handle.load_full();
        let rt = crate::compile::build(&cfg, st.generation + 1, Some(&prev), parts)?;
        let needs_upgrade = needs_upgrade(&st.config, &cfg);
        Ok((Some((cfg, rt)), needs_upgrade))
    }

    /// The running config, for `/admin/config`.
    pub fn config(&self) -> Config {
        self.lock().config.clone()
    }

    /// Generation, the last reload error (with YAML paths) and when the last good config
    /// started serving.
    pub fn status(&self) -> serde_json::Value {
        let st = self.lock();
        json!({
            "file": self.shown,
            "generation": st.generation,
            "last_success_unix": st.last_ok_unix,
            "last_error": st.last_error.as_ref().map(|errs| errs
                .iter()
                .map(|e| json!({"path": e.path, "message": e.message}))
                .collect::<Vec<_>>()),
        })
    }

    fn tried_hash(&self) -> u64 {
        self.lock().tried_hash
    }
}

/// Server settings that a running process cannot change.
fn needs_upgrade(old: &Config, new: &Config) -> Vec<&'static str> {
    let (a, b) = (&old.server, &new.server);
    let mut out = Vec::new();
    if a.error_log != b.error_log {
        out.push("server.error_log");
    }
    if !a
        .listen
        .iter()
        .map(|l| l.addr())
        .eq(b.listen.iter().map(|l| l.addr()))
    {
        out.push("server.listen");
    }
    let tls_listeners = |c: &config::ServerConfig| {
        c.tls
            .iter()
            .map(|t| (t.listen.clone(), t.cert.clone(), t.key.clone(), t.h2))
            .collect::<Vec<_>>()
    };
    if tls_listeners(a) != tls_listeners(b) {
        out.push("server.tls");
    }
    if a.threads != b.threads {
        out.push("server.threads");
    }
    if a.admin != b.admin {
        out.push("server.admin");
    }
    if a.admin_token != b.admin_token || a.admin_token_env != b.admin_token_env {
        out.push("server.admin_token");
    }
    if a.access_log != b.access_log {
        out.push("server.access_log");
    }
    if a.upgrade_sock != b.upgrade_sock || a.pid_file != b.pid_file {
        out.push("server.upgrade_sock/pid_file");
    }
    if a.grace_period_secs != b.grace_period_secs
        || a.graceful_shutdown_timeout_secs != b.graceful_shutdown_timeout_secs
    {
        out.push("server.grace_period_secs");
    }
    if a.upstream_keepalive_pool_size != b.upstream_keepalive_pool_size {
        out.push("server.upstream_keepalive_pool_size");
    }
    if a.watch_config != b.watch_config {
        out.push("server.watch_config");
    }
    if a.client_header_timeout_ms != b.client_header_timeout_ms {
        out.push("server.client_header_timeout_ms");
    }
    if a.config_source != b.config_source {
        out.push("server.config_source");
    }
    out
}

/// How often the file is read for changes. A change is applied once two reads in a row
/// agree, so an editor's partial write is not loaded.
const POLL: Duration = Duration::from_millis(200);

/// Background service: SIGHUP and the file watch.
pub struct ReloadService {
    reloader: Arc<Reloader>,
    watch_file: bool,
}

impl ReloadService {
    pub fn new(reloader: Arc<Reloader>, watch_file: bool) -> Self {
        Self {
            reloader,
            watch_file,
        }
    }

    async fn reload(&self, trigger: &'static str) {
        let r = self.reloader.clone();
        let _ = tokio::task::spawn_blocking(move || r.reload(trigger)).await;
    }
}

#[async_trait]
impl BackgroundService for ReloadService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                log::error!("cannot listen for SIGHUP: {e}");
                None
            }
        };
        let mut usr1 = match signal(SignalKind::user_defined1()) {
            Ok(s) => Some(s),
            Err(e) => {
                log::error!("cannot listen for SIGUSR1: {e}");
                None
            }
        };
        let mut tick = tokio::time::interval(POLL);
        let mut pending: Option<u64> = None;
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => None } } => {
                    self.reload("SIGHUP").await;
                }
                Some(()) = async { match usr1.as_mut() { Some(h) => h.recv().await, None => None } } => {
                    crate::logging::request_reopen();
                    log::info!("SIGUSR1: log files opened again");
                }
                _ = tick.tick(), if self.watch_file && self.reloader.path.is_some() => {
                    let Some(path) = self.reloader.path.clone() else { continue };
                    let Ok(Some(hash)) = tokio::task::spawn_blocking(move || read_hash(&path)).await else {
                        continue;
                    };
                    if hash == self.reloader.tried_hash() {
                        pending = None;
                    } else if pending == Some(hash) {
                        pending = None;
                        self.reload("file change").await;
                    } else {
                        pending = Some(hash);
                    }
                }
            }
        }
    }
}

/// The background service that follows the etcd key: each new value goes into the slot and
/// through a reload, as a file change does.
pub struct EtcdWatch {
    pub source: Arc<EtcdSource>,
    pub reloader: Arc<Reloader>,
    pub slot: Slot,
    /// The revision of the config serving at start (0: a cached one).
    pub revision: u64,
    /// Where each good shared config is written, for a start while etcd is down.
    pub cache: Option<PathBuf>,
}

#[async_trait]
impl BackgroundService for EtcdWatch {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let client = crate::client::Client::default();
        let mut applied = self.revision;
        let mut backoff = crate::clock::Backoff::new();
        let mut endpoint = 0usize;
        METRICS.config_source_revision.set(applied as i64);
        let apply = |text: String, revision: u64| {
            let (reloader, slot, cache) =
                (self.reloader.clone(), self.slot.clone(), self.cache.clone());
            tokio::task::spawn_blocking(move || {
                *slot.lock().unwrap_or_else(|p| p.into_inner()) = text.clone();
                if reloader
                    .reload(&format!("etcd revision {revision}"))
                    .is_ok()
                {
                    METRICS.config_source_revision.set(revision as i64);
                    if let Some(path) = &cache {
                        crate::source::write_cache(path, &text);
                    }
                }
            })
        };
        loop {
            // Returns only when the read or the watch failed.
            let result = tokio::select! {
                _ = shutdown.changed() => return,
                r = self.source.follow(&client, endpoint, &mut backoff, &mut applied, &apply) => r,
            };
            let Err(e) = result else { continue };
            METRICS.config_source_errors.inc();
            let pause = backoff.pause();
            log::warn!(
                "config source {}: {e}; the running config stays, trying again in {pause:?}",
                self.source.shown()
            );
            endpoint += 1;
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }
}
