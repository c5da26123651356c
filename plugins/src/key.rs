//! The one grammar of request keys in the config: `ip` (the client's address), `path`,
//! `route` (one key for the whole route), `header:NAME` and `claim:NAME` (of the verified
//! token). Each setting takes the forms that make sense for it: a consistent hash takes
//! `header:`, `ip` and `path`; a rate limit `ip`, `route`, `header:` and `claim:`.

use http::HeaderName;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    Ip,
    Path,
    Route,
    Header(HeaderName),
    Claim(String),
}

/// The forms a key may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    Ip,
    Path,
    Route,
    Header,
    Claim,
}

impl Form {
    fn text(self) -> &'static str {
        match self {
            Form::Ip => "ip",
            Form::Path => "path",
            Form::Route => "route",
            Form::Header => "header:NAME",
            Form::Claim => "claim:NAME",
        }
    }
}

impl Key {
    /// Parse `s` as one of `forms`; the error lists them.
    pub fn parse(s: &str, forms: &[Form]) -> Result<Key, String> {
        let (form, key) = if let Some(name) = s.strip_prefix("header:") {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("invalid header name {name:?}"))?;
            (Form::Header, Key::Header(name))
        } else if let Some(claim) = s.strip_prefix("claim:").filter(|c| !c.is_empty()) {
            (Form::Claim, Key::Claim(claim.to_string()))
        } else {
            match s {
                "ip" => (Form::Ip, Key::Ip),
                "path" => (Form::Path, Key::Path),
                "route" => (Form::Route, Key::Route),
                _ => return Err(unknown(s, forms)),
            }
        };
        if forms.contains(&form) {
            Ok(key)
        } else {
            Err(unknown(s, forms))
        }
    }
}

fn unknown(s: &str, forms: &[Form]) -> String {
    let names: Vec<&str> = forms.iter().map(|f| f.text()).collect();
    let list = match names.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        Some((last, _)) => last.to_string(),
        None => String::new(),
    };
    format!("unknown key {s:?}: {list}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &[Form] = &[Form::Header, Form::Ip, Form::Path];

    #[test]
    fn each_use_takes_its_forms() {
        assert_eq!(Key::parse("ip", HASH), Ok(Key::Ip));
        assert_eq!(
            Key::parse("header:X-User", HASH),
            Ok(Key::Header(HeaderName::from_static("x-user")))
        );
        assert_eq!(
            Key::parse("claim:sub", HASH),
            Err("unknown key \"claim:sub\": header:NAME, ip or path".into())
        );
        assert_eq!(
            Key::parse("claim:sub", &[Form::Claim]),
            Ok(Key::Claim("sub".into()))
        );
        assert!(Key::parse("claim:", &[Form::Claim]).is_err());
        assert_eq!(
            Key::parse("header:a b", HASH),
            Err("invalid header name \"a b\"".into())
        );
        assert_eq!(
            Key::parse("cookie", &[Form::Ip]),
            Err("unknown key \"cookie\": ip".into())
        );
    }
}
