//! Writing Kubernetes objects as YAML that every YAML reader takes the same way.
//!
//! Kubernetes reads YAML 1.1 (go-yaml), where plain `yes`, `no`, `on`, `off`, `y`, `n` are
//! booleans and `1_000` is a number; generic YAML 1.2 emitters (serde_yaml) leave such
//! strings unquoted, and the API server then refuses `value: yes` in an env var. So strings
//! are written plain only when they are unmistakably strings in both versions; everything
//! else is double-quoted (a JSON string is a valid YAML double-quoted scalar), and
//! multi-line text (config files in ConfigMaps) is written as a literal block.

use std::fmt::Write as _;

use serde_json::Value;

/// Words YAML 1.1 or 1.2 resolves to a boolean or null when plain.
const RESERVED: [&str; 12] = [
    "y", "n", "yes", "no", "on", "off", "true", "false", "null", "~", "<<", "=",
];

/// Whether `text` can be written as a plain scalar and read back as the same string by
/// YAML 1.1 and 1.2 readers.
fn plain_ok(text: &str) -> bool {
    let Some(first) = text.chars().next() else {
        return false;
    };
    (first.is_ascii_alphabetic() || first == '/')
        && !RESERVED.contains(&text.to_ascii_lowercase().as_str())
        && !text.ends_with(' ')
        && !text.ends_with(':')
        && !text.contains(": ")
        && !text.contains(" #")
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || " ._/:@-+=,".contains(c))
}

/// Whether `text` can be a literal block (`|`): several lines of printable text whose
/// first line does not start with a space (which would need an indentation indicator).
fn block_ok(text: &str) -> bool {
    text.contains('\n')
        && !text.starts_with([' ', '\n'])
        && text
            .chars()
            .all(|c| c == '\n' || (!c.is_control() && c != '\u{feff}'))
        && text.lines().all(|l| !l.ends_with(' '))
}

fn scalar(out: &mut String, text: &str, indent: usize) {
    if plain_ok(text) {
        out.push_str(text);
    } else if block_ok(text) {
        let trailing = text.len() - text.trim_end_matches('\n').len();
        out.push_str(match trailing {
            0 => "|-",
            1 => "|",
            _ => "|+",
        });
        for line in text.trim_end_matches('\n').split('\n') {
            out.push('\n');
            if !line.is_empty() {
                out.push_str(&" ".repeat(indent));
                out.push_str(line);
            }
        }
        for _ in 1..trailing {
            out.push('\n');
        }
    } else {
        out.push_str(&Value::String(text.to_owned()).to_string());
    }
}

fn is_collection(value: &Value) -> bool {
    match value {
        Value::Object(map) => !map.is_empty(),
        Value::Array(items) => !items.is_empty(),
        _ => false,
    }
}

/// Writes `value` at `indent`; the caller has written the key (or `- `) before it.
fn node(out: &mut String, value: &Value, indent: usize) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => {
            let _ = write!(out, "{b}");
        }
        Value::Number(n) => {
            let _ = write!(out, "{n}");
        }
        Value::String(s) => scalar(out, s, indent),
        Value::Array(items) if items.is_empty() => out.push_str("[]"),
        Value::Object(map) if map.is_empty() => out.push_str("{}"),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push('\n');
                    out.push_str(&" ".repeat(indent));
                }
                out.push_str("- ");
                node(out, item, indent + 2);
            }
        }
        Value::Object(map) => {
            for (i, (key, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push('\n');
                    out.push_str(&" ".repeat(indent));
                }
                scalar(out, key, indent);
                out.push(':');
                if is_collection(item) {
                    out.push('\n');
                    // Sequences under a key sit at the key's column, as kubectl writes them.
                    let child = if item.is_array() { indent } else { indent + 2 };
                    out.push_str(&" ".repeat(child));
                    node(out, item, child);
                } else {
                    out.push(' ');
                    node(out, item, indent + 2);
                }
            }
        }
    }
}

/// One document, ending with a newline.
pub fn to_string(value: &Value) -> String {
    let mut out = String::new();
    node(&mut out, value, 0);
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::json;

    fn round_trip(value: &Value) -> Value {
        let text = to_string(value);
        Value::deserialize(serde_yaml::Deserializer::from_str(&text))
            .unwrap_or_else(|e| panic!("{e}:\n{text}"))
    }

    #[test]
    fn ambiguous_strings_are_quoted() {
        for s in [
            "yes", "No", "on", "OFF", "y", "true", "null", "~", "8080", "0.1.0", "1_000", "0x1F",
            "", " lead", "trail ", "a: b", "a #b", "-dash", "*star", "&amp", "!tag", "%p", "@at",
            "`tick", "'q'", "\"q\"", "[x]", "{x}", "a\tb", "é",
        ] {
            let text = to_string(&json!(s));
            assert!(text.starts_with('"'), "{s:?} written as {text}");
            assert_eq!(round_trip(&json!(s)), json!(s));
        }
        for s in [
            "web",
            "trellis-ca.trellis-system.svc:8443",
            "/var/run/x",
            "hello from backend",
        ] {
            assert_eq!(to_string(&json!(s)), format!("{s}\n"));
        }
    }

    #[test]
    fn kubernetes_objects_round_trip() {
        let object = json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "x", "labels": {}, "annotations": {"a/b": "1"}},
            "data": {
                "sidecar.toml": "[ca]\naddress = \"1.2.3.4:8443\"\n\n# comment\n",
                "no-newline": "a\nb",
                "two-newlines": "a\n\n",
                "indented": "  x\ny\n",
            },
            "items": [[], [1, 2], {"k": [{"a": null, "b": [true]}]}, {}],
            "number": 1.5,
        });
        assert_eq!(round_trip(&object), object);
        let text = to_string(&object);
        assert!(text.contains("sidecar.toml: |\n    [ca]\n"), "{text}");
    }
}
