//! The config in etcd, against a real etcd: nodes that keep their own `server` block and
//! share upstreams and routes through one key, `gateway config push`, a bad change refused
//! by every node, etcd going away and coming back, the cache, and a whole config at a key
//! (`-c etcd://...`).

use std::process::Command;
use std::time::{Duration, Instant};
use tests::{client, gateway_bin, get_json, workspace_root, EtcdServer, Gateway, Setup, Upstream};

const KEY: &str = "gw/shared";

/// The node's own file: the test server block and where the shared config is.
fn node(s: &Setup, etcd: &EtcdServer, cache: &std::path::Path) -> String {
    format!(
        "{}  config_source: {{ etcd: \"etcd://127.0.0.1:{}/{KEY}\", cache_file: {} }}\n",
        s.server_yaml(),
        etcd.port,
        cache.display()
    )
}

/// The shared config: one route to `to`.
fn shared(a: &Upstream, b: &Upstream, to: &str) -> String {
    format!(
        "upstreams:\n  a: {{ targets: [{{ addr: \"{}\" }}] }}\n  b: {{ targets: [{{ addr: \"{}\" }}] }}\nroutes:\n  - {{ name: r, upstream: {to} }}\n",
        a.addr, b.addr
    )
}

/// `gateway config push` of `text`: whether it pushed, and what it said.
fn push(etcd: &EtcdServer, text: &str, key: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("shared.yaml");
    std::fs::write(&file, text).unwrap();
    let out = Command::new(gateway_bin())
        .args(["config", "push"])
        .arg(&file)
        .arg(format!("etcd://127.0.0.1:{}/{key}", etcd.port))
        .current_dir(workspace_root())
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// `gateway -t -c SOURCE` with `envs` set (and `GATEWAY_ETCD_CA` unset unless given).
fn check(source: &std::ffi::OsStr, envs: &[(&str, &std::ffi::OsStr)]) -> std::process::Output {
    Command::new(gateway_bin())
        .args(["-t", "-c"])
        .arg(source)
        .env_remove("GATEWAY_ETCD_CA")
        .envs(envs.iter().copied())
        .current_dir(workspace_root())
        .output()
        .unwrap()
}

async fn upstream_of(gw: &Gateway) -> String {
    let r = client().get(gw.url("/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    r.headers()["x-upstream"].to_str().unwrap().to_string()
}

/// Wait until every node answers from `want`; how long it took.
async fn until_all(gws: &[&Gateway], want: &str, limit: Duration) -> Duration {
    let t = Instant::now();
    for gw in gws {
        loop {
            let got = upstream_of(gw).await;
            if got == want {
                break;
            }
            assert!(
                t.elapsed() < limit,
                "still {got}, want {want}: {}",
                gw.stderr()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    t.elapsed()
}

async fn reload_status(gw: &Gateway) -> serde_json::Value {
    get_json(&client(), &gw.admin_url("/admin/config")).await.2["data"]["reload"].clone()
}

/// Wait until the node has refused a change, and return the fault's YAML paths.
async fn refused_paths(gw: &Gateway) -> Vec<String> {
    let t = Instant::now();
    loop {
        let status = reload_status(gw).await;
        if let Some(errs) = status["last_error"].as_array() {
            return errs
                .iter()
                .filter_map(|e| e["path"].as_str().map(String::from))
                .collect();
        }
        assert!(t.elapsed() < Duration::from_secs(5), "no refusal: {status}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_take_a_pushed_change_within_a_second_and_refuse_a_bad_one_together() {
    let etcd = EtcdServer::start();
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let (ok, said) = push(&etcd, &shared(&a, &b, "a"), KEY);
    assert!(ok, "{said}");
    let (s1, s2) = (Setup::new(), Setup::new());
    let (n1, n2) = (
        node(&s1, &etcd, &s1.path("cache.yaml")),
        node(&s2, &etcd, &s2.path("cache.yaml")),
    );
    let cache1 = s1.path("cache.yaml");
    let (gw1, gw2) = (s1.start(&n1), s2.start(&n2));
    assert_eq!(upstream_of(&gw1).await, "a");
    assert_eq!(upstream_of(&gw2).await, "a");

    // One push, both nodes, within a second.
    let (ok, said) = push(&etcd, &shared(&a, &b, "b"), KEY);
    assert!(ok, "{said}");
    let took = until_all(&[&gw1, &gw2], "b", Duration::from_secs(5)).await;
    assert!(took < Duration::from_secs(1), "the change took {took:?}");

    // A faulty file is refused by the push itself, with its YAML path: etcd keeps the good one.
    let (ok, said) = push(&etcd, &shared(&a, &b, "nope"), KEY);
    assert!(!ok);
    assert!(
        said.contains("routes[0].upstream: unknown upstream \"nope\""),
        "{said}"
    );
    assert!(said.contains("not pushed"), "{said}");

    // Written past the check (straight into etcd): every node refuses it and keeps serving.
    etcd.put(&format!("/{KEY}"), &shared(&a, &b, "nope"), None)
        .await;
    for gw in [&gw1, &gw2] {
        assert_eq!(refused_paths(gw).await, ["routes[0].upstream"]);
        assert_eq!(upstream_of(gw).await, "b");
        assert!(gw
            .metrics()
            .await
            .contains("gateway_config_reloads_total{result=\"error\"} 1"));
    }
    // A server block belongs to each node's own file.
    etcd.put(
        &format!("/{KEY}"),
        &format!("server: {{ threads: 8 }}\n{}", shared(&a, &b, "a")),
        None,
    )
    .await;
    for gw in [&gw1, &gw2] {
        let t = Instant::now();
        while !reload_status(gw)
            .await
            .to_string()
            .contains("\"path\":\"server\"")
        {
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "server block not refused: {}",
                reload_status(gw).await
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(upstream_of(gw).await, "b");
    }
    // Fixed: both take it.
    let (ok, said) = push(&etcd, &shared(&a, &b, "a"), KEY);
    assert!(ok, "{said}");
    until_all(&[&gw1, &gw2], "a", Duration::from_secs(5)).await;
    assert!(reload_status(&gw1).await["last_error"].is_null());
    // The cache holds the shared config serving now.
    let cached = std::fs::read_to_string(cache1).unwrap();
    assert_eq!(cached, shared(&a, &b, "a"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_down_keeps_nodes_serving_a_cached_config_starts_one_and_changes_resume() {
    let mut etcd = EtcdServer::start();
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    assert!(push(&etcd, &shared(&a, &b, "a"), KEY).0);
    let s1 = Setup::new();
    let n1 = node(&s1, &etcd, &s1.path("cache.yaml"));
    let cache = s1.path("cache.yaml");
    let gw1 = s1.start(&n1);
    assert_eq!(upstream_of(&gw1).await, "a");

    etcd.stop();
    let t = Instant::now();
    while !gw1
        .metrics()
        .await
        .lines()
        .any(|l| l.starts_with("gateway_config_source_errors_total ") && !l.ends_with(" 0"))
    {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "the loss of etcd went unseen"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(upstream_of(&gw1).await, "a");

    // A node that starts while etcd is down serves the last good shared config it cached.
    let s2 = Setup::new();
    std::fs::copy(&cache, s2.path("cache.yaml")).unwrap();
    let n2 = node(&s2, &etcd, &s2.path("cache.yaml"));
    let gw2 = s2.start(&n2);
    assert_eq!(upstream_of(&gw2).await, "a");
    assert!(
        gw2.stderr().contains("serving the cached config"),
        "{}",
        gw2.stderr()
    );

    // etcd back: the next change reaches both (within the longest pause, 10 s, and a read).
    etcd.restart();
    assert!(push(&etcd, &shared(&a, &b, "b"), KEY).0);
    until_all(&[&gw1, &gw2], "b", Duration::from_secs(15)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_config_at_one_key() {
    let etcd = EtcdServer::start();
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let s = Setup::new();
    let whole = |to: &str| format!("{}{}", s.server_yaml(), shared(&a, &b, to));
    assert!(push(&etcd, &whole("a"), "gw/whole").0);
    let source = format!("etcd://127.0.0.1:{}/gw/whole", etcd.port);
    // `-t` checks what the key holds.
    let out = check(source.as_ref(), &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v2 = whole("b");
    let gw = s.start_source(&source, &[], &[]);
    assert_eq!(upstream_of(&gw).await, "a");
    assert!(push(&etcd, &v2, "gw/whole").0);
    let took = until_all(&[&gw], "b", Duration::from_secs(5)).await;
    assert!(took < Duration::from_secs(1), "{took:?}");
    assert_eq!(
        reload_status(&gw).await["file"],
        format!("etcd://127.0.0.1:{}/gw/whole", etcd.port)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_cluster_demo_pushes_and_its_node_files_check() {
    let etcd = EtcdServer::start();
    let root = workspace_root().join("conf/cluster");
    let shared = std::fs::read_to_string(root.join("shared.yaml")).unwrap();
    let (ok, said) = push(&etcd, &shared, "gateway/shared");
    assert!(ok, "{said}");
    let dir = tempfile::tempdir().unwrap();
    for n in ["node-1.yaml", "node-2.yaml"] {
        // The demo's etcd listens on 2379; this one on a free port.
        let text = std::fs::read_to_string(root.join(n))
            .unwrap()
            .replace("127.0.0.1:2379", &format!("127.0.0.1:{}", etcd.port));
        let file = dir.path().join(n);
        std::fs::write(&file, text).unwrap();
        let out = check(file.as_os_str(), &[]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{n}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("(1 routes, 1 upstreams)"), "{n}: {stdout}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_etcd_authentication_on_nodes_sign_in_and_discovery_too() {
    let mut etcd = EtcdServer::start();
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    etcd.enable_auth("root-secret").await;
    etcd.put("/svc/b", &format!("{{\"addr\": \"{}\"}}", b.addr), None)
        .await;
    std::env::set_var("GW_TEST_ETCD_PASSWORD", "root-secret");
    let s = Setup::new();
    let whole = format!(
        "{}upstreams:\n  a: {{ targets: [{{ addr: \"{}\" }}] }}\n  b:\n    discovery: {{ type: etcd, endpoints: [\"{}\"], prefix: /svc/, username: root, password_env: GW_TEST_ETCD_PASSWORD }}\nroutes:\n  - {{ name: r, upstream: a }}\n  - {{ name: d, match: {{ path: {{ prefix: /d }} }}, upstream: b }}\n",
        s.server_yaml(),
        a.addr,
        etcd.url()
    );
    etcd.put("/gw/auth", &whole, None).await;
    // Without the user, etcd refuses the read and the node does not start.
    let anonymous = check(
        format!("etcd://127.0.0.1:{}/gw/auth", etcd.port).as_ref(),
        &[],
    );
    assert!(!anonymous.status.success());
    let gw = s.start_source(
        &format!("etcd://root@127.0.0.1:{}/gw/auth", etcd.port),
        &[],
        &[("GATEWAY_ETCD_PASSWORD", std::ffi::OsStr::new("root-secret"))],
    );
    assert_eq!(upstream_of(&gw).await, "a");
    let t = Instant::now();
    loop {
        let r = client().get(gw.url("/d")).send().await.unwrap();
        if r.status() == 200 {
            assert_eq!(r.headers()["x-upstream"], "b");
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "discovery did not sign in"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A change, through the signed-in watch.
    etcd.put(
        "/gw/auth",
        &whole.replace("upstream: a }", "upstream: b }"),
        None,
    )
    .await;
    until_all(&[&gw], "b", Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_https_with_the_ca_named_and_refused_without_it() {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, SanType};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let mut leaf_params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    leaf_params
        .subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
    let leaf = leaf_params.signed_by(&leaf_key, &ca, &ca_key).unwrap();
    let etcd = EtcdServer::start_tls(&leaf.pem(), &leaf_key.serialize_pem());
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let s = Setup::new();
    let ca_file = s.path("etcd-ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let whole = |to: &str| format!("{}{}", s.server_yaml(), shared(&a, &b, to));
    etcd.put("/gw/tls", &whole("a"), None).await;
    let source = format!("etcds://127.0.0.1:{}/gw/tls", etcd.port);

    // Without the CA the certificate is not trusted: nothing is read.
    let untrusting = check(source.as_ref(), &[]);
    assert!(!untrusting.status.success());
    let trusting = check(source.as_ref(), &[("GATEWAY_ETCD_CA", ca_file.as_os_str())]);
    assert!(
        trusting.status.success(),
        "{}",
        String::from_utf8_lossy(&trusting.stderr)
    );

    let next = whole("b");
    let gw = s.start_source(&source, &[], &[("GATEWAY_ETCD_CA", ca_file.as_os_str())]);
    assert_eq!(upstream_of(&gw).await, "a");
    etcd.put("/gw/tls", &next, None).await;
    until_all(&[&gw], "b", Duration::from_secs(5)).await;
}
