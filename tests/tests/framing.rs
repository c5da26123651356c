//! What a client may send: body and header limits (413, 431), the request-head deadline
//! against slow clients, short requests on a port that also speaks h2c, and a smuggling
//! corpus checked at the upstream: every case is refused, or arrives as exactly one
//! unambiguous request.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use tests::{client, raw, Gateway, Setup, Upstream};

fn start(extra_server: &str, up: &Upstream) -> Gateway {
    start_with_route(extra_server, up, "{ name: r, upstream: u }")
}

/// The gateway with one upstream `u` and one route.
fn start_with_route(extra_server: &str, up: &Upstream, route: &str) -> Gateway {
    let s = Setup::new();
    let yaml = format!(
        "{}{extra_server}upstreams:\n  u: {{ targets: [{{ addr: \"{}\" }}] }}\nroutes:\n  - {route}\n",
        s.server_yaml(),
        up.addr
    );
    s.start(&yaml)
}

/// The status line's code and the JSON envelope's code, when there is one.
fn codes(out: &str) -> (u16, Option<u64>) {
    let (status, body) = tests::parse_answer(out);
    (status, body["code"].as_u64())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_max_body_bytes_get_413_and_big_heads_431() {
    let u = Upstream::start("u").await;
    let gw = start(
        "  max_body_bytes: 1000\n  max_header_bytes: 4096\n  max_headers: 20\n",
        &u,
    );
    let c = client();
    let r = c
        .post(gw.url("/up"))
        .body(vec![b'a'; 1000])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let before = u.requests();

    // Announced by Content-Length: refused before anything goes upstream.
    let r = c
        .post(gw.url("/up"))
        .body(vec![b'a'; 1001])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["message"], "request body too large");
    assert_eq!(v["data"]["max_body_bytes"], 1000);
    // Chunked, with no length up front: counted as it streams.
    let out = raw(
        gw.port,
        format!(
            "POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5dc\r\n{}\r\n5dc\r\n{}\r\n0\r\n\r\n",
            "b".repeat(1500),
            "c".repeat(1500)
        )
        .as_bytes(),
        Duration::from_secs(3),
    );
    assert_eq!(codes(&out), (413, Some(413)), "{out}");
    assert!(
        u.seen().iter().all(|s| s.body.len() <= 1000),
        "no oversized body reached the upstream"
    );
    assert_eq!(u.requests(), before);

    // One header too large, or too many of them.
    let r = c
        .get(gw.url("/up"))
        .header("x-big", "v".repeat(5000))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 431);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["message"], "request header fields too large");
    let mut rb = c.get(gw.url("/up"));
    for i in 0..25 {
        rb = rb.header(format!("x-h{i}"), "1");
    }
    let r = rb.send().await.unwrap();
    assert_eq!(r.status(), 431);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["message"], "too many header fields");
    assert_eq!(u.requests(), before);
}

/// Start a request head on `s` and add a byte to it every 200 ms, never ending it: how long
/// until the gateway closes the connection (10 s at the most).
fn slow_head(s: &mut TcpStream, path: &str) -> Duration {
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let t = Instant::now();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: a\r\nX-Slow: ").as_bytes())
        .unwrap();
    while t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(200));
        if s.write_all(b"a").is_err() {
            break;
        }
        let mut buf = [0u8; 64];
        match s.read(&mut buf) {
            Ok(0) => break,
            Err(e) if e.kind() != std::io::ErrorKind::WouldBlock => break,
            _ => {}
        }
    }
    t.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_header_client_is_cut_off_while_others_are_served() {
    let u = Upstream::start("u").await;
    let gw = start("  client_header_timeout_ms: 1000\n", &u);
    let port = gw.port;
    // Slowloris: a header byte every 200 ms, never the blank line.
    let slow = std::thread::spawn(move || {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        slow_head(&mut s, "/")
    });
    // Meanwhile, normal clients are served.
    let c = client();
    for _ in 0..5 {
        assert_eq!(c.get(gw.url("/")).send().await.unwrap().status(), 200);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cut = tokio::task::spawn_blocking(move || slow.join().unwrap())
        .await
        .unwrap();
    assert!(
        cut >= Duration::from_millis(800) && cut < Duration::from_secs(4),
        "slow client cut off after {cut:?}"
    );

    // A body may take longer than the head deadline; so may the wait between requests on a
    // kept-alive connection.
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s.write_all(b"POST /slow-body HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n")
        .unwrap();
    for b in b"hello" {
        std::thread::sleep(Duration::from_millis(350));
        s.write_all(&[*b]).unwrap();
    }
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    assert_eq!(u.last().unwrap().body, b"hello");
    std::thread::sleep(Duration::from_millis(1500));
    for _ in 0..2 {
        s.write_all(b"GET /again HTTP/1.1\r\nHost: a\r\n\r\n")
            .unwrap();
        let mut buf = [0u8; 4096];
        let n = s.read(&mut buf).unwrap();
        assert!(
            buf[..n].starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&buf[..n])
        );
        std::thread::sleep(Duration::from_millis(1500));
    }
    // The next head on the same connection gets its own deadline, from its first byte.
    let cut = slow_head(&mut s, "/slow");
    assert!(
        cut >= Duration::from_millis(800) && cut < Duration::from_secs(4),
        "slow second head cut off after {cut:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_requests_on_the_h2c_port_are_answered_or_closed_in_time() {
    let u = Upstream::start("u").await;
    let gw = start("  client_header_timeout_ms: 1000\n", &u);
    // 18 bytes, fewer than the 24 of the h2c preface: answered at once.
    let t = Instant::now();
    let out = raw(gw.port, b"GET / HTTP/1.0\r\n\r\n", Duration::from_secs(5));
    assert!(
        out.starts_with("HTTP/1.1 200") || out.starts_with("HTTP/1.0 200"),
        "{out}"
    );
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    // A garbled fragment that never ends: closed at the head deadline.
    let t = Instant::now();
    let _ = raw(gw.port, b"PRI * HT", Duration::from_secs(5));
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_secs(4),
        "{took:?}"
    );
    // h2c itself still works, past the head deadline too.
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .no_proxy()
        .build()
        .unwrap();
    let r = h2.get(gw.url("/h2")).send().await.unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let r = h2.get(gw.url("/h2-later")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_corpus_is_refused_or_reaches_the_upstream_as_one_request() {
    let u = Upstream::start("u").await;
    let gw = start("", &u);
    // (name, bytes, what the client must get)
    let refused: &[(&str, &[u8])] = &[
        (
            "CL.TE",
            b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
        ),
        (
            "TE.CL",
            b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n5c\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n0\r\n\r\n",
        ),
        (
            "duplicate CL",
            b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 40\r\n\r\nabcdGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
        ),
        (
            "CL list",
            b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 4, 40\r\n\r\nabcd",
        ),
        (
            "signed CL",
            b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: +4\r\n\r\nabcd",
        ),
        (
            "TE not chunked",
            b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        ),
        (
            "obfuscated TE",
            b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
        ),
        (
            "two TE",
            b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n",
        ),
        (
            "obs-fold",
            b"GET /a HTTP/1.1\r\nHost: a\r\nX-Folded: one\r\n two\r\n\r\n",
        ),
        (
            "invalid chunk size",
            b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        ),
        (
            "space before colon",
            b"GET /a HTTP/1.1\r\nHost: a\r\nContent-Length : 5\r\n\r\nhello",
        ),
    ];
    for (name, bytes) in refused {
        let out = raw(gw.port, bytes, Duration::from_secs(3));
        let status = codes(&out).0;
        assert!(
            (400..500).contains(&status) || out.is_empty(),
            "{name}: not refused:\n{out}"
        );
        assert!(
            !out.contains("smuggled"),
            "{name}: a second request came out of the body:\n{out}"
        );
    }
    let seen = u.seen();
    assert!(
        seen.iter().all(|s| !s.uri.contains("smuggled")),
        "smuggled request reached the upstream: {:?}",
        seen.iter().map(|s| &s.uri).collect::<Vec<_>>()
    );
    // Whatever did reach the upstream (a chunked body cut short) is one request with no
    // trace of another.
    for s in &seen {
        assert!(
            !String::from_utf8_lossy(&s.body).contains("HTTP/1.1"),
            "{:?}",
            s.uri
        );
    }

    // Accepted forms arrive as exactly one clean request each.
    let before = u.requests();
    let accepted: &[(&str, &[u8], &str)] = &[
        ("bare LF", b"GET /lf HTTP/1.1\nHost: a\n\n", "/lf"),
        (
            "chunked",
            b"POST /chunked HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            "/chunked",
        ),
    ];
    for (name, bytes, path) in accepted {
        let out = raw(gw.port, bytes, Duration::from_secs(2));
        assert!(out.starts_with("HTTP/1.1 200"), "{name}:\n{out}");
        let last = u.last().unwrap();
        assert_eq!(&last.uri, path, "{name}");
    }
    assert_eq!(u.last().unwrap().body, b"hello");
    assert_eq!(u.requests() - before, 2);

    // A body on a request the gateway refuses itself is never read as the next request:
    // the answer closes the connection.
    let gw2 = start_with_route(
        "",
        &u,
        "{ name: r, upstream: u, match: { path: { prefix: /known } } }",
    );
    let body = "GET /known/smuggled HTTP/1.1\r\nHost: a\r\n\r\n";
    let req = format!(
        "POST /unknown HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let out = raw(gw2.port, req.as_bytes(), Duration::from_secs(3));
    assert_eq!(codes(&out), (404, Some(404)), "{out}");
    assert_eq!(
        out.matches("HTTP/1.1").count(),
        1,
        "one answer only:\n{out}"
    );
    assert!(u.seen().iter().all(|s| !s.uri.contains("smuggled")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bare_lf_in_a_chunk_line_and_raw_spaces_in_the_target_get_400() {
    let u = Upstream::start("u").await;
    let gw = start("", &u);
    let cases: &[(&str, &[u8])] = &[
        (
            "bare LF in a chunk extension",
            b"POST /ext HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2;\nxx\r\nab\r\n0\r\n\r\n",
        ),
        (
            "bare LF ending a chunk-size line",
            b"POST /ext HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2\nab\r\n0\r\n\r\n",
        ),
        (
            "bare LF in a later chunk line",
            b"POST /ext HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n1;x\ny\r\nb\r\n0\r\n\r\n",
        ),
        ("raw space in the target", b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n"),
        ("two spaces before the target", b"GET  /a HTTP/1.1\r\nHost: a\r\n\r\n"),
        ("tab in the target", b"GET /a\tb HTTP/1.1\r\nHost: a\r\n\r\n"),
    ];
    for (name, bytes) in cases {
        let out = raw(gw.port, bytes, Duration::from_secs(3));
        assert_eq!(codes(&out), (400, Some(400)), "{name}:\n{out}");
    }
    assert!(
        u.seen().is_empty(),
        "nothing reaches the upstream whole: {:?}",
        u.seen().iter().map(|s| &s.uri).collect::<Vec<_>>()
    );
    // The well-formed forms still pass.
    let out = raw(
        gw.port,
        b"POST /ext HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2;name=value\r\nab\r\n0\r\n\r\n",
        Duration::from_secs(3),
    );
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert_eq!(u.last().unwrap().body, b"ab");
}

/// Send one request on a kept-alive connection and read its whole answer (the test upstream
/// always sends a Content-Length).
fn exchange(s: &mut TcpStream, path: &str) -> String {
    write!(s, "GET {path} HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf).expect("answer");
        assert!(
            n > 0,
            "closed before the answer: {}",
            String::from_utf8_lossy(&out)
        );
        out.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&out).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .expect("content-length");
            if body.len() >= len {
                return text;
            }
        }
    }
}

/// How long until the server closes the connection (a read returns 0), within `limit`.
fn closed_within(s: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let t = Instant::now();
    s.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => Some(t.elapsed()),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Some(t.elapsed()),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_and_requests_per_connection_capped() {
    let u = Upstream::start("u").await;
    let s = Setup::new();
    let own = tests::free_port();
    let yaml = format!(
        "{}  keepalive_timeout_secs: 1\n  keepalive_requests: 3\nupstreams:\n  u: {{ targets: [{{ addr: \"{}\" }}] }}\nroutes:\n  - {{ name: r, upstream: u }}\n",
        s.server_yaml().replace(
            &format!("listen: [\"127.0.0.1:{}\"]", s.port),
            &format!(
                "listen: [\"127.0.0.1:{}\", {{ addr: \"127.0.0.1:{own}\", keepalive_timeout_secs: 4, keepalive_requests: 0 }}]",
                s.port
            )
        ),
        u.addr
    );
    let mut gw = s.start(&yaml);
    gw.wait_ready(own);

    // Idle after one request: closed after about a second, between requests.
    let mut c = TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
    assert!(exchange(&mut c, "/one").starts_with("HTTP/1.1 200"));
    let idle = closed_within(&mut c, Duration::from_secs(5)).expect("idle connection closed");
    assert!(
        idle > Duration::from_millis(500) && idle < Duration::from_secs(3),
        "closed after {idle:?}"
    );

    // The third request is answered with Connection: close, then the connection ends.
    let mut c = TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
    for i in 1..=3 {
        let answer = exchange(&mut c, "/n");
        assert!(answer.starts_with("HTTP/1.1 200"), "{i}: {answer}");
        let closes = answer.to_ascii_lowercase().contains("connection: close");
        assert_eq!(closes, i == 3, "request {i}: {answer}");
    }
    assert!(closed_within(&mut c, Duration::from_secs(2)).is_some());

    // A listener with its own settings: no cap, and a longer idle time.
    let mut c = TcpStream::connect(("127.0.0.1", own)).unwrap();
    for _ in 0..5 {
        assert!(exchange(&mut c, "/own").starts_with("HTTP/1.1 200"));
    }
    std::thread::sleep(Duration::from_millis(1600));
    let answer = exchange(&mut c, "/own");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(!answer.to_ascii_lowercase().contains("connection: close"));
    assert_eq!(u.requests(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_counted_not_logged_one_by_one_and_a_stalled_body_gets_408() {
    let u = Upstream::start("u").await;
    let s = Setup::new();
    let yaml = format!(
        "{}  client_header_timeout_ms: 500\n  client_body_timeout_ms: 500\nupstreams:\n  u:\n    targets: [{{ addr: \"{}\" }}]\n    circuit_breaker: {{ consecutive_failures: 1 }}\nroutes:\n  - {{ name: r, upstream: u }}\n",
        s.server_yaml(),
        u.addr
    );
    let gw = s.start(&yaml);
    let port = gw.port;

    // Twenty clients start a head and stall: each is cut, and the log gets a line or two.
    let stalled: Vec<_> = (0..20)
        .map(|_| {
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
                s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n").unwrap();
                closed_within(&mut s, Duration::from_secs(5))
            })
        })
        .collect();
    for t in stalled {
        let cut = tokio::task::spawn_blocking(move || t.join().unwrap())
            .await
            .unwrap()
            .expect("stalled head cut");
        assert!(cut < Duration::from_secs(3), "cut after {cut:?}");
    }
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains("gateway_client_timeouts_total{phase=\"header\"} 20"),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("client_timeouts"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let stderr = gw.stderr();
    let lines = stderr
        .lines()
        .filter(|l| l.contains("request head not received in time"))
        .count();
    assert!((1..=2).contains(&lines), "{lines} lines:\n{stderr}");

    // A body that stalls: 408 in the envelope, soon, and the upstream is not blamed (its
    // breaker opens on one failure).
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let t = Instant::now();
    c.write_all(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nab")
        .unwrap();
    let mut out = Vec::new();
    let _ = c.read_to_end(&mut out);
    let took = t.elapsed();
    let out = String::from_utf8_lossy(&out);
    assert_eq!(codes(&out), (408, Some(408)), "{out}");
    assert!(
        took > Duration::from_millis(300) && took < Duration::from_secs(3),
        "408 after {took:?}"
    );
    assert_eq!(
        client()
            .get(gw.url("/after"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert!(gw
        .metrics()
        .await
        .contains("gateway_client_timeouts_total{phase=\"body\"} 1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heads_the_parser_refuses_are_answered_in_the_envelope() {
    let u = Upstream::start("u").await;
    let gw = start("", &u);
    let many: String = (0..300).map(|i| format!("X-F{i}: v\r\n")).collect();
    let long_line = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(200_000));
    let many_fields = format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n");
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("not a request line", b"GARBAGE\r\n\r\n".to_vec(), 400),
        (
            "bad method token",
            b"G(T / HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(),
            400,
        ),
        (
            "bad version",
            b"GET / HTTP/9.9\r\nHost: a\r\n\r\n".to_vec(),
            400,
        ),
        (
            "header without colon",
            b"GET / HTTP/1.1\r\nHost: a\r\nNoColon\r\n\r\n".to_vec(),
            400,
        ),
        (
            "space in a field name",
            b"GET / HTTP/1.1\r\nHost: a\r\nBad Name: x\r\n\r\n".to_vec(),
            400,
        ),
        (
            "non-numeric length",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: abc\r\n\r\n".to_vec(),
            400,
        ),
        (
            "negative length",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n".to_vec(),
            400,
        ),
        (
            "conflicting lengths",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"
                .to_vec(),
            400,
        ),
        (
            "NUL in the target",
            b"GET /a\x00b HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(),
            400,
        ),
        ("more than 256 fields", many_fields.into_bytes(), 431),
        ("a 200 KB request line", long_line.into_bytes(), 414),
    ];
    for (name, bytes, want) in cases {
        let out = raw(gw.port, &bytes, Duration::from_secs(3));
        assert_eq!(
            codes(&out),
            (want, Some(u64::from(want))),
            "{name}:\n{out:.300}"
        );
        let head = out
            .split("\r\n\r\n")
            .next()
            .unwrap_or("")
            .to_ascii_lowercase();
        assert!(
            head.contains("content-type: application/json"),
            "{name}: {head}"
        );
        assert!(head.contains("x-request-id: "), "{name}: {head}");
        assert!(head.contains("connection: close"), "{name}: {head}");
    }
    assert_eq!(u.requests(), 0);
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains("gateway_invalid_requests_total{status=\"431\"}"),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("invalid_requests"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_go_away_are_counted_not_logged_as_errors() {
    let u = Upstream::start("u").await;
    u.set_delay(Duration::from_millis(400));
    let gw = start("", &u);
    for _ in 0..5 {
        let mut s = TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
        s.write_all(b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n")
            .unwrap();
        std::thread::sleep(Duration::from_millis(100));
        drop(s);
    }
    let t = Instant::now();
    loop {
        let m = gw.metrics().await;
        if m.contains("gateway_client_disconnects_total 5") {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "{}",
            m.lines()
                .filter(|l| l.contains("disconnects"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stderr = gw.stderr();
    assert!(!stderr.contains("Fail to proxy"), "{stderr}");
}
