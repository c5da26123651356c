//! What a client controls, against a fixed route table and fixed JWT verifiers: the host,
//! path, method and headers the router matches on, and the Authorization header. Nothing
//! may panic, and a route found must be one of the table's.
#![no_main]

use gateway::router::{RequestView, Router};
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use libfuzzer_sys::fuzz_target;
use plugins::jwt::{JwtSettings, JwtVerifier, KeySource};
use std::sync::LazyLock;

const ROUTES: &str = r#"
routes:
  - { name: exact, upstream: u, match: { path: { exact: /api/orders/latest } } }
  - { name: regex, upstream: u, match: { path: { regex: "^/api/orders/(?P<id>[0-9]+)$" } } }
  - { name: prefix, upstream: u, match: { path: { prefix: /api/ }, methods: [GET, POST] } }
  - name: canary
    upstream: u
    match: { path: { prefix: /api/ }, headers: { x-canary: "true", x-user: { regex: "^[a-z]+$" } } }
  - { name: host, upstream: u, match: { hosts: ["api.example.com", "*.example.org"] } }
  - { name: absent, upstream: u, match: { headers: { x-debug: { present: false } } } }
"#;

static ROUTER: LazyLock<(Router, usize)> = LazyLock::new(|| {
    let config = gateway::config::parse(ROUTES).expect("fixed routes");
    let n = config.routes.len();
    (
        Router::new(&config.routes).expect("fixed routes compile"),
        n,
    )
});

const JWKS: &str = r#"{"keys":[{"kty":"RSA","kid":"k1","alg":"RS256","n":"sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw","e":"AQAB"}]}"#;

static VERIFIERS: LazyLock<Vec<JwtVerifier>> = LazyLock::new(|| {
    let forward = vec![("sub".to_string(), "x-user-id".to_string())];
    let settings = |algs: &'static [String]| JwtSettings {
        algorithms: algs,
        issuer: Some("https://auth.test"),
        audience: Some("api"),
        leeway_secs: 30,
        require_exp: true,
        optional: false,
        forward_claims: &forward,
        cache_size: 16,
    };
    static HS: LazyLock<Vec<String>> = LazyLock::new(|| vec!["HS256".into()]);
    static RS: LazyLock<Vec<String>> = LazyLock::new(|| vec!["RS256".into(), "PS256".into()]);
    vec![
        JwtVerifier::new(KeySource::Secret(b"fuzz-secret"), &settings(&HS)).expect("hs"),
        JwtVerifier::new(KeySource::Jwks(JWKS), &settings(&RS)).expect("jwks"),
    ]
});

/// Split the input into fields at 0xFF bytes.
fn fields(data: &[u8]) -> Vec<&[u8]> {
    data.split(|b| *b == 0xff).collect()
}

fuzz_target!(|data: &[u8]| {
    let f = fields(data);
    let get = |i: usize| f.get(i).copied().unwrap_or(b"");
    let text = |i: usize| std::str::from_utf8(get(i)).unwrap_or("");

    // The Authorization header against both verifiers.
    for v in VERIFIERS.iter() {
        match v.verify(Some(get(0))) {
            Ok(claims) => {
                let _ = v.forwarded(claims.as_deref()).count();
            }
            Err(e) => assert_eq!(e.status.as_u16(), 401),
        }
    }

    // The route lookup.
    let method = Method::from_bytes(get(1)).unwrap_or(Method::GET);
    let mut headers = HeaderMap::new();
    for pair in f[f.len().min(4)..].chunks(2) {
        let value: &[u8] = pair.get(1).copied().unwrap_or(b"");
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(pair[0]),
            HeaderValue::from_bytes(value),
        ) {
            headers.append(n, v);
        }
    }
    let host = text(2).to_ascii_lowercase();
    let view = RequestView {
        host: &host,
        path: text(3),
        method: &method,
        headers: &headers,
    };
    let (router, n) = &*ROUTER;
    if let Some(i) = router.find(&view) {
        assert!(i < *n);
    }
});
