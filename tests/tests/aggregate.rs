//! The fan-out service: parallel backend calls merged into one envelope, timeouts,
//! required and optional backends, the cached fallback, and the concurrency bound.

use std::time::{Duration, Instant};
use tests::{client, free_port, get_json, Gateway, Setup, Upstream};

fn server(s: &Setup, fanout_port: u16) -> String {
    format!(
        "{}  fanout: {{ listen: \"127.0.0.1:{fanout_port}\" }}\n",
        s.server_yaml()
    )
}

/// Start a gateway with an in-process fan-out service; returns once both listen.
fn start(rest: &str) -> Gateway {
    let s = Setup::new();
    let fanout_port = free_port();
    let yaml = format!("{}{rest}", server(&s, fanout_port));
    let mut gw = s.start(&yaml);
    gw.wait_ready(fanout_port);
    gw
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backends_run_in_parallel_and_merge_into_one_envelope() {
    let profile = Upstream::start("profile").await;
    let orders = Upstream::start("orders").await;
    let recs = Upstream::start("recs").await;
    for u in [&profile, &orders, &recs] {
        u.set_delay(Duration::from_millis(200));
    }
    let gw = start(&format!(
        r#"upstreams:
  profile: {{ targets: [{{ addr: "{}" }}] }}
  orders: {{ targets: [{{ addr: "{}" }}] }}
  recs: {{ targets: [{{ addr: "{}" }}] }}
routes:
  - name: home
    match: {{ path: {{ regex: "^/api/home/(?P<user>[0-9]+)$" }} }}
    aggregate: home
aggregates:
  home:
    timeout_ms: 2000
    forward_headers: [authorization]
    backends:
      - {{ key: profile, upstream: profile, path: "/profile/{{path.user}}?lang={{query.lang}}", required: true }}
      - {{ key: orders, upstream: orders, path: /orders/latest }}
      - {{ key: recommend, upstream: recs, path: "/recommend?u={{header.x-user}}" }}
"#,
        profile.addr, orders.addr, recs.addr
    ));
    let c = client();
    let t = Instant::now();
    let r = c
        .get(gw.url("/api/home/42?lang=en%20GB"))
        .header("x-user", "a/b")
        .header("authorization", "Bearer t")
        .header("x-request-id", "agg-1")
        .send()
        .await
        .unwrap();
    let took = t.elapsed();
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("x-aggregate-failed").is_none());
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(
        took < Duration::from_millis(400),
        "three 200 ms calls took {took:?}"
    );
    assert_eq!(body["code"], 200);
    assert_eq!(body["failed"], serde_json::json!([]));
    let keys: Vec<&String> = body["data"].as_object().unwrap().keys().collect();
    assert_eq!(
        keys,
        ["orders", "profile", "recommend"],
        "one key per backend, stable order"
    );
    assert_eq!(body["data"]["profile"]["uri"], "/profile/42?lang=en%20GB");
    assert_eq!(body["data"]["recommend"]["uri"], "/recommend?u=a%2Fb");
    let seen = profile.last().unwrap();
    assert_eq!(seen.headers["x-request-id"], "agg-1");
    assert_eq!(seen.headers["authorization"], "Bearer t");
    assert!(seen.headers.contains_key("traceparent"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optional_backends_degrade_required_ones_fail_and_the_cache_stands_in() {
    let profile = Upstream::start("profile").await;
    let mut orders = Upstream::start("orders").await;
    let slow = Upstream::start("slow").await;
    slow.set_delay(Duration::from_millis(800));
    let broken = Upstream::start("broken").await;
    broken.set_body(b"<html>not json</html>");
    let gw = start(&format!(
        r#"upstreams:
  profile: {{ targets: [{{ addr: "{}" }}] }}
  orders: {{ targets: [{{ addr: "{}" }}], timeouts: {{ connect_ms: 200 }} }}
  slow: {{ targets: [{{ addr: "{}" }}] }}
  broken: {{ targets: [{{ addr: "{}" }}] }}
routes:
  - {{ name: home, match: {{ path: {{ exact: /home }} }}, aggregate: home }}
  - {{ name: strict, match: {{ path: {{ exact: /strict }} }}, aggregate: strict }}
  - {{ name: slowreq, match: {{ path: {{ exact: /slowreq }} }}, aggregate: slowreq }}
aggregates:
  home:
    timeout_ms: 1500
    backends:
      - {{ key: profile, upstream: profile, path: /profile, required: true }}
      - {{ key: orders, upstream: orders, path: /orders, fallback: cache }}
      - {{ key: slow, upstream: slow, path: /slow, timeout_ms: 200 }}
      - {{ key: broken, upstream: broken, path: /broken }}
  strict:
    backends:
      - {{ key: profile, upstream: profile, path: /profile, required: true }}
      - {{ key: broken, upstream: broken, path: /broken, required: true }}
  slowreq:
    timeout_ms: 300
    backends:
      - {{ key: slow, upstream: slow, path: /slow, required: true }}
"#,
        profile.addr, orders.addr, slow.addr, broken.addr
    ));
    let c = client();

    // The optional slow backend is cut at its own 200 ms; the malformed one is a named failure.
    let t = Instant::now();
    let r = c.get(gw.url("/home")).send().await.unwrap();
    assert!(
        t.elapsed() < Duration::from_millis(700),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-aggregate-failed"], "slow, broken");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["failed"], serde_json::json!(["slow", "broken"]));
    assert_eq!(body["data"]["slow"], serde_json::Value::Null);
    assert_eq!(body["data"]["broken"], serde_json::Value::Null);
    assert_eq!(body["data"]["orders"]["upstream"], "orders");

    // orders dies: its last good answer is served, and the failure is named.
    orders.stop().await;
    let (status, headers, body) = get_json(&c, &gw.url("/home")).await;
    assert_eq!(status, 200);
    assert!(headers["x-aggregate-failed"]
        .to_str()
        .unwrap()
        .contains("orders"));
    assert_eq!(
        body["data"]["orders"]["upstream"], "orders",
        "cached: {body}"
    );
    assert!(body["failed"]
        .as_array()
        .unwrap()
        .contains(&"orders".into()));

    // A failed required backend fails the answer: 502, and 504 on a timeout.
    let (status, _, body) = get_json(&c, &gw.url("/strict")).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["code"], 502);
    assert_eq!(body["data"]["backend"], "broken");
    assert!(body["data"]["error"].as_str().unwrap().contains("not JSON"));
    let (status, _, body) = get_json(&c, &gw.url("/slowreq")).await;
    assert_eq!(status, 504, "{body}");
    assert_eq!(body["message"], "required backend timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_concurrency_bounds_calls_in_flight() {
    let u = Upstream::start("u").await;
    u.set_delay(Duration::from_millis(100));
    let mut backends = String::new();
    for i in 0..8 {
        backends.push_str(&format!(
            "      - {{ key: b{i}, upstream: u, path: /b{i} }}\n"
        ));
    }
    let gw = start(&format!(
        "upstreams:\n  u: {{ targets: [{{ addr: \"{}\" }}] }}\nroutes:\n  - {{ name: r, aggregate: many }}\naggregates:\n  many:\n    timeout_ms: 3000\n    max_concurrency: 3\n    backends:\n{backends}",
        u.addr
    ));
    let t = Instant::now();
    let (status, _, body) = get_json(&client(), &gw.url("/")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"].as_object().unwrap().len(), 8);
    assert_eq!(u.requests(), 8);
    assert_eq!(
        u.max_inflight(),
        3,
        "never more than max_concurrency at once"
    );
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "8 calls, 3 at a time, 100 ms each"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fanout_service_runs_alone_behind_another_gateway() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let fanout_port = free_port();
    let body = format!(
        r#"upstreams:
  a: {{ targets: [{{ addr: "{}" }}] }}
  b: {{ targets: [{{ addr: "{}" }}] }}
routes:
  - {{ name: both, aggregate: both }}
aggregates:
  both:
    backends:
      - {{ key: a, upstream: a, path: /a, required: true }}
      - {{ key: b, upstream: b, path: /b, required: true }}
"#,
        a.addr, b.addr
    );
    // The fan-out service alone: no proxy listener.
    let alone = Setup::new();
    let proxy_port = alone.port;
    let yaml = format!("{}{body}", server(&alone, fanout_port));
    let fanout = alone.start_with(&yaml, &["--fanout-only"], fanout_port);
    assert!(std::net::TcpStream::connect(("127.0.0.1", proxy_port)).is_err());
    // An edge gateway that sends aggregate routes to it.
    let edge = Setup::new();
    let yaml = format!(
        "{}  fanout: {{ target: \"127.0.0.1:{fanout_port}\" }}\n{body}",
        edge.server_yaml()
    );
    let gw = edge.start(&yaml);
    let (status, _, body) = get_json(&client(), &gw.url("/x")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["a"]["upstream"], "a");
    assert_eq!(body["data"]["b"]["upstream"], "b");
    drop(fanout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_every_instance_can_serve_a_fallback_any_instance_saw() {
    let redis = tests::RedisServer::start();
    let good = Upstream::start("orders").await;
    let dead = free_port();
    let rest = |orders_addr: String| {
        format!(
            r#"  redis: {{ url: "{}", timeout_ms: 200 }}
upstreams:
  orders: {{ targets: [{{ addr: "{orders_addr}" }}], timeouts: {{ connect_ms: 200 }} }}
routes:
  - {{ name: home, aggregate: home }}
aggregates:
  home:
    backends:
      - {{ key: orders, upstream: orders, path: /orders/latest, fallback: cache }}
"#,
            redis.url()
        )
    };
    // Instance one sees a good answer ...
    let one = start(&rest(good.addr.to_string()));
    let (status, _, body) = get_json(&client(), &one.url("/home")).await;
    assert_eq!(status, 200);
    assert_eq!(body["data"]["orders"]["upstream"], "orders");
    tokio::time::sleep(Duration::from_millis(200)).await;
    // ... instance two, whose backend is down and which never saw one, serves it.
    let two = start(&rest(format!("127.0.0.1:{dead}")));
    let (status, headers, body) = get_json(&client(), &two.url("/home")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["x-aggregate-failed"], "orders");
    assert_eq!(
        body["data"]["orders"]["upstream"], "orders",
        "from Redis: {body}"
    );

    // Redis gone: the answer degrades to null within the timeout, never hangs.
    drop(redis);
    let t = Instant::now();
    let (status, _, body) = get_json(&client(), &two.url("/home")).await;
    assert_eq!(status, 200);
    assert_eq!(body["data"]["orders"], serde_json::Value::Null);
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn template_values_never_climb_out_of_their_segment() {
    let profile = Upstream::start("profile").await;
    let gw = start(&format!(
        r#"upstreams:
  profile: {{ targets: [{{ addr: "{}" }}] }}
routes:
  - {{ name: home, match: {{ path: {{ exact: /home }} }}, aggregate: home }}
aggregates:
  home:
    backends:
      - {{ key: profile, upstream: profile, path: "/profile/{{query.user_id}}/card", required: true }}
"#,
        profile.addr
    ));
    let c = client();
    for id in ["%2E%2E", "..", ".", "%2e"] {
        let (status, _, body) = get_json(&c, &gw.url(&format!("/home?user_id={id}"))).await;
        assert_eq!(status, 400, "{id}: {body}");
        assert_eq!(body["code"], 400, "{id}");
        assert_eq!(body["data"]["backend"], "profile", "{id}");
    }
    assert_eq!(profile.requests(), 0, "{:?}", profile.seen());
    // Slashes, queries and longer dot runs stay inside the one segment.
    for (id, uri) in [
        ("..%2Fadmin", "/profile/..%2Fadmin/card"),
        ("7%3Fx%3D1", "/profile/7%3Fx%3D1/card"),
        ("...", "/profile/.../card"),
    ] {
        let (status, _, body) = get_json(&c, &gw.url(&format!("/home?user_id={id}"))).await;
        assert_eq!(status, 200, "{id}: {body}");
        assert_eq!(body["data"]["profile"]["uri"], uri);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregates_need_no_port_of_their_own_even_when_added_by_a_reload() {
    let profile = Upstream::start("profile").await;
    let s = Setup::new();
    let base = format!(
        "{}upstreams:\n  profile: {{ targets: [{{ addr: \"{}\" }}] }}\nroutes:\n  - {{ name: plain, upstream: profile, match: {{ path: {{ prefix: /plain }} }} }}\n",
        s.server_yaml(),
        profile.addr
    );
    let gw = s.start(&base);
    let c = client();
    assert_eq!(get_json(&c, &gw.url("/plain")).await.0, 200);
    // No server.fanout anywhere: an aggregate added by a reload is served in this process.
    gw.write_config(&format!(
        "{base}  - {{ name: home, match: {{ path: {{ exact: /home }} }}, aggregate: home }}\naggregates:\n  home:\n    backends:\n      - {{ key: profile, upstream: profile, path: /profile, required: true }}\n"
    ));
    let t = Instant::now();
    loop {
        let (status, _, body) = get_json(&c, &gw.url("/home")).await;
        if status == 200 {
            assert_eq!(body["data"]["profile"]["uri"], "/profile");
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(5), "{status} {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Started with an aggregate and no server.fanout, too.
    let s2 = Setup::new();
    let yaml = format!(
        "{}upstreams:\n  profile: {{ targets: [{{ addr: \"{}\" }}] }}\nroutes:\n  - {{ name: home, match: {{ path: {{ exact: /home }} }}, aggregate: home }}\naggregates:\n  home:\n    backends:\n      - {{ key: profile, upstream: profile, path: /p }}\n",
        s2.server_yaml(),
        profile.addr
    );
    let gw2 = s2.start(&yaml);
    let (status, _, body) = get_json(&c, &gw2.url("/home")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["profile"]["uri"], "/p");
}
