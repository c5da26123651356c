//! Small upstream servers for `make run`: each answers JSON describing the request it got.
//!
//! `demo-upstreams NAME@ADDR [NAME@ADDR ...]`, e.g. `users-1@127.0.0.1:9001`.

use tests::Upstream;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() {
        eprintln!("usage: demo-upstreams NAME@ADDR [NAME@ADDR ...]");
        std::process::exit(2);
    }
    let mut running = Vec::new();
    for a in &args {
        let Some((name, addr)) = a.split_once('@') else {
            eprintln!("{a:?}: expected NAME@ADDR");
            std::process::exit(2);
        };
        let Ok(addr) = addr.parse() else {
            eprintln!("{a:?}: {addr:?} is not IP:PORT");
            std::process::exit(2);
        };
        let up = Upstream::start_on(name, addr).await;
        println!("demo upstream {name} on {}", up.addr);
        running.push(up);
    }
    let _ = tokio::signal::ctrl_c().await;
}
