//! A bare Pingora reverse proxy: every request to one upstream over pooled keep-alive
//! connections, nothing else. `bare-pingora LISTEN UPSTREAM [--forwarding]`, one worker
//! thread. The benchmarks compare the gateway with it to see what the gateway's own code
//! costs. With `--forwarding` it also sets the headers the gateway's plain route sets
//! (`X-Forwarded-For/-Proto/-Host`, `X-Request-Id`, `traceparent`, and `X-Request-Id` on the
//! response), written the short way Pingora's API allows: the floor for that work.

use async_trait::async_trait;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;
use std::sync::atomic::{AtomicU64, Ordering};

struct Bare {
    upstream: std::net::SocketAddr,
    forwarding: bool,
}

/// A process-unique id: a counter, so the floor pays for no randomness.
fn next_id() -> String {
    static N: AtomicU64 = AtomicU64::new(1);
    format!("{:032x}", N.fetch_add(1, Ordering::Relaxed))
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = String;
    fn new_ctx(&self) -> String {
        String::new()
    }

    async fn upstream_peer(&self, _: &mut Session, _: &mut String) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.upstream, false, String::new())))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        req: &mut RequestHeader,
        id: &mut String,
    ) -> Result<()> {
        if !self.forwarding {
            return Ok(());
        }
        if let Some(addr) = session.client_addr().and_then(|a| a.as_inet()) {
            req.insert_header("x-forwarded-for", addr.ip().to_string())?;
        }
        req.insert_header("x-forwarded-proto", "http")?;
        if let Some(host) = session.req_header().headers.get("host").cloned() {
            req.insert_header("x-forwarded-host", host)?;
        }
        *id = next_id();
        req.insert_header("x-request-id", id.as_str())?;
        req.insert_header("traceparent", format!("00-{id}-{}-01", &id[16..]))?;
        Ok(())
    }

    async fn response_filter(
        &self,
        _: &mut Session,
        resp: &mut ResponseHeader,
        id: &mut String,
    ) -> Result<()> {
        if self.forwarding {
            resp.insert_header("x-request-id", id.as_str())?;
        }
        Ok(())
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(listen), Some(upstream)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: bare-pingora LISTEN UPSTREAM [--forwarding]");
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
    let forwarding = args.get(3).is_some_and(|a| a == "--forwarding");
    let mut proxy = http_proxy_service(
        &server.configuration,
        Bare {
            upstream,
            forwarding,
        },
    );
    proxy.add_tcp(listen);
    server.add_service(proxy);
    server.run_forever();
}
