//! JWT authentication through the real binary: a token matrix over the algorithm families,
//! key sources (secret, PEM, JWKS file with rotation by reload), registered claims, forwarded
//! claims that cannot be spoofed, and claims in aggregate templates.

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tests::{assert_envelope, client, free_port, get_json, Setup, Upstream};

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A private key made by openssl, and its public half, both PEM.
fn keypair(dir: &Path, name: &str, args: &[&str]) -> (Vec<u8>, Vec<u8>) {
    let private = dir.join(format!("{name}.key"));
    let public = dir.join(format!("{name}.pub"));
    let ok = Command::new("openssl")
        .args(["genpkey", "-out"])
        .arg(&private)
        .args(args)
        .status()
        .unwrap()
        .success();
    assert!(ok, "openssl genpkey {args:?}");
    let ok = Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&private)
        .arg("-out")
        .arg(&public)
        .status()
        .unwrap()
        .success();
    assert!(ok);
    (
        std::fs::read(private).unwrap(),
        std::fs::read(public).unwrap(),
    )
}

fn claims() -> Value {
    json!({"sub": "user-7", "tier": "gold", "iss": "https://auth.test", "aud": "api", "exp": now() + 300})
}

fn sign(alg: Algorithm, key: &EncodingKey, kid: Option<&str>, claims: &Value) -> String {
    let mut h = Header::new(alg);
    h.kid = kid.map(str::to_string);
    encode(&h, claims, key).unwrap()
}

async fn call(
    c: &reqwest::Client,
    url: &str,
    token: Option<&str>,
) -> (u16, reqwest::header::HeaderMap, Value) {
    tests::get_with_bearer(c, url, token, "x-user-id").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_matrix_across_algorithms_and_key_sources() {
    let u = Upstream::start("u").await;
    let s = Setup::new();
    let dir = s.dir.path().to_path_buf();
    let (rsa_priv, rsa_pub) = keypair(
        &dir,
        "rsa",
        &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
    );
    let (ec_priv, _) = keypair(
        &dir,
        "ec",
        &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
    );
    let (ed_priv, _) = keypair(&dir, "ed", &["-algorithm", "ED25519"]);
    let rsa = EncodingKey::from_rsa_pem(&rsa_priv).unwrap();
    let ec = EncodingKey::from_ec_pem(&ec_priv).unwrap();
    let ed = EncodingKey::from_ed_pem(&ed_priv).unwrap();
    let hs = EncodingKey::from_secret(b"hs-secret-for-tests");

    let yaml = format!(
        r#"{server}upstreams:
  u: {{ targets: [{{ addr: "{up}" }}] }}
routes:
  - name: hs
    match: {{ path: {{ prefix: /hs }} }}
    upstream: u
    plugins:
      jwt:
        algorithms: [HS256]
        keys: {{ secret_env: GW_TEST_JWT_SECRET }}
        issuer: "https://auth.test"
        audience: api
        leeway_secs: 0
        forward_claims: {{ sub: X-User-Id, tier: X-User-Tier }}
  - name: rs
    match: {{ path: {{ prefix: /rs }} }}
    upstream: u
    plugins: {{ jwt: {{ algorithms: [RS256, PS256], keys: {{ public_key_pem: {dir}/rsa.pub }}, leeway_secs: 0 }} }}
  - name: es
    match: {{ path: {{ prefix: /es }} }}
    upstream: u
    plugins: {{ jwt: {{ algorithms: [ES256], keys: {{ public_key_pem: {dir}/ec.pub }} }} }}
  - name: ed
    match: {{ path: {{ prefix: /ed }} }}
    upstream: u
    plugins: {{ jwt: {{ algorithms: [EdDSA], keys: {{ public_key_pem: {dir}/ed.pub }} }} }}
  - name: noexp
    match: {{ path: {{ prefix: /noexp }} }}
    upstream: u
    plugins: {{ jwt: {{ algorithms: [HS256], keys: {{ secret_env: GW_TEST_JWT_SECRET }}, issuer: "https://auth.test", require_exp: false }} }}
  - name: optional
    match: {{ path: {{ prefix: /optional }} }}
    upstream: u
    plugins: {{ jwt: {{ algorithms: [HS256], keys: {{ secret_env: GW_TEST_JWT_SECRET }}, optional: true, forward_claims: {{ sub: X-User-Id }} }} }}
"#,
        server = s.server_yaml(),
        up = u.addr,
        dir = dir.display()
    );
    // Set before the gateway starts, which inherits it.
    std::env::set_var("GW_TEST_JWT_SECRET", "hs-secret-for-tests");
    let gw = s.start(&yaml);
    let c = client();
    let good = claims();

    // Valid tokens of every family pass.
    for (path, token) in [
        ("/hs", sign(Algorithm::HS256, &hs, None, &good)),
        ("/rs", sign(Algorithm::RS256, &rsa, None, &good)),
        ("/rs", sign(Algorithm::PS256, &rsa, None, &good)),
        ("/es", sign(Algorithm::ES256, &ec, None, &good)),
        ("/ed", sign(Algorithm::EdDSA, &ed, None, &good)),
    ] {
        let (status, _, body) = call(&c, &gw.url(path), Some(&token)).await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    // Forwarded claims replace the client's spoofed header.
    let hs_url = gw.url("/hs/me");
    let (_, _, body) = call(&c, &hs_url, Some(&sign(Algorithm::HS256, &hs, None, &good))).await;
    assert_eq!(body["headers"]["x-user-id"], "user-7");
    assert_eq!(body["headers"]["x-user-tier"], "gold");

    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = good.clone();
        f(&mut c);
        sign(Algorithm::HS256, &hs, None, &c)
    };
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "expired",
            with(&|c| c["exp"] = json!(now() - 60)),
            "token expired",
        ),
        (
            "not yet valid",
            with(&|c| c["nbf"] = json!(now() + 600)),
            "token not yet valid",
        ),
        (
            "wrong issuer",
            with(&|c| c["iss"] = json!("https://evil")),
            "wrong issuer",
        ),
        (
            "wrong audience",
            with(&|c| c["aud"] = json!("billing")),
            "wrong audience",
        ),
        (
            "bad signature",
            sign(
                Algorithm::HS256,
                &EncodingKey::from_secret(b"guess"),
                None,
                &good,
            ),
            "bad signature",
        ),
        (
            "alg none",
            "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJ1c2VyLTcifQ.".to_string(),
            "malformed token",
        ),
        ("garbage", "not.a.jwt".to_string(), "malformed token"),
        ("oversized", "a".repeat(9000), "token too large"),
        // A configured issuer or audience must be in the token, and so must exp.
        (
            "no iss",
            with(&|c| {
                c.as_object_mut().unwrap().remove("iss");
            }),
            "missing iss claim",
        ),
        (
            "no aud",
            with(&|c| {
                c.as_object_mut().unwrap().remove("aud");
            }),
            "missing aud claim",
        ),
        (
            "no exp",
            with(&|c| {
                c.as_object_mut().unwrap().remove("exp");
            }),
            "missing exp claim",
        ),
        (
            "issued in the future",
            with(&|c| c["iat"] = json!(now() + 600)),
            "token issued in the future",
        ),
        (
            "unknown crit extension",
            {
                let mut h = Header::new(Algorithm::HS256);
                h.crit = Some(vec!["urn:example:policy".into()]);
                encode(&h, &good, &hs).unwrap()
            },
            "unsupported critical header",
        ),
    ];
    for (what, token, reason) in cases {
        let (status, headers, body) = call(&c, &hs_url, Some(&token)).await;
        assert_envelope(status, &body, 401);
        assert_eq!(body["data"]["reason"], reason, "{what}");
        assert_eq!(
            headers["www-authenticate"], "Bearer error=\"invalid_token\"",
            "{what}"
        );
    }
    // HS/RS confusion: HS256 signed with the RSA public key as the secret.
    let confused = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(&rsa_pub),
        None,
        &good,
    );
    let (status, _, body) = call(&c, &gw.url("/rs"), Some(&confused)).await;
    assert_eq!(status, 401);
    assert_eq!(body["data"]["reason"], "algorithm not accepted");

    // A route that lets tokens without exp through still requires its issuer, and still
    // honours an exp that is present.
    let no_exp = json!({"sub": "user-7", "iss": "https://auth.test"});
    let noexp_url = gw.url("/noexp");
    let (status, _, body) = call(&c, &noexp_url, Some(&with(&|c| *c = no_exp.clone()))).await;
    assert_eq!(status, 200, "{body}");
    let (status, _, body) = call(&c, &noexp_url, Some(&with(&|c| *c = json!({"sub": "x"})))).await;
    assert_eq!(
        (status, body["data"]["reason"].as_str()),
        (401, Some("missing iss claim"))
    );
    let expired = with(&|c| c["exp"] = json!(now() - 60));
    let (status, _, body) = call(&c, &noexp_url, Some(&expired)).await;
    assert_eq!(
        (status, body["data"]["reason"].as_str()),
        (401, Some("token expired"))
    );

    // No token: 401 with a bare challenge, unless optional.
    let (status, headers, body) = call(&c, &hs_url, None).await;
    assert_envelope(status, &body, 401);
    assert_eq!(headers["www-authenticate"], "Bearer");
    let (status, _, body) = call(&c, &gw.url("/optional"), None).await;
    assert_eq!(status, 200);
    assert!(
        body["headers"].get("x-user-id").is_none(),
        "spoofed header removed: {body}"
    );
    // Only the two valid /hs requests ever reached the upstream.
    assert_eq!(
        u.seen().iter().filter(|s| s.uri.starts_with("/hs")).count(),
        2
    );
}

fn jwks(dir: &Path, keys: &[(&str, &EncodingKey)]) {
    std::fs::write(dir.join("jwks.json"), jwks_doc(keys)).unwrap();
}

/// A JWKS document with the public halves of RS256 keys, by key id.
fn jwks_doc(keys: &[(&str, &EncodingKey)]) -> Vec<u8> {
    let keys: Vec<Value> = keys
        .iter()
        .map(|(kid, key)| {
            let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(key, Algorithm::RS256).unwrap();
            jwk.common.key_id = Some(kid.to_string());
            serde_json::to_value(jwk).unwrap()
        })
        .collect();
    json!({ "keys": keys }).to_string().into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_rotation_and_claims_in_aggregates() {
    let u = Upstream::start("u").await;
    let s = Setup::new();
    let dir = s.dir.path().to_path_buf();
    let (k1_priv, _) = keypair(
        &dir,
        "k1",
        &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
    );
    let (k2_priv, _) = keypair(
        &dir,
        "k2",
        &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
    );
    let k1 = EncodingKey::from_rsa_pem(&k1_priv).unwrap();
    let k2 = EncodingKey::from_rsa_pem(&k2_priv).unwrap();
    jwks(&dir, &[("k1", &k1)]);
    let fanout = free_port();
    let yaml = format!(
        r#"{server}  fanout: {{ listen: "127.0.0.1:{fanout}" }}
upstreams:
  u: {{ targets: [{{ addr: "{up}" }}] }}
routes:
  - name: api
    match: {{ path: {{ prefix: /api }} }}
    upstream: u
    plugins: {{ jwt: {{ algorithms: [RS256], keys: {{ jwks_file: {dir}/jwks.json }} }} }}
  - name: me
    match: {{ path: {{ exact: /me }} }}
    aggregate: me
    plugins: {{ jwt: {{ algorithms: [RS256], keys: {{ jwks_file: {dir}/jwks.json }} }} }}
aggregates:
  me:
    backends:
      - {{ key: profile, upstream: u, path: "/profile/{{claim.sub}}", required: true }}
"#,
        server = s.server_yaml(),
        up = u.addr,
        dir = dir.display()
    );
    let mut gw = s.start(&yaml);
    gw.wait_ready(fanout);
    let c = client();
    let t1 = sign(Algorithm::RS256, &k1, Some("k1"), &claims());
    let t2 = sign(Algorithm::RS256, &k2, Some("k2"), &claims());
    assert_eq!(call(&c, &gw.url("/api"), Some(&t1)).await.0, 200);
    let (status, _, body) = call(&c, &gw.url("/api"), Some(&t2)).await;
    assert_eq!(status, 401);
    assert_eq!(body["data"]["reason"], "unknown key id");

    // The issuer rotates: k2 joins the set; a reload picks it up.
    jwks(&dir, &[("k1", &k1), ("k2", &k2)]);
    gw.signal("HUP");
    let t = Instant::now();
    while call(&c, &gw.url("/api"), Some(&t2)).await.0 != 200 {
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "rotation not picked up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A verified claim fills an aggregate's path; a client cannot inject claims.
    let r = c
        .get(gw.url("/me"))
        .header("authorization", format!("Bearer {t1}"))
        .header("x-gateway-claims", "{\"sub\":\"admin\"}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["data"]["profile"]["uri"], "/profile/user-7");
    let (status, _, _) = get_json(&c, &gw.url("/me")).await;
    assert_eq!(status, 401, "the aggregate route is protected at the edge");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_url_is_fetched_refreshed_and_refetched_for_an_unknown_kid() {
    let u = Upstream::start("u").await;
    let mut idp = Upstream::start("idp").await;
    let s = Setup::new();
    let dir = s.dir.path().to_path_buf();
    let mut keys = Vec::new();
    for name in ["k1", "k2", "k3"] {
        let (private, _) = keypair(
            &dir,
            name,
            &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
        );
        keys.push(EncodingKey::from_rsa_pem(&private).unwrap());
    }
    idp.set_body(&jwks_doc(&[("k1", &keys[0])]));
    let yaml = format!(
        r#"{server}upstreams:
  u: {{ targets: [{{ addr: "{up}" }}] }}
routes:
  - name: refetch
    match: {{ path: {{ prefix: /a }} }}
    upstream: u
    plugins:
      jwt:
        algorithms: [RS256]
        keys: {{ jwks_url: "http://{idp}/.well-known/jwks.json", refresh_secs: 300, refetch_min_secs: 1, timeout_ms: 300 }}
  - name: refresh
    match: {{ path: {{ prefix: /b }} }}
    upstream: u
    plugins:
      jwt:
        algorithms: [RS256]
        keys: {{ jwks_url: "http://{idp}/.well-known/jwks.json", refresh_secs: 1, refetch_min_secs: 300 }}
"#,
        server = s.server_yaml(),
        up = u.addr,
        idp = idp.addr,
    );
    let gw = s.start(&yaml);
    let c = client();
    let token = |i: usize| {
        sign(
            Algorithm::RS256,
            &keys[i],
            Some(&format!("k{}", i + 1)),
            &claims(),
        )
    };
    // Fetched in the background at start.
    let t = Instant::now();
    while call(&c, &gw.url("/a"), Some(&token(0))).await.0 != 200 {
        assert!(t.elapsed() < Duration::from_secs(3), "keys never fetched");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(idp.last().unwrap().uri, "/.well-known/jwks.json");

    // The issuer rotates k2 in. A token with k2 makes route `refetch` fetch again.
    idp.set_body(&jwks_doc(&[("k1", &keys[0]), ("k2", &keys[1])]));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let before = idp.requests();
    let (status, _, body) = call(&c, &gw.url("/a"), Some(&token(1))).await;
    assert_eq!(status, 200, "{body}");
    // Unknown ids cannot make it fetch more than once per refetch_min_secs.
    for _ in 0..5 {
        let (status, h, body) = call(&c, &gw.url("/a"), Some(&token(2))).await;
        assert_eq!(status, 401);
        assert_eq!(body["data"]["reason"], "unknown key id");
        assert_eq!(h["www-authenticate"], "Bearer error=\"invalid_token\"");
    }
    let fetches = idp.requests() - before;
    // Route `refresh` polls every second on its own; allow for one of its fetches.
    assert!((1..=3).contains(&fetches), "{fetches} fetches");

    // Route `refresh` picks rotations up by itself.
    let t = Instant::now();
    while call(&c, &gw.url("/b"), Some(&token(1))).await.0 != 200 {
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "refresh did not pick k2 up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The key server goes away: the loaded keys stay, unknown ids fail fast.
    idp.stop().await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(call(&c, &gw.url("/a"), Some(&token(1))).await.0, 200);
    let t = Instant::now();
    assert_eq!(call(&c, &gw.url("/a"), Some(&token(2))).await.0, 401);
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    let m = gw.metrics().await;
    assert!(
        m.contains("gateway_jwks_fetches_total{result=\"error\",route=\"refetch\"}"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_scopes_from_the_scope_string_or_the_scp_list() {
    std::env::set_var("GW_TEST_JWT_SCOPE_SECRET", "scope-secret-scope-secret");
    let u = Upstream::start("u").await;
    let s = Setup::new();
    let yaml = format!(
        r#"{}upstreams:
  u: {{ targets: [{{ addr: "127.0.0.1:{}" }}] }}
routes:
  - name: w
    upstream: u
    plugins: {{ jwt: {{ algorithms: [HS256], keys: {{ secret_env: GW_TEST_JWT_SCOPE_SECRET }}, required_scopes: [orders.write] }} }}
"#,
        s.server_yaml(),
        u.port()
    );
    let gw = s.start(&yaml);
    let key = EncodingKey::from_secret(b"scope-secret-scope-secret");
    let c = client();
    let token = |extra: Value| {
        let mut claims = json!({"sub": "u1", "exp": now() + 300});
        claims
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        sign(Algorithm::HS256, &key, None, &claims)
    };
    for (extra, want) in [
        (json!({"scope": "orders.read orders.write"}), 200),
        (json!({"scp": ["orders.write"]}), 200),
        (json!({"scope": "orders.read"}), 403),
        (json!({}), 403),
    ] {
        let (status, headers, body) = call(&c, &gw.url("/x"), Some(&token(extra.clone()))).await;
        assert_eq!(status, want, "{extra}");
        if want == 403 {
            assert_envelope(status, &body, 403);
            assert_eq!(body["message"], "insufficient scope");
            assert_eq!(
                headers["www-authenticate"],
                "Bearer error=\"insufficient_scope\", scope=\"orders.write\""
            );
        }
    }
}
