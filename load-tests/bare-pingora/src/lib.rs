//! A bare Pingora reverse proxy: every request to one upstream over pooled keep-alive
//! connections, nothing else. `bare-pingora LISTEN UPSTREAM [--gateway-work]`, one worker
//! thread. The benchmarks compare the gateway with it to see what the gateway's own code
//! costs. With `--gateway-work` it also does what the gateway's plain route asks of Pingora
//! itself: it sets the same headers (`X-Forwarded-For/-Proto/-Host`, `X-Request-Id`,
//! `traceparent`, and `X-Request-Id` on the response) with fixed values, and gives the
//! upstream the gateway's default timeouts (connect 1 s, read and write 30 s, idle 60 s).
//! What remains between it and the gateway is the gateway's own logic.
//!
//! Two binaries: `bare-pingora` with the system allocator (Pingora's default) and
//! `bare-pingora-mimalloc` with the gateway's, to tell Pingora's cost from the allocator's.

use async_trait::async_trait;
use http::HeaderValue;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;
use std::time::Duration;

struct Bare {
    upstream: std::net::SocketAddr,
    gateway_work: bool,
}

/// Fixed values: the floor pays for the header maps alone, nothing to compute.
const REQUEST_HEADERS: [(&str, &str); 5] = [
    ("x-forwarded-for", "127.0.0.1"),
    ("x-forwarded-proto", "http"),
    ("x-forwarded-host", "127.0.0.1"),
    ("x-request-id", "0123456789abcdef0123456789abcdef"),
    (
        "traceparent",
        "00-0123456789abcdef0123456789abcdef-0123456789abcdef-01",
    ),
];

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();
    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _: &mut Session, _: &mut ()) -> Result<Box<HttpPeer>> {
        let mut peer = HttpPeer::new(self.upstream, false, String::new());
        if self.gateway_work {
            let o = &mut peer.options;
            o.connection_timeout = Some(Duration::from_secs(1));
            o.read_timeout = Some(Duration::from_secs(30));
            o.write_timeout = Some(Duration::from_secs(30));
            o.idle_timeout = Some(Duration::from_secs(60));
        }
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        _: &mut Session,
        req: &mut RequestHeader,
        _: &mut (),
    ) -> Result<()> {
        if self.gateway_work {
            for (name, value) in REQUEST_HEADERS {
                req.insert_header(name, HeaderValue::from_static(value))?;
            }
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _: &mut Session,
        resp: &mut ResponseHeader,
        _: &mut (),
    ) -> Result<()> {
        if self.gateway_work {
            resp.insert_header(
                "x-request-id",
                HeaderValue::from_static(REQUEST_HEADERS[3].1),
            )?;
        }
        Ok(())
    }
}

pub fn run() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(listen), Some(upstream)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: bare-pingora LISTEN UPSTREAM [--gateway-work]");
        std::process::exit(2);
    };
    let Ok(upstream) = upstream.parse() else {
        eprintln!("UPSTREAM must be IP:PORT");
        std::process::exit(2);
    };
    let conf = ServerConf {
        threads: 1,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let gateway_work = args.get(3).is_some_and(|a| a == "--gateway-work");
    let mut proxy = http_proxy_service(
        &server.configuration,
        Bare {
            upstream,
            gateway_work,
        },
    );
    proxy.add_tcp(listen);
    server.add_service(proxy);
    server.run_forever();
}
