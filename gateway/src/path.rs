//! Request path normalization: the one form of a path that is routed, checked by the route's
//! policies and forwarded, so that `/public/../admin`, `/public/%2e%2e/admin`, `//admin` and
//! `/%61dmin` cannot reach an `/admin` upstream through a route meant for something else.
//!
//! What is done, in one pass (RFC 3986 sections 2.3, 5.2.4 and 6.2.2):
//! - percent-encoded unreserved characters (`A-Z a-z 0-9 - . _ ~`) are decoded, every other
//!   escape has its hex digits made uppercase; a malformed escape or `%00` is refused;
//! - `.` and `..` segments are removed, also when spelled `%2e`; a path that climbs above
//!   `/` is refused, and so is a dot segment carrying `;` parameters (`/..;/`), which some
//!   origins read as `..`;
//! - repeated slashes are merged into one (unless `merge_slashes` is off);
//! - an encoded slash or backslash (`%2F`, `%5C`) is never turned into a separator: it is
//!   refused, or kept encoded (as `%2F` / `%5C`) so that it never splits a segment.
//!
//! Cost: a path without `%`, `//` or a segment that starts with `.` is checked with one scan
//! and not copied (nearly every request); any other is rebuilt in one pass into a new string.
//! The query is never touched.

use std::borrow::Cow;

/// What to do with `%2F` and `%5C` in a path (Envoy's `path_with_escaped_slashes_action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EscapedSlashes {
    /// Refuse the request with 400 (the default: an origin that decodes them would see other
    /// segments than the gateway routed on).
    #[default]
    Reject,
    /// Keep them encoded, as one segment's text.
    Keep,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathOptions {
    pub merge_slashes: bool,
    pub escaped_slashes: EscapedSlashes,
}

impl Default for PathOptions {
    fn default() -> Self {
        PathOptions {
            merge_slashes: true,
            escaped_slashes: EscapedSlashes::Reject,
        }
    }
}

/// Why a path was refused; each is a 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// `%` not followed by two hex digits.
    BadEscape,
    /// `%00`.
    Nul,
    /// `%2F` or `%5C` under [`EscapedSlashes::Reject`].
    EscapedSlash,
    /// More `..` segments than there are segments to remove.
    AboveRoot,
    /// A `.` or `..` segment with `;` parameters.
    DotSegmentParams,
    /// Neither `/...` nor `*`.
    NotAbsolute,
}

impl PathError {
    pub fn reason(self) -> &'static str {
        match self {
            PathError::BadEscape => "malformed percent-encoding in path",
            PathError::Nul => "encoded NUL in path",
            PathError::EscapedSlash => "encoded slash in path",
            PathError::AboveRoot => "path climbs above the root",
            PathError::DotSegmentParams => "dot segment with parameters in path",
            PathError::NotAbsolute => "path does not start with /",
        }
    }
}

/// The normalized form of `path` (the path of a request target, without its query).
/// Borrowed when the path is already normal.
pub fn normalize<'a>(path: &'a str, opts: &PathOptions) -> Result<Cow<'a, str>, PathError> {
    let b = path.as_bytes();
    if b.first() != Some(&b'/') {
        // `OPTIONS *` (asterisk-form) has no path to normalize.
        return if path == "*" {
            Ok(Cow::Borrowed(path))
        } else {
            Err(PathError::NotAbsolute)
        };
    }
    if is_normal(b, opts.merge_slashes) {
        return Ok(Cow::Borrowed(path));
    }
    rebuild(path, opts).map(Cow::Owned)
}

/// No escape, no empty segment (when merging), no segment that starts with a dot.
fn is_normal(b: &[u8], merge_slashes: bool) -> bool {
    for (i, &c) in b.iter().enumerate() {
        match c {
            b'%' => return false,
            b'/' => match b.get(i + 1) {
                Some(b'.') => return false,
                Some(b'/') if merge_slashes => return false,
                _ => {}
            },
            _ => {}
        }
    }
    true
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

fn unreserved(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~')
}

/// Append one raw segment to `out`, escapes normalized.
fn push_segment(out: &mut String, raw: &str, opts: &PathOptions) -> Result<(), PathError> {
    let b = raw.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let Some(pct) = memchr::memchr(b'%', &b[i..]) else {
            out.push_str(&raw[i..]);
            break;
        };
        out.push_str(&raw[i..i + pct]);
        i += pct;
        let (Some(hi), Some(lo)) = (
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) else {
            return Err(PathError::BadEscape);
        };
        let v = hi << 4 | lo;
        match v {
            0 => return Err(PathError::Nul),
            b'/' | b'\\' if opts.escaped_slashes == EscapedSlashes::Reject => {
                return Err(PathError::EscapedSlash)
            }
            _ if unreserved(v) => out.push(v as char),
            _ => {
                const HEX: &[u8; 16] = b"0123456789ABCDEF";
                out.push('%');
                out.push(HEX[usize::from(hi)] as char);
                out.push(HEX[usize::from(lo)] as char);
            }
        }
        i += 3;
    }
    Ok(())
}

fn rebuild(path: &str, opts: &PathOptions) -> Result<String, PathError> {
    let mut out = String::with_capacity(path.len());
    // Where each kept segment's `/` starts in `out`, so `..` can remove the last one.
    let mut starts: Vec<usize> = Vec::new();
    let mut segments = path[1..].split('/').peekable();
    while let Some(raw) = segments.next() {
        let last = segments.peek().is_none();
        let start = out.len();
        out.push('/');
        push_segment(&mut out, raw, opts)?;
        let seg = &out[start + 1..];
        let dots = seg.split(';').next().unwrap_or("");
        if (dots == "." || dots == "..") && dots.len() != seg.len() {
            return Err(PathError::DotSegmentParams);
        }
        match seg {
            "." => out.truncate(start),
            ".." => {
                out.truncate(start);
                let prev = starts.pop().ok_or(PathError::AboveRoot)?;
                out.truncate(prev);
            }
            "" if opts.merge_slashes && !last => {
                out.truncate(start);
                continue;
            }
            _ => {
                starts.push(start);
                continue;
            }
        }
        // A dot segment at the end leaves the path ending in `/` (`/a/b/..` is `/a/`).
        if last {
            out.push('/');
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(p: &str) -> Result<String, PathError> {
        normalize(p, &PathOptions::default()).map(Cow::into_owned)
    }

    fn keep(p: &str) -> Result<String, PathError> {
        let opts = PathOptions {
            escaped_slashes: EscapedSlashes::Keep,
            ..PathOptions::default()
        };
        normalize(p, &opts).map(Cow::into_owned)
    }

    #[test]
    fn normal_paths_are_borrowed() {
        for p in [
            "/",
            "/a",
            "/a/b/",
            "/a.b/c..d/e.",
            "/a-b_c~d",
            "*",
            "/a;b=c",
        ] {
            assert!(
                matches!(normalize(p, &PathOptions::default()), Ok(Cow::Borrowed(_))),
                "{p}"
            );
        }
    }

    #[test]
    fn dot_segments_are_removed() {
        for (p, want) in [
            ("/public/../admin/secret", "/admin/secret"),
            ("/public/%2e%2e/admin/secret", "/admin/secret"),
            ("/public/%2E%2e/admin", "/admin"),
            ("/public/.%2e/admin", "/admin"),
            ("/a/./b", "/a/b"),
            ("/a/%2E/b", "/a/b"),
            ("/a/b/..", "/a/"),
            ("/a/b/.", "/a/b/"),
            ("/a/..", "/"),
            ("/.", "/"),
            ("/a/b/../../c", "/c"),
            ("/a/.../b", "/a/.../b"),
            ("/a/.b/c", "/a/.b/c"),
            ("/a/b/../", "/a/"),
        ] {
            assert_eq!(norm(p).as_deref(), Ok(want), "{p}");
        }
    }

    #[test]
    fn climbing_above_the_root_is_refused() {
        for p in ["/..", "/../a", "/a/../..", "/%2e%2e/a", "/a/b/../../../c"] {
            assert_eq!(norm(p), Err(PathError::AboveRoot), "{p}");
        }
    }

    #[test]
    fn slashes_are_merged_unless_turned_off() {
        assert_eq!(norm("//admin/secret").as_deref(), Ok("/admin/secret"));
        assert_eq!(norm("/a///b//").as_deref(), Ok("/a/b/"));
        assert_eq!(norm("//").as_deref(), Ok("/"));
        assert_eq!(norm("/a//../b").as_deref(), Ok("/b"));
        let opts = PathOptions {
            merge_slashes: false,
            ..PathOptions::default()
        };
        assert_eq!(normalize("//admin", &opts).as_deref(), Ok("//admin"));
        // The empty segment is a segment: `..` removes it, as RFC 3986 does.
        assert_eq!(normalize("/a//../b", &opts).as_deref(), Ok("/a/b"));
    }

    #[test]
    fn escapes_of_unreserved_characters_are_decoded_others_uppercased() {
        assert_eq!(norm("/%61dmin/secret").as_deref(), Ok("/admin/secret"));
        assert_eq!(norm("/a%7eb%2D%5f").as_deref(), Ok("/a~b-_"));
        assert_eq!(norm("/caf%c3%a9").as_deref(), Ok("/caf%C3%A9"));
        assert_eq!(norm("/a%20b%3f").as_deref(), Ok("/a%20b%3F"));
        // `%25` stays: decoding it would make a new escape of the text after it.
        assert_eq!(norm("/a%252e%252e").as_deref(), Ok("/a%252e%252e"));
    }

    #[test]
    fn bad_escapes_nul_and_encoded_slashes() {
        for p in ["/a%", "/a%2", "/a%zz", "/a%g1/b"] {
            assert_eq!(norm(p), Err(PathError::BadEscape), "{p}");
        }
        assert_eq!(norm("/a%00b"), Err(PathError::Nul));
        for p in ["/a%2Fb", "/a%2fb", "/a%5Cb", "/public/..%2Fadmin"] {
            assert_eq!(norm(p), Err(PathError::EscapedSlash), "{p}");
        }
        assert_eq!(keep("/a%2fb/c").as_deref(), Ok("/a%2Fb/c"));
        assert_eq!(
            keep("/public/..%2Fadmin").as_deref(),
            Ok("/public/..%2Fadmin")
        );
        assert_eq!(keep("/a%2f../b").as_deref(), Ok("/a%2F../b"));
        assert_eq!(keep("/a%5c").as_deref(), Ok("/a%5C"));
    }

    #[test]
    fn dot_segments_with_parameters_are_refused() {
        for p in ["/public/..;/admin", "/a/.;x/b", "/a/%2e%2e;/b"] {
            assert_eq!(norm(p), Err(PathError::DotSegmentParams), "{p}");
        }
        assert_eq!(norm("/a/..b;/c").as_deref(), Ok("/a/..b;/c"));
    }

    #[test]
    fn not_absolute() {
        assert_eq!(norm("a/b"), Err(PathError::NotAbsolute));
        assert_eq!(norm(""), Err(PathError::NotAbsolute));
    }

    #[test]
    fn normalizing_twice_changes_nothing() {
        for p in [
            "/public/%2e%2e/admin",
            "//a/./b/../c//",
            "/caf%c3%a9/%61",
            "/a/b/..",
            "/a%2fb",
        ] {
            for f in [norm, keep] {
                if let Ok(once) = f(p) {
                    assert_eq!(f(&once).as_deref(), Ok(once.as_str()), "{p}");
                }
            }
        }
    }
}
