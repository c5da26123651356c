//! Route lookup cost as the table grows: 10, 1,000 and 10,000 routes.
//!
//! The table mixes exact paths, prefixes, host-bound routes and header-matched canaries,
//! plus a fixed set of 8 regex routes (all regexes of one host table run as one RegexSet,
//! so their count, not the route count, sets that part of the cost).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use gateway::config::parse;
use gateway::router::{RequestView, Router};
use http::{HeaderMap, Method};

fn table(n: usize) -> String {
    let mut y = String::from("routes:\n");
    for i in 0..8 {
        y.push_str(&format!(
            "  - {{ name: re{i}, upstream: u, match: {{ path: {{ regex: \"^/re{i}/[0-9]+/items$\" }} }} }}\n"
        ));
    }
    for i in 0..n.saturating_sub(8) {
        let line = match i % 4 {
            0 => format!("  - {{ name: p{i}, upstream: u, match: {{ path: {{ prefix: /svc{i}/ }} }} }}\n"),
            1 => format!("  - {{ name: e{i}, upstream: u, match: {{ path: {{ exact: /exact/{i} }} }} }}\n"),
            2 => format!(
                "  - {{ name: h{i}, upstream: u, match: {{ hosts: [h{i}.example.com], path: {{ prefix: /api/ }} }} }}\n"
            ),
            _ => format!(
                "  - {{ name: c{i}, upstream: u, match: {{ path: {{ prefix: /svc{}/ }}, headers: {{ x-canary: \"true\" }} }} }}\n",
                i - 3
            ),
        };
        y.push_str(&line);
    }
    y
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("route lookup");
    for n in [10usize, 1_000, 10_000] {
        let cfg = parse(&table(n)).expect("bench config parses");
        let router = Router::new(&cfg.routes).expect("bench router compiles");
        let headers = HeaderMap::new();
        let get = Method::GET;
        let last = n.saturating_sub(8).saturating_sub(4);
        let cases = [
            (
                "prefix",
                "api.internal".to_string(),
                format!("/svc{last}/users/1"),
            ),
            (
                "exact",
                "api.internal".to_string(),
                format!("/exact/{}", last + 1),
            ),
            (
                "host",
                format!("h{}.example.com", last + 2),
                "/api/orders".to_string(),
            ),
            (
                "regex",
                "api.internal".to_string(),
                "/re7/123/items".to_string(),
            ),
            (
                "miss",
                "api.internal".to_string(),
                "/nothing/here".to_string(),
            ),
        ];
        for (kind, host, path) in &cases {
            g.bench_with_input(BenchmarkId::new(*kind, n), &n, |b, _| {
                b.iter(|| {
                    router.find(black_box(&RequestView {
                        host,
                        path,
                        method: &get,
                        headers: &headers,
                    }))
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
