//! Circuit breaker, retries, backoff and the retry budget, against real upstream servers
//! that are stopped, slowed down and made to fail.

use std::time::{Duration, Instant};
use tests::{assert_envelope, client, free_port, get_json, Gateway, Upstream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_opens_fails_fast_probes_and_closes() {
    let u = Upstream::start("u").await;
    u.set_status(500);
    let gw = Gateway::start(&format!(
        r#"upstreams:
  u:
    targets: [{{ addr: "{}" }}]
    circuit_breaker: {{ consecutive_failures: 3, min_requests: 1000, open_secs: 1, half_open_requests: 2 }}
routes:
  - {{ name: r, upstream: u }}
"#,
        u.addr
    ));
    let c = client();
    let url = gw.url("/x");
    for _ in 0..3 {
        let (status, _, body) = get_json(&c, &url).await;
        assert_eq!(status, 500, "upstream 5xx passes through: {body}");
    }
    let (requests, accepted) = (u.requests(), u.accepted());
    assert_eq!(requests, 3);

    // Open: 503 at once, and the upstream sees nothing.
    let t = Instant::now();
    for _ in 0..20 {
        let (status, headers, body) = get_json(&c, &url).await;
        assert_envelope(status, &body, 503);
        assert_eq!(body["message"], "circuit breaker open");
        assert_eq!(body["data"]["upstream"], "u");
        assert_eq!(headers["retry-after"], "1");
    }
    assert!(
        t.elapsed() < Duration::from_millis(900),
        "fast-fail took {:?}",
        t.elapsed()
    );
    assert_eq!(u.requests(), requests);
    assert_eq!(u.accepted(), accepted, "no connection while open");

    // Half-open after open_secs: exactly two probes go through while they are in flight.
    u.set_status(200);
    u.set_delay(Duration::from_millis(400));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let c = c.clone();
        let url = url.clone();
        tasks.push(tokio::spawn(async move { get_json(&c, &url).await.0 }));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    statuses.sort();
    assert_eq!(statuses, vec![200, 200, 503, 503, 503, 503]);
    assert_eq!(u.requests(), requests + 2);

    // Both probes succeeded: closed, everything flows.
    u.set_delay(Duration::ZERO);
    for _ in 0..10 {
        assert_eq!(get_json(&c, &url).await.0, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_probe_opens_again() {
    let u = Upstream::start("u").await;
    let mut dead = u;
    let gw = Gateway::start(&format!(
        r#"upstreams:
  u:
    targets: [{{ addr: "{}" }}]
    timeouts: {{ connect_ms: 200 }}
    circuit_breaker: {{ consecutive_failures: 2, open_secs: 1, half_open_requests: 1 }}
routes:
  - {{ name: r, upstream: u }}
"#,
        dead.addr
    ));
    dead.stop().await;
    let c = client();
    let url = gw.url("/");
    assert_eq!(get_json(&c, &url).await.0, 502);
    assert_eq!(get_json(&c, &url).await.0, 502);
    assert_eq!(get_json(&c, &url).await.0, 503);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // The probe fails (connection refused): open again at once.
    assert_eq!(get_json(&c, &url).await.0, 502);
    let (status, _, body) = get_json(&c, &url).await;
    assert_envelope(status, &body, 503);
    // Back up: the next probe closes it.
    dead.restart().await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for _ in 0..5 {
        assert_eq!(get_json(&c, &url).await.0, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_retries_past_a_dead_target_but_post_does_not() {
    let live = Upstream::start("live").await;
    let dead_port = free_port();
    let gw = Gateway::start(&format!(
        r#"upstreams:
  u:
    targets: [{{ addr: "127.0.0.1:{dead_port}" }}, {{ addr: "{}" }}]
    # The dead target stays in the rotation: no passive tracking, no ejection.
    failure_eject_ms: 0
    outlier_detection: {{ consecutive_5xx: 0 }}
    retry: {{ attempts: 2, backoff: {{ base_ms: 5, max_ms: 20 }}, on: [connect_failure], budget_ratio: 1.0 }}
routes:
  - {{ name: r, upstream: u }}
"#,
        live.addr
    ));
    let c = client();
    for _ in 0..40 {
        let (status, headers, _) = get_json(&c, &gw.url("/get")).await;
        assert_eq!(status, 200);
        assert_eq!(headers["x-upstream"], "live");
    }
    assert_eq!(live.requests(), 40);

    let mut failed = 0;
    for _ in 0..40 {
        let r = c.post(gw.url("/post")).body("data").send().await.unwrap();
        match r.status().as_u16() {
            200 => {}
            502 => failed += 1,
            s => panic!("unexpected {s}"),
        }
    }
    // Round robin sends every other POST to the dead target, and none of those is retried.
    assert_eq!(failed, 20);
    assert_eq!(live.requests(), 60);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passive_tracking_steers_new_requests_off_a_failed_target() {
    let live = Upstream::start("live").await;
    let dead_port = free_port();
    let gw = Gateway::start(&format!(
        r#"upstreams:
  u:
    targets: [{{ addr: "127.0.0.1:{dead_port}" }}, {{ addr: "{}" }}]
    failure_eject_ms: 5000
routes:
  - {{ name: r, upstream: u }}
"#,
        live.addr
    ));
    let c = client();
    let mut failed = 0;
    for _ in 0..30 {
        if get_json(&c, &gw.url("/")).await.0 == 502 {
            failed += 1;
        }
    }
    assert_eq!(
        failed, 1,
        "after one failure the dead target is passed over"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_gaps_follow_the_backoff_and_the_last_answer_passes_through() {
    let u = Upstream::start("u").await;
    u.set_status(503);
    let gw = Gateway::start(&format!(
        r#"upstreams:
  u:
    targets: [{{ addr: "{}" }}]
    retry: {{ attempts: 3, backoff: {{ base_ms: 100, max_ms: 250 }}, on: [503], deadline_ms: 5000 }}
routes:
  - {{ name: r, upstream: u }}
"#,
        u.addr
    ));
    let c = client();
    for round in 0..3 {
        let before = u.seen().len();
        let (status, headers, body) = get_json(&c, &gw.url("/flaky")).await;
        assert_eq!(status, 503);
        assert_eq!(
            headers["x-upstream"], "u",
            "the upstream's own answer: {body}"
        );
        let seen = u.seen();
        let tries = &seen[before..];
        assert_eq!(tries.len(), 4, "round {round}: first try and 3 retries");
        for (i, pair) in tries.windows(2).enumerate() {
            let gap = pair[1].at - pair[0].at;
            let cap = Duration::from_millis((100u64 << i).min(250));
            assert!(
                gap <= cap + Duration::from_millis(150),
                "retry {} came {gap:?} after the previous try, cap {cap:?}",
                i + 1
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_try_is_retried_on_another_target_within_the_deadline() {
    let slow = Upstream::start("slow").await;
    slow.set_delay(Duration::from_secs(3));
    let fast = Upstream::start("fast").await;
    let gw = Gateway::start(&format!(
        r#"upstreams:
  u:
    targets: [{{ addr: "{}" }}, {{ addr: "{}" }}]
    timeouts: {{ read_ms: 300 }}
    failure_eject_ms: 0
    retry: {{ attempts: 1, on: [timeout], backoff: {{ base_ms: 1, max_ms: 5 }} }}
routes:
  - {{ name: r, upstream: u }}
"#,
        slow.addr, fast.addr
    ));
    let c = client();
    for _ in 0..4 {
        let t = Instant::now();
        let (status, headers, _) = get_json(&c, &gw.url("/")).await;
        assert_eq!(status, 200);
        assert_eq!(headers["x-upstream"], "fast");
        assert!(
            t.elapsed() < Duration::from_millis(1500),
            "{:?}",
            t.elapsed()
        );
    }
    assert!(
        slow.requests() >= 2,
        "the slow target was tried: {}",
        slow.requests()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_stay_within_the_budget_when_everything_fails() {
    let u = Upstream::start("u").await;
    u.set_status(503);
    let gw = Gateway::start(&format!(
        r#"upstreams:
  u:
    targets: [{{ addr: "{}" }}]
    retry: {{ attempts: 3, backoff: {{ base_ms: 1, max_ms: 2 }}, on: [503], budget_ratio: 0.2 }}
routes:
  - {{ name: r, upstream: u }}
"#,
        u.addr
    ));
    let c = client();
    for _ in 0..100 {
        assert_eq!(get_json(&c, &gw.url("/")).await.0, 503);
    }
    let sent = u.requests();
    // Without a budget: 400. With it: 100 first tries plus at most 20% of them.
    assert!(sent > 100, "some retries happen: {sent}");
    assert!(sent <= 120, "retries beyond the budget: {sent}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_rate_crossed_by_a_success_opens_the_breaker() {
    let u = Upstream::start("u").await;
    let gw = Gateway::start(&format!(
        r#"upstreams:
  u:
    targets: [{{ addr: "{}" }}]
    circuit_breaker: {{ consecutive_failures: 3, failure_rate: 0.5, min_requests: 10, window_secs: 30, open_secs: 30 }}
routes:
  - {{ name: r, upstream: u }}
"#,
        u.addr
    ));
    let c = client();
    // 6 failures in 10, never 3 in a row; the 10th, a success, brings the window to
    // min_requests with the rate already crossed.
    let pattern = [503, 503, 200, 503, 503, 200, 503, 503, 200, 200];
    for status in pattern {
        let (got, _, body) = get_json(&c, &gw.url(&format!("/x?status={status}"))).await;
        assert_eq!(got, status, "{body}");
    }
    let (status, _, body) = get_json(&c, &gw.url("/x")).await;
    assert_envelope(status, &body, 503);
    assert_eq!(body["message"], "circuit breaker open");
    assert_eq!(u.requests(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_target_is_passed_over_and_retries_keep_the_rotation() {
    let bad = Upstream::start("bad").await;
    bad.set_status(503);
    let good = Upstream::start("good").await;
    let upstreams = |outlier: &str| {
        format!(
            r#"upstreams:
  u:
    targets: [{{ addr: "{}" }}, {{ addr: "{}" }}]
    retry: {{ attempts: 1, on: [503], backoff: {{ base_ms: 1, max_ms: 1 }}, budget_ratio: 1.0 }}
    {outlier}
routes:
  - {{ name: r, upstream: u }}
"#,
            bad.addr, good.addr
        )
    };
    // Outlier detection off: the retry does not move the rotation, so the failing target
    // gets every other first try, not every one.
    let gw = Gateway::start(&upstreams("outlier_detection: { consecutive_5xx: 0 }"));
    let c = client();
    for _ in 0..40 {
        assert_eq!(get_json(&c, &gw.url("/x")).await.0, 200);
    }
    assert_eq!(bad.requests(), 20, "first tries on the failing target");
    assert_eq!(good.requests(), 40);
    drop(gw);

    // The defaults: five failures in a row eject it; everything goes to the other one.
    let (bad_before, good_before) = (bad.requests(), good.requests());
    let gw = Gateway::start(&upstreams(""));
    for _ in 0..40 {
        assert_eq!(get_json(&c, &gw.url("/x")).await.0, 200);
    }
    assert_eq!(bad.requests() - bad_before, 5, "ejected after 5 in a row");
    assert_eq!(good.requests() - good_before, 40);
    let (_, _, body) = get_json(&c, &gw.admin_url("/admin/upstreams")).await;
    let targets = body["data"]["u"]["targets"].as_array().unwrap().clone();
    let bad_target = targets
        .iter()
        .find(|t| t["addr"] == bad.addr.to_string())
        .unwrap();
    assert_eq!(bad_target["ejected"], true, "{body}");
    assert_eq!(bad_target["ejections"], 1);
    assert!(bad_target["ejected_for_ms"].as_u64().unwrap() > 20_000);
    let good_target = targets
        .iter()
        .find(|t| t["addr"] == good.addr.to_string())
        .unwrap();
    assert_eq!(good_target["ejected"], false);
    assert!(gw
        .metrics()
        .await
        .contains("gateway_upstream_ejections_total{upstream=\"u\"} 1"));
}
