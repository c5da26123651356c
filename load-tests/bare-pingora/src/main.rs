//! The bare Pingora proxy with the system allocator, Pingora's default.

fn main() {
    bare_pingora::run();
}
