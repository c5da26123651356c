//! Targets from a registry: the keys under an etcd prefix (a real etcd), and a Consul
//! service through blocking queries (a stand-in that implements Consul's documented health
//! endpoint; no Consul server can be installed here).

use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};
use tests::{client, get_json, ConsulStandin, EtcdServer, Gateway, Upstream};

/// The addresses the upstream draws from now.
async fn targets(gw: &Gateway, upstream: &str) -> BTreeSet<String> {
    let (_, _, v) = get_json(&client(), &gw.admin_url("/admin/upstreams")).await;
    v["data"][upstream]["targets"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["addr"].as_str().map(String::from))
        .collect()
}

async fn discovery(gw: &Gateway, upstream: &str) -> Value {
    let (_, _, v) = get_json(&client(), &gw.admin_url("/admin/upstreams")).await;
    v["data"][upstream]["discovery"].clone()
}

/// Wait (up to `limit`) until the upstream's targets are `want`; how long it took.
async fn until_targets(
    gw: &Gateway,
    upstream: &str,
    want: &[&Upstream],
    limit: Duration,
) -> Duration {
    let want: BTreeSet<String> = want.iter().map(|u| u.addr.to_string()).collect();
    let t = Instant::now();
    loop {
        let now = targets(gw, upstream).await;
        if now == want {
            return t.elapsed();
        }
        assert!(
            t.elapsed() < limit,
            "targets {now:?}, want {want:?}: {}",
            discovery(gw, upstream).await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Wait (up to 5 s) until the upstream's discovery shows a failure.
async fn until_failure_seen(gw: &Gateway, upstream: &str) {
    let t = Instant::now();
    while discovery(gw, upstream).await["last_error"].is_null() {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "the failure was not noticed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Which upstreams answer `n` requests.
async fn answering(gw: &Gateway, n: usize) -> BTreeSet<String> {
    let c = client();
    let mut seen = BTreeSet::new();
    for _ in 0..n {
        let r = c.get(gw.url("/")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        seen.insert(r.headers()["x-upstream"].to_str().unwrap().to_string());
    }
    seen
}

fn target(u: &Upstream) -> String {
    json!({"addr": u.addr.to_string(), "weight": 1}).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_keys_are_targets_that_follow_puts_deletes_and_leases() {
    let etcd = EtcdServer::start();
    let (a, b, c) = (
        Upstream::start("a").await,
        Upstream::start("b").await,
        Upstream::start("c").await,
    );
    etcd.put("/services/users/a", &target(&a), None).await;
    etcd.put("/services/users/b", &target(&b), None).await;
    // Not under the prefix, and a value that is no target: neither counts.
    etcd.put("/services/users-old/x", &target(&c), None).await;
    etcd.put("/services/users/broken", "not json", None).await;
    let gw = Gateway::start(&format!(
        r#"upstreams:
  users:
    discovery: {{ type: etcd, endpoints: ["{}"], prefix: /services/users/ }}
routes:
  - {{ name: r, upstream: users }}
"#,
        etcd.url()
    ));
    until_targets(&gw, "users", &[&a, &b], Duration::from_secs(5)).await;
    assert_eq!(
        answering(&gw, 10).await,
        ["a", "b"].map(String::from).into()
    );

    // A registration with a lease joins at once and leaves when the lease expires.
    let lease = etcd.grant(2).await;
    etcd.put("/services/users/c", &target(&c), Some(lease))
        .await;
    let joined = until_targets(&gw, "users", &[&a, &b, &c], Duration::from_secs(5)).await;
    assert!(joined < Duration::from_secs(1), "a put took {joined:?}");
    until_targets(&gw, "users", &[&a, &b], Duration::from_secs(10)).await;

    etcd.delete("/services/users/a").await;
    let left = until_targets(&gw, "users", &[&b], Duration::from_secs(5)).await;
    assert!(left < Duration::from_secs(1), "a delete took {left:?}");
    assert_eq!(answering(&gw, 5).await, ["b"].map(String::from).into());
    let d = discovery(&gw, "users").await;
    assert_eq!(d["type"], "etcd");
    assert_eq!(d["targets"], 1);
    assert!(d["index"].as_u64().unwrap() > 0);
    assert!(gw
        .metrics()
        .await
        .contains("gateway_discovery_index{upstream=\"users\"}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_down_keeps_the_targets_and_its_return_brings_the_changes() {
    let mut etcd = EtcdServer::start();
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    etcd.put("/svc/a", &target(&a), None).await;
    let gw = Gateway::start(&format!(
        r#"upstreams:
  u:
    discovery: {{ type: etcd, endpoints: ["{}"], prefix: /svc/, timeout_ms: 300 }}
routes:
  - {{ name: r, upstream: u }}
"#,
        etcd.url()
    ));
    until_targets(&gw, "u", &[&a], Duration::from_secs(5)).await;

    etcd.stop();
    // The watch breaks, the reads fail: the last good target serves on.
    until_failure_seen(&gw, "u").await;
    assert_eq!(answering(&gw, 5).await, ["a"].map(String::from).into());

    etcd.restart();
    etcd.put("/svc/b", &target(&b), None).await;
    etcd.delete("/svc/a").await;
    // Within the longest pause between two tries (10 s) and a read.
    until_targets(&gw, "u", &[&b], Duration::from_secs(15)).await;
    assert!(discovery(&gw, "u").await["last_error"].is_null());
    assert_eq!(answering(&gw, 5).await, ["b"].map(String::from).into());
}

fn instance(id: &str, u: &Upstream, status: &str, tags: &[&str]) -> Value {
    json!({"id": id, "address": u.addr.ip().to_string(), "port": u.addr.port(),
           "weight": 1, "status": status, "tags": tags})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_blocking_queries_follow_the_service_at_once_and_idle_cheaply() {
    let consul = ConsulStandin::start();
    consul.require_token("s3cret").await;
    let (a, b, c) = (
        Upstream::start("a").await,
        Upstream::start("b").await,
        Upstream::start("c").await,
    );
    // a and b tagged v1, c tagged v2; b's check as given.
    let users = |b_status: &str| {
        json!([
            instance("a", &a, "passing", &["v1"]),
            instance("b", &b, b_status, &["v1"]),
            instance("c", &c, "passing", &["v2"]),
        ])
    };
    consul.set_service("users", users("critical")).await;
    std::env::set_var("GW_TEST_CONSUL_TOKEN", "s3cret");
    let gw = Gateway::start(&format!(
        r#"upstreams:
  users:
    discovery: {{ type: consul, service: users, address: "{}", tag: v1, datacenter: dc1, token_env: GW_TEST_CONSUL_TOKEN }}
routes:
  - {{ name: r, upstream: users }}
"#,
        consul.url()
    ));
    // Passing instances with the tag only.
    until_targets(&gw, "users", &[&a], Duration::from_secs(5)).await;
    assert_eq!(answering(&gw, 5).await, ["a"].map(String::from).into());

    // Idle: one query held open, not a poll.
    let before = consul.stats().await["queries"].as_u64().unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = consul.stats().await["queries"].as_u64().unwrap();
    assert!(
        after - before <= 1,
        "{before} -> {after} queries while idle"
    );

    // A change arrives at once (the query waits up to 30 s otherwise).
    consul.set_service("users", users("passing")).await;
    let took = until_targets(&gw, "users", &[&a, &b], Duration::from_secs(5)).await;
    assert!(took < Duration::from_secs(1), "the change took {took:?}");
    let d = discovery(&gw, "users").await;
    assert_eq!(d["type"], "consul");
    assert_eq!(d["targets"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_index_going_back_restarts_the_queries_and_a_dead_agent_keeps_the_targets() {
    let mut consul = ConsulStandin::start();
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    consul
        .set_service("svc", json!([instance("a", &a, "passing", &[])]))
        .await;
    let gw = Gateway::start(&format!(
        r#"upstreams:
  u:
    discovery: {{ type: consul, service: svc, address: "{}", wait_secs: 30, timeout_ms: 300 }}
routes:
  - {{ name: r, upstream: u }}
"#,
        consul.url()
    ));
    until_targets(&gw, "u", &[&a], Duration::from_secs(5)).await;
    let index = discovery(&gw, "u").await["index"].as_u64().unwrap();
    assert!(index >= 100, "{index}");

    // The agent restarts: its index is now far below the one the gateway holds. The gateway
    // starts over, and then follows changes at the new, lower index.
    consul.restart_index().await;
    consul
        .set_service("svc", json!([instance("b", &b, "passing", &[])]))
        .await;
    until_targets(&gw, "u", &[&b], Duration::from_secs(5)).await;
    let index = discovery(&gw, "u").await["index"].as_u64().unwrap();
    assert!(index < 100, "{index}");
    consul
        .set_service(
            "svc",
            json!([
                instance("a", &a, "passing", &[]),
                instance("b", &b, "passing", &[])
            ]),
        )
        .await;
    let took = until_targets(&gw, "u", &[&a, &b], Duration::from_secs(5)).await;
    assert!(
        took < Duration::from_secs(1),
        "after the reset a change took {took:?}"
    );

    // The agent is gone: the last good targets stay and serve.
    consul.stop();
    until_failure_seen(&gw, "u").await;
    assert_eq!(
        answering(&gw, 10).await,
        ["a", "b"].map(String::from).into()
    );
}
