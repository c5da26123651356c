//! Operating the gateway: metrics, the admin API, hot reload under traffic, and graceful
//! upgrade without a failed request.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tests::{client, get_json, keepalive_load, send_json, Gateway, Setup, Upstream};

/// Load tests in this file take turns: on two cores, two of them at once would measure the
/// machine's overload rather than the gateway.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn two_routes(server: &str, a: &Upstream, b: &Upstream, v_to: &str) -> String {
    format!(
        r#"{server}upstreams:
  a: {{ targets: [{{ addr: "{}" }}] }}
  b: {{ targets: [{{ addr: "{}" }}] }}
routes:
  - {{ name: v, upstream: {v_to}, match: {{ path: {{ prefix: /v }} }} }}
  - {{ name: other, upstream: a }}
"#,
        a.addr, b.addr
    )
}

/// The value of one series, by its exact label set as Prometheus prints it.
fn series(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_carry_route_and_upstream_labels_never_paths() {
    let a = Upstream::start("a").await;
    let mut b = Upstream::start("b").await;
    let s = Setup::new();
    let yaml = format!(
        r#"{}upstreams:
  a: {{ targets: [{{ addr: "{}" }}] }}
  b:
    targets: [{{ addr: "{}" }}]
    health_check: {{ type: tcp, interval_ms: 100, unhealthy: 1, healthy: 1 }}
    circuit_breaker: {{ consecutive_failures: 1, open_secs: 60 }}
    retry: {{ attempts: 1, on: [connect_failure] }}
routes:
  - {{ name: users, upstream: a, match: {{ path: {{ prefix: /users/ }} }} }}
  - {{ name: flaky, upstream: b, match: {{ path: {{ prefix: /flaky }} }} }}
"#,
        s.server_yaml(),
        a.addr,
        b.addr
    );
    let gw = s.start(&yaml);
    let c = client();
    for i in 0..5 {
        c.get(gw.url(&format!("/users/{i}/secret-path")))
            .send()
            .await
            .unwrap();
    }
    c.post(gw.url("/users/x")).send().await.unwrap();
    c.get(gw.url("/nothing-here")).send().await.unwrap();
    b.stop().await;
    c.get(gw.url("/flaky")).send().await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;

    let m = gw.metrics().await;
    assert_eq!(
        series(
            &m,
            r#"gateway_requests_total{method="GET",route="users",status="200"}"#
        ),
        Some(5.0),
        "{m}"
    );
    assert_eq!(
        series(
            &m,
            r#"gateway_requests_total{method="POST",route="users",status="200"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        series(
            &m,
            r#"gateway_requests_total{method="GET",route="-",status="404"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        series(
            &m,
            r#"gateway_request_duration_seconds_count{route="users"}"#
        ),
        Some(6.0)
    );
    assert!(m.contains(r#"gateway_upstream_duration_seconds_count{upstream="a"} 6"#));
    assert_eq!(
        series(
            &m,
            &format!(
                r#"gateway_upstream_target_healthy{{target="{}",upstream="a"}}"#,
                a.addr
            )
        ),
        Some(1.0)
    );
    assert_eq!(
        series(
            &m,
            &format!(
                r#"gateway_upstream_target_healthy{{target="{}",upstream="b"}}"#,
                b.addr
            )
        ),
        Some(0.0)
    );
    assert_eq!(
        series(&m, r#"gateway_circuit_breaker_state{upstream="b"}"#),
        Some(1.0)
    );
    assert_eq!(
        series(
            &m,
            r#"gateway_circuit_breaker_transitions_total{to="open",upstream="b"}"#
        ),
        Some(1.0)
    );
    assert_eq!(series(&m, "gateway_config_generation"), Some(1.0));
    assert!(series(&m, "gateway_config_last_reload_success_timestamp_seconds").unwrap() > 1.7e9);
    assert!(
        !m.contains("secret-path"),
        "raw paths must never become labels"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_answers_and_refuses_a_wrong_token() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let s = Setup::new();
    let server = s.server_yaml() + "  admin_token: s3cret-token\n";
    let gw = s.start(&two_routes(&server, &a, &b, "a"));
    let c = client();

    let (status, _, body) = get_json(&c, &gw.admin_url("/healthz")).await;
    assert_eq!((status, body["code"].as_u64()), (200, Some(200)));
    let (status, _, body) = get_json(&c, &gw.admin_url("/readyz")).await;
    assert_eq!(status, 200);
    assert_eq!(body["data"]["generation"], 1);

    for auth in [None, Some("Bearer wrong"), Some("s3cret-token")] {
        let mut rb = c.get(gw.admin_url("/admin/config"));
        if let Some(a) = auth {
            rb = rb.header("authorization", a);
        }
        let r = rb.send().await.unwrap();
        assert_eq!(r.status(), 401, "{auth:?}");
        assert_eq!(r.headers()["www-authenticate"], "Bearer");
    }
    let r = c.post(gw.admin_url("/admin/reload")).send().await.unwrap();
    assert_eq!(r.status(), 401);

    let authed = |url: String| c.get(url).header("authorization", "Bearer s3cret-token");
    let (_, body) = send_json(authed(gw.admin_url("/admin/config"))).await;
    assert_eq!(
        body["data"]["config"]["server"]["admin_token"],
        "<redacted>"
    );
    assert_eq!(body["data"]["config"]["routes"][0]["name"], "v");
    assert_eq!(body["data"]["reload"]["generation"], 1);
    assert!(!body.to_string().contains("s3cret-token"));

    let (_, body) = send_json(authed(gw.admin_url("/admin/upstreams"))).await;
    let targets = &body["data"]["a"]["targets"];
    assert_eq!(targets[0]["addr"], a.addr.to_string());
    assert_eq!(targets[0]["healthy"], true);

    let (status, body) = send_json(
        c.post(gw.admin_url("/admin/reload"))
            .header("authorization", "Bearer s3cret-token"),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["message"], "unchanged");
}

/// Poll until `/v` is served by `want`; the time it took.
async fn until_served_by(c: &reqwest::Client, url: &str, want: &str) -> Duration {
    let t = Instant::now();
    loop {
        let r = c.get(url).send().await.unwrap();
        if r.headers()["x-upstream"] == want {
            return t.elapsed();
        }
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "{want} never served {url}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_reloads_under_traffic_lose_nothing() {
    let _alone = HEAVY.lock().await;
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let s = Setup::new();
    let server = s.server_yaml();
    let mut gw = s.start(&two_routes(&server, &a, &b, "a"));

    // Keep-alive clients that never retry, and a client that opens a new connection for
    // every request, both running through all the reloads.
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(keepalive_load(gw.port, "/v/load", 16, stop.clone()));
    let fresh_failures = Arc::new(AtomicU64::new(0));
    let fresh_ok = Arc::new(AtomicU64::new(0));
    let fresh = {
        let (stop, failures, ok, url) = (
            stop.clone(),
            fresh_failures.clone(),
            fresh_ok.clone(),
            gw.url("/v/fresh"),
        );
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let c = reqwest::Client::builder()
                    .no_proxy()
                    .pool_max_idle_per_host(0)
                    .build()
                    .unwrap();
                match c.get(&url).send().await {
                    Ok(r) if r.status() == 200 => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failures.fetch_add(1, Ordering::Relaxed),
                };
            }
        })
    };

    let c = client();
    let url = gw.url("/v/check");
    let mut slowest = Duration::ZERO;
    for i in 0..20 {
        let to = if i % 2 == 0 { "b" } else { "a" };
        let yaml = two_routes(&server, &a, &b, to);
        // Alternate the three triggers: file change, SIGHUP, admin API.
        match i % 3 {
            0 => gw.write_config(&yaml),
            1 => {
                std::fs::write(gw.dir.path().join("gateway.yaml"), &yaml).unwrap();
                gw.signal("HUP");
            }
            _ => {
                std::fs::write(gw.dir.path().join("gateway.yaml"), &yaml).unwrap();
                let r = c.post(gw.admin_url("/admin/reload")).send().await.unwrap();
                assert_eq!(r.status(), 200);
            }
        }
        let took = until_served_by(&c, &url, to).await;
        slowest = slowest.max(took);
    }
    assert!(
        slowest < Duration::from_secs(1),
        "a change took {slowest:?} to go live"
    );

    // A broken file is refused with its YAML path; traffic is unaffected.
    gw.write_config(&format!(
        "{server}upstreams:\n  a: {{ targets: [{{ addr: \"{}\" }}] }}\nroutes:\n  - {{ name: v, upstream: nowhere }}\n",
        a.addr
    ));
    let mut refused = serde_json::Value::Null;
    for _ in 0..50 {
        let (_, _, body) = get_json(&c, &gw.admin_url("/admin/config")).await;
        if !body["data"]["reload"]["last_error"].is_null() {
            refused = body["data"]["reload"]["last_error"].clone();
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(refused[0]["path"], "routes[0].upstream", "{refused}");
    let r = c.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["x-upstream"],
        "a",
        "the last good config still serves"
    );
    let m = gw.metrics().await;
    assert!(series(&m, r#"gateway_config_reloads_total{result="error"}"#).unwrap() >= 1.0);
    assert_eq!(series(&m, "gateway_config_generation"), Some(21.0));

    stop.store(true, Ordering::Relaxed);
    let result = load.await.unwrap();
    fresh.await.unwrap();
    assert_eq!(result.failed, 0, "{result:?}");
    assert_eq!(result.non_2xx, 0, "{result:?}");
    assert!(result.ok > 100, "{result:?}");
    assert_eq!(fresh_failures.load(Ordering::Relaxed), 0);
    assert!(fresh_ok.load(Ordering::Relaxed) > 10);
    assert!(
        gw.wait_exit(Duration::from_millis(10)).is_none(),
        "{}",
        gw.stderr()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubernetes_style_symlink_swap_reloads() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let s = Setup::new();
    let server = s.server_yaml();
    let dir = s.dir.path().to_path_buf();
    // gateway.yaml -> ..data/gateway.yaml, ..data -> v1: the layout of a mounted ConfigMap.
    for (version, to) in [("v1", "a"), ("v2", "b")] {
        std::fs::create_dir(dir.join(version)).unwrap();
        std::fs::write(
            dir.join(version).join("gateway.yaml"),
            two_routes(&server, &a, &b, to),
        )
        .unwrap();
    }
    std::os::unix::fs::symlink("v1", dir.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/gateway.yaml", dir.join("gateway.yaml")).unwrap();
    let gw = s.start_prepared();
    let c = client();
    let url = gw.url("/v/x");
    until_served_by(&c, &url, "a").await;
    // Swap the link atomically, as the kubelet does.
    std::os::unix::fs::symlink("v2", dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    let took = until_served_by(&c, &url, "b").await;
    assert!(took < Duration::from_secs(1), "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_keeps_breaker_state_of_unchanged_upstreams_and_reports_listener_changes() {
    let a = Upstream::start("a").await;
    a.set_status(500);
    let s = Setup::new();
    let server = s.server_yaml();
    let yaml = |route: &str, open_secs: u32| {
        format!(
            "{server}upstreams:\n  a:\n    targets: [{{ addr: \"{}\" }}]\n    circuit_breaker: {{ consecutive_failures: 2, open_secs: {open_secs} }}\nroutes:\n  - {{ name: {route}, upstream: a }}\n",
            a.addr
        )
    };
    let gw = s.start(&yaml("r1", 60));
    let c = client();
    for _ in 0..2 {
        assert_eq!(get_json(&c, &gw.url("/")).await.0, 500);
    }
    assert_eq!(get_json(&c, &gw.url("/")).await.0, 503, "breaker open");

    // A route change keeps the upstream, and its open breaker.
    std::fs::write(gw.dir.path().join("gateway.yaml"), yaml("r2", 60)).unwrap();
    let r = c.post(gw.admin_url("/admin/reload")).send().await.unwrap();
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["data"]["generation"], 2, "{body}");
    let (status, _, body) = get_json(&c, &gw.url("/")).await;
    assert_eq!(status, 503, "{body}");

    // A changed upstream definition starts afresh.
    std::fs::write(gw.dir.path().join("gateway.yaml"), yaml("r2", 59)).unwrap();
    c.post(gw.admin_url("/admin/reload")).send().await.unwrap();
    assert_eq!(
        get_json(&c, &gw.url("/")).await.0,
        500,
        "new breaker, closed"
    );

    // Listener changes need an upgrade: applied otherwise, and reported.
    let moved = yaml("r3", 59).replace(
        &format!("127.0.0.1:{}\"]", gw.port),
        &format!("127.0.0.1:{}\"]", tests::free_port()),
    );
    std::fs::write(gw.dir.path().join("gateway.yaml"), moved).unwrap();
    let (_, body) = send_json(c.post(gw.admin_url("/admin/reload"))).await;
    assert_eq!(body["data"]["needs_upgrade"][0], "server.listen", "{body}");
    assert_eq!(
        get_json(&c, &gw.url("/")).await.0,
        500,
        "still listening where it was"
    );
}

async fn upgrade_under_load(conns: usize) {
    let u = Upstream::start("u").await;
    let s = Setup::new();
    let yaml = format!(
        // The new process starts with an empty upstream pool and opens up to `conns`
        // connections at once; a generous connect timeout keeps that burst from being
        // mistaken for a failure of the handover.
        "{}  grace_period_secs: 1\nupstreams:\n  u: {{ targets: [{{ addr: \"{}\" }}], timeouts: {{ connect_ms: 5000 }} }}\nroutes:\n  - {{ name: r, upstream: u }}\n",
        s.server_yaml().replace("  grace_period_secs: 0\n", ""),
        u.addr
    );
    let mut old = s.start(&yaml);
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(keepalive_load(old.port, "/up", conns, stop.clone()));
    tokio::time::sleep(Duration::from_millis(1000)).await;

    let mut new = tokio::task::block_in_place(|| old.spawn_upgrade());
    old.signal("QUIT");
    let exited = tokio::task::block_in_place(|| old.wait_exit(Duration::from_secs(20)));
    assert!(
        exited.is_some(),
        "the old process drains and exits: {}",
        old.stderr()
    );
    // Traffic keeps flowing to the new process.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let result = load.await.unwrap();
    assert_eq!(
        result.failed,
        0,
        "{conns} connections: {result:?}\n{}",
        new.stderr()
    );
    assert_eq!(result.non_2xx, 0, "{result:?}");
    assert!(
        result.reconnects >= conns as u64,
        "every connection moved over: {result:?}"
    );
    assert!(
        new.wait_exit(Duration::from_millis(10)).is_none(),
        "new process serving"
    );
    let (status, _, _) = get_json(&client(), &new.url("/after")).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_upgrade_loses_nothing_at_200_and_1000_keepalive_connections() {
    let _alone = HEAVY.lock().await;
    upgrade_under_load(200).await;
    upgrade_under_load(1000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traceparent_is_continued_or_started() {
    let u = Upstream::start("u").await;
    let gw = Gateway::start(&format!(
        "upstreams:\n  u: {{ targets: [{{ addr: \"{}\" }}] }}\nroutes:\n  - {{ name: r, upstream: u }}\n",
        u.addr
    ));
    let c = client();
    let sent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    c.get(gw.url("/t"))
        .header("traceparent", sent)
        .send()
        .await
        .unwrap();
    let got = u.last().unwrap().headers["traceparent"].clone();
    assert_eq!(&got[..36], &sent[..36], "same trace id: {got}");
    assert_ne!(&got[36..52], &sent[36..52], "a new parent id for this hop");
    assert!(got.ends_with("-01"));

    c.get(gw.url("/t"))
        .header("traceparent", "garbage")
        .send()
        .await
        .unwrap();
    let got = u.last().unwrap().headers["traceparent"].clone();
    assert_eq!(got.len(), 55, "{got}");
    assert!(got.starts_with("00-") && !got.contains("garbage"));

    let lines = gw.access_log_lines(2).await;
    assert_eq!(lines[0]["trace_id"], "0af7651916cd43dd8448eb211c80319c");
    assert_eq!(lines[1]["trace_id"], &got[3..35]);
}

/// Every `gateway_*` metric named in a text, without histogram suffixes.
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("gateway_") {
        let name: String = rest[i..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || *c == '_')
            .collect();
        let base = ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(&name)
            .to_string();
        out.insert(base);
        rest = &rest[i + name.len()..];
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alert_rules_and_dashboard_use_metrics_the_gateway_exports() {
    let a = Upstream::start("a").await;
    let dead = tests::free_port();
    let gw = Gateway::start(&format!(
        r#"  redis: {{ url: "redis://127.0.0.1:{dead}", timeout_ms: 50 }}
upstreams:
  u:
    targets: [{{ addr: "127.0.0.1:{dead}" }}, {{ addr: "{}" }}]
    failure_eject_ms: 0
    health_check: {{ type: tcp, interval_ms: 100 }}
    circuit_breaker: {{ consecutive_failures: 100 }}
    retry: {{ attempts: 1, on: [connect_failure] }}
  v:
    targets: [{{ addr: "127.0.0.1:{dead}" }}]
    circuit_breaker: {{ consecutive_failures: 1 }}
routes:
  - {{ name: r, upstream: u }}
  - {{ name: v, upstream: v, match: {{ path: {{ prefix: /v }} }} }}
  - name: limited
    match: {{ path: {{ prefix: /limited }} }}
    upstream: u
    plugins:
      rate_limit:
        - {{ algorithm: token_bucket, limit: 1, window_secs: 60 }}
        - {{ algorithm: sliding_window, limit: 9, store: redis }}
"#,
        a.addr
    ));
    let c = client();
    for _ in 0..4 {
        c.get(gw.url("/")).send().await.unwrap();
    }
    for _ in 0..3 {
        c.get(gw.url("/limited")).send().await.unwrap();
    }
    c.get(gw.url("/v")).send().await.unwrap();
    c.post(gw.admin_url("/admin/reload")).send().await.unwrap();
    let scrape = gw.metrics().await;
    let exported: std::collections::BTreeSet<String> = scrape
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect();
    let root = tests::workspace_root().join("conf");
    for file in ["alerts.yml", "grafana-dashboard.json"] {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        let used = metric_names(&text);
        assert!(used.len() >= 4, "{file}: {used:?}");
        let missing: Vec<_> = used.difference(&exported).collect();
        assert!(
            missing.is_empty(),
            "{file} uses metrics the gateway does not export: {missing:?}"
        );
    }
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("grafana-dashboard.json")).unwrap(),
    )
    .unwrap();
    assert!(dashboard["panels"].as_array().unwrap().len() >= 8);
}

/// Every credential a config holds (the admin token, the Redis password, a JWKS URL's
/// userinfo and query) stays out of every admin answer, every log line and `-t`'s report,
/// and still works where it is used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_of_the_config_shows_in_admin_answers_or_logs() {
    let secrets = [
        "adm-SECRET-a1",
        "rds-SECRET-b2",
        "jwk-SECRET-c3",
        "jwk-SECRET-d4",
        "rds-SECRET-e5",
    ];
    let redis = tests::RedisServer::start_with_password(secrets[1]);
    let u = Upstream::start("u").await;
    let dead = tests::free_port();
    let s = Setup::new();
    let config = |redis_url: &str| {
        format!(
            r#"{}  admin_token: {}
  redis: {{ url: "{redis_url}" }}
upstreams:
  u: {{ targets: [{{ addr: "{}" }}] }}
routes:
  - name: limited
    match: {{ path: {{ prefix: /limited }} }}
    upstream: u
    plugins: {{ rate_limit: [{{ algorithm: sliding_window, limit: 2, window_secs: 60, store: redis }}] }}
  - name: keys
    match: {{ path: {{ prefix: /keys }} }}
    upstream: u
    plugins:
      jwt:
        algorithms: [RS256]
        keys: {{ jwks_url: "http://jwks-user:{}@127.0.0.1:{dead}/keys.json?api_key={}", timeout_ms: 200 }}
"#,
            s.server_yaml(),
            secrets[0],
            u.addr,
            secrets[2],
            secrets[3],
        )
    };
    let good = config(&redis.url());
    let broken = config(&format!("notredis://:{}@127.0.0.1:1", secrets[4]));
    let dir = s.dir.clone();
    let mut gw = s.start(&good);
    let c = client();

    // The password works: the shared limit counts in Redis.
    let statuses: Vec<u16> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(
                c.get(gw.url("/limited"))
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16(),
            );
        }
        v
    };
    assert_eq!(statuses, [200, 200, 429]);
    // The JWKS URL is tried (and fails: nothing listens there).
    assert_eq!(c.get(gw.url("/keys")).send().await.unwrap().status(), 401);

    let authed =
        |rb: reqwest::RequestBuilder| rb.header("authorization", format!("Bearer {}", secrets[0]));
    let mut answers = String::new();
    for path in [
        "/admin/config",
        "/admin/upstreams",
        "/admin/bans",
        "/metrics",
        "/healthz",
        "/readyz",
    ] {
        let r = authed(c.get(gw.admin_url(path))).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        answers += &r.text().await.unwrap();
    }
    let (_, config_answer) = send_json(authed(c.get(gw.admin_url("/admin/config")))).await;
    let server = &config_answer["data"]["config"]["server"];
    assert_eq!(server["admin_token"], "<redacted>");
    assert_eq!(
        server["redis"]["url"],
        format!("redis://:<redacted>@127.0.0.1:{}", redis.port),
        "where it points stays visible"
    );
    assert_eq!(
        config_answer["data"]["config"]["routes"][1]["plugins"]["jwt"]["keys"]["jwks_url"],
        format!("http://jwks-user:<redacted>@127.0.0.1:{dead}/keys.json?api_key=<redacted>")
    );

    // A refused reload of a file holding a secret in a bad value.
    gw.write_config(&broken);
    let r = authed(c.post(gw.admin_url("/admin/reload")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    answers += &r.text().await.unwrap();
    let r = authed(c.get(gw.admin_url("/admin/config")))
        .send()
        .await
        .unwrap();
    answers += &r.text().await.unwrap();
    let check = std::process::Command::new(tests::gateway_bin())
        .arg("-t")
        .arg("-c")
        .arg(dir.path().join("gateway.yaml"))
        .output()
        .unwrap();
    assert!(!check.status.success());
    let report = String::from_utf8_lossy(&check.stdout).into_owned()
        + &String::from_utf8_lossy(&check.stderr);
    assert!(report.contains("server.redis.url"), "{report}");

    gw.signal("TERM");
    gw.wait_exit(Duration::from_secs(5));
    let mut logs = String::new();
    for file in ["stderr.log", "stdout.log", "access.log"] {
        logs += &std::fs::read_to_string(dir.path().join(file)).unwrap_or_default();
    }
    assert!(logs.contains("JWKS"), "the JWKS fetch was logged: {logs}");
    assert!(
        logs.contains("server.redis.url"),
        "the refused reload was logged"
    );
    for secret in secrets {
        assert!(
            !answers.contains(secret),
            "{secret} in an admin answer:\n{answers}"
        );
        assert!(
            !report.contains(secret),
            "{secret} in -t's report:\n{report}"
        );
        assert!(!logs.contains(secret), "{secret} in a log:\n{logs}");
    }
}

/// Stops a daemonized gateway however the test ends. The pid is read from the pid file as
/// soon as it is there (the file goes with the test's directory).
struct Daemon {
    pid_file: std::path::PathBuf,
    pid: Option<String>,
}

impl Daemon {
    fn new(pid_file: std::path::PathBuf) -> Daemon {
        Daemon {
            pid_file,
            pid: None,
        }
    }

    /// Wait (up to 5 s) for the pid file.
    fn pid(&mut self) -> Option<String> {
        let t = Instant::now();
        while self.pid.is_none() && t.elapsed() < Duration::from_secs(5) {
            self.pid = std::fs::read_to_string(&self.pid_file)
                .ok()
                .map(|p| p.trim().to_string())
                .filter(|p| !p.is_empty());
            if self.pid.is_none() {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        self.pid.clone()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(pid) = &self.pid {
            let _ = std::process::Command::new("kill")
                .args(["-INT", pid])
                .status();
        }
    }
}

/// With `-d` the process forks; everything that runs beside the requests (the access log
/// writer, metrics, health checks, the config file watch) must run in the daemon, its own
/// log goes to `error_log`, and both logs follow logrotate (SIGUSR1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_writes_its_logs_runs_its_background_work_and_reopens_its_logs() {
    let u = Upstream::start("u").await;
    // Serves a JWKS for the route that fetches its keys from a URL.
    let keys = Upstream::start("keys").await;
    let jwks = std::fs::read(tests::workspace_root().join("conf/examples/jwks.json")).unwrap();
    keys.set_body(&jwks);
    let s = Setup::new();
    let error_log = s.path("error.log");
    let config = |tag: &str| {
        format!(
            r#"{}  error_log: {}
upstreams:
  u:
    targets: [{{ addr: "{}" }}]
    health_check: {{ type: http, path: /healthz, interval_ms: 100, healthy: 1, unhealthy: 1 }}
routes:
  - {{ name: r, upstream: u, headers: {{ response: {{ set: {{ x-tag: {tag} }} }} }} }}
  - name: keys
    match: {{ path: {{ prefix: /keys }} }}
    upstream: u
    plugins: {{ jwt: {{ algorithms: [ES256], keys: {{ jwks_url: "http://{}/jwks.json" }} }} }}
"#,
            s.server_yaml(),
            error_log.display(),
            u.addr,
            keys.addr
        )
    };
    let first = config("one");
    let second = config("two");
    let mut daemon = Daemon::new(s.path("gw.pid"));
    let port = s.port;
    let mut gw = s.start_with(&first, &["-d"], port);
    assert_eq!(
        gw.wait_exit(Duration::from_secs(5)),
        Some(0),
        "the launcher exits"
    );
    assert!(daemon.pid().is_some(), "pid file written");
    let admin = gw.admin_port;
    gw.wait_ready(admin);
    let c = client();

    for _ in 0..5 {
        let r = c.get(gw.url("/d")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-tag"], "one");
    }
    let lines = gw.access_log_lines(5).await;
    assert_eq!(lines.len(), 5, "the daemon writes its access log");
    assert!(gw
        .metrics()
        .await
        .contains("gateway_requests_total{method=\"GET\",route=\"r\",status=\"200\"} 5"));

    // The JWKS is fetched in the background.
    let t = Instant::now();
    loop {
        let fetched = gw.metrics().await.lines().any(|l| {
            l.starts_with("gateway_jwks_fetches_total")
                && l.contains("route=\"keys\"")
                && l.contains("result=\"ok\"")
        });
        if fetched {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "no JWKS fetch in the daemon"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Health checks run: an unhealthy target is taken out.
    u.set_healthy(false);
    let t = Instant::now();
    loop {
        let (_, body) = send_json(c.get(gw.admin_url("/admin/upstreams"))).await;
        if body["data"]["u"]["targets"][0]["healthy"] == false {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "never marked down: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    u.set_healthy(true);

    // The file watch reloads.
    gw.write_config(&second);
    let t = Instant::now();
    loop {
        let r = c.get(gw.url("/d")).send().await.unwrap();
        if r.headers().get("x-tag").is_some_and(|v| v == "two") {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(5), "reload never applied");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The daemon's own log is in error_log, not on the terminal it was started from.
    let text = std::fs::read_to_string(&error_log).unwrap();
    assert!(text.contains("gateway serving"), "{text}");
    assert!(text.contains("config reloaded"), "{text}");
    assert!(!gw.stderr().contains("config reloaded"));

    // logrotate: move both logs away, SIGUSR1, and the next lines go to new files.
    let access = s_path(&gw, "access.log");
    let seen = gw.access_log().len();
    std::fs::rename(&access, s_path(&gw, "access.log.1")).unwrap();
    std::fs::rename(&error_log, s_path(&gw, "error.log.1")).unwrap();
    let pid = daemon.pid().unwrap();
    assert!(std::process::Command::new("kill")
        .args(["-USR1", &pid])
        .status()
        .unwrap()
        .success());
    let t = Instant::now();
    let reopened = || {
        std::fs::read_to_string(&error_log)
            .unwrap_or_default()
            .contains("SIGUSR1")
    };
    while !reopened() && t.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(reopened(), "a new error log after SIGUSR1");
    assert_eq!(
        c.get(gw.url("/rotated")).send().await.unwrap().status(),
        200
    );
    // Lines still queued at the rotation may land in either file; the new one goes to the
    // new file.
    let t = Instant::now();
    while !gw.access_log().iter().any(|l| l["path"] == "/rotated") {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "no line in the new access log"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let old = std::fs::read_to_string(s_path(&gw, "access.log.1")).unwrap();
    assert!(old.lines().count() + gw.access_log().len() > seen);
    assert!(!old.contains("/rotated"));
}

fn s_path(gw: &Gateway, name: &str) -> std::path::PathBuf {
    gw.dir.path().join(name)
}
