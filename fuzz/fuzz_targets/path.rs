//! The path normalizer on any bytes a client can put in a path, under every setting: it never
//! panics; what it returns starts with `/`, holds no `.` or `..` segment (not even encoded)
//! and no escape of an unreserved character; normalizing it again changes nothing; and with
//! merged slashes it holds no empty segment but a trailing one.
#![no_main]

use gateway::path::{normalize, EscapedSlashes, PathOptions};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let Ok(path) = std::str::from_utf8(rest) else {
        return;
    };
    let opts = PathOptions {
        merge_slashes: flags & 1 == 0,
        escaped_slashes: if flags & 2 == 0 {
            EscapedSlashes::Reject
        } else {
            EscapedSlashes::Keep
        },
    };
    let Ok(once) = normalize(path, &opts) else {
        return;
    };
    if once == "*" {
        assert_eq!(path, "*");
        return;
    }
    assert!(once.starts_with('/'), "{path:?} -> {once:?}");
    let segments: Vec<&str> = once[1..].split('/').collect();
    for (i, seg) in segments.iter().enumerate() {
        assert!(*seg != "." && *seg != "..", "{path:?} -> {once:?}");
        if opts.merge_slashes && i + 1 < segments.len() {
            assert!(!seg.is_empty(), "{path:?} -> {once:?}");
        }
    }
    let b = once.as_bytes();
    for (i, _) in once.match_indices('%') {
        let hex = std::str::from_utf8(&b[i + 1..i + 3]).expect("two hex digits");
        let v = u8::from_str_radix(hex, 16).expect("hex");
        assert!(
            !(v.is_ascii_alphanumeric() || matches!(v, b'-' | b'.' | b'_' | b'~')),
            "{path:?} -> {once:?}"
        );
        assert_eq!(hex, hex.to_ascii_uppercase(), "{path:?} -> {once:?}");
    }
    let twice = normalize(&once, &opts).expect("a normal path stays acceptable");
    assert_eq!(once, twice, "{path:?}");
});
