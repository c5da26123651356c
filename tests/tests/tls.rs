//! TLS termination with h2 by ALPN, and h2c on the plain listener.

use tests::{free_port, Setup, Upstream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_listener_speaks_h2_and_http11_and_plain_port_speaks_h2c() {
    let u = Upstream::start("u").await;
    let s = Setup::new();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    std::fs::write(s.path("gw.crt"), cert.cert.pem()).unwrap();
    std::fs::write(s.path("gw.key"), cert.key_pair.serialize_pem()).unwrap();
    let tls_port = free_port();
    let yaml = format!(
        "{}  tls:\n    - {{ listen: \"127.0.0.1:{tls_port}\", cert: {}, key: {} }}\nupstreams:\n  u:\n    targets: [{{ addr: \"{}\" }}]\nroutes:\n  - {{ name: r, upstream: u }}\n",
        s.server_yaml(),
        s.path("gw.crt").display(),
        s.path("gw.key").display(),
        u.addr
    );
    let plain_port = s.port;
    let mut gw = s.start(&yaml);
    gw.wait_ready(tls_port);

    let root = reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap();
    let addr = format!("127.0.0.1:{tls_port}").parse().unwrap();
    let url = format!("https://localhost:{tls_port}/secure?x=1");

    let h2 = reqwest::Client::builder()
        .no_proxy()
        .add_root_certificate(root.clone())
        .resolve("localhost", addr)
        .build()
        .unwrap();
    let r = h2.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.version(), reqwest::Version::HTTP_2, "h2 chosen by ALPN");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["uri"], "/secure?x=1");
    assert_eq!(body["headers"]["x-forwarded-proto"], "https");
    assert_eq!(
        body["headers"]["host"],
        format!("localhost:{tls_port}"),
        "h2 :authority becomes Host upstream"
    );

    let h1 = reqwest::Client::builder()
        .no_proxy()
        .add_root_certificate(root)
        .resolve("localhost", addr)
        .http1_only()
        .build()
        .unwrap();
    let r = h1.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.version(), reqwest::Version::HTTP_11);

    let h2c = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let r = h2c
        .post(format!("http://127.0.0.1:{plain_port}/clear"))
        .body("over h2c")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["body"], "over h2c");
    assert_eq!(body["headers"]["x-forwarded-proto"], "http");

    // A certificate the client does not trust fails the handshake.
    let untrusting = reqwest::Client::builder()
        .no_proxy()
        .resolve("localhost", addr)
        .build()
        .unwrap();
    assert!(untrusting.get(&url).send().await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_upstreams_are_verified_against_their_ca_and_name() {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["backend.internal".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca, &ca_key)
        .unwrap();
    let up = Upstream::start_tls("secure", &leaf.pem(), &leaf_key.serialize_pem()).await;

    let s = Setup::new();
    std::fs::write(s.path("ca.pem"), ca.pem()).unwrap();
    let ca_file = s.path("ca.pem");
    let ca_file = ca_file.display();
    let a = up.addr;
    let yaml = format!(
        r#"{}upstreams:
  trusted:   {{ targets: [{{ addr: "{a}" }}], tls: true, sni: backend.internal, ca_file: {ca_file} }}
  system:    {{ targets: [{{ addr: "{a}" }}], tls: true, sni: backend.internal }}
  wrongname: {{ targets: [{{ addr: "{a}" }}], tls: true, sni: other.internal, ca_file: {ca_file} }}
  noverify:  {{ targets: [{{ addr: "{a}" }}], tls: true, sni: backend.internal, verify: false }}
routes:
  - {{ name: trusted, upstream: trusted, match: {{ path: {{ prefix: /trusted }} }} }}
  - {{ name: system, upstream: system, match: {{ path: {{ prefix: /system }} }} }}
  - {{ name: wrongname, upstream: wrongname, match: {{ path: {{ prefix: /wrongname }} }} }}
  - {{ name: noverify, upstream: noverify, match: {{ path: {{ prefix: /noverify }} }} }}
"#,
        s.server_yaml()
    );
    let gw = s.start(&yaml);
    let c = tests::client();
    for (path, want) in [
        ("/trusted", 200),
        ("/system", 502),
        ("/wrongname", 502),
        ("/noverify", 200),
    ] {
        let (status, _, body) = tests::get_json(&c, &gw.url(path)).await;
        assert_eq!(status, want, "{path}: {body}");
        if want == 200 {
            assert_eq!(body["upstream"], "secure");
        } else {
            tests::assert_envelope(status, &body, 502);
        }
    }
}
