//! DNS service discovery against a real DNS server (dnsmasq on a free port) whose records
//! change while the gateway runs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tests::{client, free_port, Gateway, Process, Upstream};

struct Dnsmasq {
    child: Process,
    hosts: PathBuf,
    pub port: u16,
}

impl Dnsmasq {
    fn start(dir: &Path, hosts: &str, extra: &[String]) -> Dnsmasq {
        let port = free_port();
        let hosts_file = dir.join("hosts");
        std::fs::write(&hosts_file, hosts).unwrap();
        let child = Command::new("dnsmasq")
            .args([
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--listen-address=127.0.0.1",
                "--bind-interfaces",
                "--no-resolv",
                "--no-hosts",
                "--user=root",
                "--local-ttl=0",
            ])
            .arg(format!("--port={port}"))
            .arg(format!("--addn-hosts={}", hosts_file.display()))
            .arg(format!("--pid-file={}", dir.join("dnsmasq.pid").display()))
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dnsmasq (make test installs it)");
        std::thread::sleep(Duration::from_millis(300));
        Dnsmasq {
            child: child.into(),
            hosts: hosts_file,
            port,
        }
    }

    /// Replace the host records; dnsmasq rereads them on SIGHUP.
    fn set_hosts(&self, hosts: &str) {
        std::fs::write(&self.hosts, hosts).unwrap();
        Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .unwrap();
    }

    fn stop(&mut self) {
        self.child.stop();
    }
}

async fn who_answers(url: &str, n: usize) -> HashMap<String, usize> {
    let c = client();
    let mut counts = HashMap::new();
    for _ in 0..n {
        let r = c.get(url).send().await.unwrap();
        let who = match r.status().as_u16() {
            200 => r.headers()["x-upstream"].to_str().unwrap().to_string(),
            s => format!("status {s}"),
        };
        *counts.entry(who).or_insert(0) += 1;
    }
    counts
}

async fn wait_for(url: &str, want: &[&str]) {
    let t = Instant::now();
    loop {
        let counts = who_answers(url, 12).await;
        let mut got: Vec<&str> = counts.keys().map(String::as_str).collect();
        got.sort();
        if got == want {
            return;
        }
        assert!(
            t.elapsed() < Duration::from_secs(6),
            "wanted {want:?}, got {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targets_follow_a_records_and_survive_a_dead_resolver() {
    let first = Upstream::start_on("one", "127.0.0.2:0".parse().unwrap()).await;
    let port = first.port();
    let second = Upstream::start_on("two", format!("127.0.0.3:{port}").parse().unwrap()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut dns = Dnsmasq::start(dir.path(), "127.0.0.2 api.svc.test\n", &[]);
    let gw = Gateway::start(&format!(
        r#"upstreams:
  api:
    discovery: {{ dns: "api.svc.test:{port}", refresh_secs: 1, resolver: "127.0.0.1:{}" }}
routes:
  - {{ name: r, upstream: api }}
"#,
        dns.port
    ));
    let url = gw.url("/");
    wait_for(&url, &["one"]).await;

    // A second address appears: it joins without a reload.
    dns.set_hosts("127.0.0.2 api.svc.test\n127.0.0.3 api.svc.test\n");
    wait_for(&url, &["one", "two"]).await;
    // The first vanishes: it leaves.
    dns.set_hosts("127.0.0.3 api.svc.test\n");
    wait_for(&url, &["two"]).await;

    // The resolver dies: the last good set keeps serving, and the failure is counted.
    dns.stop();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        who_answers(&url, 10).await,
        HashMap::from([("two".to_string(), 10)])
    );
    let m = gw.metrics().await;
    assert!(
        m.lines().any(|l| l
            .starts_with(r#"gateway_discovery_refreshes_total{result="error",upstream="api"}"#)),
        "{m}"
    );
    assert!(gw
        .stderr()
        .contains("discovery failed, keeping the last good targets"));
    drop((first, second));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srv_records_bring_ports_and_weights() {
    let heavy = Upstream::start("heavy").await;
    let light = Upstream::start("light").await;
    let dir = tempfile::tempdir().unwrap();
    let dns = Dnsmasq::start(
        dir.path(),
        "127.0.0.1 w1.svc.test\n127.0.0.1 w2.svc.test\n",
        &[
            format!(
                "--srv-host=_web._tcp.svc.test,w1.svc.test,{},0,3",
                heavy.port()
            ),
            format!(
                "--srv-host=_web._tcp.svc.test,w2.svc.test,{},0,1",
                light.port()
            ),
        ],
    );
    let gw = Gateway::start(&format!(
        r#"upstreams:
  web:
    discovery: {{ dns: "_web._tcp.svc.test", type: srv, refresh_secs: 1, resolver: "127.0.0.1:{}" }}
routes:
  - {{ name: r, upstream: web }}
"#,
        dns.port
    ));
    let counts = who_answers(&gw.url("/"), 400).await;
    assert_eq!(counts.get("heavy"), Some(&300), "{counts:?}");
    assert_eq!(counts.get("light"), Some(&100), "{counts:?}");
}
