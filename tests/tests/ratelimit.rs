//! Rate limits through the real binary: sliding window, token and leaky buckets,
//! concurrency, keys, tiers by claim, and one limit shared by two gateways through a real
//! Redis that is stopped and restarted under them.

use jsonwebtoken::{encode, EncodingKey, Header};
use reqwest::header::HeaderMap;
use serde_json::{json, Value};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tests::{assert_envelope, client, client_from, Gateway, RedisServer, Setup, Upstream};

async fn send(rb: reqwest::RequestBuilder) -> (u16, HeaderMap, Value) {
    let r = rb.send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let body = r.json().await.unwrap_or(Value::Null);
    (status, headers, body)
}

fn num(h: &HeaderMap, name: &str) -> u64 {
    h.get(name)
        .unwrap_or_else(|| panic!("{name} missing in {h:?}"))
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// Send `n` GETs one after another; the statuses in order.
async fn statuses(c: &reqwest::Client, url: &str, n: usize) -> Vec<u16> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(c.get(url).send().await.unwrap().status().as_u16());
    }
    out
}

fn count(v: &[u16], status: u16) -> usize {
    v.iter().filter(|s| **s == status).count()
}

fn start(rest: &str) -> Gateway {
    let s = Setup::new();
    let yaml = format!("{}{rest}", s.server_yaml());
    s.start(&yaml)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sliding_window_by_ip_and_by_header_with_quota_headers() {
    let u = Upstream::start("u").await;
    let rest = format!(
        r#"upstreams:
  u: {{ targets: [{{ addr: "{}" }}] }}
routes:
  - name: by-ip
    match: {{ path: {{ prefix: /ip }} }}
    upstream: u
    plugins:
      rate_limit: [{{ algorithm: sliding_window, key: ip, limit: 10, window_secs: 30 }}]
  - name: by-key
    match: {{ path: {{ prefix: /key }} }}
    upstream: u
    plugins:
      rate_limit: [{{ algorithm: sliding_window, key: "header:x-api-key", limit: 3, window_secs: 30 }}]
"#,
        u.addr
    );
    let s = Setup::new();
    let server = s.server_yaml();
    let gw = s.start(&format!("{server}{rest}"));
    let c = client_from("127.0.0.1");
    let url = gw.url("/ip");
    let before = u.requests();
    let mut remaining = Vec::new();
    for _ in 0..10 {
        let (status, h, _) = send(c.get(&url)).await;
        assert_eq!(status, 200);
        assert_eq!(num(&h, "ratelimit-limit"), 10);
        assert_eq!(num(&h, "x-ratelimit-limit"), 10);
        assert!(num(&h, "ratelimit-reset") <= 30);
        remaining.push(num(&h, "ratelimit-remaining"));
    }
    assert_eq!(remaining, [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]);
    for _ in 0..5 {
        let (status, h, body) = send(c.get(&url)).await;
        assert_envelope(status, &body, 429);
        assert_eq!(body["message"], "rate limit exceeded");
        let retry = num(&h, "retry-after");
        // The window slides: the 10 just counted weigh on into the next window.
        assert!((1..=60).contains(&retry), "Retry-After {retry}");
        assert_eq!(body["data"]["retry_after"], retry);
        assert_eq!(num(&h, "ratelimit-remaining"), 0);
        assert_eq!(num(&h, "x-ratelimit-remaining"), 0);
        assert!(h.contains_key("x-request-id"));
    }
    // Refused requests never reached the upstream.
    assert_eq!(u.requests() - before, 10);
    // Another address has its own count.
    assert_eq!(
        count(&statuses(&client_from("127.0.0.2"), &url, 3).await, 200),
        3
    );

    // By header: one count per key.
    let key = |k: &'static str| {
        let c = c.clone();
        let url = gw.url("/key");
        async move {
            let mut v = Vec::new();
            for _ in 0..5 {
                v.push(send(c.get(&url).header("x-api-key", k)).await.0);
            }
            v
        }
    };
    assert_eq!(key("alpha").await, [200, 200, 200, 429, 429]);
    assert_eq!(key("beta").await, [200, 200, 200, 429, 429]);

    // A reload that leaves the limit as it was keeps its counts.
    gw.write_config(&format!(
        "{server}{rest}  - {{ name: extra, match: {{ path: {{ exact: /extra }} }}, upstream: u }}\n"
    ));
    gw.signal("HUP");
    let t = Instant::now();
    while c.get(gw.url("/extra")).send().await.unwrap().status() != 200 {
        assert!(t.elapsed() < Duration::from_secs(5), "reload not applied");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(send(c.get(&url)).await.0, 429);

    // Requests are counted once their answer is sent (Pingora's logging phase), so the
    // last one's count may land just after the client read it.
    let want = [
        "gateway_rate_limited_total{route=\"by-ip\"} 6",
        "gateway_requests_total{method=\"GET\",route=\"by-ip\",status=\"429\"} 6",
    ];
    let t = Instant::now();
    let mut m = gw.metrics().await;
    while !want.iter().all(|w| m.contains(w)) && t.elapsed() < Duration::from_secs(2) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        m = gw.metrics().await;
    }
    for w in want {
        assert!(m.contains(w), "missing {w} in\n{m}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_bucket_bursts_then_refills_and_leaky_bucket_delays_then_refuses() {
    let u = Upstream::start("u").await;
    let gw = start(&format!(
        r#"upstreams:
  u: {{ targets: [{{ addr: "{}" }}] }}
routes:
  - name: token
    match: {{ path: {{ prefix: /token }} }}
    upstream: u
    plugins:
      rate_limit: [{{ algorithm: token_bucket, key: route, limit: 5, burst: 4 }}]
  - name: leaky
    match: {{ path: {{ prefix: /leaky }} }}
    upstream: u
    plugins:
      rate_limit: [{{ algorithm: leaky_bucket, key: route, limit: 5, burst: 2 }}]
"#,
        u.addr
    ));
    let c = client();
    // The burst of 4 passes at once, then the bucket is empty.
    let v = statuses(&c, &gw.url("/token"), 6).await;
    assert_eq!(v, [200, 200, 200, 200, 429, 429]);
    // 5 tokens a second: after 0.45 s about two are back, never the whole burst.
    tokio::time::sleep(Duration::from_millis(450)).await;
    let v = statuses(&c, &gw.url("/token"), 4).await;
    assert!((1..=3).contains(&count(&v, 200)), "{v:?}");

    // Leaky bucket at 5 a second with a queue of 2: of 5 requests at once, one goes now,
    // two wait about 200 and 400 ms, two are refused at once.
    let url = gw.url("/leaky");
    let calls = (0..5).map(|_| {
        let (c, url) = (c.clone(), url.clone());
        tokio::spawn(async move {
            let t = Instant::now();
            let status = c.get(&url).send().await.unwrap().status().as_u16();
            (status, t.elapsed())
        })
    });
    let mut got: Vec<(u16, Duration)> = futures::future::join_all(calls)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    got.sort_by_key(|(_, d)| *d);
    let ok: Vec<Duration> = got
        .iter()
        .filter(|(s, _)| *s == 200)
        .map(|(_, d)| *d)
        .collect();
    let refused: Vec<Duration> = got
        .iter()
        .filter(|(s, _)| *s == 429)
        .map(|(_, d)| *d)
        .collect();
    assert_eq!((ok.len(), refused.len()), (3, 2), "{got:?}");
    assert!(ok[0] < Duration::from_millis(150), "{got:?}");
    assert!(ok[1] >= Duration::from_millis(150), "{got:?}");
    assert!(ok[2] >= Duration::from_millis(350), "{got:?}");
    assert!(ok[2] < Duration::from_secs(3), "{got:?}");
    for d in refused {
        assert!(d < Duration::from_millis(150), "refused at once: {got:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_headers_follow_each_limits_headers_setting() {
    let u = Upstream::start("u").await;
    let gw = start(&format!(
        r#"upstreams:
  u: {{ targets: [{{ addr: "{}" }}] }}
routes:
  - name: x-only
    match: {{ path: {{ prefix: /x }} }}
    upstream: u
    plugins:
      rate_limit: [{{ algorithm: token_bucket, key: route, limit: 1, burst: 2, window_secs: 60, headers: x-ratelimit }}]
  - name: draft-only
    match: {{ path: {{ prefix: /draft }} }}
    upstream: u
    plugins:
      rate_limit: [{{ algorithm: sliding_window, key: route, limit: 5, window_secs: 60, headers: ratelimit }}]
  - name: quiet
    match: {{ path: {{ prefix: /quiet }} }}
    upstream: u
    plugins:
      rate_limit:
        - {{ algorithm: sliding_window, key: route, limit: 100, window_secs: 60 }}
        - {{ algorithm: token_bucket, key: route, limit: 1, window_secs: 60, headers: none }}
"#,
        u.addr
    ));
    let c = client();
    let drafts = ["ratelimit-limit", "ratelimit-remaining", "ratelimit-reset"];
    let xs = [
        "x-ratelimit-limit",
        "x-ratelimit-remaining",
        "x-ratelimit-reset",
    ];
    let absent = |h: &HeaderMap, names: &[&str]| {
        for n in names {
            assert!(!h.contains_key(*n), "{n} present in {h:?}");
        }
    };

    let mut seen = Vec::new();
    for _ in 0..3 {
        let (status, h, _) = send(c.get(gw.url("/x"))).await;
        absent(&h, &drafts);
        seen.push((status, num(&h, "x-ratelimit-remaining")));
        assert_eq!(num(&h, "x-ratelimit-limit"), 2);
    }
    assert_eq!(seen, [(200, 1), (200, 0), (429, 0)]);

    let (status, h, _) = send(c.get(gw.url("/draft"))).await;
    assert_eq!(status, 200);
    absent(&h, &xs);
    assert_eq!(num(&h, "ratelimit-remaining"), 4);

    // The silent limit is the tighter one, yet the other speaks; its own 429 tells only
    // when to come back.
    let (status, h, _) = send(c.get(gw.url("/quiet"))).await;
    assert_eq!(status, 200);
    assert_eq!(num(&h, "ratelimit-limit"), 100);
    assert_eq!(num(&h, "x-ratelimit-remaining"), 99);
    let (status, h, body) = send(c.get(gw.url("/quiet"))).await;
    assert_envelope(status, &body, 429);
    assert!(num(&h, "retry-after") >= 1);
    absent(&h, &drafts);
    absent(&h, &xs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_limit_counts_requests_in_flight() {
    let u = Upstream::start("u").await;
    let gw = start(&format!(
        r#"upstreams:
  u: {{ targets: [{{ addr: "{}" }}] }}
routes:
  - name: slow
    upstream: u
    plugins:
      rate_limit: [{{ algorithm: concurrency, key: route, limit: 2 }}]
"#,
        u.addr
    ));
    let url = gw.url("/work?delay_ms=600");
    let calls = (0..4).map(|_| {
        let url = url.clone();
        tokio::spawn(async move { send(client().get(&url)).await })
    });
    let got: Vec<(u16, HeaderMap, Value)> = futures::future::join_all(calls)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    let codes: Vec<u16> = got.iter().map(|g| g.0).collect();
    assert_eq!(
        (count(&codes, 200), count(&codes, 429)),
        (2, 2),
        "{codes:?}"
    );
    let (_, h, body) = got.iter().find(|g| g.0 == 429).unwrap();
    assert_envelope(429, body, 429);
    assert_eq!(num(h, "ratelimit-limit"), 2);
    assert!(u.max_inflight() <= 2);
    // Slots are given back when requests end, failed or not.
    assert_eq!(
        statuses(&client(), &gw.url("/quick"), 3).await,
        [200, 200, 200]
    );
}

fn token(secret: &[u8], claims: Value) -> String {
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiers_by_claim_and_keys_by_claim() {
    std::env::set_var("GW_TEST_JWT_SECRET", "hs-secret-for-tests");
    let u = Upstream::start("u").await;
    let gw = start(&format!(
        r#"upstreams:
  u: {{ targets: [{{ addr: "{}" }}] }}
routes:
  - name: api
    upstream: u
    plugins:
      jwt: {{ algorithms: [HS256], keys: {{ secret_env: GW_TEST_JWT_SECRET }}, optional: true }}
      rate_limit:
        - algorithm: sliding_window
          key: "claim:sub"
          limit: 3
          window_secs: 30
          tiers: {{ claim: tier, limits: {{ gold: 6, silver: 2 }}, anonymous: 1 }}
"#,
        u.addr
    ));
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 300;
    let secret = b"hs-secret-for-tests";
    let c = client();
    let url = gw.url("/api");
    let run = |tok: Option<String>| {
        let (c, url) = (c.clone(), url.clone());
        async move {
            let mut ok = 0;
            for _ in 0..8 {
                let mut rb = c.get(&url);
                if let Some(t) = &tok {
                    rb = rb.header("authorization", format!("Bearer {t}"));
                }
                if rb.send().await.unwrap().status() == 200 {
                    ok += 1;
                }
            }
            ok
        }
    };
    let tok =
        |sub: &str, tier: &str| Some(token(secret, json!({"sub": sub, "tier": tier, "exp": exp})));
    assert_eq!(run(tok("ann", "gold")).await, 6);
    assert_eq!(run(tok("bob", "silver")).await, 2);
    // A tier the config does not list gets the limit's own limit.
    assert_eq!(run(tok("cid", "bronze")).await, 3);
    // Each subject has its own count: another gold user is not affected by ann.
    assert_eq!(run(tok("dee", "gold")).await, 6);
    assert_eq!(run(None).await, 1);
}

/// Two gateways on one Redis, each route with one of the three `on_store_error` choices.
fn shared_config(redis: &RedisServer, up: &Upstream) -> String {
    format!(
        r#"  redis: {{ url: "{}", timeout_ms: 100 }}
upstreams:
  u: {{ targets: [{{ addr: "{}" }}] }}
routes:
  - name: allow
    match: {{ path: {{ prefix: /allow }} }}
    upstream: u
    plugins:
      rate_limit: [{{ algorithm: sliding_window, key: route, limit: 10, window_secs: 60, store: redis, on_store_error: allow }}]
  - name: deny
    match: {{ path: {{ prefix: /deny }} }}
    upstream: u
    plugins:
      rate_limit: [{{ algorithm: token_bucket, key: route, limit: 1, window_secs: 60, burst: 6, store: redis, on_store_error: deny }}]
  - name: local
    match: {{ path: {{ prefix: /local }} }}
    upstream: u
    plugins:
      rate_limit: [{{ algorithm: token_bucket, key: route, limit: 1, window_secs: 60, burst: 2, store: redis, on_store_error: local }}]
"#,
        redis.url(),
        up.addr
    )
}

/// Alternate `n` requests between the two gateways; the statuses.
async fn alternate(a: &Gateway, b: &Gateway, path: &str, n: usize) -> Vec<u16> {
    let c = client();
    let mut out = Vec::new();
    for i in 0..n {
        let gw = if i % 2 == 0 { a } else { b };
        out.push(c.get(gw.url(path)).send().await.unwrap().status().as_u16());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_share_one_limit_in_redis_and_survive_its_restart() {
    let mut redis = RedisServer::start();
    let u = Upstream::start("u").await;
    let one = start(&shared_config(&redis, &u));
    let two = start(&shared_config(&redis, &u));

    // One combined limit: 10 in the window across both instances, not 10 each.
    let v = alternate(&one, &two, "/allow", 16).await;
    assert_eq!(count(&v, 200), 10, "{v:?}");
    assert_eq!(&v[10..], [429; 6]);
    let v = alternate(&one, &two, "/deny", 8).await;
    assert_eq!(count(&v, 200), 6, "{v:?}");

    // Redis gone: each route follows its on_store_error, within the timeout.
    redis.stop();
    let c = client();
    for (path, want) in [("/allow", 200), ("/deny", 503)] {
        for gw in [&one, &two] {
            let t = Instant::now();
            let (status, h, body) = send(c.get(gw.url(path))).await;
            assert_eq!(status, want, "{path}: {body}");
            assert!(
                t.elapsed() < Duration::from_secs(1),
                "{path}: {:?}",
                t.elapsed()
            );
            if want == 503 {
                assert_envelope(status, &body, 503);
                assert_eq!(body["message"], "rate limit store unavailable");
                assert!(h.contains_key("retry-after"));
            }
        }
    }
    // `local`: each instance falls back to its own bucket of 2.
    for gw in [&one, &two] {
        assert_eq!(
            statuses(&c, &gw.url("/local"), 4).await,
            [200, 200, 429, 429]
        );
    }
    assert!(one
        .metrics()
        .await
        .contains("gateway_rate_limit_store_errors_total{route=\"allow\"}"));

    // Redis back (empty): shared limiting resumes by itself.
    redis.restart();
    let t = Instant::now();
    let mut passed = 0;
    loop {
        let v = alternate(&one, &two, "/deny", 2).await;
        passed += count(&v, 200);
        if v == [200, 200] {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "Redis not used again: {v:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let v = alternate(&one, &two, "/deny", 10).await;
    passed += count(&v, 200);
    assert_eq!(passed, 6, "one shared bucket of 6 again: {v:?}");
    assert_eq!(&v[6..], [429; 4]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_and_reset_never_exceed_the_window() {
    let u = Upstream::start("u").await;
    let redis = RedisServer::start();
    let s = Setup::new();
    let yaml = format!(
        r#"{}  redis: {{ url: "{}" }}
upstreams:
  u: {{ targets: [{{ addr: "{}" }}] }}
routes:
  - name: local
    match: {{ path: {{ prefix: /local }} }}
    upstream: u
    plugins: {{ rate_limit: [{{ algorithm: sliding_window, limit: 1, window_secs: 10 }}] }}
  - name: shared
    match: {{ path: {{ prefix: /shared }} }}
    upstream: u
    plugins: {{ rate_limit: [{{ algorithm: sliding_window, limit: 1, window_secs: 10, store: redis }}] }}
"#,
        s.server_yaml(),
        redis.url(),
        u.addr
    );
    let gw = s.start(&yaml);
    let c = client();
    for path in ["/local", "/shared"] {
        let (status, _, _) = send(c.get(gw.url(path))).await;
        assert_eq!(status, 200, "{path}");
        for _ in 0..3 {
            let (status, h, body) = send(c.get(gw.url(path))).await;
            assert_envelope(status, &body, 429);
            let retry = num(&h, "retry-after");
            assert!((1..=10).contains(&retry), "{path}: Retry-After {retry}");
            assert_eq!(body["data"]["retry_after"], retry, "{path}");
            for name in ["ratelimit-reset", "x-ratelimit-reset"] {
                assert!(num(&h, name) <= 10, "{path}: {name} {h:?}");
            }
        }
    }
}
