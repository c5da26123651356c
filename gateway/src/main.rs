//! The `gateway` binary: parse the flags, load the config, start the Pingora server.

use clap::{Parser, Subcommand};
use gateway::access_log::AccessLog;
use gateway::admin::AdminApp;
use gateway::config::ConfigErrors;
use gateway::fanout::FanoutApp;
use gateway::guard::Guarded;
use gateway::proxy::{start_draining, Gateway};
use gateway::refresh::RefreshService;
use gateway::reload::{EtcdWatch, ReloadService, Reloader};
use gateway::source::{EtcdSource, LoadError};
use gateway::telemetry::Exporter;
use pingora::apps::http_app::HttpServer;
use pingora::apps::HttpServerOptions;
use pingora::listeners::tls::TlsSettings;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::ExecutionPhase;
use pingora::server::Server;
use pingora::services::background::{BackgroundService, GenBackgroundService};
use pingora::services::listening::Service;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(name = "gateway", version, about = "Edge proxy and API gateway")]
struct Cli {
    /// The config file, or the etcd key that holds it: etcd://HOST:PORT[,HOST:PORT]/KEY
    /// (etcds:// for https; etcd://USER@... with GATEWAY_ETCD_PASSWORD).
    #[arg(short = 'c', long = "conf", default_value = "conf/gateway.yaml")]
    conf: PathBuf,
    /// With the config in etcd: write every config applied to this file, and start from it
    /// when etcd cannot be reached.
    #[arg(long = "config-cache")]
    config_cache: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
    /// Check the config file, print every fault with its YAML path, and exit.
    #[arg(short = 't', long = "test")]
    test: bool,
    /// Run in the background (writes server.pid_file).
    #[arg(short = 'd', long = "daemon")]
    daemon: bool,
    /// Take the listening sockets over from a running gateway (graceful upgrade).
    #[arg(short = 'u', long = "upgrade")]
    upgrade: bool,
    /// Serve only the fan-out (aggregation) service of the config, to scale it on its own.
    #[arg(long = "fanout-only")]
    fanout_only: bool,
    /// Print the config's pid_file and upgrade_sock as shell assignments, and exit.
    #[arg(long = "print-paths")]
    print_paths: bool,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Work with a config kept in etcd.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
}

#[derive(Subcommand, Debug)]
enum ConfigAction {
    /// Check FILE as `-t` does and, only if it passes, write it to the etcd key.
    Push {
        file: PathBuf,
        /// etcd://HOST:PORT[,HOST:PORT]/KEY
        target: String,
    },
}

/// Print every fault of `file` with its YAML path, then `verdict` and their count; exit 1.
fn refuse(file: &std::path::Path, errs: &ConfigErrors, verdict: &str) -> ExitCode {
    for e in &errs.0 {
        eprintln!("{}: {e}", file.display());
    }
    eprintln!(
        "{}: {verdict} ({} error{})",
        file.display(),
        errs.0.len(),
        if errs.0.len() == 1 { "" } else { "s" }
    );
    ExitCode::from(1)
}

/// `gateway config push FILE etcd://...`.
fn push(file: &std::path::Path, target: &str) -> ExitCode {
    let source = match EtcdSource::parse(target) {
        Some(Ok(s)) => s,
        Some(Err(e)) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
        None => {
            eprintln!("{target}: not an etcd:// URL");
            return ExitCode::from(2);
        }
    };
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("cannot read {}: {e}", file.display());
            return ExitCode::from(1);
        }
    };
    let checked =
        gateway::config::parse(&text).and_then(|c| gateway::compile::check(&c).map(|_| c));
    if let Err(errs) = checked {
        return refuse(file, &errs, "not pushed");
    }
    let client = gateway::client::Client::default();
    match gateway::source::block_on(source.write(&client, &text)) {
        Ok(rev) => {
            println!(
                "{}: pushed to {} at revision {rev}",
                file.display(),
                source.shown()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{}: cannot write: {e}", source.shown());
            ExitCode::from(1)
        }
    }
}

/// Starts draining as soon as Pingora begins a graceful upgrade or shutdown. A background
/// service, so that it runs in the process that serves (after `-d` forks).
struct DrainWatch {
    phases: std::sync::Mutex<Option<tokio::sync::broadcast::Receiver<ExecutionPhase>>>,
}

#[async_trait::async_trait]
impl BackgroundService for DrainWatch {
    async fn start(&self, _shutdown: pingora::server::ShutdownWatch) {
        let taken = self.phases.lock().ok().and_then(|mut p| p.take());
        let Some(mut phases) = taken else { return };
        loop {
            match phases.recv().await {
                Ok(
                    ExecutionPhase::GracefulUpgradeTransferringFds
                    | ExecutionPhase::GracefulTerminate
                    | ExecutionPhase::ShutdownStarted,
                ) => start_draining(),
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    }
}

/// Starts the access log's writer thread in the process that serves: a background service
/// runs after `-d` has forked, a thread started before the fork would not be in the daemon.
struct AccessLogWriter(AccessLog);

#[async_trait::async_trait]
impl BackgroundService for AccessLogWriter {
    async fn start(&self, _shutdown: pingora::server::ShutdownWatch) {
        if let Err(e) = self.0.start_writer() {
            log::error!("access log: cannot start the writer: {e}");
        }
    }
}

fn main() -> ExitCode {
    // The process clock counts from here.
    gateway::clock::uptime();
    gateway::logging::init();
    let mut cli = Cli::parse();
    if let Some(Command::Config {
        action: ConfigAction::Push { file, target },
    }) = &cli.command
    {
        return push(file, target);
    }
    // A daemon runs from /, and a reload reads the file again later: hold on to the full
    // path, without resolving symlinks, so a swapped link (as Kubernetes mounts a
    // ConfigMap) is followed to its new target.
    if EtcdSource::parse(&cli.conf.to_string_lossy()).is_none() {
        if let Ok(full) = std::path::absolute(&cli.conf) {
            cli.conf = full;
        }
    }

    let refuse = |errs: ConfigErrors| refuse(&cli.conf, &errs, "configuration refused");
    let loaded = match gateway::source::load(&cli.conf, cli.config_cache.clone()) {
        Ok(l) => l,
        Err(LoadError::Faults(errs)) => return refuse(errs),
        Err(LoadError::Other(e)) => {
            eprintln!("{e}");
            return ExitCode::from(1);
        }
    };
    let cfg = loaded.config.clone();
    // Without an address in server.fanout, aggregates go to a fan-out service of this process
    // on a loopback port the OS chooses (checking a config binds nothing).
    let fanout = &cfg.server.fanout;
    let local_fanout = if fanout.listen.is_none() && fanout.target.is_none() && !cli.fanout_only {
        let addr = if cli.test || cli.print_paths {
            "127.0.0.1:0".to_string()
        } else {
            match std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()) {
                Ok(a) => a.to_string(),
                Err(e) => {
                    eprintln!("cannot choose a loopback port for the fan-out service: {e}");
                    return ExitCode::from(1);
                }
            }
        };
        gateway::runtime::set_local_fanout(addr.clone());
        Some(addr)
    } else {
        None
    };
    // `-t` is this compile without serving.
    let runtime = match gateway::compile::compile(&cfg, 1, None) {
        Ok(rt) => rt,
        Err(errs) => return refuse(errs),
    };
    if cli.print_paths {
        println!("pid_file={}", cfg.server.pid_file);
        println!("upgrade_sock={}", cfg.server.upgrade_sock);
        println!(
            "drain_secs={}",
            5 + cfg.server.grace_period_secs + cfg.server.graceful_shutdown_timeout_secs
        );
        return ExitCode::SUCCESS;
    }
    if cli.test {
        println!(
            "{}: configuration ok ({} routes, {} upstreams)",
            cli.conf.display(),
            cfg.routes.len(),
            cfg.upstreams.len()
        );
        return ExitCode::SUCCESS;
    }

    if let Some(path) = &cfg.server.error_log {
        if let Err(e) = gateway::logging::set_error_log(std::path::Path::new(path)) {
            eprintln!("server.error_log: cannot open {path}: {e}");
            return ExitCode::from(1);
        }
    }
    let access_log = match AccessLog::open(&cfg.server.access_log) {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "server.access_log: cannot open {}: {e}",
                cfg.server.access_log
            );
            return ExitCode::from(1);
        }
    };

    let s = &cfg.server;
    let conf = ServerConf {
        daemon: cli.daemon,
        threads: s.threads,
        pid_file: s.pid_file.clone(),
        upgrade_sock: s.upgrade_sock.clone(),
        grace_period_seconds: Some(s.grace_period_secs),
        graceful_shutdown_timeout_seconds: Some(s.graceful_shutdown_timeout_secs),
        upstream_keepalive_pool_size: s.upstream_keepalive_pool_size,
        // With -d, the daemon's stderr (a panic, say) goes to the error log too.
        error_log: s.error_log.clone(),
        // Relative paths in the config (certificates, logs) keep meaning the directory the
        // gateway was started in, also after -d.
        working_directory: std::env::current_dir().ok(),
        ..ServerConf::default()
    };
    let opt = Opt {
        upgrade: cli.upgrade,
        daemon: cli.daemon,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();

    let handle = Arc::new(arc_swap::ArcSwap::from_pointee(runtime));
    server.add_service(GenBackgroundService::new(
        "drain watch".into(),
        Arc::new(DrainWatch {
            phases: std::sync::Mutex::new(Some(server.watch_execution_phase())),
        }),
    ));
    server.add_service(GenBackgroundService::new(
        "access log".into(),
        Arc::new(AccessLogWriter(access_log.clone())),
    ));
    let reloader = Arc::new(match &loaded.etcd {
        Some(shared) => {
            let read = shared.reader(loaded.node_file.clone());
            let shown = match &loaded.node_file {
                Some(f) => format!("{} and {}", f.display(), shared.source.shown()),
                None => shared.source.shown().to_string(),
            };
            let first = read().unwrap_or_default();
            Reloader::with_reader(
                shown,
                read,
                loaded.node_file.clone(),
                handle.clone(),
                cfg.clone(),
                &first,
            )
        }
        None => Reloader::new(cli.conf.clone(), handle.clone(), cfg.clone()),
    });
    if let Some(shared) = &loaded.etcd {
        shared.cache_now();
        server.add_service(GenBackgroundService::new(
            "config source".into(),
            Arc::new(EtcdWatch {
                source: shared.source.clone(),
                reloader: reloader.clone(),
                slot: shared.slot.clone(),
                revision: shared.revision,
                cache: shared.cache.clone(),
            }),
        ));
    }
    let mut opts = HttpServerOptions::default();
    opts.h2c = true;
    // HTTP/1 connections get their idle timeout and request cap per request (proxy/head.rs);
    // h2 connections close after the same idle time.
    if s.keepalive_timeout_secs > 0 {
        opts.h2_idle_timeout = Some(Duration::from_secs(s.keepalive_timeout_secs));
    }
    let mut app = pingora::proxy::http_proxy(
        &server.configuration,
        Gateway::new(handle.clone(), access_log.clone()),
    );
    app.server_options = Some(opts);
    let mut proxy = Service::new(
        "gateway proxy".to_string(),
        Guarded::new(app, Duration::from_millis(s.client_header_timeout_ms), {
            let handle = handle.clone();
            move |local| handle.load().keepalive.rule(local)
        }),
    );
    // The fan-out service: on server.fanout.listen, or, when server.fanout names no address,
    // on the loopback port chosen at start (so a reload may add aggregates).
    let fanout_listen = s.fanout.listen.clone().or(local_fanout);
    let mut fanout_service = None;
    if let Some(addr) = &fanout_listen {
        let mut fanout = Service::new(
            "fanout".to_string(),
            HttpServer::new_app(FanoutApp::new(handle.clone())),
        );
        if s.fanout.listen.is_none() {
            // Only this process's proxy calls it; one thread idles cheaper than several.
            fanout.threads = Some(1);
        }
        fanout.add_tcp(addr);
        fanout_service = Some(server.add_service(fanout));
    } else if cli.fanout_only {
        eprintln!("--fanout-only needs server.fanout.listen");
        return ExitCode::from(1);
    }
    for l in &s.listen {
        proxy.add_tcp(l.addr());
    }
    for t in &s.tls {
        let mut tls = match TlsSettings::intermediate(&t.cert, &t.key) {
            Ok(tls) => tls,
            Err(e) => {
                eprintln!("server.tls {}: {e}", t.listen);
                return ExitCode::from(1);
            }
        };
        if t.h2 {
            tls.enable_h2();
        }
        proxy.add_tls_with_settings(&t.listen, None, tls);
    }
    if !cli.fanout_only {
        let proxy = server.add_service(proxy);
        // The proxy takes requests once the fan-out service it hands aggregates to listens.
        if let Some(fanout) = &fanout_service {
            proxy.add_dependency(fanout);
        }
    }
    if let Some(addr) = &s.admin {
        let app = AdminApp {
            runtime: handle.clone(),
            reloader: reloader.clone(),
            token: s.admin_token(),
            access_log,
        };
        let mut admin = Service::new("admin".to_string(), HttpServer::new_app(app));
        admin.add_tcp(addr);
        server.add_service(admin);
    }
    server.add_service(GenBackgroundService::new(
        "config reload".into(),
        Arc::new(ReloadService::new(reloader, s.watch_config)),
    ));
    server.add_service(GenBackgroundService::new(
        "trace export".into(),
        Arc::new(Exporter::new({
            let handle = handle.clone();
            move || handle.load().tracing.clone()
        })),
    ));
    server.add_service(GenBackgroundService::new(
        "health checks".into(),
        Arc::new(RefreshService::new(handle)),
    ));
    log::info!(
        "gateway serving {} routes on {:?}",
        cfg.routes.len(),
        s.listen
            .iter()
            .map(|l| l.addr())
            .chain(s.tls.iter().map(|t| t.listen.as_str()))
            .collect::<Vec<_>>()
    );
    server.run_forever();
}
