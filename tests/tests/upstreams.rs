//! Load balancing and active health checks, against real upstream servers.

use std::collections::HashMap;
use std::time::{Duration, Instant};
use tests::{assert_envelope, client, count_by_upstream, get_json, Gateway, Upstream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_round_robin_splits_3_to_1() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let gw = Gateway::start(&format!(
        r#"upstreams:
  u:
    targets: [{{ addr: "{}", weight: 3 }}, {{ addr: "{}", weight: 1 }}]
routes:
  - {{ name: r, upstream: u }}
"#,
        a.addr, b.addr
    ));
    let counts = count_by_upstream(&gw.url("/"), 10_000, 8, None).await;
    let share_a = counts["a"] as f64 / 10_000.0;
    assert!(
        (0.73..=0.77).contains(&share_a),
        "a got {share_a:.3} of 10,000: {counts:?}"
    );
    assert_eq!(counts["a"] + counts["b"], 10_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_keeps_a_key_on_one_target() {
    let ups = [
        Upstream::start("a").await,
        Upstream::start("b").await,
        Upstream::start("c").await,
    ];
    let gw = Gateway::start(&format!(
        r#"upstreams:
  u:
    targets: [{{ addr: "{}" }}, {{ addr: "{}" }}, {{ addr: "{}" }}]
    lb: consistent_hash
    hash_key: "header:x-user-id"
routes:
  - {{ name: r, upstream: u }}
"#,
        ups[0].addr, ups[1].addr, ups[2].addr
    ));
    let mut used = HashMap::new();
    for user in 0..30 {
        let counts = count_by_upstream(
            &gw.url("/"),
            20,
            2,
            Some(("x-user-id", format!("user-{user}"))),
        )
        .await;
        assert_eq!(counts.len(), 1, "user-{user} spread over {counts:?}");
        *used.entry(counts.into_keys().next().unwrap()).or_insert(0) += 1;
    }
    assert!(
        used.len() >= 2,
        "30 keys should not all land on one target: {used:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_uses_every_target() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let gw = Gateway::start(&format!(
        "upstreams:\n  u:\n    targets: [{{ addr: \"{}\" }}, {{ addr: \"{}\" }}]\n    lb: random\nroutes:\n  - {{ name: r, upstream: u }}\n",
        a.addr, b.addr
    ));
    let counts = count_by_upstream(&gw.url("/"), 400, 4, None).await;
    assert!(counts["a"] > 100 && counts["b"] > 100, "{counts:?}");
}

/// Poll until every answer for a while comes from `want` (or fail after `limit`).
async fn wait_only(url: &str, want: &str, limit: Duration) -> Duration {
    let c = client();
    let t = Instant::now();
    loop {
        let mut all = true;
        for _ in 0..4 {
            let r = c.get(url).send().await.unwrap();
            if r.status() != 200 || r.headers()["x-upstream"] != want {
                all = false;
            }
        }
        if all {
            return t.elapsed();
        }
        assert!(
            t.elapsed() < limit,
            "traffic did not settle on {want} within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_health_check_ejects_and_restores_a_target() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let gw = Gateway::start(&format!(
        r#"upstreams:
  u:
    targets: [{{ addr: "{}" }}, {{ addr: "{}" }}]
    health_check: {{ type: http, path: /healthz, interval_ms: 200, timeout_ms: 200, healthy: 2, unhealthy: 2 }}
routes:
  - {{ name: r, upstream: u }}
"#,
        a.addr, b.addr
    ));
    let url = gw.url("/");
    // Both serve at first.
    let counts = count_by_upstream(&url, 20, 1, None).await;
    assert_eq!(counts.len(), 2, "{counts:?}");

    // Out within unhealthy x interval (400 ms), with a wide margin for a busy machine.
    b.set_healthy(false);
    let took = wait_only(&url, "a", Duration::from_secs(3)).await;
    assert!(
        took >= Duration::from_millis(150),
        "ejected before any failed probe: {took:?}"
    );
    let counts = count_by_upstream(&url, 40, 2, None).await;
    assert_eq!(counts.get("b"), None, "{counts:?}");

    // Back after `healthy` good probes.
    b.set_healthy(true);
    let t = Instant::now();
    loop {
        let counts = count_by_upstream(&url, 10, 1, None).await;
        if counts.contains_key("b") {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(3), "b did not come back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_health_check_and_no_healthy_target() {
    let a = Upstream::start("a").await;
    let mut b = Upstream::start("b").await;
    let gw = Gateway::start(&format!(
        r#"upstreams:
  u:
    targets: [{{ addr: "{}" }}, {{ addr: "{}" }}]
    health_check: {{ type: tcp, interval_ms: 200, timeout_ms: 200, healthy: 1, unhealthy: 2 }}
routes:
  - {{ name: r, upstream: u }}
"#,
        a.addr, b.addr
    ));
    let url = gw.url("/");
    b.stop().await;
    wait_only(&url, "a", Duration::from_secs(3)).await;

    b.restart().await;
    let t = Instant::now();
    while !count_by_upstream(&url, 10, 1, None).await.contains_key("b") {
        assert!(t.elapsed() < Duration::from_secs(3), "b did not come back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Every target down: 503 in the envelope with Retry-After, without waiting on a connect.
    let mut a = a;
    a.stop().await;
    b.stop().await;
    let c = client();
    let t = Instant::now();
    loop {
        let (status, headers, body) = get_json(&c, &url).await;
        if status == 503 {
            assert_envelope(status, &body, 503);
            assert_eq!(headers["retry-after"], "1");
            break;
        }
        assert_envelope(status, &body, 502);
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "targets never marked down"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_hashing_uses_the_client_behind_a_trusted_proxy() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let s = tests::Setup::new();
    let yaml = format!(
        "{}  trusted_proxies: [\"127.0.0.3/32\"]\nupstreams:\n  u:\n    targets: [{{ addr: \"{}\" }}, {{ addr: \"{}\" }}]\n    lb: consistent_hash\n    hash_key: ip\nroutes:\n  - {{ name: r, upstream: u }}\n",
        s.server_yaml(),
        a.addr,
        b.addr
    );
    let gw = s.start(&yaml);
    // Every request comes from the one load balancer at 127.0.0.3; the clients differ.
    let lb = tests::client_from("127.0.0.3");
    let mut used = std::collections::HashMap::new();
    for i in 0..30 {
        let client = format!("198.51.100.{i}");
        let mut seen = std::collections::HashSet::new();
        for _ in 0..3 {
            let r = lb
                .get(gw.url("/"))
                .header("x-forwarded-for", &client)
                .send()
                .await
                .unwrap();
            seen.insert(r.headers()["x-upstream"].to_str().unwrap().to_string());
        }
        assert_eq!(seen.len(), 1, "{client} spread over {seen:?}");
        *used.entry(seen.into_iter().next().unwrap()).or_insert(0) += 1;
    }
    assert_eq!(
        used.len(),
        2,
        "30 clients behind one proxy all hashed alike: {used:?}"
    );
}
