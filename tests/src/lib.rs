//! Test kit for the end-to-end suite: real upstream servers on 127.0.0.1:0 and the real
//! `gateway` binary started on a config written for each test.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::collections::BTreeMap;
use std::io::Read;
use std::net::{SocketAddr, TcpListener as StdListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// A request as the upstream saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
    /// When the request head arrived.
    pub at: Instant,
}

#[derive(Default)]
struct State {
    name: String,
    accepted: AtomicUsize,
    requests: AtomicUsize,
    /// Delay before each answer, in milliseconds.
    delay_ms: AtomicU64,
    /// Status for ordinary requests; 0 means 200.
    status: AtomicU64,
    unhealthy: AtomicBool,
    seen: Mutex<Vec<Seen>>,
    inflight: AtomicUsize,
    max_inflight: AtomicUsize,
    /// Answer this raw body instead of the JSON description, when set.
    body: Mutex<Option<Vec<u8>>>,
}

/// An HTTP/1.1 + h2c upstream that answers JSON describing the request it got:
/// `{"upstream": NAME, "method", "uri", "headers": {..}, "body"}`. `/healthz` answers 200,
/// or 503 after [`Upstream::set_healthy`]`(false)`. A query `?status=503&delay_ms=200`
/// makes one answer fail or wait.
pub struct Upstream {
    pub addr: SocketAddr,
    state: Arc<State>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    tasks: Option<JoinSet<()>>,
}

impl Upstream {
    pub async fn start(name: &str) -> Upstream {
        Self::start_on(name, "127.0.0.1:0".parse().unwrap()).await
    }

    pub async fn start_on(name: &str, addr: SocketAddr) -> Upstream {
        let state = Arc::new(State {
            name: name.to_string(),
            ..Default::default()
        });
        Self::serve(state, addr, None).await
    }

    /// An HTTPS upstream (HTTP/1.1) with this PEM certificate chain and key.
    pub async fn start_tls(name: &str, cert_pem: &str, key_pem: &str) -> Upstream {
        let certs = rustls_pemfile::certs(&mut cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())
            .unwrap()
            .unwrap();
        let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(Arc::new(
            tokio_rustls::rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let state = Arc::new(State {
            name: name.to_string(),
            ..Default::default()
        });
        Self::serve(state, "127.0.0.1:0".parse().unwrap(), Some(acceptor)).await
    }

    async fn serve(
        state: Arc<State>,
        addr: SocketAddr,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> Upstream {
        let listener = bind_retrying(addr).await;
        let addr = listener.local_addr().unwrap();
        let mut tasks = JoinSet::new();
        let st = state.clone();
        let acceptor = tls.clone();
        tasks.spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                st.accepted.fetch_add(1, Ordering::SeqCst);
                let st = st.clone();
                let acceptor = acceptor.clone();
                conns.spawn(async move {
                    let svc = service_fn(move |req| handle(st.clone(), req));
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    match acceptor {
                        Some(a) => {
                            if let Ok(tls) = a.accept(stream).await {
                                let _ = builder.serve_connection(TokioIo::new(tls), svc).await;
                            }
                        }
                        None => {
                            let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                        }
                    }
                });
                // Reap finished connections so the set does not grow without bound.
                while conns.try_join_next().is_some() {}
            }
        });
        Upstream {
            addr,
            state,
            tls,
            tasks: Some(tasks),
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Stop listening and drop every open connection.
    pub async fn stop(&mut self) {
        if let Some(mut t) = self.tasks.take() {
            t.shutdown().await;
        }
    }

    /// Listen again on the same address, keeping counters.
    pub async fn restart(&mut self) {
        self.stop().await;
        let again = Self::serve(self.state.clone(), self.addr, self.tls.clone()).await;
        *self = again;
    }

    pub fn accepted(&self) -> usize {
        self.state.accepted.load(Ordering::SeqCst)
    }
    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }
    pub fn set_delay(&self, d: Duration) {
        self.state
            .delay_ms
            .store(d.as_millis() as u64, Ordering::SeqCst);
    }
    pub fn set_status(&self, status: u16) {
        self.state.status.store(status as u64, Ordering::SeqCst);
    }
    pub fn set_healthy(&self, healthy: bool) {
        self.state.unhealthy.store(!healthy, Ordering::SeqCst);
    }
    /// The most requests this upstream had in progress at once.
    pub fn max_inflight(&self) -> usize {
        self.state.max_inflight.load(Ordering::SeqCst)
    }
    /// Answer every request with this body (and the usual status) from now on.
    pub fn set_body(&self, body: &[u8]) {
        *self.state.body.lock().unwrap() = Some(body.to_vec());
    }
    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }
    pub fn last(&self) -> Option<Seen> {
        self.state.seen.lock().unwrap().last().cloned()
    }
}

async fn bind_retrying(addr: SocketAddr) -> TcpListener {
    let deadline = Instant::now() + Duration::from_secs(5);
    // A deep accept queue: a gateway that starts with an empty pool may open a thousand
    // connections at once.
    let bind = |addr: SocketAddr| -> std::io::Result<TcpListener> {
        let sock = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        sock.set_reuseaddr(true)?;
        sock.bind(addr)?;
        sock.listen(4096)
    };
    loop {
        match bind(addr) {
            Ok(l) => return l,
            Err(e) if Instant::now() > deadline => panic!("cannot bind {addr}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

async fn handle(
    st: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await?.to_bytes().to_vec();
    if parts.uri.path() == "/healthz" {
        let status = if st.unhealthy.load(Ordering::SeqCst) {
            503
        } else {
            200
        };
        return Ok(Response::builder()
            .status(status)
            .body(Full::new(Bytes::from_static(b"ok")))
            .unwrap());
    }
    st.requests.fetch_add(1, Ordering::SeqCst);
    let headers: BTreeMap<String, String> = parts
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let seen = Seen {
        method: parts.method.to_string(),
        uri: parts.uri.to_string(),
        headers: headers.clone(),
        body: body.clone(),
        at: Instant::now(),
    };
    st.seen.lock().unwrap().push(seen);
    let now = st.inflight.fetch_add(1, Ordering::SeqCst) + 1;
    st.max_inflight.fetch_max(now, Ordering::SeqCst);
    let answer = answer(&st, &parts, &body, headers).await;
    st.inflight.fetch_sub(1, Ordering::SeqCst);
    Ok(answer)
}

async fn answer(
    st: &State,
    parts: &http::request::Parts,
    body: &[u8],
    headers: BTreeMap<String, String>,
) -> Response<Full<Bytes>> {
    // `?status=NNN` and `?delay_ms=N` let a demo or a test ask for a failure per request.
    let query_num = |key: &str| -> Option<u64> {
        parts.uri.query()?.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            (k == key).then(|| v.parse().ok()).flatten()
        })
    };
    let delay = query_num("delay_ms").unwrap_or_else(|| st.delay_ms.load(Ordering::SeqCst));
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let status = match query_num("status").unwrap_or_else(|| st.status.load(Ordering::SeqCst)) {
        s @ 100..=599 => s as u16,
        _ => 200,
    };
    let json = serde_json::json!({
        "upstream": st.name,
        "method": parts.method.as_str(),
        "uri": parts.uri.to_string(),
        "headers": headers,
        "body": String::from_utf8_lossy(body),
    });
    let payload = match st.body.lock().unwrap().clone() {
        Some(raw) => raw,
        None => json.to_string().into_bytes(),
    };
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("x-upstream", st.name.as_str())
        .header("server", "test-upstream")
        .body(Full::new(Bytes::from(payload)))
        .unwrap()
}

/// A port that was free a moment ago, for a server a test starts later. Taken below the
/// kernel's ephemeral range (32768 and up on Linux), where a gateway under test picks its
/// own fan-out port and clients their source ports: a port handed out here and released is
/// not taken by one of those before the server it is meant for binds it.
pub fn free_port() -> u16 {
    // A port is handed out once per test process: two tests running at once can otherwise
    // both be given a port that is free now, and the second server to bind it fails (while
    // its readiness check reaches the first one).
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    for _ in 0..1000 {
        let port = fastrand::u16(20_000..32_000);
        if !given.contains(&port) && StdListener::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            return port;
        }
    }
    panic!("no free port between 20000 and 32000");
}

/// The workspace root (where `conf/` lives).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The gateway binary: `$GATEWAY_BIN`, or `gateway` next to the test's own target dir.
pub fn gateway_bin() -> PathBuf {
    if let Ok(p) = std::env::var("GATEWAY_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test> -> target/<profile>/gateway
    let dir = exe.parent().and_then(|d| d.parent()).unwrap();
    let bin = dir.join("gateway");
    assert!(
        bin.exists(),
        "{} not built: run `cargo build -p gateway` first (make test does)",
        bin.display()
    );
    bin
}

/// A child process (a gateway, a server a test needs), killed and reaped when stopped or
/// dropped.
pub struct Process(Child);

impl Process {
    pub fn stop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl From<Child> for Process {
    fn from(child: Child) -> Process {
        Process(child)
    }
}

impl std::ops::Deref for Process {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Process {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A running gateway process, killed on drop.
pub struct Gateway {
    child: Process,
    pub port: u16,
    pub admin_port: u16,
    pub dir: Arc<tempfile::TempDir>,
}

/// Where a gateway under test keeps its files and listens.
pub struct Setup {
    pub port: u16,
    pub admin_port: u16,
    pub dir: Arc<tempfile::TempDir>,
}

impl Setup {
    pub fn new() -> Setup {
        Setup {
            port: free_port(),
            admin_port: free_port(),
            dir: Arc::new(tempfile::tempdir().unwrap()),
        }
    }

    /// The `server:` block: the plain listener, the admin listener, private pid/upgrade
    /// files, access log to a file.
    pub fn server_yaml(&self) -> String {
        let d = self.dir.path().display();
        format!(
            "server:\n  listen: [\"127.0.0.1:{}\"]\n  admin: \"127.0.0.1:{}\"\n  pid_file: {d}/gw.pid\n  upgrade_sock: {d}/upgrade.sock\n  access_log: {d}/access.log\n  grace_period_secs: 0\n  graceful_shutdown_timeout_secs: 1\n",
            self.port, self.admin_port
        )
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Write `yaml` and start the gateway on it; returns once the listener accepts.
    pub fn start(self, yaml: &str) -> Gateway {
        let port = self.port;
        self.start_with(yaml, &[], port)
    }

    /// Start on the `gateway.yaml` the caller placed in the directory (a file or a link).
    pub fn start_prepared(self) -> Gateway {
        let mut gw = Gateway::spawn(&self.dir, self.port, self.admin_port, &[], "");
        gw.wait_ready(self.port);
        gw
    }

    /// Start on a config source other than the directory's file (`etcd://...`), with extra
    /// flags and environment; returns once the listener accepts.
    pub fn start_source(
        self,
        source: &str,
        args: &[&str],
        envs: &[(&str, &std::ffi::OsStr)],
    ) -> Gateway {
        let mut gw = Gateway::spawn_conf(
            &self.dir,
            self.port,
            self.admin_port,
            args,
            "",
            std::ffi::OsStr::new(source),
            envs,
        );
        gw.wait_ready(self.port);
        gw
    }

    /// Start with extra flags; returns once `ready_port` accepts, and the admin listener
    /// too when the config has it (the services start one after another).
    pub fn start_with(self, yaml: &str, args: &[&str], ready_port: u16) -> Gateway {
        std::fs::write(self.path("gateway.yaml"), yaml).unwrap();
        let mut gw = Gateway::spawn(&self.dir, self.port, self.admin_port, args, "");
        gw.wait_ready(ready_port);
        if yaml.contains(&format!("admin: \"127.0.0.1:{}\"", self.admin_port)) {
            gw.wait_ready(self.admin_port);
        }
        gw
    }
}

impl Default for Setup {
    fn default() -> Self {
        Self::new()
    }
}

impl Gateway {
    fn spawn(
        dir: &Arc<tempfile::TempDir>,
        port: u16,
        admin_port: u16,
        extra: &[&str],
        log_suffix: &str,
    ) -> Gateway {
        let conf = dir.path().join("gateway.yaml");
        Self::spawn_conf(
            dir,
            port,
            admin_port,
            extra,
            log_suffix,
            conf.as_os_str(),
            &[],
        )
    }

    fn spawn_conf(
        dir: &Arc<tempfile::TempDir>,
        port: u16,
        admin_port: u16,
        extra: &[&str],
        log_suffix: &str,
        conf: &std::ffi::OsStr,
        envs: &[(&str, &std::ffi::OsStr)],
    ) -> Gateway {
        let d = dir.path();
        let child = Command::new(gateway_bin())
            .args(extra)
            .arg("-c")
            .arg(conf)
            .envs(envs.iter().copied())
            .current_dir(workspace_root())
            .env("RUST_LOG", "info")
            .stdout(Stdio::from(
                std::fs::File::create(d.join(format!("stdout{log_suffix}.log"))).unwrap(),
            ))
            .stderr(Stdio::from(
                std::fs::File::create(d.join(format!("stderr{log_suffix}.log"))).unwrap(),
            ))
            .spawn()
            .expect("start gateway");
        Gateway {
            child: child.into(),
            port,
            admin_port,
            dir: dir.clone(),
        }
    }

    /// Start a second process on the same config with `-u`, to take the sockets over
    /// once this one gets SIGQUIT. Returns when its upgrade socket exists.
    pub fn spawn_upgrade(&self) -> Gateway {
        let sock = self.dir.path().join("upgrade.sock");
        let _ = std::fs::remove_file(&sock);
        let gw = Gateway::spawn(&self.dir, self.port, self.admin_port, &["-u"], ".new");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !sock.exists() {
            assert!(Instant::now() < deadline, "no upgrade socket");
            std::thread::sleep(Duration::from_millis(20));
        }
        gw
    }

    /// Send a signal (`QUIT`, `HUP`, `TERM`, ...).
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig}");
    }

    /// Wait up to `limit` for the process to exit; its exit code if it did.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status.code().unwrap_or(-1));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.admin_port)
    }

    /// Rewrite the config file in place (the gateway reloads it when watching).
    pub fn write_config(&self, yaml: &str) {
        // Write aside and rename, as editors and config management do.
        let tmp = self.dir.path().join("gateway.yaml.tmp");
        std::fs::write(&tmp, yaml).unwrap();
        std::fs::rename(&tmp, self.dir.path().join("gateway.yaml")).unwrap();
    }

    /// Start with the standard server block followed by `rest` (upstreams, routes).
    pub fn start(rest: &str) -> Gateway {
        let s = Setup::new();
        let yaml = format!("{}{rest}", s.server_yaml());
        s.start(&yaml)
    }

    pub fn wait_ready(&mut self, port: u16) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            // With -d the launcher exits 0 and the daemon goes on listening.
            if let Ok(Some(status)) = self.child.try_wait() {
                if !status.success() {
                    panic!("gateway exited with {status}: {}", self.stderr());
                }
            }
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("gateway did not listen on {port}: {}", self.stderr());
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn stderr(&self) -> String {
        let mut s = String::new();
        for name in ["stderr.log", "stderr.new.log"] {
            if let Ok(mut f) = std::fs::File::open(self.dir.path().join(name)) {
                let _ = f.read_to_string(&mut s);
            }
        }
        s
    }

    /// Wait (up to 2.5 s) until the access log holds at least `n` lines; all of them.
    pub async fn access_log_lines(&self, n: usize) -> Vec<serde_json::Value> {
        let mut lines = Vec::new();
        for _ in 0..50 {
            lines = self.access_log();
            if lines.len() >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        lines
    }

    /// The running config as the admin API shows it (`/admin/config`), as text.
    pub async fn admin_config_text(&self) -> String {
        client()
            .get(self.admin_url("/admin/config"))
            .send()
            .await
            .expect("GET /admin/config")
            .text()
            .await
            .unwrap_or_default()
    }

    /// The Prometheus text of the admin listener's `/metrics`.
    pub async fn metrics(&self) -> String {
        client()
            .get(self.admin_url("/metrics"))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .unwrap_or_default()
    }

    /// The access log lines written so far, parsed.
    pub fn access_log(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.path().join("access.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// A real redis-server on a free port of 127.0.0.1, stopped on drop.
pub struct RedisServer {
    child: Process,
    pub port: u16,
    password: Option<String>,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        let port = free_port();
        RedisServer {
            child: Self::spawn(port, None).into(),
            port,
            password: None,
        }
    }

    /// A server that refuses clients without `password` (`requirepass`).
    pub fn start_with_password(password: &str) -> RedisServer {
        let port = free_port();
        RedisServer {
            child: Self::spawn(port, Some(password)).into(),
            port,
            password: Some(password.to_string()),
        }
    }

    fn spawn(port: u16, password: Option<&str>) -> Child {
        let auth: Vec<&str> = password.map_or(Vec::new(), |p| vec!["--requirepass", p]);
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--port", &port.to_string()])
            .args(auth)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (make test installs it)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        child
    }

    /// Kill the server; its port stays reserved for [`RedisServer::restart`].
    pub fn stop(&mut self) {
        self.child.stop();
    }

    /// A fresh, empty server on the same port.
    pub fn restart(&mut self) {
        self.stop();
        self.child = Self::spawn(self.port, self.password.as_deref()).into();
    }

    pub fn url(&self) -> String {
        match &self.password {
            Some(p) => format!("redis://:{p}@127.0.0.1:{}", self.port),
            None => format!("redis://127.0.0.1:{}", self.port),
        }
    }
}

/// The OAuth 2.0 authorization server of `tests/oauth/provider.py` (Authlib: client
/// credentials grant, RFC 7662 introspection, RFC 7009 revocation) on a free port.
pub struct OAuthProvider {
    child: Process,
    pub port: u16,
}

impl OAuthProvider {
    pub fn start() -> OAuthProvider {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/oauth/provider.py");
        let (child, port) = python_server(script, "/stats", "introspections");
        OAuthProvider {
            child: child.into(),
            port,
        }
    }

    fn spawn(port: u16) -> Child {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/oauth/provider.py");
        let child = Command::new("python3")
            .args([script, &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 with authlib and flask (make test installs them)");
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "the OAuth provider did not listen"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        child
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Stop the server (its port stays free for [`OAuthProvider::restart`]).
    pub fn stop(&mut self) {
        self.child.stop();
    }

    pub fn restart(&mut self) {
        self.stop();
        self.child = Self::spawn(self.port).into();
    }

    async fn post(
        &self,
        path: &str,
        client: (&str, &str),
        body: String,
    ) -> (u16, serde_json::Value) {
        let r = crate::client()
            .post(self.url(path))
            .basic_auth(client.0, Some(client.1))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .expect("provider answers");
        let status = r.status().as_u16();
        let body = r.bytes().await.unwrap_or_default();
        (status, serde_json::from_slice(&body).unwrap_or_default())
    }

    /// A token for `client` through the client credentials grant.
    pub async fn token(&self, client: &str, secret: &str, scope: Option<&str>) -> String {
        let mut body = "grant_type=client_credentials".to_string();
        if let Some(s) = scope {
            body.push_str(&format!("&scope={}", s.replace(' ', "+")));
        }
        let (status, v) = self.post("/oauth/token", (client, secret), body).await;
        assert_eq!(status, 200, "{v}");
        v["access_token"]
            .as_str()
            .expect("access_token")
            .to_string()
    }

    /// Revoke `token` (RFC 7009), as the client it was issued to.
    pub async fn revoke(&self, client: &str, secret: &str, token: &str) {
        let (status, v) = self
            .post("/oauth/revoke", (client, secret), format!("token={token}"))
            .await;
        assert_eq!(status, 200, "{v}");
    }

    /// How many introspection calls the provider answered so far.
    pub async fn introspections(&self) -> u64 {
        let (_, _, v) = get_json(&crate::client(), &self.url("/stats")).await;
        v["introspections"].as_u64().expect("stats")
    }

    /// Sign JWT access tokens with a new key from now on (the old one leaves the JWKS).
    pub async fn rotate(&self) {
        crate::client()
            .post(self.url("/admin/rotate"))
            .send()
            .await
            .expect("provider answers");
    }

    /// Answer introspection calls `ms` late from now on.
    pub async fn set_delay(&self, ms: u64) {
        crate::client()
            .post(self.url(&format!("/admin/delay?ms={ms}")))
            .send()
            .await
            .expect("provider answers");
    }
}

/// One request on a new connection, its answer as text; `None` on any socket error (a
/// server still starting may refuse or reset the connection).
fn ask(port: u16, request: &[u8]) -> Option<String> {
    use std::io::Write;
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
    s.write_all(request).ok()?;
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    Some(String::from_utf8_lossy(&out).into_owned())
}

/// Start a Python test server (`SCRIPT PORT`) on a free port; returns once a GET of `probe`
/// answers with `marker` in it, so the port is known to be this server's. One that exits at
/// start (its port was taken meanwhile) is started again on another port.
fn python_server(script: &str, probe: &str, marker: &str) -> (Child, u16) {
    let request = format!("GET {probe} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    for _ in 0..3 {
        let port = free_port();
        let mut child = Command::new("python3")
            .args([script, &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 with the test servers' packages (make test installs them)");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            let answers = ask(port, request.as_bytes()).is_some_and(|a| a.contains(marker));
            if answers {
                return (child, port);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{script} did not answer on {port}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    panic!("{script} could not start");
}

/// A real etcd server (Debian's etcd-server) on free ports of 127.0.0.1 with its own data
/// directory, stopped on drop. Keys are written through etcd's JSON gateway (`/v3/...`).
pub struct EtcdServer {
    child: Process,
    pub port: u16,
    peer_port: u16,
    dir: tempfile::TempDir,
    /// With https: the certificate and key files.
    tls: Option<(PathBuf, PathBuf)>,
    /// With authentication on: the root user's token.
    token: Option<String>,
}

impl EtcdServer {
    pub fn start() -> EtcdServer {
        Self::start_with(None)
    }

    /// A server that speaks https to clients, with this PEM certificate chain and key.
    pub fn start_tls(cert_pem: &str, key_pem: &str) -> EtcdServer {
        Self::start_with(Some((cert_pem, key_pem)))
    }

    fn start_with(tls: Option<(&str, &str)>) -> EtcdServer {
        let (port, peer_port) = (free_port(), free_port());
        let dir = tempfile::tempdir().unwrap();
        let tls = tls.map(|(cert, key)| {
            let (c, k) = (dir.path().join("etcd.crt"), dir.path().join("etcd.key"));
            std::fs::write(&c, cert).unwrap();
            std::fs::write(&k, key).unwrap();
            (c, k)
        });
        EtcdServer {
            child: Self::spawn(port, peer_port, dir.path(), tls.as_ref()).into(),
            port,
            peer_port,
            tls,
            dir,
            token: None,
        }
    }

    fn spawn(port: u16, peer_port: u16, dir: &Path, tls: Option<&(PathBuf, PathBuf)>) -> Child {
        let scheme = if tls.is_some() { "https" } else { "http" };
        let client = format!("{scheme}://127.0.0.1:{port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let mut child = Command::new("etcd")
            .args(["--name", "test", "--data-dir"])
            .arg(dir.join("data"))
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("test={peer}")])
            .args(tls.map_or(Vec::new(), |(c, k)| {
                vec![
                    "--cert-file".into(),
                    c.clone().into_os_string(),
                    "--key-file".into(),
                    k.clone().into_os_string(),
                ]
            }))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("etcd.log")).unwrap())
            .spawn()
            .expect("etcd (make test installs etcd-server)");
        let deadline = Instant::now() + Duration::from_secs(20);
        let ready = || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
                // Over TLS, listening is as much as can be told without a TLS client.
                && (tls.is_some() || raw(
                    port,
                    b"GET /health HTTP/1.1\r\nHost: etcd\r\nConnection: close\r\n\r\n",
                    Duration::from_millis(500),
                )
                .contains("\"health\":\"true\""))
        };
        while !ready() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("etcd did not become ready");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        child
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// Kill the server; its ports and data stay for [`EtcdServer::restart`].
    pub fn stop(&mut self) {
        self.child.stop();
    }

    pub fn restart(&mut self) {
        self.stop();
        self.child = Self::spawn(
            self.port,
            self.peer_port,
            self.dir.path(),
            self.tls.as_ref(),
        )
        .into();
    }

    async fn call(&self, path: &str, body: serde_json::Value) -> serde_json::Value {
        // The test's own calls do not check etcd's certificate; the gateway's do.
        let c = reqwest::Client::builder()
            .no_proxy()
            .danger_accept_invalid_certs(true)
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        // etcd may listen a moment before it answers.
        let deadline = Instant::now() + Duration::from_secs(10);
        let r = loop {
            let mut rb = c.post(format!("{}{path}", self.url())).json(&body);
            if let Some(t) = &self.token {
                rb = rb.header("authorization", t);
            }
            match rb.send().await {
                Ok(r) => break r,
                Err(e) if Instant::now() > deadline => panic!("etcd {path}: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        assert!(r.status().is_success(), "etcd {path}: {}", r.status());
        r.json().await.expect("etcd answers JSON")
    }

    /// Write `value` at `key`, bound to `lease` when given.
    pub async fn put(&self, key: &str, value: &str, lease: Option<i64>) {
        use base64::Engine;
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let mut body = serde_json::json!({"key": b64(key), "value": b64(value)});
        if let Some(l) = lease {
            body["lease"] = serde_json::json!(l.to_string());
        }
        self.call("/v3/kv/put", body).await;
    }

    pub async fn delete(&self, key: &str) {
        use base64::Engine;
        let key = base64::engine::general_purpose::STANDARD.encode(key);
        self.call("/v3/kv/deleterange", serde_json::json!({ "key": key }))
            .await;
    }

    /// Turn authentication on with a `root` user of this password; later calls of this
    /// harness sign in as it.
    pub async fn enable_auth(&mut self, password: &str) {
        self.call("/v3/auth/role/add", serde_json::json!({"name": "root"}))
            .await;
        self.call(
            "/v3/auth/user/add",
            serde_json::json!({"name": "root", "password": password}),
        )
        .await;
        self.call(
            "/v3/auth/user/grant",
            serde_json::json!({"user": "root", "role": "root"}),
        )
        .await;
        self.call("/v3/auth/enable", serde_json::json!({})).await;
        let v = self
            .call(
                "/v3/auth/authenticate",
                serde_json::json!({"name": "root", "password": password}),
            )
            .await;
        self.token = v["token"].as_str().map(String::from);
    }

    /// A lease that expires after `ttl_secs` unless kept alive (it is not).
    pub async fn grant(&self, ttl_secs: u64) -> i64 {
        let v = self
            .call("/v3/lease/grant", serde_json::json!({ "TTL": ttl_secs }))
            .await;
        v["ID"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .expect("lease id")
    }
}

/// The stand-in for Consul's health endpoint (`tests/consul/standin.py`): blocking queries
/// with `X-Consul-Index`, as Consul's documentation describes them.
pub struct ConsulStandin {
    child: Process,
    pub port: u16,
}

impl ConsulStandin {
    pub fn start() -> ConsulStandin {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/consul/standin.py");
        let (child, port) = python_server(script, "/admin/stats", "queries");
        ConsulStandin {
            child: child.into(),
            port,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn stop(&mut self) {
        self.child.stop();
    }

    /// Replace the service's instances: `[{"id", "address", "port", "weight", "status",
    /// "tags"}]`.
    pub async fn set_service(&self, name: &str, instances: serde_json::Value) {
        let r = crate::client()
            .put(format!("{}/admin/service/{name}", self.url()))
            .json(&instances)
            .send()
            .await
            .expect("stand-in answers");
        assert_eq!(r.status(), 200);
    }

    async fn post(&self, path: &str) {
        crate::client()
            .post(format!("{}{path}", self.url()))
            .send()
            .await
            .expect("stand-in answers");
    }

    /// As a Consul restart: the index goes back.
    pub async fn restart_index(&self) {
        self.post("/admin/restart").await;
    }

    pub async fn require_token(&self, token: &str) {
        self.post(&format!("/admin/token?value={token}")).await;
    }

    /// `{"queries": N, "blocking": N}` answered so far.
    pub async fn stats(&self) -> serde_json::Value {
        get_json(&crate::client(), &format!("{}/admin/stats", self.url()))
            .await
            .2
    }
}

/// The OTLP/HTTP trace receiver (`tests/otel/collector.py`): decodes the gateway's exports
/// with OpenTelemetry's own protocol definitions and shows the spans as JSON.
pub struct Collector {
    child: Process,
    pub port: u16,
}

impl Collector {
    pub fn start() -> Collector {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/otel/collector.py");
        let (child, port) = python_server(script, "/exports", "[");
        Collector {
            child: child.into(),
            port,
        }
    }

    /// The traces endpoint.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/v1/traces", self.port)
    }

    pub fn stop(&mut self) {
        self.child.stop();
    }

    async fn get(&self, path: &str) -> serde_json::Value {
        let (status, _, v) = get_json(
            &crate::client(),
            &format!("http://127.0.0.1:{}{path}", self.port),
        )
        .await;
        assert_eq!(status, 200, "collector {path}");
        v
    }

    async fn post(&self, path: &str) {
        crate::client()
            .post(format!("http://127.0.0.1:{}{path}", self.port))
            .send()
            .await
            .expect("collector answers");
    }

    /// Every span received so far.
    pub async fn spans(&self) -> Vec<serde_json::Value> {
        self.get("/spans")
            .await
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The spans of one trace, once at least `n` arrived (waits up to 5 s).
    pub async fn trace(&self, trace_id: &str, n: usize) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let spans: Vec<_> = self
                .spans()
                .await
                .into_iter()
                .filter(|s| s["trace_id"] == trace_id)
                .collect();
            if spans.len() >= n || Instant::now() > deadline {
                return spans;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Per export request: `{headers, spans}`.
    pub async fn exports(&self) -> Vec<serde_json::Value> {
        self.get("/exports")
            .await
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    pub async fn reset(&self) {
        self.post("/admin/reset").await;
    }

    /// Hold every later export's answer this long.
    pub async fn set_delay(&self, secs: f64) {
        self.post(&format!("/admin/delay?secs={secs}")).await;
    }
}

/// A client whose connections come from `ip` (any 127.0.0.0/8 address works on loopback).
pub fn client_from(ip: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .local_address(ip.parse::<std::net::IpAddr>().unwrap())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// A client that never uses a system proxy.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// GET `url` with `Authorization: Bearer TOKEN` (when given) and a client-sent copy of a
/// header the gateway must not let through (`spoofed`, set to `spoofed-admin`); status,
/// headers and the body as JSON (Null if not JSON).
pub async fn get_with_bearer(
    c: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    spoofed: &str,
) -> (u16, reqwest::header::HeaderMap, serde_json::Value) {
    let mut rb = c.get(url).header(spoofed, "spoofed-admin");
    if let Some(t) = token {
        rb = rb.header("authorization", format!("Bearer {t}"));
    }
    let r = rb.send().await.expect("request");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let body = r.bytes().await.unwrap_or_default();
    let v = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    (status, headers, v)
}

/// GET `url` and return status, headers and the body parsed as JSON (Null if not JSON).
pub async fn get_json(
    c: &reqwest::Client,
    url: &str,
) -> (u16, reqwest::header::HeaderMap, serde_json::Value) {
    let r = c.get(url).send().await.expect("request");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let body = r.bytes().await.unwrap_or_default();
    let v = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    (status, headers, v)
}

/// Send `n` GETs over `conns` keep-alive clients (optionally with one header) and count
/// the answers by the upstream that gave them (`x-upstream`). Every answer must be 200.
pub async fn count_by_upstream(
    url: &str,
    n: usize,
    conns: usize,
    header: Option<(&'static str, String)>,
) -> std::collections::HashMap<String, usize> {
    use std::collections::HashMap;
    let mut tasks = Vec::new();
    for w in 0..conns {
        let (url, header) = (url.to_string(), header.clone());
        tasks.push(tokio::spawn(async move {
            let c = client();
            let mut counts: HashMap<String, usize> = HashMap::new();
            for _ in (w..n).step_by(conns) {
                let mut rb = c.get(&url);
                if let Some((k, v)) = &header {
                    rb = rb.header(*k, v);
                }
                let r = rb.send().await.expect("request");
                assert_eq!(r.status(), 200);
                let who = r.headers()["x-upstream"].to_str().unwrap().to_string();
                *counts.entry(who).or_default() += 1;
            }
            counts
        }));
    }
    let mut total = HashMap::new();
    for t in tasks {
        for (k, v) in t.await.expect("client task") {
            *total.entry(k).or_default() += v;
        }
    }
    total
}

/// Send a request and parse the answer as JSON: status and body (Null if not JSON).
pub async fn send_json(rb: reqwest::RequestBuilder) -> (u16, serde_json::Value) {
    let r = rb.send().await.expect("request");
    let status = r.status().as_u16();
    let body = r.bytes().await.unwrap_or_default();
    (
        status,
        serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
    )
}

/// Send raw bytes on a new connection and read until the peer closes or `wait` passes.
pub fn raw(port: u16, bytes: &[u8], wait: Duration) -> String {
    use std::io::Write;
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(wait)).unwrap();
    s.write_all(bytes).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The status code and the JSON body (Null if none) of an answer read with [`raw`].
pub fn parse_answer(out: &str) -> (u16, serde_json::Value) {
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("");
    (
        status,
        serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
    )
}

/// Outcome of [`keepalive_load`].
#[derive(Debug, Default, Clone)]
pub struct LoadResult {
    /// The head of the first response that was not 2xx, for diagnosis.
    pub first_bad: Option<&'static str>,
    pub ok: u64,
    pub failed: u64,
    pub non_2xx: u64,
    pub reconnects: u64,
}

/// `conns` clients that never retry, each sending GET `path` over one keep-alive
/// connection, one request at a time, until `stop` is set. A client opens a new
/// connection only when a response says `Connection: close`. Any request that does not
/// get a whole response is a failure.
pub async fn keepalive_load(
    port: u16,
    path: &str,
    conns: usize,
    stop: Arc<AtomicBool>,
) -> LoadResult {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let req = format!("GET {path} HTTP/1.1\r\nHost: load.test\r\n\r\n").into_bytes();
    let mut set = JoinSet::new();
    for _ in 0..conns {
        let stop = stop.clone();
        let req = req.clone();
        set.spawn(async move {
            let mut r = LoadResult::default();
            let mut conn: Option<tokio::net::TcpStream> = None;
            let mut buf = Vec::with_capacity(4096);
            while !stop.load(Ordering::Relaxed) {
                if conn.is_none() {
                    match tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
                        Ok(c) => conn = Some(c),
                        Err(_) => {
                            r.failed += 1;
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    }
                }
                let c = conn.as_mut().unwrap();
                buf.clear();
                let mut outcome: Option<(u16, bool, String)> = None;
                if c.write_all(&req).await.is_ok() {
                    let mut chunk = [0u8; 4096];
                    loop {
                        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                            let len = head
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length:"))
                                .and_then(|v| v.trim().parse::<usize>().ok())
                                .unwrap_or(0);
                            if buf.len() >= end + 4 + len {
                                let status =
                                    head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
                                let close = head.contains("connection: close");
                                outcome = Some((status, close, head));
                                break;
                            }
                        }
                        match tokio::time::timeout(Duration::from_secs(10), c.read(&mut chunk))
                            .await
                        {
                            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                            _ => break,
                        }
                    }
                }
                match outcome {
                    Some((status, close, head)) => {
                        r.ok += 1;
                        if !(200..300).contains(&status) {
                            r.non_2xx += 1;
                            if r.first_bad.is_none() {
                                r.first_bad = Some(Box::leak(head.into_boxed_str()));
                            }
                        }
                        if close {
                            conn = None;
                            r.reconnects += 1;
                        }
                    }
                    None => {
                        r.failed += 1;
                        conn = None;
                    }
                }
            }
            r
        });
    }
    let mut total = LoadResult::default();
    while let Some(r) = set.join_next().await {
        let r = r.unwrap();
        total.ok += r.ok;
        total.failed += r.failed;
        total.non_2xx += r.non_2xx;
        total.reconnects += r.reconnects;
        total.first_bad = total.first_bad.or(r.first_bad);
    }
    total
}

/// Send each request on one keep-alive connection, reading one whole response
/// (head plus Content-Length body) before sending the next.
pub fn raw_sequence(port: u16, requests: &[&[u8]]) -> Vec<String> {
    use std::io::Write;
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut answers = Vec::new();
    for req in requests {
        s.write_all(req).unwrap();
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            if let Some(end) = out.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&out[..end]).to_ascii_lowercase();
                let len = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                if out.len() >= end + 4 + len {
                    break;
                }
            }
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
        answers.push(String::from_utf8_lossy(&out).into_owned());
    }
    answers
}

/// Assert that a gateway answer is the JSON envelope with this code.
pub fn assert_envelope(status: u16, body: &serde_json::Value, code: u16) {
    assert_eq!(status, code, "status; body {body}");
    assert_eq!(body["code"], code, "envelope code in {body}");
    assert!(body["message"].is_string(), "envelope message in {body}");
    assert!(body.get("data").is_some(), "envelope data in {body}");
}
