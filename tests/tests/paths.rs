//! Path normalization from outside: requests written to slip past a route's policies through
//! their path (dot segments, encoded dots, repeated slashes, encoded letters, an absolute-form
//! target) are routed by their normal form and reach the upstream in that form; paths that
//! climb above the root, carry an encoded slash or a malformed escape are refused with 400.
//! Raw bytes on a socket, since HTTP client libraries normalize paths themselves.

use serde_json::Value;
use std::time::{Duration, Instant};
use tests::{parse_answer, raw, Gateway, Setup, Upstream};

fn get(gw: &Gateway, target: &str) -> (u16, Value) {
    let req = format!("GET {target} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
    parse_answer(&raw(gw.port, req.as_bytes(), Duration::from_secs(5)))
}

fn start(paths: &str, up: &Upstream, shadow: &Upstream) -> Gateway {
    std::env::set_var("GW_TEST_PATHS_SECRET", "paths-secret");
    let s = Setup::new();
    let yaml = format!(
        r#"{}{paths}upstreams:
  u: {{ targets: [{{ addr: "{}" }}] }}
  shadow: {{ targets: [{{ addr: "{}" }}] }}
routes:
  - name: admin
    match: {{ path: {{ prefix: /admin/ }} }}
    upstream: u
    plugins: {{ ip_filter: {{ deny: ["127.0.0.0/8"] }} }}
  - name: private
    match: {{ path: {{ prefix: /private/ }} }}
    upstream: u
    plugins: {{ jwt: {{ algorithms: [HS256], keys: {{ secret_env: GW_TEST_PATHS_SECRET }} }} }}
  - name: public
    match: {{ path: {{ prefix: /public/ }} }}
    upstream: u
    mirror: {{ upstream: shadow }}
  - name: api
    match: {{ path: {{ prefix: /api/ }} }}
    strip_prefix: /api
    upstream: u
  - name: item
    match: {{ path: {{ regex: "^/items/[0-9]+$" }} }}
    upstream: u
"#,
        s.server_yaml(),
        up.addr,
        shadow.addr
    );
    s.start(&yaml)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_tricks_are_routed_by_the_normal_form_and_forwarded_in_it() {
    let u = Upstream::start("u").await;
    let shadow = Upstream::start("shadow").await;
    let gw = start("", &u, &shadow);

    // Aimed at /admin/ (every loopback client is denied there) or /private/ (needs a token)
    // through a route that is open: each lands on the route its path really names.
    for (target, status) in [
        ("/public/../admin/secret", 403),
        ("/public/%2e%2e/admin/secret", 403),
        ("/public/%2E%2E/admin/secret", 403),
        ("/public/.%2e/admin/secret", 403),
        ("//admin/secret", 403),
        ("/%61dmin/secret", 403),
        ("/public/./../admin/secret", 403),
        ("/public/../private/x", 401),
        ("/public/%2e%2e//private/x", 401),
        ("http://a/public/../admin/secret", 403),
    ] {
        let (got, body) = get(&gw, target);
        assert_eq!(got, status, "{target}: {body}");
        assert_eq!(body["code"], status, "{target}");
    }
    assert_eq!(u.requests(), 0, "{:?}", u.seen());

    // Refused outright: above the root, an encoded slash (the default), a dot segment with
    // parameters, a malformed escape, an encoded NUL.
    for (target, reason) in [
        ("/public/../../admin/secret", "path climbs above the root"),
        ("/%2e%2e/admin/secret", "path climbs above the root"),
        ("/public/..%2fadmin/secret", "encoded slash in path"),
        ("/public/..%5Cadmin/secret", "encoded slash in path"),
        (
            "/public/..;/admin/secret",
            "dot segment with parameters in path",
        ),
        ("/public/%zz", "malformed percent-encoding in path"),
        ("/public/a%", "malformed percent-encoding in path"),
        ("/public/a%00", "encoded NUL in path"),
    ] {
        let (got, body) = get(&gw, target);
        assert_eq!(got, 400, "{target}: {body}");
        assert_eq!(body["code"], 400, "{target}");
        assert_eq!(body["message"], "invalid path", "{target}");
        assert_eq!(body["data"]["reason"], reason, "{target}");
    }
    assert_eq!(u.requests(), 0, "{:?}", u.seen());

    // What is routed is what is forwarded, to the upstream and to the mirror; the query is
    // left as sent.
    let (got, _) = get(&gw, "/public/./a//b/../%7euser/caf%c3%a9?q=%2e%2e/x");
    assert_eq!(got, 200);
    let want = "/public/a/~user/caf%C3%A9?q=%2e%2e/x";
    assert_eq!(u.last().unwrap().uri, want);
    let t = Instant::now();
    while shadow.requests() == 0 && t.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(shadow.last().expect("mirrored").uri, want);

    // strip_prefix and regex routes see the normal form too.
    assert_eq!(get(&gw, "/api/x/../y").0, 200);
    assert_eq!(u.last().unwrap().uri, "/y");
    assert_eq!(get(&gw, "/api//v1").0, 200);
    assert_eq!(u.last().unwrap().uri, "/v1");
    assert_eq!(get(&gw, "/items/1/../%32").0, 200);
    assert_eq!(u.last().unwrap().uri, "/items/2");
    assert_eq!(
        get(&gw, "/items/1/x/..").0,
        404,
        "/items/1/ is not /items/1"
    );

    // An absolute-form target goes upstream in origin form, normalized.
    assert_eq!(get(&gw, "http://a/public/x/../y").0, 200);
    assert_eq!(u.last().unwrap().uri, "/public/y");

    // The same over h2c (an HTTP client keeps `//` and `%61`, though it resolves `..` itself).
    let h2 = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    for (path, status) in [
        ("//admin/secret", 403),
        ("/%61dmin/secret", 403),
        ("/public//h2", 200),
    ] {
        let r = h2.get(gw.url(path)).send().await.unwrap();
        assert_eq!(r.version(), reqwest::Version::HTTP_2);
        assert_eq!(r.status(), status, "h2 {path}");
    }
    assert_eq!(u.last().unwrap().uri, "/public/h2");

    // The access log names the path that was routed (one line for each of the 27 requests).
    let log = gw.access_log_lines(27).await;
    assert!(log.iter().any(|l| l["path"] == "/public/y"), "{log:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escaped_slashes_kept_and_slashes_not_merged_when_configured() {
    let u = Upstream::start("u").await;
    let shadow = Upstream::start("shadow").await;
    let gw = start(
        "  paths: { merge_slashes: false, escaped_slashes: keep }\n",
        &u,
        &shadow,
    );
    // Kept encoded, as one segment: the route is the one the raw separators name.
    assert_eq!(get(&gw, "/public/a%2fb").0, 200);
    assert_eq!(u.last().unwrap().uri, "/public/a%2Fb");
    assert_eq!(get(&gw, "/public/..%2fadmin/secret").0, 200);
    assert_eq!(u.last().unwrap().uri, "/public/..%2Fadmin/secret");
    // Repeated slashes stay, and are part of matching.
    assert_eq!(get(&gw, "/public//x").0, 200);
    assert_eq!(u.last().unwrap().uri, "/public//x");
    assert_eq!(get(&gw, "//admin/secret").0, 404);
    // Dot segments are removed whatever the settings.
    assert_eq!(get(&gw, "/public/../admin/secret").0, 403);
}
