//! The config loader as an operator meets it: `gateway -t`, faults named by YAML path,
//! and every shipped config accepted.

use std::path::PathBuf;
use std::process::Command;
use tests::{gateway_bin, workspace_root, Setup};

fn check(path: &std::path::Path) -> (bool, String, String) {
    let out = Command::new(gateway_bin())
        // The secret conf/examples/identity.yaml reads from the environment.
        .env("GATEWAY_OAUTH_SECRET", "example")
        .args(["-t", "-c"])
        .arg(path)
        .current_dir(workspace_root())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `gateway -t` on `yaml` must refuse it and name every fault of `wants` on stderr.
fn assert_refused(yaml: &str, wants: &[&str]) {
    let s = Setup::new();
    let f = s.path("refused.yaml");
    std::fs::write(&f, yaml).unwrap();
    let (ok, _, stderr) = check(&f);
    assert!(!ok, "accepted:\n{yaml}");
    for want in wants {
        assert!(stderr.contains(want), "missing {want:?} in:\n{stderr}");
    }
}

fn shipped_configs() -> Vec<PathBuf> {
    let root = workspace_root().join("conf");
    let mut files = vec![root.join("gateway.yaml")];
    for dir in [root.join("examples")] {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
                files.push(p);
            }
        }
    }
    files
}

#[test]
fn every_shipped_config_is_accepted() {
    let files = shipped_configs();
    assert!(files.len() >= 2, "{files:?}");
    for f in files {
        let (ok, stdout, stderr) = check(&f);
        assert!(ok, "{} refused: {stderr}", f.display());
        assert!(stdout.contains("configuration ok"), "{stdout}");
    }
}

#[test]
fn faults_are_listed_with_yaml_paths_and_exit_1() {
    let s = Setup::new();
    let f = s.path("bad.yaml");
    std::fs::write(
        &f,
        r#"
upstreams:
  users:
    targets: [{ addr: "127.0.0.1:9001", weight: 0 }]
routes:
  - { name: a, upstream: users }
  - { name: b, upstream: missing }
  - { name: c, upstream: users, match: { path: { regex: "^/(x" } } }
  - { name: a, upstream: users, match: { methods: ["G T"] } }
"#,
    )
    .unwrap();
    let (ok, _, stderr) = check(&f);
    assert!(!ok);
    for want in [
        "upstreams.users.targets[0].weight: must be at least 1",
        "routes[1].upstream: unknown upstream \"missing\"",
        "routes[2].match.path.regex:",
        "unclosed group",
        "routes[3].name: duplicate route name \"a\"",
        "routes[3].match.methods[0]: invalid method",
        "configuration refused (5 errors)",
    ] {
        assert!(stderr.contains(want), "missing {want:?} in:\n{stderr}");
    }

    std::fs::write(
        &f,
        "routes:\n  - name: a\n    upstream: u\n    match: { path: { prefx: / } }\n",
    )
    .unwrap();
    let (ok, _, stderr) = check(&f);
    assert!(!ok);
    assert!(
        stderr.contains("routes[0].match.path: unknown field `prefx`, expected one of `exact`, `prefix`, `regex` at line 4"),
        "{stderr}"
    );

    std::fs::write(&f, "server:\n  listen: [\"nowhere\"]\n  lissten: 1\n").unwrap();
    let (ok, _, stderr) = check(&f);
    assert!(!ok);
    assert!(
        stderr.contains("server: unknown field `lissten`"),
        "{stderr}"
    );
}

#[test]
fn a_broken_config_is_never_served() {
    let s = Setup::new();
    let port = s.port;
    let f = s.path("broken.yaml");
    std::fs::write(
        &f,
        format!(
            "server:\n  listen: [\"127.0.0.1:{port}\"]\n  pid_file: {}\n  upgrade_sock: {}\nroutes:\n  - {{ name: a, upstream: nowhere }}\n",
            s.path("pid").display(),
            s.path("sock").display()
        ),
    )
    .unwrap();
    let out = Command::new(gateway_bin())
        .arg("-c")
        .arg(&f)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("routes[0].upstream"));
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
}

#[test]
fn rate_limit_faults_are_named_by_path() {
    let s = Setup::new();
    let f = s.path("limits.yaml");
    std::fs::write(
        &f,
        r#"
upstreams:
  u: { targets: [{ addr: "127.0.0.1:9001" }] }
routes:
  - name: a
    upstream: u
    plugins:
      rate_limit:
        - { algorithm: fixed_window, limit: 10 }
        - { algorithm: sliding_window, key: "claim:sub", limit: 10 }
        - { algorithm: token_bucket, limit: 0, store: redis }
        - { algorithm: concurrency, limit: 5, burst: 2 }
        - { algorithm: sliding_window, key: cookie, limit: 5 }
        - { algorithm: sliding_window, limit: 5, on_store_error: maybe }
"#,
    )
    .unwrap();
    let (ok, _, stderr) = check(&f);
    assert!(!ok);
    assert!(
        stderr.contains("routes[0].plugins.rate_limit[5].on_store_error: unknown variant `maybe`"),
        "{stderr}"
    );
    std::fs::write(
        &f,
        std::fs::read_to_string(&f)
            .unwrap()
            .replace(", on_store_error: maybe", ""),
    )
    .unwrap();
    let (ok, _, stderr) = check(&f);
    assert!(!ok);
    for want in [
        "routes[0].plugins.rate_limit[0].algorithm: unknown algorithm \"fixed_window\"",
        "routes[0].plugins.rate_limit[1].key: claims come from a verified JWT",
        "routes[0].plugins.rate_limit[2].limit: must be at least 1",
        "routes[0].plugins.rate_limit[2].store: store: redis needs server.redis",
        "routes[0].plugins.rate_limit[3].burst: burst applies to token_bucket and leaky_bucket",
        "routes[0].plugins.rate_limit[4].key: unknown key \"cookie\"",
    ] {
        assert!(stderr.contains(want), "missing {want:?} in:\n{stderr}");
    }
}

#[test]
fn jwt_faults_are_named_by_their_own_key() {
    std::env::set_var("GW_TEST_CONFIG_JWT_SECRET", "x");
    assert_refused(
        r#"
upstreams:
  u: { targets: [{ addr: "127.0.0.1:9001" }] }
routes:
  - name: a
    upstream: u
    plugins: { jwt: { algorithms: [HS256, XX999], keys: { secret_env: GW_TEST_CONFIG_JWT_SECRET } } }
  - name: b
    upstream: u
    plugins: { jwt: { algorithms: [HS256, RS256], keys: { jwks_file: conf/examples/jwks.json } } }
  - name: c
    upstream: u
    plugins:
      jwt:
        algorithms: [HS256]
        keys: { secret_env: GW_TEST_CONFIG_JWT_SECRET }
        forward_claims: { sub: "bad header" }
"#,
        &[
            "routes[0].plugins.jwt.algorithms[1]: unknown algorithm \"XX999\"",
            "routes[1].plugins.jwt.algorithms[0]: no key can verify HS256",
            "routes[2].plugins.jwt.forward_claims.sub: invalid header name",
        ],
    );
}

#[test]
fn every_typo_and_bad_value_is_reported_in_one_run() {
    assert_refused(
        r#"server:
  thredas: 4
  listen: ["127.0.0.1:8080"]
upstreams:
  u:
    targets: [{ addr: "127.0.0.1:9001" }]
    lb: roundrobin
    timeouts: { conect_ms: 100 }
routes:
  - name: a
    upstream: u
    plugins:
      rate_limit: [{ algorithm: sliding_window, limit: 5, on_store_error: maybe }]
"#,
        &[
            "server: unknown field `thredas`",
            "at line 2 column 12",
            "upstreams.u.lb: unknown variant `roundrobin`",
            "at line 7 column 9",
            "upstreams.u.timeouts: unknown field `conect_ms`",
            "at line 8 column 28",
            "routes[0].plugins.rate_limit[0].on_store_error: unknown variant `maybe`",
            "configuration refused (4 errors)",
        ],
    );
}
