//! Where an element of a FHIRPath result sits in the input. Result items borrow the input JSON
//! and never copy it, so a node's place is found by address: a walk of the input for the very
//! value the node borrows. FHIRPath Patch uses this to edit the element that a path selects;
//! evaluation itself carries no locations, so it pays nothing for them.

use std::fmt;

use serde_json::Value;

use super::value::Node;

/// One step from a JSON value to one of its children.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Step {
    /// A property of an object, by its JSON key (`valueQuantity`, `_birthDate`).
    Key(String),
    /// An item of an array.
    Index(usize),
}

/// The place of an element in the input: the steps from the root. A primitive is located at
/// its value's key even when only its `_name` companion (id, extension) exists, so every
/// primitive element has one location whatever JSON holds it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Location(pub Vec<Step>);

impl Location {
    pub fn steps(&self) -> &[Step] {
        &self.0
    }

    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }
}

/// A JSON Pointer (RFC 6901) rendering, for messages: `/contact/0/gender`.
impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("/");
        }
        for step in &self.0 {
            match step {
                Step::Key(k) => write!(f, "/{}", k.replace('~', "~0").replace('/', "~1"))?,
                Step::Index(i) => write!(f, "/{i}")?,
            }
        }
        Ok(())
    }
}

/// The location of `node` in `root`, or None when the node is not part of `root` (an element
/// of another resource, such as one that `resolve()` fetched through the host).
pub fn locate(root: &Value, node: &Node) -> Option<Location> {
    if let Some(json) = node.json {
        let mut steps = Vec::new();
        return find(root, json, &mut steps).then_some(Location(steps));
    }
    let ext = node.ext?;
    let mut steps = Vec::new();
    if !find(root, ext, &mut steps) {
        return None;
    }
    // A value-less primitive is found at its `_name` companion; name it by its element.
    if let Some(Step::Key(k)) = steps.iter_mut().rev().find(|s| matches!(s, Step::Key(_))) {
        if let Some(base) = k.strip_prefix('_') {
            *k = base.to_string();
        }
    }
    Some(Location(steps))
}

/// Depth-first search for `target` by address; on success `steps` leads to it.
fn find(here: &Value, target: &Value, steps: &mut Vec<Step>) -> bool {
    if std::ptr::eq(here, target) {
        return true;
    }
    match here {
        Value::Object(o) => {
            for (k, v) in o {
                steps.push(Step::Key(k.clone()));
                if find(v, target, steps) {
                    return true;
                }
                steps.pop();
            }
        }
        Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                steps.push(Step::Index(i));
                if find(v, target, steps) {
                    return true;
                }
                steps.pop();
            }
        }
        _ => {}
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fhirpath::{compile, EvalContext, Item, NoModel};
    use serde_json::json;

    fn locations(expr: &str, input: &Value) -> Vec<Option<String>> {
        let e = compile(expr).unwrap();
        let ctx = EvalContext::new(&NoModel);
        e.evaluate(&ctx, input)
            .unwrap()
            .iter()
            .map(|item| match item {
                Item::Node(n) => locate(input, n).map(|l| l.to_string()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn nodes_are_located_by_the_steps_from_the_root() {
        let p = json!({"resourceType": "Patient", "name": [{"given": ["Peter", "James"]}, {"family": "Chalmers"}]});
        assert_eq!(
            locations("name.given", &p),
            vec![
                Some("/name/0/given/0".to_string()),
                Some("/name/0/given/1".to_string())
            ]
        );
        assert_eq!(locations("name[1]", &p), vec![Some("/name/1".to_string())]);
        assert_eq!(locations("$this", &p), vec![Some("/".to_string())]);
    }

    #[test]
    fn a_primitive_with_only_an_extension_is_located_at_its_element_name() {
        let p = json!({"resourceType": "Patient", "name": [{"given": ["Peter", null], "_given": [null, {"extension": [{"url": "u", "valueString": "x"}]}]}]});
        assert_eq!(
            locations("name.given", &p),
            vec![
                Some("/name/0/given/0".to_string()),
                Some("/name/0/given/1".to_string())
            ]
        );
        // the extension itself lives in the companion
        assert_eq!(
            locations("name.given[1].extension", &p),
            vec![Some("/name/0/_given/1/extension/0".to_string())]
        );
    }

    #[test]
    fn computed_values_and_foreign_nodes_have_no_location() {
        let p = json!({"resourceType": "Patient", "birthDate": "1974-12-25"});
        assert_eq!(locations("birthDate.toString()", &p), vec![None]);
        let other = json!({"resourceType": "Patient", "birthDate": "1974-12-25"});
        let e = compile("birthDate").unwrap();
        let ctx = EvalContext::new(&NoModel);
        let items = e.evaluate(&ctx, &other).unwrap();
        let Item::Node(n) = &items[0] else {
            panic!("a node")
        };
        assert_eq!(locate(&p, n), None);
        assert!(locate(&other, n).is_some());
    }

    #[test]
    fn pointer_rendering_escapes_tilde_and_slash() {
        let l = Location(vec![Step::Key("a/b~c".into()), Step::Index(2)]);
        assert_eq!(l.to_string(), "/a~1b~0c/2");
    }
}
