//! Traces over OTLP: the span tree of a request (server span, a span a try, a span a backend
//! call of an aggregate) as a real OTLP decoder reads it, parent-based sampling, reloads,
//! and a collector that is down or slow costing requests nothing.

use serde_json::Value;
use std::time::{Duration, Instant};
use tests::{client, free_port, get_json, Collector, Gateway, Setup, Upstream};

/// The server block with `tracing` set to `tracing` (a YAML flow mapping's inside).
fn server(s: &Setup, tracing: &str) -> String {
    format!("{}  tracing: {{ {tracing} }}\n", s.server_yaml())
}

fn traceparent(trace: &str, span: &str, flags: &str) -> String {
    format!("00-{trace}-{span}-{flags}")
}

fn by_kind<'a>(spans: &'a [Value], kind: &str) -> Vec<&'a Value> {
    spans
        .iter()
        .filter(|s| s["kind"] == format!("SPAN_KIND_{kind}"))
        .collect()
}

async fn counter(gw: &Gateway, line_start: &str) -> u64 {
    gw.metrics()
        .await
        .lines()
        .find_map(|l| l.strip_prefix(line_start))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_is_a_server_span_with_a_span_a_try_under_the_callers_span() {
    let collector = Collector::start();
    let up = Upstream::start("up").await;
    std::env::set_var("GW_TEST_OTEL_KEY", "key-from-env");
    let s = Setup::new();
    let dead = free_port();
    let yaml = format!(
        r#"{}upstreams:
  u:
    targets: [{{ addr: "127.0.0.1:{dead}" }}, {{ addr: "{}" }}]
    retry: {{ attempts: 1, on: [connect_failure], backoff: {{ base_ms: 1, max_ms: 2 }} }}
    circuit_breaker: {{ consecutive_failures: 50 }}
routes:
  - {{ name: api, match: {{ path: {{ prefix: /api/ }} }}, upstream: u }}
"#,
        server(
            &s,
            &format!(
                "endpoint: \"{}\", flush_ms: 100, service_name: edge, resource: {{ deployment.environment: test }}, headers: {{ x-tenant: t1 }}, headers_env: {{ x-api-key: GW_TEST_OTEL_KEY }}",
                collector.endpoint()
            )
        ),
        up.addr
    );
    let gw = s.start(&yaml);
    let c = client();
    // Round robin sends one of two requests to the dead target first: that one is retried.
    let caller_span = "b7ad6b7169203331";
    let traces = [
        "0af7651916cd43dd8448eb211c80319c",
        "1af7651916cd43dd8448eb211c80319d",
    ];
    for t in traces {
        let r = c
            .get(gw.url("/api/x"))
            .header("traceparent", traceparent(t, caller_span, "01"))
            .header("user-agent", "trace-test")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let mut retried = None;
    for t in traces {
        let spans = collector.trace(t, 2).await;
        let server_spans = by_kind(&spans, "SERVER");
        assert_eq!(server_spans.len(), 1, "{spans:#?}");
        let srv = server_spans[0];
        // Continued from the caller's traceparent.
        assert_eq!(srv["parent_span_id"], caller_span);
        assert_eq!(srv["name"], "GET api");
        let a = &srv["attributes"];
        assert_eq!(a["http.request.method"], "GET");
        assert_eq!(a["http.route"], "api");
        assert_eq!(a["http.response.status_code"], 200);
        assert_eq!(a["url.path"], "/api/x");
        assert_eq!(a["client.address"], "127.0.0.1");
        assert_eq!(a["user_agent.original"], "trace-test");
        assert!(a["gateway.request_id"]
            .as_str()
            .is_some_and(|s| !s.is_empty()));
        assert_eq!(srv["resource"]["service.name"], "edge");
        assert_eq!(srv["resource"]["deployment.environment"], "test");
        assert_eq!(srv["status"]["code"], "STATUS_CODE_UNSET");
        let tries = by_kind(&spans, "CLIENT");
        for t in &tries {
            assert_eq!(
                t["parent_span_id"], srv["span_id"],
                "a try hangs under the request"
            );
            assert_eq!(t["attributes"]["gateway.upstream"], "u");
            assert_eq!(t["attributes"]["gateway.breaker_state"], "closed");
            let (start, end) = (t["start"].as_u64().unwrap(), t["end"].as_u64().unwrap());
            assert!(srv["start"].as_u64().unwrap() <= start && end <= srv["end"].as_u64().unwrap());
        }
        if tries.len() == 2 {
            retried = Some((spans.clone(), t));
        }
    }
    let (spans, trace) = retried.expect("one request was retried");
    let mut tries = by_kind(&spans, "CLIENT");
    tries.sort_by_key(|t| t["attributes"]["gateway.attempt"].as_i64());
    let (first, second) = (&tries[0]["attributes"], &tries[1]["attributes"]);
    assert_eq!(first["gateway.attempt"], 1);
    assert_eq!(first["server.port"], dead);
    assert_eq!(first["error.type"], "connect");
    assert_eq!(tries[0]["status"]["code"], "STATUS_CODE_ERROR");
    assert_eq!(second["gateway.attempt"], 2);
    assert_eq!(second["gateway.retry_reason"], "connect");
    assert_eq!(second["server.port"], up.addr.port());
    assert_eq!(second["http.response.status_code"], 200);
    assert_eq!(tries[1]["status"]["code"], "STATUS_CODE_UNSET");
    // The upstream's parent is the try that reached it.
    let seen = up
        .seen()
        .into_iter()
        .find(|s| s.headers["traceparent"].contains(trace))
        .unwrap();
    assert_eq!(
        seen.headers["traceparent"],
        traceparent(trace, tries[1]["span_id"].as_str().unwrap(), "01")
    );
    // The collector's headers, one of them from the environment.
    let exports = collector.exports().await;
    assert!(!exports.is_empty());
    for e in &exports {
        assert_eq!(e["headers"]["x-tenant"], "t1");
        assert_eq!(e["headers"]["x-api-key"], "key-from-env");
    }
    // Never shown by the admin API.
    let cfg = gw.admin_config_text().await;
    assert!(!cfg.contains("t1\"") && cfg.contains("<redacted>"), "{cfg}");
    assert!(counter(&gw, "gateway_trace_spans_exported_total ").await >= 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_and_failures_say_why_on_the_request_span() {
    let collector = Collector::start();
    let up = Upstream::start("up").await;
    let s = Setup::new();
    let dead = free_port();
    let yaml = format!(
        r#"{}upstreams:
  u: {{ targets: [{{ addr: "{}" }}] }}
  gone: {{ targets: [{{ addr: "127.0.0.1:{dead}" }}] }}
routes:
  - name: limited
    match: {{ path: {{ prefix: /limited }} }}
    upstream: u
    plugins: {{ rate_limit: [{{ algorithm: sliding_window, limit: 1, window_secs: 60 }}] }}
  - {{ name: down, match: {{ path: {{ prefix: /down }} }}, upstream: gone }}
"#,
        server(
            &s,
            &format!("endpoint: \"{}\", flush_ms: 100", collector.endpoint())
        ),
        up.addr
    );
    let gw = s.start(&yaml);
    let c = client();
    let send = |path: &'static str, trace: &'static str| {
        let c = c.clone();
        let url = gw.url(path);
        async move {
            c.get(url)
                .header("traceparent", traceparent(trace, "b7ad6b7169203331", "01"))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(
        send("/limited", "00000000000000000000000000000001").await,
        200
    );
    assert_eq!(
        send("/limited", "00000000000000000000000000000002").await,
        429
    );
    assert_eq!(send("/down", "00000000000000000000000000000003").await, 502);
    assert_eq!(
        send("/nowhere", "00000000000000000000000000000004").await,
        404
    );

    let refused = collector.trace("00000000000000000000000000000002", 1).await;
    assert_eq!(
        refused.len(),
        1,
        "no try for a refused request: {refused:#?}"
    );
    assert_eq!(
        refused[0]["attributes"]["gateway.refusal"],
        "rate limit exceeded"
    );
    assert_eq!(refused[0]["attributes"]["http.response.status_code"], 429);
    assert_eq!(refused[0]["status"]["code"], "STATUS_CODE_UNSET");

    let failed = collector.trace("00000000000000000000000000000003", 2).await;
    let srv = by_kind(&failed, "SERVER")[0];
    assert_eq!(srv["status"]["code"], "STATUS_CODE_ERROR");
    assert_eq!(srv["attributes"]["error.type"], "502");
    let tries = by_kind(&failed, "CLIENT");
    assert_eq!(tries.len(), 1);
    assert_eq!(tries[0]["attributes"]["error.type"], "connect");

    let unrouted = collector.trace("00000000000000000000000000000004", 1).await;
    assert_eq!(unrouted[0]["name"], "GET");
    assert_eq!(unrouted[0]["attributes"]["gateway.refusal"], "no route");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aggregates_backend_calls_are_spans_under_the_try() {
    let collector = Collector::start();
    let profile = Upstream::start("profile").await;
    let slow = Upstream::start("slow").await;
    slow.set_delay(Duration::from_millis(800));
    let s = Setup::new();
    let fanout_port = free_port();
    let yaml = format!(
        r#"{}  fanout: {{ listen: "127.0.0.1:{fanout_port}" }}
upstreams:
  profile: {{ targets: [{{ addr: "{}" }}] }}
  slow: {{ targets: [{{ addr: "{}" }}] }}
routes:
  - {{ name: home, match: {{ path: {{ prefix: /home }} }}, aggregate: home }}
aggregates:
  home:
    timeout_ms: 2000
    backends:
      - {{ key: profile, upstream: profile, path: /profile, required: true }}
      - {{ key: recs, upstream: slow, path: /recs, timeout_ms: 200 }}
"#,
        server(
            &s,
            &format!("endpoint: \"{}\", flush_ms: 100", collector.endpoint())
        ),
        profile.addr,
        slow.addr
    );
    let mut gw = s.start(&yaml);
    gw.wait_ready(fanout_port);
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let r = client()
        .get(gw.url("/home"))
        .header("traceparent", traceparent(trace, "00f067aa0ba902b7", "01"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let spans = collector.trace(trace, 4).await;
    let srv = by_kind(&spans, "SERVER");
    assert_eq!(srv.len(), 1, "{spans:#?}");
    let clients = by_kind(&spans, "CLIENT");
    let the_try = clients
        .iter()
        .find(|s| s["attributes"]["gateway.upstream"] == "fanout")
        .expect("the try to the fan-out service");
    assert_eq!(the_try["parent_span_id"], srv[0]["span_id"]);
    let backend = |key: &str| {
        *clients
            .iter()
            .find(|s| s["attributes"]["gateway.backend"] == key)
            .unwrap_or_else(|| panic!("no span for backend {key}: {spans:#?}"))
    };
    let (p, recs) = (backend("profile"), backend("recs"));
    for b in [p, recs] {
        assert_eq!(b["parent_span_id"], the_try["span_id"]);
        assert_eq!(b["attributes"]["gateway.aggregate"], "home");
    }
    assert_eq!(p["name"], "GET profile");
    assert_eq!(p["attributes"]["url.path"], "/profile");
    assert_eq!(p["attributes"]["server.port"], profile.addr.port());
    assert_eq!(p["status"]["code"], "STATUS_CODE_UNSET");
    assert_eq!(recs["attributes"]["error.type"], "timeout");
    assert_eq!(recs["status"]["code"], "STATUS_CODE_ERROR");
    // The backend's parent is its own call's span.
    let seen = profile.last().unwrap();
    assert_eq!(
        seen.headers["traceparent"],
        traceparent(trace, p["span_id"].as_str().unwrap(), "01")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampling_follows_the_ratio_and_the_callers_flag_and_reloads() {
    let collector = Collector::start();
    let other = Collector::start();
    let up = Upstream::start("up").await;
    let s = Setup::new();
    let routes = format!(
        "upstreams:\n  u: {{ targets: [{{ addr: \"{}\" }}] }}\nroutes:\n  - {{ name: r, upstream: u }}\n",
        up.addr
    );
    let tracing = |endpoint: &str, ratio: &str| {
        format!("endpoint: \"{endpoint}\", flush_ms: 100, sample_ratio: {ratio}")
    };
    let yaml = format!(
        "{}{routes}",
        server(&s, &tracing(&collector.endpoint(), "0"))
    );
    let reloaded = format!("{}{routes}", server(&s, &tracing(&other.endpoint(), "1")));
    let gw = s.start(&yaml);
    let c = client();
    let get = |tp: Option<String>| {
        let mut rb = c.get(gw.url("/"));
        if let Some(tp) = tp {
            rb = rb.header("traceparent", tp);
        }
        async move { rb.send().await.unwrap().status().as_u16() }
    };
    // Ratio 0: new traces are not sampled, and say so upstream.
    for _ in 0..20 {
        assert_eq!(get(None).await, 200);
    }
    assert!(up
        .seen()
        .iter()
        .all(|s| s.headers["traceparent"].ends_with("-00")));
    // A caller's sampled flag wins over the ratio.
    let kept = "5bf92f3577b34da6a3ce929d0e0e4736";
    assert_eq!(
        get(Some(traceparent(kept, "00f067aa0ba902b7", "01"))).await,
        200
    );
    assert_eq!(collector.trace(kept, 2).await.len(), 2);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let spans = collector.spans().await;
    assert!(spans.iter().all(|s| s["trace_id"] == kept), "{spans:#?}");

    // Reloaded: ratio 1, and another collector.
    gw.write_config(&reloaded);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, _, v) = get_json(&c, &gw.admin_url("/admin/config")).await;
        if v["data"]["config"]["server"]["tracing"]["sample_ratio"] == 1.0 {
            break;
        }
        assert!(Instant::now() < deadline, "the reload did not land: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    collector.reset().await;
    for _ in 0..10 {
        assert_eq!(get(None).await, 200);
    }
    // A caller's unsampled flag wins over the ratio too.
    let dropped = "6bf92f3577b34da6a3ce929d0e0e4736";
    assert_eq!(
        get(Some(traceparent(dropped, "00f067aa0ba902b7", "00"))).await,
        200
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while other.spans().await.len() < 20 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let spans = other.spans().await;
    assert_eq!(spans.len(), 20, "ten requests, two spans each: {spans:#?}");
    assert!(spans.iter().all(|s| s["trace_id"] != dropped));
    assert!(
        collector.spans().await.is_empty(),
        "the old endpoint gets nothing"
    );
    let last = up.last().unwrap();
    assert!(last.headers["traceparent"].ends_with("-00"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_down_or_slow_costs_requests_nothing_and_drops_are_counted() {
    let mut collector = Collector::start();
    let up = Upstream::start("up").await;
    let s = Setup::new();
    let yaml = format!(
        "{}upstreams:\n  u: {{ targets: [{{ addr: \"{}\" }}] }}\nroutes:\n  - {{ name: r, upstream: u }}\n",
        server(
            &s,
            &format!(
                "endpoint: \"{}\", flush_ms: 50, timeout_ms: 300, queue_spans: 64, batch_spans: 16",
                collector.endpoint()
            )
        ),
        up.addr
    );
    let gw = s.start(&yaml);
    let c = client();
    // Slow: every export waits 5 s, past the 300 ms timeout; the queue (64) overflows.
    collector.set_delay(5.0).await;
    let mut slowest = Duration::ZERO;
    for _ in 0..200 {
        let t = Instant::now();
        assert_eq!(c.get(gw.url("/")).send().await.unwrap().status(), 200);
        slowest = slowest.max(t.elapsed());
    }
    assert!(
        slowest < Duration::from_millis(500),
        "slowest request {slowest:?}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let m = gw.metrics().await;
    assert!(
        m.contains("gateway_trace_exports_total{result=\"timeout\"}"),
        "{m}"
    );
    assert!(
        counter(
            &gw,
            "gateway_trace_spans_dropped_total{reason=\"queue_full\"} "
        )
        .await
            > 0
    );
    assert!(
        counter(
            &gw,
            "gateway_trace_spans_dropped_total{reason=\"export_failed\"} "
        )
        .await
            > 0
    );

    // Down: the connection is refused; requests go on as before.
    collector.stop();
    let before = counter(
        &gw,
        "gateway_trace_spans_dropped_total{reason=\"export_failed\"} ",
    )
    .await;
    let t = Instant::now();
    for _ in 0..200 {
        assert_eq!(c.get(gw.url("/")).send().await.unwrap().status(), 200);
    }
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let m = gw.metrics().await;
    assert!(
        m.contains("gateway_trace_exports_total{result=\"error\"}"),
        "{m}"
    );
    let after = counter(
        &gw,
        "gateway_trace_spans_dropped_total{reason=\"export_failed\"} ",
    )
    .await;
    assert!(after > before, "{before} -> {after}");
}
