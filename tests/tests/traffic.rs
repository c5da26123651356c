//! Traffic management: weighted splits (canary), sticky keys, and mirroring to a shadow.

use std::collections::HashMap;
use std::time::{Duration, Instant};
use tests::{client, count_by_upstream, free_port, Gateway, Upstream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ten_percent_canary_gets_ten_percent_and_sticky_keys_stay_put() {
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let gw = Gateway::start(&format!(
        r#"upstreams:
  stable: {{ targets: [{{ addr: "{}" }}] }}
  canary: {{ targets: [{{ addr: "{}" }}] }}
routes:
  - name: split
    match: {{ path: {{ prefix: /split }} }}
    split: [{{ upstream: stable, weight: 90 }}, {{ upstream: canary, weight: 10 }}]
  - name: sticky
    match: {{ path: {{ prefix: /sticky }} }}
    split: [{{ upstream: stable, weight: 50 }}, {{ upstream: canary, weight: 50 }}]
    sticky_key: "header:x-user-id"
"#,
        stable.addr, canary.addr
    ));
    let counts = count_by_upstream(&gw.url("/split"), 5000, 8, None).await;
    let share = *counts.get("canary").unwrap_or(&0) as f64 / 5000.0;
    assert!(
        (0.08..=0.12).contains(&share),
        "canary got {share:.3}: {counts:?}"
    );

    let mut sides = HashMap::new();
    for user in 0..40 {
        let counts = count_by_upstream(
            &gw.url("/sticky"),
            10,
            2,
            Some(("x-user-id", format!("u{user}"))),
        )
        .await;
        assert_eq!(counts.len(), 1, "u{user} moved between sides: {counts:?}");
        *sides.entry(counts.into_keys().next().unwrap()).or_insert(0) += 1;
    }
    assert_eq!(sides.len(), 2, "both sides serve some keys: {sides:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirrored_requests_reach_the_shadow_with_their_body_without_slowing_the_client() {
    let main = Upstream::start("main").await;
    let shadow = Upstream::start("shadow").await;
    shadow.set_delay(Duration::from_secs(1));
    let dead = free_port();
    let gw = Gateway::start(&format!(
        r#"upstreams:
  main: {{ targets: [{{ addr: "{}" }}] }}
  shadow: {{ targets: [{{ addr: "{}" }}] }}
  gone: {{ targets: [{{ addr: "127.0.0.1:{dead}" }}] }}
routes:
  - {{ name: all, upstream: main, match: {{ path: {{ prefix: /all }} }}, mirror: {{ upstream: shadow }} }}
  - {{ name: half, upstream: main, match: {{ path: {{ prefix: /half }} }}, mirror: {{ upstream: shadow, percent: 50 }} }}
  - {{ name: broken, upstream: main, match: {{ path: {{ prefix: /broken }} }}, mirror: {{ upstream: gone }} }}
"#,
        main.addr, shadow.addr
    ));
    let c = client();
    for i in 0..5 {
        let t = Instant::now();
        let r = c
            .post(gw.url(&format!("/all/orders?n={i}")))
            .header("host", "shop.example.com")
            .body(format!("order body {i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-upstream"], "main");
        assert!(
            t.elapsed() < Duration::from_millis(600),
            "client waited {:?}",
            t.elapsed()
        );
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while shadow.requests() < 5 {
        assert!(
            Instant::now() < deadline,
            "shadow got {}",
            shadow.requests()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut seen = shadow.seen();
    seen.sort_by(|a, b| a.uri.cmp(&b.uri));
    for (i, s) in seen.iter().enumerate() {
        assert_eq!(s.method, "POST");
        assert_eq!(s.uri, format!("/all/orders?n={i}"));
        assert_eq!(s.body, format!("order body {i}").into_bytes());
        assert_eq!(s.headers["host"], "shop.example.com-shadow");
    }

    // Half of the requests, roughly.
    for _ in 0..200 {
        c.get(gw.url("/half")).send().await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mirrored = shadow.requests() - 5;
    assert!((60..=140).contains(&mirrored), "{mirrored} of 200 mirrored");

    // A dead shadow changes nothing for the client.
    for _ in 0..5 {
        assert_eq!(c.get(gw.url("/broken")).send().await.unwrap().status(), 200);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let m = gw.metrics().await;
    assert!(
        m.contains(r#"gateway_mirror_requests_total{result="ok",route="all"} 5"#),
        "{m}"
    );
    assert!(m.contains(r#"gateway_mirror_requests_total{result="error",route="broken"} 5"#));
}
