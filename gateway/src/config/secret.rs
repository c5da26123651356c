//! Config values that are credentials. Every key of the file that holds one is of a type
//! here, whose serialization (the admin API's `/admin/config`) and `Debug` form (any log
//! line that prints a config) never show it: the rule lives in the type, so a new secret key
//! cannot forget it. Code that needs the value asks for it with `expose()`.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

pub const REDACTED: &str = "<redacted>";

/// A secret string (a token, a password): shown as `<redacted>`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(REDACTED)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

/// A URL that may carry credentials in its userinfo (`redis://:PASSWORD@host`) or its query
/// (`?api_key=...`): shown with those parts redacted, the scheme, host, port and path kept,
/// so an operator still sees where it points.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl(String);

impl SecretUrl {
    pub fn new(value: impl Into<String>) -> SecretUrl {
        SecretUrl(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with its userinfo password (or a lone user, often a token) and its query
    /// values replaced.
    pub fn redacted(&self) -> String {
        let url = self.0.as_str();
        let (scheme, rest) = match url.find("://") {
            Some(i) => url.split_at(i + 3),
            None => ("", url),
        };
        // Userinfo ends at the last `@` before the query; looking past a `/` too keeps a
        // password with an unescaped `/` hidden (a path with an `@` is over-redacted).
        let end = rest.find(['?', '#']).unwrap_or(rest.len());
        let mut out = String::with_capacity(url.len());
        out.push_str(scheme);
        let tail = match rest[..end].rfind('@') {
            Some(at) => {
                if let Some((user, _)) = rest[..at].split_once(':') {
                    out.push_str(user);
                    out.push(':');
                }
                out.push_str(REDACTED);
                &rest[at..]
            }
            None => rest,
        };
        let tail = tail.split('#').next().unwrap_or("");
        match tail.split_once('?') {
            Some((path, query)) => {
                out.push_str(path);
                out.push('?');
                for (i, pair) in query.split('&').enumerate() {
                    if i > 0 {
                        out.push('&');
                    }
                    let key = pair.split('=').next().unwrap_or("");
                    out.push_str(key);
                    out.push('=');
                    out.push_str(REDACTED);
                }
            }
            None => out.push_str(tail),
        }
        out
    }
}

impl<'de> Deserialize<'de> for SecretUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(SecretUrl)
    }
}

impl Serialize for SecretUrl {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.redacted())
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_show() {
        let s = Secret::new("hunter2");
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"<redacted>\"");
        assert!(!format!("{s:?}").contains("hunter2"));
        assert_eq!(s.expose(), "hunter2");
        let back: Secret = serde_yaml::from_str("hunter2").unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn urls_keep_where_they_point() {
        for (url, shown) in [
            (
                "redis://:pw@127.0.0.1:6379/0",
                "redis://:<redacted>@127.0.0.1:6379/0",
            ),
            ("redis://user:pw@h", "redis://user:<redacted>@h"),
            ("https://tok@h/p", "https://<redacted>@h/p"),
            ("redis://127.0.0.1:6379", "redis://127.0.0.1:6379"),
            (
                "https://h/jwks?api_key=k1&x=2#frag",
                "https://h/jwks?api_key=<redacted>&x=<redacted>",
            ),
            ("https://a:b@h?k=v@x", "https://a:<redacted>@h?k=<redacted>"),
            ("redis://:p/w@h:1", "redis://:<redacted>@h:1"),
        ] {
            let u = SecretUrl::new(url);
            assert_eq!(u.redacted(), shown, "{url}");
            assert_eq!(serde_json::to_value(&u).unwrap(), shown);
            assert_eq!(format!("{u}"), shown);
            assert_eq!(u.expose(), url);
        }
    }
}
