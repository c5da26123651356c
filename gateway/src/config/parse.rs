//! YAML text -> [`Config`], with every unknown key and bad value reported in one run.
//!
//! A file that parses is read by `serde_yaml` directly. One that does not is read again as a
//! YAML tree and deserialized from it, repeatedly: each fault is recorded with its YAML path
//! (`serde_path_to_error`), taken out of the tree (the unknown key, or the bad value, so its
//! default applies), and the rest is read again, so a file with three typos reports three
//! faults, not one per round of edits. The line of each fault comes from a probe: the text is
//! deserialized once more with a seed that walks to the faulty node and fails there, and
//! `serde_yaml` names where that was.
//!
//! It stops at a fault it cannot take out without inventing another (a missing required key,
//! a bad element of a list, whose removal would shift the indices of the next faults).

use super::{Config, ConfigError, ConfigErrors};
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_yaml::Value;
use std::fmt;

/// Faults reported from one file at most.
const MAX_FAULTS: usize = 50;

/// A config file's text; a file that cannot be read is a fault of the whole document.
pub fn read_text(path: &std::path::Path) -> Result<String, ConfigErrors> {
    std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError::new(
            "",
            format!("cannot read {}: {e}", path.display()),
        )])
    })
}

/// Parse YAML text. Faults name their YAML path and line; every unknown key and bad value
/// is reported, not only the first.
pub fn parse(text: &str) -> Result<Config, ConfigErrors> {
    let first = match serde_yaml::from_str::<Config>(text) {
        Ok(c) => return Ok(c),
        Err(e) => e,
    };
    // Not YAML at all (or not a tree we can walk): the parser's one error.
    let Ok(mut tree) = serde_yaml::from_str::<Value>(text) else {
        return Err(ConfigErrors(vec![from_yaml_error(&first)]));
    };
    let _ = tree.apply_merge();
    let mut errs: Vec<ConfigError> = Vec::new();
    while errs.len() < MAX_FAULTS {
        let e = match serde_path_to_error::deserialize::<_, Config>(&tree) {
            Ok(_) => break,
            Err(e) => e,
        };
        let message = e.inner().to_string();
        let mut segs = segments(&e.path().to_string());
        let unknown = unknown_field(&message);
        // The line of the unknown key itself, or of the bad value.
        let at = line_of(text, &segs);
        // An unknown key is named at the map that holds it, as serde_yaml does.
        if unknown.is_some_and(|k| segs.last() == Some(&Seg::Key(k.to_string()))) {
            segs.pop();
        }
        let path = display(&segs);
        let shown = match at {
            Some((line, column)) => format!("{message} at line {line} column {column}"),
            None => message.clone(),
        };
        if errs.iter().any(|x| x.path == path && x.message == shown) {
            break;
        }
        errs.push(ConfigError::new(path, shown));
        let removed = match unknown {
            Some(key) => remove(&mut tree, &segs, Some(key)),
            None if message.starts_with("missing field") => false,
            None => remove(&mut tree, &segs, None),
        };
        if !removed {
            break;
        }
    }
    if errs.is_empty() {
        errs.push(from_yaml_error(&first));
    }
    Err(ConfigErrors(errs))
}

/// serde_yaml words its errors as `PATH: MESSAGE at line L column C`.
fn from_yaml_error(e: &serde_yaml::Error) -> ConfigError {
    let text = e.to_string();
    match text.split_once(": ") {
        Some((path, msg)) if !path.contains(' ') && !path.is_empty() => ConfigError::new(path, msg),
        _ => ConfigError::new("", text),
    }
}

fn unknown_field(message: &str) -> Option<&str> {
    message
        .strip_prefix("unknown field `")?
        .split('`')
        .next()
        .filter(|k| !k.is_empty())
}

#[derive(Debug, Clone, PartialEq)]
enum Seg {
    Key(String),
    Index(usize),
}

/// `routes[3].match.path` -> routes, 3, match, path.
fn segments(path: &str) -> Vec<Seg> {
    let mut out = Vec::new();
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let mut rest = part;
        if let Some(i) = rest.find('[') {
            if i > 0 {
                out.push(Seg::Key(rest[..i].to_string()));
            }
            rest = &rest[i..];
            while let Some(end) = rest.find(']') {
                match rest[1..end].parse() {
                    Ok(n) => out.push(Seg::Index(n)),
                    Err(_) => out.push(Seg::Key(rest[..=end].to_string())),
                }
                rest = &rest[end + 1..];
            }
        } else {
            out.push(Seg::Key(rest.to_string()));
        }
    }
    out
}

/// The segments as a YAML path again: `routes[3].match`.
fn display(segs: &[Seg]) -> String {
    let mut out = String::new();
    for s in segs {
        match s {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

fn key_is(k: &Value, want: &str) -> bool {
    match k {
        Value::String(s) => s == want,
        Value::Number(n) => n.to_string() == want,
        Value::Bool(b) => b.to_string() == want,
        _ => false,
    }
}

/// Take the fault out of the tree: the key `unknown` of the map at `segs`, or the value at
/// `segs` itself (a key of its map). A list element is not removed: that would shift the
/// paths of the faults after it.
fn remove(tree: &mut Value, segs: &[Seg], unknown: Option<&str>) -> bool {
    let (parent, last) = match unknown {
        Some(k) => (segs, Seg::Key(k.to_string())),
        None => match segs.split_last() {
            Some((last, parent)) => (parent, last.clone()),
            None => return false,
        },
    };
    let mut node = tree;
    for s in parent {
        node = match (s, node) {
            (Seg::Key(k), Value::Mapping(m)) => {
                match m.iter_mut().find(|(key, _)| key_is(key, k)) {
                    Some((_, v)) => v,
                    None => return false,
                }
            }
            (Seg::Index(i), Value::Sequence(v)) => match v.get_mut(*i) {
                Some(v) => v,
                None => return false,
            },
            (_, Value::Tagged(t)) => &mut t.value,
            _ => return false,
        };
    }
    match (last, node) {
        (Seg::Key(k), Value::Mapping(m)) => {
            let found = m.keys().find(|key| key_is(key, &k)).cloned();
            found.is_some_and(|key| m.remove(&key).is_some())
        }
        _ => false,
    }
}

/// Where the node at `segs` starts in `text`: (line, column), as serde_yaml counts them.
fn line_of(text: &str, segs: &[Seg]) -> Option<(usize, usize)> {
    let err = match Probe(segs).deserialize(serde_yaml::Deserializer::from_str(text)) {
        Ok(()) => return None,
        Err(e) => e,
    };
    if !err.to_string().contains(HERE) {
        return None;
    }
    err.location().map(|l| (l.line(), l.column()))
}

const HERE: &str = "gateway-config-probe-reached";

/// Walks to one node of the document and fails there, so the error carries its location.
struct Probe<'a>(&'a [Seg]);

impl<'de> DeserializeSeed<'de> for Probe<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        match self.0.split_first() {
            // Fail while reading the node itself, so the error carries the node's position.
            None => d.deserialize_any(Reached),
            Some((Seg::Key(k), rest)) => d.deserialize_map(InMap(k, rest)),
            Some((Seg::Index(i), rest)) => d.deserialize_seq(InSeq(*i, rest)),
        }
    }
}

/// Refuses whatever node it is given.
struct Reached;

impl<'de> Visitor<'de> for Reached {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(HERE)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Err(E::custom(HERE))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Err(E::custom(HERE))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Err(E::custom(HERE))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Err(E::custom(HERE))
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Err(E::custom(HERE))
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Err(E::custom(HERE))
    }
    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        Err(E::custom(HERE))
    }
    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(de::Error::custom(HERE))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(de::Error::custom(HERE))
    }
    fn visit_enum<A: de::EnumAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(de::Error::custom(HERE))
    }
}

struct InMap<'a>(&'a str, &'a [Seg]);

impl<'de> Visitor<'de> for InMap<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a mapping")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<Value>()? {
            if key_is(&key, self.0) {
                return map.next_value_seed(Probe(self.1));
            }
            map.next_value::<IgnoredAny>()?;
        }
        Ok(())
    }
}

struct InSeq<'a>(usize, &'a [Seg]);

impl<'de> Visitor<'de> for InSeq<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a sequence")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        for _ in 0..self.0 {
            if seq.next_element::<IgnoredAny>()?.is_none() {
                return Ok(());
            }
        }
        seq.next_element_seed(Probe(self.1))?;
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_unknown_key_and_bad_value_with_its_line() {
        let text = "\
server:
  thredas: 4
  listen: [\"127.0.0.1:8080\"]
  paths: { escaped_slashes: maybe }
upstreams:
  u:
    targets: [{ addr: \"127.0.0.1:9001\" }]
    lb: roundrobin
routes:
  - name: a
    upstream: u
    match: { path: { prefx: / } }
";
        let errs = parse(text).unwrap_err().0;
        let shown: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert_eq!(errs.len(), 4, "{shown:#?}");
        assert!(
            shown[0].starts_with("server: unknown field `thredas`"),
            "{shown:#?}"
        );
        assert!(shown[0].ends_with("at line 2 column 12"), "{shown:#?}");
        let all = shown.join("\n");
        for want in [
            "server.paths.escaped_slashes: unknown variant `maybe`",
            "upstreams.u.lb: unknown variant `roundrobin`",
            "at line 8 column 9",
            "routes[0].match.path: unknown field `prefx`",
            "at line 12 column 29",
        ] {
            assert!(all.contains(want), "missing {want:?} in:\n{all}");
        }
    }

    #[test]
    fn a_good_file_and_a_syntax_error() {
        assert!(parse("routes: []\n").is_ok());
        let errs = parse("server: [unclosed\n").unwrap_err().0;
        assert_eq!(errs.len(), 1);
    }

    #[test]
    fn paths_split_into_segments() {
        assert_eq!(
            display(&segments("routes[3].match.path")),
            "routes[3].match.path"
        );
        assert_eq!(
            segments("routes[3].match.path"),
            vec![
                Seg::Key("routes".into()),
                Seg::Index(3),
                Seg::Key("match".into()),
                Seg::Key("path".into())
            ]
        );
        assert!(segments("").is_empty());
    }
}
