//! The bare Pingora proxy with the gateway's allocator.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    bare_pingora::run();
}
