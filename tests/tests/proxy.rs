//! Routing, header handling, gateway errors and the access log, through the real binary.

use std::time::Duration;
use tests::{assert_envelope, client, get_json, raw, raw_sequence, Gateway, Upstream};

fn upstream_yaml(ups: &[(&str, &Upstream)]) -> String {
    let mut s = String::from("upstreams:\n");
    for (name, u) in ups {
        s.push_str(&format!(
            "  {name}:\n    targets: [{{ addr: \"{}\" }}]\n    timeouts: {{ connect_ms: 500, read_ms: 1000 }}\n",
            u.addr
        ));
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_host_path_method_and_header_with_precedence() {
    let names = [
        "root", "api", "users", "regex", "exact", "boosted", "post", "canary", "host", "wild",
    ];
    let mut ups = Vec::new();
    for n in names {
        ups.push((n, Upstream::start(n).await));
    }
    let refs: Vec<(&str, &Upstream)> = ups.iter().map(|(n, u)| (*n, u)).collect();
    let gw = Gateway::start(&format!(
        r#"{}routes:
  - {{ name: root, upstream: root }}
  - {{ name: api, upstream: api, match: {{ path: {{ prefix: /api/ }} }} }}
  - {{ name: users, upstream: users, match: {{ path: {{ prefix: /api/users }} }} }}
  - {{ name: regex, upstream: regex, match: {{ path: {{ regex: "^/api/users/[0-9]+$" }} }} }}
  - {{ name: exact, upstream: exact, match: {{ path: {{ exact: /api/users/42 }} }} }}
  - {{ name: boosted, upstream: boosted, priority: 10, match: {{ path: {{ prefix: /api/users/9 }} }} }}
  - {{ name: post, upstream: post, match: {{ path: {{ exact: /form }}, methods: [POST] }} }}
  - {{ name: canary, upstream: canary, match: {{ path: {{ exact: /form }}, headers: {{ x-canary: "true" }} }} }}
  - {{ name: host, upstream: host, match: {{ hosts: [api.example.com], path: {{ prefix: /api/ }} }} }}
  - {{ name: wild, upstream: wild, match: {{ hosts: ["*.example.com"], path: {{ prefix: /api/ }} }} }}
"#,
        upstream_yaml(&refs)
    ));
    let c = client();
    // (method, host, path, extra headers, upstream that must answer)
    type Case<'a> = (&'a str, &'a str, &'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        ("GET", "localhost", "/", &[], "root"),
        ("GET", "localhost", "/api/x", &[], "api"),
        ("GET", "localhost", "/api/users/abc", &[], "users"),
        ("GET", "localhost", "/api/users/7", &[], "regex"),
        ("GET", "localhost", "/api/users/42", &[], "exact"),
        ("GET", "localhost", "/api/users/99", &[], "boosted"),
        ("GET", "localhost", "/form", &[], "root"),
        ("POST", "localhost", "/form", &[], "post"),
        (
            "GET",
            "localhost",
            "/form",
            &[("x-canary", "true")],
            "canary",
        ),
        ("GET", "API.example.com:8080", "/api/x", &[], "host"),
        ("GET", "a.b.example.com", "/api/x", &[], "wild"),
        ("GET", "example.com", "/api/x", &[], "api"),
    ];
    for (method, host, path, headers, want) in cases {
        let mut rb = c
            .request(method.parse().unwrap(), gw.url(path))
            .header("host", *host);
        for (k, v) in *headers {
            rb = rb.header(*k, *v);
        }
        let r = rb.send().await.unwrap();
        assert_eq!(r.status(), 200, "{method} {host}{path}");
        assert_eq!(
            r.headers()["x-upstream"],
            *want,
            "{method} {host}{path} {headers:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_route_is_404_envelope_with_request_id() {
    let u = Upstream::start("u").await;
    let gw = Gateway::start(&format!(
        "{}routes:\n  - {{ name: only, upstream: u, match: {{ path: {{ exact: /only }} }} }}\n",
        upstream_yaml(&[("u", &u)])
    ));
    let (status, headers, body) = get_json(&client(), &gw.url("/elsewhere")).await;
    assert_envelope(status, &body, 404);
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(headers["x-request-id"].len(), 32);
    assert_eq!(u.requests(), 0);

    // The connection stays usable after a gateway answer without a request body.
    let answers = tests::raw_sequence(
        gw.port,
        &[
            b"GET /nope HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET /only HTTP/1.1\r\nHost: a\r\n\r\n",
        ],
    );
    assert!(answers[0].starts_with("HTTP/1.1 404"), "{answers:?}");
    assert!(answers[1].starts_with("HTTP/1.1 200"), "{answers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_request_id_and_rewrites() {
    let u = Upstream::start("u").await;
    let gw = Gateway::start(&format!(
        r#"{}routes:
  - name: api
    match: {{ path: {{ prefix: /api/ }} }}
    upstream: u
    strip_prefix: /api
    headers:
      request: {{ set: {{ x-env: prod }}, remove: [x-internal] }}
      response: {{ set: {{ x-served-by: gateway }}, remove: [server] }}
  - name: host-set
    match: {{ path: {{ prefix: /sethost/ }} }}
    upstream: u
    headers: {{ request: {{ set: {{ host: internal.svc }} }} }}
"#,
        upstream_yaml(&[("u", &u)])
    ));
    let c = client();
    let r = c
        .get(gw.url("/api/items?q=1&r=2"))
        .header("host", "shop.example.com")
        .header("x-internal", "secret")
        .header("x-env", "dev")
        .header("x-forwarded-for", "203.0.113.9")
        .header("X-Gateway-Route", "admin")
        .header("x-gateway-claims", "{\"sub\":\"admin\"}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(r.headers()["x-served-by"], "gateway");
    assert!(r.headers().get("server").is_none());
    let seen = u.last().unwrap();
    assert_eq!(seen.uri, "/items?q=1&r=2");
    let h = &seen.headers;
    assert_eq!(h["host"], "shop.example.com", "Host passes through");
    assert_eq!(h["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "shop.example.com");
    assert_eq!(h["x-request-id"], id);
    assert_eq!(h["x-env"], "prod");
    assert!(!h.contains_key("x-internal"));
    // Only the gateway speaks to the fan-out service in X-Gateway-* headers.
    assert!(!h.contains_key("x-gateway-route"), "{h:?}");
    assert!(!h.contains_key("x-gateway-claims"), "{h:?}");

    // A client's request id is kept and echoed.
    let r = c
        .get(gw.url("/api/x"))
        .header("x-request-id", "trace-abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "trace-abc-123");
    assert_eq!(u.last().unwrap().headers["x-request-id"], "trace-abc-123");

    // A route may set Host for the upstream.
    c.get(gw.url("/sethost/a")).send().await.unwrap();
    let h = u.last().unwrap().headers;
    assert_eq!(h["host"], "internal.svc");
    assert_eq!(h["x-forwarded-host"], format!("127.0.0.1:{}", gw.port));

    // POST bodies reach the upstream unchanged.
    let r = c
        .post(gw.url("/api/echo"))
        .body("hello body")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(u.last().unwrap().body, b"hello body");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_upstream_is_502_and_slow_upstream_is_504() {
    let slow = Upstream::start("slow").await;
    slow.set_delay(Duration::from_secs(3));
    let dead_port = tests::free_port();
    let gw = Gateway::start(&format!(
        r#"upstreams:
  dead:
    targets: [{{ addr: "127.0.0.1:{dead_port}" }}]
  slow:
    targets: [{{ addr: "{}" }}]
    timeouts: {{ read_ms: 300 }}
routes:
  - {{ name: dead, upstream: dead, match: {{ path: {{ prefix: /dead }} }} }}
  - {{ name: slow, upstream: slow, match: {{ path: {{ prefix: /slow }} }} }}
"#,
        slow.addr
    ));
    let c = client();
    let (status, headers, body) = get_json(&c, &gw.url("/dead")).await;
    assert_envelope(status, &body, 502);
    assert!(headers.contains_key("x-request-id"));

    let t = std::time::Instant::now();
    let (status, _, body) = get_json(&c, &gw.url("/slow")).await;
    assert_envelope(status, &body, 504);
    assert!(
        t.elapsed() < Duration::from_millis(2500),
        "504 must come from the read timeout, took {:?}",
        t.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_are_kept_alive_and_reused() {
    let u = Upstream::start("u").await;
    let gw = Gateway::start(&format!(
        "{}routes:\n  - {{ name: r, upstream: u }}\n",
        upstream_yaml(&[("u", &u)])
    ));
    let c = client();
    for _ in 0..30 {
        assert_eq!(c.get(gw.url("/")).send().await.unwrap().status(), 200);
    }
    assert_eq!(u.requests(), 30);
    assert!(
        u.accepted() <= 2,
        "{} upstream connections for 30 requests",
        u.accepted()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_errors_pass_through_untouched() {
    let u = Upstream::start("u").await;
    u.set_status(503);
    let gw = Gateway::start(&format!(
        "{}routes:\n  - {{ name: r, upstream: u }}\n",
        upstream_yaml(&[("u", &u)])
    ));
    let (status, headers, body) = get_json(&client(), &gw.url("/x")).await;
    assert_eq!(status, 503);
    assert_eq!(body["upstream"], "u", "the upstream's own body: {body}");
    assert_eq!(headers["x-upstream"], "u");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_fields_stay_at_the_gateway() {
    let u = Upstream::start("u").await;
    let gw = Gateway::start(&format!(
        "{}routes:\n  - {{ name: r, upstream: u }}\n",
        upstream_yaml(&[("u", &u)])
    ));
    let hop = [
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "te",
        "trailer",
        "http2-settings",
        "x-nominated",
    ];
    // Each hop-by-hop field alone, then all of them with a Connection header that names one
    // more: none reaches the upstream; the end-to-end fields do, whatever their case.
    let single: [&[u8]; 6] = [
        b"Keep-Alive: timeout=5\r\n",
        b"Proxy-Connection: keep-alive\r\n",
        b"Proxy-Authorization: Basic Zm9vOmJhcg==\r\n",
        b"TE: trailers\r\n",
        b"Trailer: x-t\r\n",
        b"HTTP2-Settings: AAMAAABkAAQAAP__\r\n",
    ];
    let all: Vec<u8> = single.concat();
    let nominating = [&all[..], b"Connection: X-Nominated\r\nX-Nominated: 1\r\n"].concat();
    for fields in single.iter().copied().chain([&nominating[..]]) {
        let req = [
            &b"GET /x HTTP/1.1\r\nHost: a\r\nX-Kept: yes\r\nX-CamelCase: 2\r\n"[..],
            fields,
            b"\r\n",
        ]
        .concat();
        let answers = raw_sequence(gw.port, &[&req]);
        assert!(answers[0].starts_with("HTTP/1.1 200"), "{answers:?}");
        let h = u.last().unwrap().headers;
        for name in hop {
            assert!(!h.contains_key(name), "{name} reached the upstream: {h:?}");
        }
        assert_eq!(h["x-kept"], "yes", "{h:?}");
        assert_eq!(h["x-camelcase"], "2", "{h:?}");
    }
    // A request with none of them passes as it came.
    let answers = raw_sequence(
        gw.port,
        &[b"GET /x HTTP/1.1\r\nHost: a\r\nX-Kept: yes\r\nAccept: */*\r\n\r\n"],
    );
    assert!(answers[0].starts_with("HTTP/1.1 200"), "{answers:?}");
    let h = u.last().unwrap().headers;
    assert_eq!((h["x-kept"].as_str(), h["accept"].as_str()), ("yes", "*/*"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_400_envelope() {
    let u = Upstream::start("u").await;
    let gw = Gateway::start(&format!(
        "{}routes:\n  - {{ name: r, upstream: u }}\n",
        upstream_yaml(&[("u", &u)])
    ));
    let out = raw(
        gw.port,
        b"GET / HTTP/1.1\r\nUser-Agent: x\r\n\r\n",
        Duration::from_secs(3),
    );
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert!(out.contains("\"missing Host header\""), "{out}");
    assert!(
        out.contains("Connection: close"),
        "a malformed request ends the connection: {out}"
    );
    let out = raw(
        gw.port,
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        Duration::from_secs(3),
    );
    // Refused by Pingora's parser before any hook runs, so without the envelope.
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert_eq!(u.requests(), 0, "refused requests never reach the upstream");
    // HTTP/1.0 without Host is allowed.
    let out = raw(
        gw.port,
        b"GET /ok HTTP/1.0\r\nUser-Agent: test\r\n\r\n",
        Duration::from_secs(3),
    );
    assert!(
        out.starts_with("HTTP/1.1 200") || out.starts_with("HTTP/1.0 200"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_has_one_json_line_per_request() {
    let u = Upstream::start("u").await;
    let gw = Gateway::start(&format!(
        "{}routes:\n  - {{ name: items, upstream: u, match: {{ path: {{ prefix: /items }} }} }}\n",
        upstream_yaml(&[("u", &u)])
    ));
    let c = client();
    let r = c.get(gw.url("/items/1")).send().await.unwrap();
    let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    c.get(gw.url("/missing")).send().await.unwrap();
    let lines = gw.access_log_lines(2).await;
    assert_eq!(lines.len(), 2, "{lines:?}");
    let ok = &lines[0];
    assert_eq!(ok["request_id"], id.as_str());
    assert_eq!(ok["route"], "items");
    assert_eq!(ok["upstream"], "u");
    assert_eq!(ok["target"], u.addr.to_string());
    assert_eq!(ok["status"], 200);
    assert_eq!(ok["method"], "GET");
    assert_eq!(ok["path"], "/items/1");
    assert!(ok["duration_ms"].as_f64().unwrap() >= 0.0);
    let miss = &lines[1];
    assert_eq!(miss["status"], 404);
    assert_eq!(miss["route"], serde_json::Value::Null);
    assert_eq!(miss["error"], "no route");
}
