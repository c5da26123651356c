//! Edge policies: IP allow/deny (v4, v6, trusted proxies, a deny file reloaded with the
//! config) and CORS.

use std::time::{Duration, Instant};
use tests::{assert_envelope, client, client_from, get_json, Gateway, Setup, Upstream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_rules_for_v4_v6_trusted_proxies_and_a_deny_file() {
    let u = Upstream::start("u").await;
    let s = Setup::new();
    std::fs::write(s.path("deny.txt"), "# nobody yet\n").unwrap();
    let yaml = format!(
        r#"{}  trusted_proxies: ["127.0.0.3/32"]
upstreams:
  u: {{ targets: [{{ addr: "{}" }}] }}
routes:
  - name: internal
    match: {{ path: {{ prefix: /internal }} }}
    upstream: u
    plugins:
      ip_filter:
        allow: ["127.0.0.0/8", "10.0.0.0/8", "2001:db8::/32"]
        deny: ["127.0.0.2", "2001:db8::bad"]
        deny_file: {}
  - {{ name: open, upstream: u }}
"#,
        s.server_yaml(),
        u.addr,
        s.path("deny.txt").display()
    );
    let gw = s.start(&yaml);
    let url = gw.url("/internal");

    assert_eq!(get_json(&client_from("127.0.0.1"), &url).await.0, 200);
    let (status, _, body) = get_json(&client_from("127.0.0.2"), &url).await;
    assert_envelope(status, &body, 403);
    assert_eq!(body["data"]["reason"], "address denied");
    assert_eq!(
        get_json(&client_from("127.0.0.2"), &gw.url("/open"))
            .await
            .0,
        200
    );

    // Behind the trusted proxy 127.0.0.3, X-Forwarded-For names the client.
    let proxy = client_from("127.0.0.3");
    for (xff, want) in [
        ("10.9.8.7", 200),
        ("203.0.113.9", 403),
        ("203.0.113.9, 10.1.1.1", 200),
        ("2001:db8::1", 200),
        ("2001:db8::bad", 403),
        ("2001:db9::1", 403),
    ] {
        let r = proxy
            .get(&url)
            .header("x-forwarded-for", xff)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), want, "X-Forwarded-For: {xff}");
    }
    // From an untrusted peer the header is ignored.
    let r = client_from("127.0.0.1")
        .get(&url)
        .header("x-forwarded-for", "203.0.113.9")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // The deny file is read again with the config.
    std::fs::write(s_path(&gw, "deny.txt"), "10.9.8.0/24\n").unwrap();
    gw.signal("HUP");
    let t = Instant::now();
    loop {
        let r = proxy
            .get(&url)
            .header("x-forwarded-for", "10.9.8.7")
            .send()
            .await
            .unwrap();
        if r.status() == 403 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "deny file not reloaded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn s_path(gw: &Gateway, name: &str) -> std::path::PathBuf {
    gw.dir.path().join(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_global_filter_applies_before_routing() {
    let u = Upstream::start("u").await;
    let s = Setup::new();
    let yaml = format!(
        "{}  ip_filter: {{ deny: [\"127.0.0.2\"] }}\nupstreams:\n  u: {{ targets: [{{ addr: \"{}\" }}] }}\nroutes:\n  - {{ name: r, upstream: u, match: {{ path: {{ exact: /x }} }} }}\n",
        s.server_yaml(),
        u.addr
    );
    let gw = s.start(&yaml);
    assert_eq!(
        get_json(&client_from("127.0.0.2"), &gw.url("/nowhere"))
            .await
            .0,
        403
    );
    assert_eq!(
        get_json(&client_from("127.0.0.1"), &gw.url("/nowhere"))
            .await
            .0,
        404
    );
    assert_eq!(
        get_json(&client_from("127.0.0.1"), &gw.url("/x")).await.0,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_preflight_is_answered_and_answers_carry_the_headers() {
    let u = Upstream::start("u").await;
    let gw = Gateway::start(&format!(
        r#"upstreams:
  u: {{ targets: [{{ addr: "{}" }}] }}
  dead: {{ targets: [{{ addr: "127.0.0.1:{}" }}] }}
routes:
  - name: api
    match: {{ path: {{ prefix: /api }}, methods: [GET, POST] }}
    upstream: u
    plugins:
      cors:
        origins: ["https://app.example.com", "https://*.example.org"]
        methods: [GET, POST]
        headers: [authorization, content-type]
        expose_headers: [x-request-id]
        credentials: true
        max_age_secs: 600
  - name: gone
    match: {{ path: {{ prefix: /gone }} }}
    upstream: dead
    plugins: {{ cors: {{ origins: ["https://app.example.com"] }} }}
"#,
        u.addr,
        tests::free_port()
    ));
    let c = client();
    let preflight = |origin: &str, method: &str, headers: &str| {
        c.request(reqwest::Method::OPTIONS, gw.url("/api/items"))
            .header("origin", origin)
            .header("access-control-request-method", method)
            .header("access-control-request-headers", headers)
            .send()
    };
    let r = preflight(
        "https://app.example.com",
        "POST",
        "authorization, content-type",
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 204);
    let h = r.headers();
    assert_eq!(h["access-control-allow-origin"], "https://app.example.com");
    assert_eq!(h["access-control-allow-methods"], "GET, POST");
    assert_eq!(
        h["access-control-allow-headers"],
        "authorization, content-type"
    );
    assert_eq!(h["access-control-allow-credentials"], "true");
    assert_eq!(h["access-control-max-age"], "600");
    assert_eq!(h["vary"], "Origin");
    assert_eq!(u.requests(), 0, "the gateway answers preflights itself");

    for (origin, method, headers, status) in [
        ("https://evil.com", "GET", "", 403),
        ("https://app.example.com", "GET", "x-secret", 403),
        // No route serves DELETE here, so there is nothing to allow.
        ("https://app.example.com", "DELETE", "", 404),
    ] {
        let r = preflight(origin, method, headers).await.unwrap();
        assert_eq!(r.status(), status, "{origin} {method} {headers}");
        assert!(r.headers().get("access-control-allow-origin").is_none());
    }

    let r = c
        .get(gw.url("/api/items"))
        .header("origin", "https://shop.example.org")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://shop.example.org"
    );
    assert_eq!(r.headers()["access-control-expose-headers"], "x-request-id");
    assert_eq!(r.headers()["vary"], "Origin");

    let r = c
        .get(gw.url("/api/items"))
        .header("origin", "https://evil.com")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("access-control-allow-origin").is_none());

    // Gateway answers carry them too, so a browser can read the error.
    let r = c
        .get(gw.url("/gone"))
        .header("origin", "https://app.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_that_keeps_failing_is_banned_listed_and_let_back_in() {
    std::env::set_var("GW_TEST_BAN_SECRET", "ban-secret");
    let u = Upstream::start("u").await;
    let s = Setup::new();
    let yaml = format!(
        r#"{}  ip_filter:
    auto_ban: {{ threshold: 5, window_secs: 10, ban_secs: 30 }}
upstreams:
  u: {{ targets: [{{ addr: "{}" }}] }}
routes:
  - name: api
    match: {{ path: {{ prefix: /api }} }}
    upstream: u
    plugins:
      jwt: {{ algorithms: [HS256], keys: {{ secret_env: GW_TEST_BAN_SECRET }} }}
      ip_filter: {{ auto_ban: {{ threshold: 3, window_secs: 10, ban_secs: 2 }} }}
  - name: limited
    match: {{ path: {{ prefix: /limited }} }}
    upstream: u
    plugins:
      rate_limit: [{{ algorithm: token_bucket, key: ip, limit: 1, window_secs: 60 }}]
"#,
        s.server_yaml(),
        u.addr
    );
    let gw = s.start(&yaml);
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &serde_json::json!({"sub": "x", "exp": 4_000_000_000u64}),
        &jsonwebtoken::EncodingKey::from_secret(b"ban-secret"),
    )
    .unwrap();
    let bad = client_from("127.0.0.5");
    let url = gw.url("/api/x");
    // Three refusals are tolerated; the fourth earns a ban.
    for _ in 0..4 {
        assert_eq!(get_json(&bad, &url).await.0, 401);
    }
    let r = bad.get(&url).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), 403, "banned even with a good token");
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["data"]["reason"], "address banned");
    // Others are not affected; the ban holds for this route only.
    let good = client_from("127.0.0.6");
    let r = good.get(&url).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(get_json(&bad, &gw.url("/limited")).await.0, 200);

    let admin = client();
    let (_, _, bans) = get_json(&admin, &gw.admin_url("/admin/bans")).await;
    assert_eq!(bans["data"]["api"][0]["ip"], "127.0.0.5", "{bans}");
    assert_eq!(bans["data"]["server"], serde_json::json!([]));
    assert!(gw
        .metrics()
        .await
        .contains("gateway_auto_bans_total{scope=\"api\"} 1"));

    // The ban ends by itself.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let r = bad.get(&url).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), 200, "let back in");

    // Server-wide: rate-limit refusals count too, the ban covers every route, and the
    // admin API lifts it.
    let noisy = client_from("127.0.0.7");
    let mut statuses = Vec::new();
    for _ in 0..7 {
        statuses.push(get_json(&noisy, &gw.url("/limited")).await.0);
    }
    // Six refusals are more than the threshold of five: banned from the next request.
    assert_eq!(
        statuses,
        [200, 429, 429, 429, 429, 429, 429],
        "{statuses:?}"
    );
    let r = noisy.get(&url).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), 403);
    let (_, _, bans) = get_json(&admin, &gw.admin_url("/admin/bans")).await;
    assert_eq!(bans["data"]["server"][0]["ip"], "127.0.0.7", "{bans}");
    let r = admin
        .delete(gw.admin_url("/admin/bans/127.0.0.7"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = noisy.get(&url).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), 200, "ban lifted by the admin API");
}
