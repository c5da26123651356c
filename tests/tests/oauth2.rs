//! OAuth 2.0 token introspection (RFC 7662) through the real binary, against a real
//! authorization server (Authlib, `tests/oauth/provider.py`) that issues tokens through its
//! token endpoint: admission and forwarded claims, revocation seen after the cache TTL,
//! expiry, scopes, one call for many requests, a bounded call rate under a flood of bad
//! tokens, and a provider that refuses the gateway, stops or is slow.

use serde_json::Value;
use std::time::{Duration, Instant};
use tests::{assert_envelope, client, OAuthProvider, Setup, Upstream};

fn route(name: &str, path: &str, provider: &OAuthProvider, extra: &str) -> String {
    format!(
        "  - name: {name}\n    upstream: u\n    match: {{ path: {{ prefix: {path} }} }}\n    plugins:\n      oauth2:\n        introspection_url: \"{}\"\n        client_id: gateway\n        client_secret_env: GW_TEST_OAUTH_SECRET\n        forward_claims: {{ sub: x-subject, scope: x-scope }}\n{extra}",
        provider.url("/oauth/introspect")
    )
}

fn config(s: &Setup, u: &Upstream, routes: &[String]) -> String {
    format!(
        "{}upstreams:\n  u: {{ targets: [{{ addr: \"127.0.0.1:{}\" }}] }}\nroutes:\n{}",
        s.server_yaml(),
        u.port(),
        routes.concat()
    )
}

async fn call(url: &str, token: Option<&str>) -> (u16, reqwest::header::HeaderMap, Value) {
    tests::get_with_bearer(&client(), url, token, "x-subject").await
}

fn challenge(h: &reqwest::header::HeaderMap) -> String {
    h.get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_from_the_provider_are_admitted_revoked_expired_and_scoped() {
    std::env::set_var("GW_TEST_OAUTH_SECRET", "gateway-secret");
    let provider = OAuthProvider::start();
    let u = Upstream::start("u").await;
    let s = Setup::new();
    let routes = [
        route("api", "/api", &provider, "        cache_ttl_secs: 1\n"),
        route(
            "admin",
            "/admin",
            &provider,
            "        required_scopes: [write]\n        auth_method: client_secret_post\n",
        ),
        route("limited", "/limited", &provider, "")
            + "      rate_limit: [{ algorithm: sliding_window, key: \"claim:sub\", limit: 2, window_secs: 60 }]\n",
    ];
    let yaml = config(&s, &u, &routes);
    let gw = s.start(&yaml);

    // No token, a token the provider never issued.
    let (status, h, body) = call(&gw.url("/api/x"), None).await;
    assert_envelope(status, &body, 401);
    assert_eq!(challenge(&h), "Bearer");
    let (status, h, body) = call(&gw.url("/api/x"), Some("made-up")).await;
    assert_envelope(status, &body, 401);
    assert_eq!(challenge(&h), "Bearer error=\"invalid_token\"");

    // An active token: admitted, its claims forwarded, the client's copy gone.
    let token = provider.token("app", "app-secret", None).await;
    let (status, _, _) = call(&gw.url("/api/x"), Some(&token)).await;
    assert_eq!(status, 200);
    let seen = u.last().unwrap();
    assert_eq!(seen.headers["x-subject"], "app");
    assert_eq!(seen.headers["x-scope"], "read write");

    // Scopes: a read-only token is refused where write is required (RFC 6750 section 3.1);
    // a token with it passes (that route authenticates with client_secret_post).
    let read_only = provider.token("app", "app-secret", Some("read")).await;
    let (status, h, body) = call(&gw.url("/admin/x"), Some(&read_only)).await;
    assert_envelope(status, &body, 403);
    assert_eq!(body["message"], "insufficient scope");
    assert_eq!(body["data"]["missing"], serde_json::json!(["write"]));
    assert_eq!(
        challenge(&h),
        "Bearer error=\"insufficient_scope\", scope=\"write\""
    );
    let (status, _, _) = call(&gw.url("/admin/x"), Some(&token)).await;
    assert_eq!(status, 200);

    // The answer's claims key rate limits: each client has its own two requests.
    let other = provider.token("short", "short-secret", None).await;
    for (t, want) in [(&token, 200), (&token, 200), (&token, 429), (&other, 200)] {
        let (status, _, _) = call(&gw.url("/limited/x"), Some(t)).await;
        assert_eq!(status, want);
    }

    // Revoked at the provider: still admitted from the cache, refused once its TTL (1 s) passed.
    provider.revoke("app", "app-secret", &token).await;
    let (status, _, _) = call(&gw.url("/api/x"), Some(&token)).await;
    assert_eq!(status, 200, "cached for cache_ttl_secs");
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let (status, h, body) = call(&gw.url("/api/x"), Some(&token)).await;
    assert_envelope(status, &body, 401);
    assert_eq!(body["data"]["reason"], "token not active");
    assert_eq!(challenge(&h), "Bearer error=\"invalid_token\"");

    // A token that expires (the provider's `short` client: 2 s) is refused after its exp,
    // whatever the cache says.
    let short = provider.token("short", "short-secret", None).await;
    let (status, _, _) = call(&gw.url("/api/x"), Some(&short)).await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_millis(2300)).await;
    let (status, _, body) = call(&gw.url("/api/x"), Some(&short)).await;
    assert_envelope(status, &body, 401);

    // The access log names the subject, never the token.
    let lines = gw.access_log_lines(8).await;
    assert!(lines
        .iter()
        .any(|l| l["status"] == 200 && l["route"] == "api" && l["subject"] == "app"));
    let log = serde_json::to_string(&lines).unwrap();
    assert!(!log.contains(&token), "a token in the access log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_call_for_many_requests_and_a_bounded_rate_for_a_flood_of_bad_tokens() {
    std::env::set_var("GW_TEST_OAUTH_SECRET", "gateway-secret");
    let provider = OAuthProvider::start();
    let u = Upstream::start("u").await;
    let s = Setup::new();
    let routes = [route(
        "api",
        "/api",
        &provider,
        "        max_calls_per_sec: 20\n        cache_entries: 100\n",
    )];
    let yaml = config(&s, &u, &routes);
    let gw = s.start(&yaml);
    let token = provider.token("app", "app-secret", None).await;

    // 1,000 requests with one token, 50 at a time: one introspection call.
    let before = provider.introspections().await;
    let c = client();
    let url = gw.url("/api/x");
    for _ in 0..20 {
        let calls = (0..50).map(|_| {
            c.get(&url)
                .header("authorization", format!("Bearer {token}"))
                .send()
        });
        for r in futures::future::join_all(calls).await {
            assert_eq!(r.unwrap().status(), 200);
        }
    }
    assert_eq!(provider.introspections().await - before, 1);

    // 1,000 distinct bad tokens in about a second: at most the budget (20 a second, and
    // the bucket starts full) reaches the provider; the rest get 503, none gets in.
    let before = provider.introspections().await;
    let started = Instant::now();
    let mut statuses = std::collections::BTreeMap::new();
    for batch in 0..20 {
        let calls = (0..50).map(|i| {
            c.get(&url)
                .header("authorization", format!("Bearer bad-{batch}-{i}"))
                .send()
        });
        for r in futures::future::join_all(calls).await {
            *statuses.entry(r.unwrap().status().as_u16()).or_insert(0) += 1;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let calls = provider.introspections().await - before;
    assert!(
        calls as f64 <= 20.0 + 20.0 * secs + 1.0,
        "{calls} calls in {secs:.1} s"
    );
    assert_eq!(statuses.get(&200), None, "{statuses:?}");
    assert_eq!(
        statuses.values().sum::<usize>(),
        1000,
        "every request answered: {statuses:?}"
    );
    let m = gw.metrics().await;
    assert!(m.contains("gateway_oauth2_introspections_total{result=\"busy\",route=\"api\"}"));
    // The first 50 shared the one call; every later one came from the cache.
    let hits: f64 = m
        .lines()
        .find_map(|l| l.strip_prefix("gateway_oauth2_cache_hits_total{route=\"api\"} "))
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!((950.0..1000.0).contains(&hits), "{hits}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_that_refuses_stops_or_stalls_never_hangs_a_request() {
    std::env::set_var("GW_TEST_OAUTH_SECRET", "gateway-secret");
    std::env::set_var("GW_TEST_OAUTH_WRONG", "not-the-secret");
    let mut provider = OAuthProvider::start();
    let u = Upstream::start("u").await;
    let s = Setup::new();
    let wrong = route("wrong", "/wrong", &provider, "")
        .replace("GW_TEST_OAUTH_SECRET", "GW_TEST_OAUTH_WRONG");
    let routes = [
        route(
            "refuse",
            "/refuse",
            &provider,
            "        timeout_ms: 500\n        cache_ttl_secs: 0\n",
        ),
        route(
            "cached",
            "/cached",
            &provider,
            "        timeout_ms: 500\n        cache_ttl_secs: 0\n        on_provider_error: cached\n",
        ),
        wrong,
    ];
    let yaml = config(&s, &u, &routes);
    let gw = s.start(&yaml);
    let token = provider.token("app", "app-secret", None).await;

    // The provider refuses the gateway's client secret: 503, not 401 (the token may be
    // good), and at once.
    let (status, h, body) = call(&gw.url("/wrong/x"), Some(&token)).await;
    assert_envelope(status, &body, 503);
    assert_eq!(h["retry-after"], "1");

    for path in ["/refuse/x", "/cached/x"] {
        let (status, _, _) = call(&gw.url(path), Some(&token)).await;
        assert_eq!(status, 200, "{path}");
    }
    // Slow: each decision within the timeout (500 ms) and a margin.
    provider.set_delay(3000).await;
    let started = Instant::now();
    let (status, _, body) = call(&gw.url("/refuse/x"), Some(&token)).await;
    assert_envelope(status, &body, 503);
    assert_eq!(body["message"], "authorization server unavailable");
    assert!(
        started.elapsed() < Duration::from_millis(2000),
        "{:?}",
        started.elapsed()
    );
    let started = Instant::now();
    let (status, _, _) = call(&gw.url("/cached/x"), Some(&token)).await;
    assert_eq!(
        status, 200,
        "the last active answer stands while the token's exp is ahead"
    );
    assert!(started.elapsed() < Duration::from_millis(2000));

    // Stopped: the same, at once.
    provider.stop();
    let started = Instant::now();
    let (status, _, body) = call(&gw.url("/refuse/x"), Some(&token)).await;
    assert_envelope(status, &body, 503);
    let (status, _, _) = call(&gw.url("/cached/x"), Some(&token)).await;
    assert_eq!(status, 200);
    let (status, _, body) = call(&gw.url("/cached/x"), Some("never-seen")).await;
    assert_envelope(status, &body, 503);
    assert!(started.elapsed() < Duration::from_millis(3000));

    // Back: new tokens are introspected again (the provider forgot the old ones).
    provider.restart();
    let fresh = provider.token("app", "app-secret", None).await;
    let (status, _, _) = call(&gw.url("/refuse/x"), Some(&fresh)).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_and_endpoints_from_openid_connect_discovery_follow_a_rotation() {
    let provider = OAuthProvider::start();
    let u = Upstream::start("u").await;
    let s = Setup::new();
    let issuer = provider.url("");
    let yaml = format!(
        r#"{}upstreams:
  u: {{ targets: [{{ addr: "127.0.0.1:{}" }}] }}
routes:
  - name: jwt
    upstream: u
    match: {{ path: {{ prefix: /jwt }} }}
    plugins:
      jwt:
        algorithms: [RS256]
        keys: {{ oidc_issuer: "{issuer}", refetch_min_secs: 0 }}
        audience: api
        required_scopes: [read]
        forward_claims: {{ sub: x-subject }}
  # Opaque tokens, the introspection endpoint found the same way.
  - name: opaque
    upstream: u
    match: {{ path: {{ prefix: /opaque }} }}
    plugins:
      oauth2: {{ issuer: "{issuer}", client_id: gateway, client_secret: gateway-secret }}
  # The document names the issuer without the slash: no keys ever load here.
  - name: other
    upstream: u
    match: {{ path: {{ prefix: /other }} }}
    plugins:
      jwt:
        algorithms: [RS256]
        keys: {{ oidc_issuer: "{issuer}/", refetch_min_secs: 0 }}
"#,
        s.server_yaml(),
        u.port()
    );
    let gw = s.start(&yaml);
    let token = provider.token("jwt-app", "jwt-secret", None).await;
    let (status, _, body) = call(&gw.url("/jwt/x"), Some(&token)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(u.last().unwrap().headers["x-subject"], "jwt-app");

    // The provider signs with a new key and drops the old one from its JWKS: a token with
    // the new kid makes the gateway read the discovery document and the JWKS again.
    provider.rotate().await;
    let rotated = provider.token("jwt-app", "jwt-secret", None).await;
    let (status, _, body) = call(&gw.url("/jwt/x"), Some(&rotated)).await;
    assert_eq!(status, 200, "{body}");

    let opaque = provider.token("app", "app-secret", None).await;
    let (status, _, body) = call(&gw.url("/opaque/x"), Some(&opaque)).await;
    assert_eq!(status, 200, "{body}");
    let (status, _, body) = call(&gw.url("/opaque/x"), Some("made-up")).await;
    assert_envelope(status, &body, 401);

    // The client secret written in the file never leaves the gateway.
    let config = gw.admin_config_text().await;
    assert!(config.contains("\"client_id\":\"gateway\""), "{config}");
    assert!(!config.contains("gateway-secret"), "{config}");

    // A document that names another issuer is not trusted.
    let (status, _, body) = call(&gw.url("/other/x"), Some(&rotated)).await;
    assert_envelope(status, &body, 401);
    assert_eq!(body["data"]["reason"], "unknown key id");
    let m = gw.metrics().await;
    assert!(
        m.contains("gateway_jwks_fetches_total{result=\"error\",route=\"other\"}"),
        "{m}"
    );
}
