//! Reading typed objects from YAML the way Kubernetes does (sigs.k8s.io/yaml):
//! the text becomes a JSON value, and the object is read from the value.
//! A YAML scalar therefore has its JSON type (`port: "80"` is a string,
//! `version: 7` a number), exactly as `kubectl apply` sends it.
//!
//! It is also what keeps the build small: serde-saphyr's deserializer is
//! instantiated once, for [`serde_json::Value`], in this crate, instead of
//! once per resource type in every crate that reads YAML (that was 40 % of
//! the control plane's generated code; BENCHMARKS.md, "Build time").
//!
//! Errors carry the field path (`spec.ports[0].port`) and, through a
//! [`PathIndex`] of the text, the line and column of the field.

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::locate::{PathIndex, Position};

/// Why a YAML text could not be read as the wanted type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.render())]
pub struct YamlError {
    /// Field path as written (`spec.ports[0].port`); empty for the document
    /// as a whole or for text that is not YAML.
    pub path: String,
    /// Where the field (or the syntax error) is, 1-based.
    pub position: Option<Position>,
    /// What is wrong, without position or path.
    pub message: String,
}

impl YamlError {
    fn render(&self) -> String {
        let mut s = String::new();
        if let Some(p) = self.position {
            s.push_str(&format!("line {} column {}: ", p.line, p.column));
        }
        if !self.path.is_empty() {
            s.push_str(&self.path);
            s.push_str(": ");
        }
        s.push_str(&self.message);
        s
    }
}

/// A YAML document as a JSON value (anchors and aliases resolved).
pub fn to_value(text: &str) -> Result<Value, YamlError> {
    serde_saphyr::from_str(text).map_err(|e| YamlError {
        path: String::new(),
        position: e.location().map(|l| Position {
            line: l.line() as usize,
            column: l.column() as usize,
        }),
        message: first_line(&e.to_string()),
    })
}

/// Reads `T` from a YAML document.
pub fn from_str<T: DeserializeOwned>(text: &str) -> Result<T, YamlError> {
    from_value(&to_value(text)?, text)
}

/// Reads `T` from the `value` of the YAML `text`; the text only locates
/// errors.
pub fn from_value<T: DeserializeOwned>(value: &Value, text: &str) -> Result<T, YamlError> {
    serde_path_to_error::deserialize(value).map_err(|e| typed_error(e, text))
}

/// Reads `T` from the `value` of the YAML `text`, and names every field of
/// the value that `T` does not have (by path, in document order), for
/// callers that refuse what they would otherwise drop.
pub fn from_value_with_unknown<T: DeserializeOwned>(
    value: &Value,
    text: &str,
) -> Result<(T, Vec<String>), YamlError> {
    let mut unknown = Vec::new();
    let mut track = serde_path_to_error::Track::new();
    let de = serde_path_to_error::Deserializer::new(value, &mut track);
    let result =
        serde_ignored::deserialize(de, |path| unknown.push(ignored_path(&path.to_string())));
    match result {
        Ok(t) => Ok((t, unknown)),
        Err(inner) => Err(typed_error(
            serde_path_to_error::Error::new(track.path(), inner),
            text,
        )),
    }
}

fn typed_error(e: serde_path_to_error::Error<serde_json::Error>, text: &str) -> YamlError {
    let path = match e.path().to_string() {
        p if p == "." => String::new(),
        p => p,
    };
    let position = PathIndex::build(text).position(&path);
    YamlError {
        path,
        position,
        message: e.into_inner().to_string(),
    }
}

/// serde_ignored's path (`spec.rules.0.x`) written as ours (`spec.rules[0].x`).
fn ignored_path(dotted: &str) -> String {
    let mut out = String::new();
    for seg in dotted.split('.') {
        if !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit()) {
            out.push_str(&format!("[{seg}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(seg);
        }
    }
    out
}

/// serde-saphyr renders a snippet after the first line; keep the sentence
/// without its own "line L column C" prefix, since we print ours.
fn first_line(s: &str) -> String {
    let line = s.lines().next().unwrap_or(s).trim();
    let line = line.strip_prefix("error: ").unwrap_or(line);
    match line.find(": ") {
        Some(i) if line.starts_with("line ") => line[i + 2..].to_string(),
        _ => line.to_string(),
    }
}

/// The value at a field path of ours (`a.b[2].c`), if the document has one.
pub fn value_at<'v>(value: &'v Value, path: &str) -> Option<&'v Value> {
    let mut v = value;
    for seg in path.split('.').filter(|s| !s.is_empty()) {
        let (key, indexes) = match seg.find('[') {
            Some(i) => (&seg[..i], &seg[i..]),
            None => (seg, ""),
        };
        if !key.is_empty() {
            v = v.get(key)?;
        }
        for ix in indexes.split('[').filter(|s| !s.is_empty()) {
            v = v.get(ix.strip_suffix(']')?.parse::<usize>().ok()?)?;
        }
    }
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Port {
        port: u16,
        name: Option<String>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    struct Spec {
        ports: Vec<Port>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    struct Doc {
        spec: Spec,
    }

    const DOC: &str = "spec:\n  ports:\n    - port: 80\n    - port: 443\n      name: https\n";

    #[test]
    fn reads_a_typed_object() {
        let d: Doc = from_str(DOC).unwrap();
        assert_eq!(d.spec.ports[1].port, 443);
        assert_eq!(d.spec.ports[1].name.as_deref(), Some("https"));
    }

    #[test]
    fn a_type_error_names_the_field_and_its_line() {
        let e = from_str::<Doc>(&DOC.replace("443", "https")).unwrap_err();
        assert_eq!(e.path, "spec.ports[1].port");
        assert_eq!(e.position.map(|p| p.line), Some(4));
        assert!(e.message.contains("expected u16"), "{e}");
        assert!(
            e.to_string()
                .starts_with("line 4 column 7: spec.ports[1].port: ")
        );
    }

    #[test]
    fn an_unknown_field_is_named_at_its_own_line() {
        let e = from_str::<Doc>(&DOC.replace("name: https", "nmae: https")).unwrap_err();
        assert_eq!(e.path, "spec.ports[1].nmae");
        assert_eq!(e.position.map(|p| p.line), Some(5));
    }

    #[test]
    fn scalars_have_their_json_types_as_in_kubernetes() {
        // `name: 7` is a number, not the string "7": refused, as kubectl's
        // apply refuses it.
        let e = from_str::<Doc>(&DOC.replace("https", "7")).unwrap_err();
        assert_eq!(e.path, "spec.ports[1].name");
        let d: Doc = from_str(&DOC.replace("https", "\"7\"")).unwrap();
        assert_eq!(d.spec.ports[1].name.as_deref(), Some("7"));
    }

    #[test]
    fn syntax_errors_have_a_position_and_no_path() {
        let e = from_str::<Doc>("spec: [unclosed\n").unwrap_err();
        assert!(e.path.is_empty());
        assert!(e.position.is_some(), "{e}");
    }

    #[test]
    fn lists_the_fields_a_type_does_not_have() {
        #[derive(Debug, Deserialize)]
        struct Loose {
            #[allow(dead_code)] // read only to be ignored around
            spec: Value,
        }
        let text = "spec: {a: 1}\nextra: {b: [1, {c: 2}]}\nmore: 1\n";
        let (_, unknown) =
            from_value_with_unknown::<Loose>(&to_value(text).unwrap(), text).unwrap();
        assert_eq!(unknown, ["extra", "more"]);
        #[derive(Debug, Deserialize)]
        struct Nested {
            #[allow(dead_code)] // read only to be ignored around
            extra: Inner,
        }
        #[derive(Debug, Deserialize)]
        struct Inner {
            #[allow(dead_code)] // read only to be ignored around
            b: Vec<Value>,
        }
        let text = "extra: {b: [1], x: {c: 2}}\n";
        let (_, unknown) =
            from_value_with_unknown::<Nested>(&to_value(text).unwrap(), text).unwrap();
        assert_eq!(unknown, ["extra.x"]);
        let e =
            from_value_with_unknown::<Nested>(&to_value("extra: {b: 1}").unwrap(), "").unwrap_err();
        assert_eq!(e.path, "extra.b");
    }

    #[test]
    fn ignored_paths_are_written_as_ours() {
        assert_eq!(
            ignored_path("spec.rules.0.from.1.x"),
            "spec.rules[0].from[1].x"
        );
    }

    #[test]
    fn finds_the_value_at_a_path() {
        let v = to_value(DOC).unwrap();
        assert_eq!(
            value_at(&v, "spec.ports[1].name"),
            Some(&Value::from("https"))
        );
        assert_eq!(value_at(&v, "spec.ports[2]"), None);
        assert_eq!(value_at(&v, ""), Some(&v));
    }
}
