//! The config loader on arbitrary bytes: parsing never panics, every refusal names a
//! path, and an accepted config's routes compile into a router (or are refused cleanly).
//! Validation is left out: it reads the files and resolves the names a config points at.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match gateway::config::parse(text) {
        Ok(config) => {
            let _ = gateway::router::Router::new(&config.routes);
        }
        Err(errors) => {
            assert!(!errors.0.is_empty(), "a refusal without a reason");
        }
    }
});
