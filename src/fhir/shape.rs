//! Bounds on the shape of a request's resource, checked right after it is read
//! and before anything works on it (validation, index extraction, storage): a
//! valid 15 MB Patient with a million names is small on the wire but makes
//! every later step do a million times the work (issue 13). The limits are
//! settings (`server.max_elements`, `server.max_array_items`) an operator can
//! raise; a resource beyond them is refused with 400 `too-costly`.

use serde_json::Value;

use super::Issue;

/// How large a resource read from a request may be.
#[derive(Debug, Clone, Copy)]
pub struct ShapeLimits {
    /// JSON nodes (objects, arrays, values) in the whole body.
    pub max_elements: usize,
    /// Items in any one array.
    pub max_array_items: usize,
}

/// Refuses `value` when it has more nodes or a longer array than `limits` allow.
pub fn check(value: &Value, limits: ShapeLimits) -> Result<(), Issue> {
    let mut nodes = 0usize;
    let mut stack: Vec<&Value> = vec![value];
    while let Some(v) = stack.pop() {
        nodes += 1;
        if nodes > limits.max_elements {
            return Err(Issue::error(
                "too-costly",
                format!(
                    "the resource has more than {} elements (server.max_elements)",
                    limits.max_elements
                ),
            ));
        }
        match v {
            Value::Array(items) => {
                if items.len() > limits.max_array_items {
                    let path = long_array(value, "", limits.max_array_items).unwrap_or_default();
                    return Err(Issue::error(
                        "too-costly",
                        format!(
                            "{} has {} items; at most {} are accepted in one array (server.max_array_items)",
                            if path.is_empty() { "an array" } else { path.as_str() },
                            items.len(),
                            limits.max_array_items
                        ),
                    )
                    .at(path));
                }
                stack.extend(items.iter());
            }
            Value::Object(members) => stack.extend(members.values()),
            _ => {}
        }
    }
    Ok(())
}

/// The FHIRPath-like location of the first array longer than `max` (for the
/// message; only walked once one was found).
fn long_array(v: &Value, at: &str, max: usize) -> Option<String> {
    match v {
        Value::Array(items) if items.len() > max => Some(at.to_string()),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, x)| long_array(x, &format!("{at}[{i}]"), max)),
        Value::Object(members) => {
            let base = if at.is_empty() {
                members
                    .get("resourceType")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string()
            } else {
                at.to_string()
            };
            members
                .iter()
                .find_map(|(k, x)| long_array(x, &format!("{base}.{k}"), max))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const LIMITS: ShapeLimits = ShapeLimits {
        max_elements: 50,
        max_array_items: 3,
    };

    #[test]
    fn a_long_array_is_refused_with_its_path() {
        let p = json!({"resourceType": "Patient", "name": [{"given": ["a", "b", "c", "d"]}]});
        let e = check(&p, LIMITS).unwrap_err();
        assert_eq!(e.code, "too-costly");
        assert!(
            e.diagnostics.contains("Patient.name[0].given has 4 items"),
            "{}",
            e.diagnostics
        );
    }

    #[test]
    fn too_many_elements_are_refused_and_a_small_resource_passes() {
        let limits = ShapeLimits {
            max_elements: 20,
            max_array_items: 100,
        };
        let many: Vec<Value> = (0..5).map(|i| json!({"family": format!("f{i}")})).collect();
        let p = json!({"resourceType": "Patient", "name": many, "address": many});
        let e = check(&p, limits).unwrap_err();
        assert!(
            e.diagnostics.contains("more than 20 elements"),
            "{}",
            e.diagnostics
        );
        let small = json!({"resourceType": "Patient", "name": [{"family": "x"}]});
        assert!(check(&small, limits).is_ok());
    }
}
