//! JSON Patch ([RFC 6902]) as injection produces it: only `add` operations, which is all a
//! mutating admission webhook needs, plus applying them to a document for the offline
//! `trellis inject`. One list of operations serves both, so the webhook and the CLI cannot
//! drift apart.
//!
//! [RFC 6902]: https://www.rfc-editor.org/rfc/rfc6902

use serde::Serialize;
use serde_json::Value;

/// One `add` operation: `path` is a JSON Pointer ([RFC 6901]); a final `-` appends to an
/// array.
///
/// [RFC 6901]: https://www.rfc-editor.org/rfc/rfc6901
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Add {
    op: &'static str,
    pub path: String,
    pub value: Value,
}

impl Add {
    /// An `add` of `value` at `path`.
    pub fn new(path: impl Into<String>, value: Value) -> Self {
        Self {
            op: "add",
            path: path.into(),
            value,
        }
    }
}

/// Escapes one reference token for a JSON Pointer (RFC 6901 §3: `~` → `~0`, `/` → `~1`).
pub fn escape(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

fn unescape(token: &str) -> String {
    token.replace("~1", "/").replace("~0", "~")
}

/// Why a patch did not apply; only a bug in the planner or a document changed between
/// planning and applying can cause one.
#[derive(Debug, thiserror::Error)]
#[error("cannot apply JSON patch at {path}: {reason}")]
pub struct PatchError {
    path: String,
    reason: &'static str,
}

/// Applies `ops` in order, as RFC 6902 §4.1 defines `add`: the parent must exist; an object
/// member is set, an array index inserts, `-` appends.
pub fn apply(doc: &mut Value, ops: &[Add]) -> Result<(), PatchError> {
    for op in ops {
        let fail = |reason| PatchError {
            path: op.path.clone(),
            reason,
        };
        let Some(rest) = op.path.strip_prefix('/') else {
            // The empty pointer replaces the whole document.
            if op.path.is_empty() {
                *doc = op.value.clone();
                continue;
            }
            return Err(fail("a JSON Pointer starts with '/'"));
        };
        let tokens: Vec<String> = rest.split('/').map(unescape).collect();
        let (last, parents) = tokens.split_last().ok_or_else(|| fail("empty pointer"))?;
        let mut target = &mut *doc;
        for token in parents {
            target = match target {
                Value::Object(map) => map.get_mut(token).ok_or_else(|| fail("no such member"))?,
                Value::Array(items) => {
                    let index: usize = token.parse().map_err(|_| fail("not an array index"))?;
                    items
                        .get_mut(index)
                        .ok_or_else(|| fail("index out of range"))?
                }
                _ => return Err(fail("parent is neither an object nor an array")),
            };
        }
        match target {
            Value::Object(map) => {
                map.insert(last.clone(), op.value.clone());
            }
            Value::Array(items) if last == "-" => items.push(op.value.clone()),
            Value::Array(items) => {
                let index: usize = last.parse().map_err(|_| fail("not an array index"))?;
                if index > items.len() {
                    return Err(fail("index out of range"));
                }
                items.insert(index, op.value.clone());
            }
            _ => return Err(fail("parent is neither an object nor an array")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn add_follows_rfc_6902() {
        let mut doc = json!({"metadata": {}, "spec": {"containers": [{"name": "app"}]}});
        apply(
            &mut doc,
            &[
                Add::new(
                    format!("/metadata/{}", escape("trellis.dev/x~y")),
                    json!("v"),
                ),
                Add::new("/spec/containers/-", json!({"name": "b"})),
                Add::new("/spec/containers/0", json!({"name": "a"})),
            ],
        )
        .expect("applies");
        assert_eq!(
            doc,
            json!({"metadata": {"trellis.dev/x~y": "v"},
                   "spec": {"containers": [{"name": "a"}, {"name": "app"}, {"name": "b"}]}})
        );
        assert_eq!(escape("a/b~c"), "a~1b~0c");
    }

    #[test]
    fn missing_parents_are_errors_not_panics() {
        let mut doc = json!({"spec": []});
        for path in ["/nope/x", "/spec/7", "/spec/x", "no-slash"] {
            assert!(
                apply(&mut doc, &[Add::new(path, json!(1))]).is_err(),
                "{path}"
            );
        }
    }

    #[test]
    fn serialises_as_a_json_patch() {
        let text = serde_json::to_string(&[Add::new("/a", json!(1))]).expect("json");
        assert_eq!(text, r#"[{"op":"add","path":"/a","value":1}]"#);
    }
}
