//! JSON Patch (RFC 6902) with JSON Pointers (RFC 6901), written here rather than taken from
//! the `json-patch` crate: with serde_json's `preserve_order` that crate's `remove` (and so
//! `move`) is a swap-remove that reorders the remaining properties, and its `test` compares
//! `arbitrary_precision` numbers by their text (`1.0` differs from `1`). Both matter for FHIR
//! JSON, whose property order fhirgate keeps. Operations apply to a copy, in order; the first
//! failing one fails the whole patch (RFC 6902 section 5).

use std::str::FromStr;

use rust_decimal::Decimal;
use serde_json::{Map, Value};

use super::PatchError;

/// A parsed JSON Patch document: the operations in order.
#[derive(Debug, Clone, PartialEq)]
pub struct JsonPatch {
    operations: Vec<Operation>,
}

#[derive(Debug, Clone, PartialEq)]
enum Operation {
    Add { path: Pointer, value: Value },
    Remove { path: Pointer },
    Replace { path: Pointer, value: Value },
    Move { from: Pointer, path: Pointer },
    Copy { from: Pointer, path: Pointer },
    Test { path: Pointer, value: Value },
}

impl Operation {
    fn name(&self) -> &'static str {
        match self {
            Operation::Add { .. } => "add",
            Operation::Remove { .. } => "remove",
            Operation::Replace { .. } => "replace",
            Operation::Move { .. } => "move",
            Operation::Copy { .. } => "copy",
            Operation::Test { .. } => "test",
        }
    }

    /// The JSON values this operation brings in its `value`.
    fn carried_values(&self) -> usize {
        match self {
            Operation::Add { value, .. }
            | Operation::Replace { value, .. }
            | Operation::Test { value, .. } => values_in(value),
            _ => 0,
        }
    }

    fn path(&self) -> &Pointer {
        match self {
            Operation::Add { path, .. }
            | Operation::Remove { path }
            | Operation::Replace { path, .. }
            | Operation::Move { path, .. }
            | Operation::Copy { path, .. }
            | Operation::Test { path, .. } => path,
        }
    }
}

/// How much larger than the resource and the patch together copies may make a document.
const MAX_GROWTH: usize = 4;

/// The number of JSON values in `v` (itself included).
fn values_in(v: &Value) -> usize {
    match v {
        Value::Object(o) => 1 + o.values().map(values_in).sum::<usize>(),
        Value::Array(a) => 1 + a.iter().map(values_in).sum::<usize>(),
        _ => 1,
    }
}

/// A JSON Pointer: the reference tokens, unescaped; the empty pointer is the whole document.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pointer {
    text: String,
    tokens: Vec<String>,
}

impl Pointer {
    /// RFC 6901 section 3/4: `""` or `/`-separated tokens with `~1` for `/` and `~0` for `~`.
    fn parse(text: &str) -> Result<Pointer, String> {
        if text.is_empty() {
            return Ok(Pointer {
                text: String::new(),
                tokens: Vec::new(),
            });
        }
        let Some(rest) = text.strip_prefix('/') else {
            return Err(format!(
                "`{text}` is not a JSON Pointer: it must be empty or start with `/`"
            ));
        };
        let mut tokens = Vec::new();
        for raw in rest.split('/') {
            let mut token = String::with_capacity(raw.len());
            let mut chars = raw.chars();
            while let Some(c) = chars.next() {
                if c != '~' {
                    token.push(c);
                    continue;
                }
                match chars.next() {
                    Some('0') => token.push('~'),
                    Some('1') => token.push('/'),
                    _ => {
                        return Err(format!(
                            "`{text}` is not a JSON Pointer: `~` must be followed by 0 or 1"
                        ))
                    }
                }
            }
            tokens.push(token);
        }
        Ok(Pointer {
            text: text.to_string(),
            tokens,
        })
    }

    fn split_last(&self) -> Option<(&[String], &str)> {
        let (last, parent) = self.tokens.split_last()?;
        Some((parent, last.as_str()))
    }

    fn parent_text(&self) -> String {
        match self.text.rfind('/') {
            Some(0) | None => "/".to_string(),
            Some(i) => self.text[..i].to_string(),
        }
    }
}

/// An array index token (RFC 6901 section 4: `0` or digits without a leading zero).
fn array_index(token: &str) -> Option<usize> {
    let digits = !token.is_empty() && token.bytes().all(|b| b.is_ascii_digit());
    if !digits || (token.len() > 1 && token.starts_with('0')) {
        return None;
    }
    token.parse().ok()
}

fn resolve<'a>(doc: &'a Value, tokens: &[String]) -> Option<&'a Value> {
    tokens.iter().try_fold(doc, |v, t| match v {
        Value::Object(o) => o.get(t),
        Value::Array(a) => a.get(array_index(t)?),
        _ => None,
    })
}

fn resolve_mut<'a>(doc: &'a mut Value, tokens: &[String]) -> Option<&'a mut Value> {
    tokens.iter().try_fold(doc, |v, t| match v {
        Value::Object(o) => o.get_mut(t),
        Value::Array(a) => a.get_mut(array_index(t)?),
        _ => None,
    })
}

/// The member of an operation object that names a JSON Pointer.
fn pointer_member(op: &Map<String, Value>, member: &str) -> Result<Pointer, String> {
    match op.get(member) {
        Some(Value::String(s)) => Pointer::parse(s),
        Some(_) => Err(format!("`{member}` must be a string (a JSON Pointer)")),
        None => Err(format!("the operation has no `{member}`")),
    }
}

fn value_member(op: &Map<String, Value>, name: &str) -> Result<Value, String> {
    op.get("value")
        .cloned()
        .ok_or_else(|| format!("a `{name}` operation needs a `value`"))
}

impl JsonPatch {
    /// Reads a JSON Patch document: an array of operation objects. Members other than
    /// `op`, `path`, `from` and `value` are ignored (RFC 6902 section 4).
    pub fn parse(document: &Value) -> Result<JsonPatch, PatchError> {
        let Some(items) = document.as_array() else {
            return Err(PatchError::InvalidDocument {
                operation: None,
                reason: "a JSON Patch document must be a JSON array of operations".into(),
            });
        };
        let operations = items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                parse_operation(item).map_err(|reason| PatchError::InvalidDocument {
                    operation: Some(i),
                    reason,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(JsonPatch { operations })
    }

    /// Applies the operations in order to a copy of `doc`.
    pub fn apply(&self, doc: &Value) -> Result<Value, PatchError> {
        let mut out = doc.clone();
        // `copy` is the one operation that grows the document beyond what the patch carries:
        // fifty copies of the whole document into itself would need 2^50 times its memory.
        let carried: usize = self.operations.iter().map(Operation::carried_values).sum();
        let limit = MAX_GROWTH * (values_in(doc) + carried) + 1_000;
        let mut size = values_in(doc) + carried;
        for (i, op) in self.operations.iter().enumerate() {
            if let Operation::Copy { from, .. } = op {
                size += resolve(&out, &from.tokens).map_or(0, values_in);
                if size > limit {
                    return Err(PatchError::NotApplicable {
                        operation: i,
                        op: op.name(),
                        path: op.path().text.clone(),
                        reason: format!(
                            "the copies would make the document more than {MAX_GROWTH} times larger than the resource and the patch together"
                        ),
                    });
                }
            }
            apply_operation(&mut out, op).map_err(|failure| match failure {
                Failure::Test => PatchError::TestFailed {
                    operation: i,
                    path: op.path().text.clone(),
                },
                Failure::Other(reason) => PatchError::NotApplicable {
                    operation: i,
                    op: op.name(),
                    path: op.path().text.clone(),
                    reason,
                },
            })?;
        }
        Ok(out)
    }
}

/// Parses `patch` as a JSON Patch document and applies it to `doc`.
pub fn apply_json_patch(doc: &Value, patch: &Value) -> Result<Value, PatchError> {
    JsonPatch::parse(patch)?.apply(doc)
}

fn parse_operation(item: &Value) -> Result<Operation, String> {
    let Some(op) = item.as_object() else {
        return Err("an operation must be a JSON object".into());
    };
    let name = match op.get("op") {
        Some(Value::String(s)) => s.as_str(),
        Some(_) => return Err("`op` must be a string".into()),
        None => return Err("the operation has no `op`".into()),
    };
    let path = pointer_member(op, "path")?;
    Ok(match name {
        "add" => Operation::Add {
            path,
            value: value_member(op, name)?,
        },
        "remove" => Operation::Remove { path },
        "replace" => Operation::Replace {
            path,
            value: value_member(op, name)?,
        },
        "move" => Operation::Move {
            from: pointer_member(op, "from")?,
            path,
        },
        "copy" => Operation::Copy {
            from: pointer_member(op, "from")?,
            path,
        },
        "test" => Operation::Test {
            path,
            value: value_member(op, name)?,
        },
        other => {
            return Err(format!(
                "`{}` is not a JSON Patch operation (add, remove, replace, move, copy, test)",
                crate::fhir::types::truncate(other, 40)
            ))
        }
    })
}

enum Failure {
    Test,
    Other(String),
}

impl From<String> for Failure {
    fn from(s: String) -> Failure {
        Failure::Other(s)
    }
}

fn apply_operation(doc: &mut Value, op: &Operation) -> Result<(), Failure> {
    match op {
        Operation::Add { path, value } => add(doc, path, value.clone())?,
        Operation::Remove { path } => {
            remove(doc, path)?;
        }
        Operation::Replace { path, value } => {
            let target = resolve_mut(doc, &path.tokens)
                .ok_or_else(|| format!("there is no value at `{}` to replace", path.text))?;
            *target = value.clone();
        }
        Operation::Move { from, path } => {
            if from == path {
                resolve(doc, &from.tokens)
                    .ok_or_else(|| format!("there is no value at `{}` to move", from.text))?;
                return Ok(());
            }
            // RFC 6902 section 4.4: "a location cannot be moved into one of its children".
            if path.tokens.len() > from.tokens.len() && path.tokens.starts_with(&from.tokens) {
                return Err(Failure::Other(format!(
                    "`{}` cannot be moved into its own child `{}`",
                    from.text, path.text
                )));
            }
            let value = remove(doc, from)
                .map_err(|_| format!("there is no value at `{}` to move", from.text))?;
            add(doc, path, value)?;
        }
        Operation::Copy { from, path } => {
            let value = resolve(doc, &from.tokens)
                .ok_or_else(|| format!("there is no value at `{}` to copy", from.text))?
                .clone();
            add(doc, path, value)?;
        }
        Operation::Test { path, value } => {
            let found = resolve(doc, &path.tokens)
                .ok_or_else(|| format!("there is no value at `{}` to test", path.text))?;
            if !json_equal(found, value) {
                return Err(Failure::Test);
            }
        }
    }
    Ok(())
}

/// RFC 6902 section 4.1: the parent must exist; an object member is added or replaced, an
/// array item inserted (`-` appends).
fn add(doc: &mut Value, path: &Pointer, value: Value) -> Result<(), String> {
    let Some((parent, last)) = path.split_last() else {
        *doc = value;
        return Ok(());
    };
    let parent_text = path.parent_text();
    match resolve_mut(doc, parent) {
        Some(Value::Object(o)) => {
            // `insert` on an existing key keeps its place.
            o.insert(last.to_string(), value);
            Ok(())
        }
        Some(Value::Array(a)) => {
            if last == "-" {
                a.push(value);
                return Ok(());
            }
            match array_index(last) {
                Some(i) if i <= a.len() => {
                    a.insert(i, value);
                    Ok(())
                }
                Some(i) => Err(format!(
                    "index {i} is past the end of the array at `{parent_text}` ({} items)",
                    a.len()
                )),
                None => Err(format!("`{last}` is not an array index")),
            }
        }
        Some(_) => Err(format!(
            "the value at `{parent_text}` is neither an object nor an array"
        )),
        None => Err(format!(
            "`{parent_text}` does not exist (missing objects are not created)"
        )),
    }
}

fn remove(doc: &mut Value, path: &Pointer) -> Result<Value, String> {
    let Some((parent, last)) = path.split_last() else {
        return Err("the whole document cannot be removed".into());
    };
    let missing = || format!("there is no value at `{}` to remove", path.text);
    match resolve_mut(doc, parent) {
        // shift_remove: the other members keep their order.
        Some(Value::Object(o)) => o.shift_remove(last).ok_or_else(missing),
        Some(Value::Array(a)) => match array_index(last) {
            Some(i) if i < a.len() => Ok(a.remove(i)),
            _ => Err(missing()),
        },
        _ => Err(missing()),
    }
}

/// RFC 6902 section 4.6: equal types and values; numbers equal by value (with
/// `arbitrary_precision`, `1` and `1.0` are different texts of one number); objects equal
/// as sets of members, arrays item by item.
fn json_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let dec = |n: &serde_json::Number| {
                Decimal::from_str(n.as_str())
                    .or_else(|_| Decimal::from_scientific(n.as_str()))
                    .ok()
            };
            match (dec(x), dec(y)) {
                (Some(p), Some(q)) => p == q,
                _ => x.as_f64().is_some_and(|p| Some(p) == y.as_f64()),
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| json_equal(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_equal(v, w)))
        }
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn apply(doc: Value, patch: Value) -> Result<Value, PatchError> {
        apply_json_patch(&doc, &patch)
    }

    /// The patched document as text, so that member order counts.
    fn patched_text(doc: Value, patch: Value) -> String {
        serde_json::to_string(&apply(doc, patch).unwrap()).unwrap()
    }

    #[test]
    fn remove_and_move_keep_the_order_of_other_members() {
        assert_eq!(
            patched_text(
                json!({"a": 1, "b": 2, "c": 3, "d": 4}),
                json!([{"op": "remove", "path": "/b"}, {"op": "move", "from": "/a", "path": "/e"}]),
            ),
            r#"{"c":3,"d":4,"e":1}"#
        );
    }

    #[test]
    fn replace_keeps_the_member_in_place() {
        assert_eq!(
            patched_text(
                json!({"a": 1, "b": 2, "c": 3}),
                json!([{"op": "replace", "path": "/a", "value": 9}]),
            ),
            r#"{"a":9,"b":2,"c":3}"#
        );
    }

    #[test]
    fn test_compares_numbers_by_value() {
        let doc = json!({"n": serde_json::from_str::<Value>("1.0").unwrap()});
        assert!(apply(
            doc.clone(),
            json!([{"op": "test", "path": "/n", "value": 1}])
        )
        .is_ok());
        assert!(matches!(
            apply(doc, json!([{"op": "test", "path": "/n", "value": 2}])),
            Err(PatchError::TestFailed { operation: 0, .. })
        ));
    }

    #[test]
    fn malformed_documents_are_told_apart_from_failing_ones() {
        for bad in [
            json!({"op": "add"}),
            json!([{"path": "/a", "value": 1}]),
            json!([{"op": "add", "path": "/a"}]),
            json!([{"op": "frobnicate", "path": "/a"}]),
            json!([{"op": "add", "path": "a", "value": 1}]),
            json!([{"op": "add", "path": "/~2", "value": 1}]),
            json!([{"op": "move", "path": "/a"}]),
        ] {
            let e = apply(json!({}), bad.clone()).unwrap_err();
            assert!(e.is_malformed(), "{bad}: {e}");
        }
        let e = apply(json!({}), json!([{"op": "remove", "path": "/a"}])).unwrap_err();
        assert!(!e.is_malformed());
        assert_eq!(e.operation(), Some(0));
    }

    #[test]
    fn array_indexes_follow_rfc_6901() {
        let doc = json!({"a": [1, 2]});
        assert!(apply(
            doc.clone(),
            json!([{"op": "add", "path": "/a/01", "value": 0}])
        )
        .is_err());
        assert!(apply(
            doc.clone(),
            json!([{"op": "add", "path": "/a/3", "value": 0}])
        )
        .is_err());
        assert!(apply(doc.clone(), json!([{"op": "remove", "path": "/a/-"}])).is_err());
        assert_eq!(
            apply(doc, json!([{"op": "add", "path": "/a/2", "value": 3}])).unwrap(),
            json!({"a": [1, 2, 3]})
        );
    }

    #[test]
    fn a_value_cannot_move_into_its_own_child() {
        let e = apply(
            json!({"a": {"b": 1}}),
            json!([{"op": "move", "from": "/a", "path": "/a/c"}]),
        )
        .unwrap_err();
        assert!(e.to_string().contains("own child"), "{e}");
    }

    #[test]
    fn copies_cannot_blow_the_document_up() {
        let doubling: Vec<Value> = (0..50)
            .map(|i| json!({"op": "copy", "from": "", "path": format!("/c{i}")}))
            .collect();
        let e = apply(json!({"a": [1, 2, 3]}), Value::Array(doubling)).unwrap_err();
        assert!(e.to_string().contains("times larger"), "{e}");
        // a few ordinary copies are fine
        let out = apply(
            json!({"a": {"b": 1}}),
            json!([{"op": "copy", "from": "/a", "path": "/c"}, {"op": "copy", "from": "/a/b", "path": "/d"}]),
        )
        .unwrap();
        assert_eq!(out, json!({"a": {"b": 1}, "c": {"b": 1}, "d": 1}));
    }

    #[test]
    fn the_whole_document_can_be_replaced_but_not_removed() {
        assert_eq!(
            apply(
                json!({"a": 1}),
                json!([{"op": "replace", "path": "", "value": {"b": 2}}])
            )
            .unwrap(),
            json!({"b": 2})
        );
        assert!(apply(json!({"a": 1}), json!([{"op": "remove", "path": ""}])).is_err());
    }
}
