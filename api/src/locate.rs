//! Maps field paths (`services[0].routes[1].timeout`) to positions in a YAML
//! text and back, so every configuration error can name both the field and
//! its line. Paths use the keys as written in the file (lowerCamelCase).

use serde_saphyr::granit_parser::{Event, Parser};

/// A position in a source text; line and column are 1-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

/// Every node of a YAML document with its path and position.
#[derive(Debug, Default, Clone)]
pub struct PathIndex {
    entries: Vec<(String, Position)>,
}

enum Frame {
    Map { path: String, key: Option<String> },
    Seq { path: String, next: usize },
}

impl PathIndex {
    /// Indexes the first document of `text`. A text that fails to parse
    /// yields the entries read before the failure (the parse error itself is
    /// reported by the deserializer).
    pub fn build(text: &str) -> Self {
        let mut entries = Vec::new();
        let mut stack: Vec<Frame> = Vec::new();
        for item in Parser::new_from_str(text) {
            let Ok((event, span)) = item else { break };
            let pos = Position {
                line: span.start.line(),
                column: span.start.col() + 1,
            };
            match event {
                Event::DocumentEnd => break,
                Event::Scalar(value, ..) => {
                    // A scalar is a key when the enclosing map waits for one.
                    if let Some(Frame::Map { path, key }) = stack.last_mut()
                        && key.is_none()
                    {
                        let child = join_key(path, &value);
                        entries.push((child, pos));
                        *key = Some(value.into_owned());
                        continue;
                    }
                    let path = next_child_path(&mut stack);
                    if !entries.iter().any(|(p, _)| *p == path) {
                        entries.push((path, pos));
                    }
                }
                Event::MappingStart(..) | Event::SequenceStart(..) => {
                    let path = next_child_path(&mut stack);
                    if !entries.iter().any(|(p, _)| *p == path) {
                        entries.push((path.clone(), pos));
                    }
                    stack.push(if matches!(event, Event::MappingStart(..)) {
                        Frame::Map { path, key: None }
                    } else {
                        Frame::Seq { path, next: 0 }
                    });
                }
                Event::MappingEnd | Event::SequenceEnd => {
                    stack.pop();
                }
                Event::Alias(..) => {
                    next_child_path(&mut stack);
                }
                _ => {}
            }
        }
        Self { entries }
    }

    /// The position of the field at `path` (its key), or of the nearest
    /// enclosing field that exists in the text (a missing field is reported
    /// at the object that lacks it).
    pub fn position(&self, path: &str) -> Option<Position> {
        let mut p = path;
        loop {
            if let Some((_, pos)) = self.entries.iter().find(|(q, _)| q == p) {
                return Some(*pos);
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
        }
    }
}

fn join_key(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

/// The path of the value that comes next in the innermost collection, and
/// advances that collection past it.
fn next_child_path(stack: &mut [Frame]) -> String {
    match stack.last_mut() {
        None => String::new(),
        Some(Frame::Map { path, key }) => match key.take() {
            Some(k) => join_key(path, &k),
            // A complex (non-scalar) key: give it a path no field can have.
            None => format!("{path}.?"),
        },
        Some(Frame::Seq { path, next }) => {
            let p = format!("{path}[{next}]");
            *next += 1;
            p
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "a: 1\nlist:\n  - name: x\n    inner: {k: v}\n  - name: y\nflow: [1, 2]\n";

    #[test]
    fn finds_keys_items_and_nested_fields() {
        let idx = PathIndex::build(DOC);
        let at = |p| idx.position(p).map(|p| (p.line, p.column));
        assert_eq!(at("a"), Some((1, 1)));
        assert_eq!(at("list"), Some((2, 1)));
        assert_eq!(at("list[0]"), Some((3, 5)));
        assert_eq!(at("list[0].name"), Some((3, 5)));
        assert_eq!(at("list[0].inner.k"), Some((4, 13)));
        assert_eq!(at("list[1].name"), Some((5, 5)));
        assert_eq!(at("flow[1]"), Some((6, 11)));
    }

    #[test]
    fn missing_field_falls_back_to_its_parent() {
        let idx = PathIndex::build(DOC);
        assert_eq!(idx.position("list[1].weight").unwrap().line, 5);
        assert_eq!(idx.position("nothing.here"), None);
    }

    #[test]
    fn broken_yaml_keeps_what_was_read() {
        let idx = PathIndex::build("a: 1\nb: [unclosed\n");
        assert!(idx.position("a").is_some());
    }
}
