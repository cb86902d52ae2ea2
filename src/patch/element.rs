//! FHIR elements as FHIR JSON stores them, edited in place. A primitive is two properties, its
//! value (`given`) and its `_given` companion holding id and extensions; in a repeating
//! element the two arrays stay aligned item by item, `null` filling the gaps (FHIR R4 JSON,
//! section 2.6.2.7). A new property goes where the StructureDefinition orders it, so the
//! stored JSON reads like the definition. An edit that leaves an object or array empty
//! removes it, and so upwards, because FHIR JSON has no empty objects or arrays.

use serde_json::{Map, Value};

use crate::fhirpath::{Location, Step};

/// The definition rank of a JSON property name (its element's index in the definition),
/// None when the definition does not know it.
pub type Rank<'a> = &'a dyn Fn(&str) -> Option<usize>;

/// An element's JSON: the value (absent for a primitive that has only extensions) and the
/// `_name` companion of a primitive.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ElementJson {
    pub value: Option<Value>,
    pub companion: Option<Value>,
}

impl ElementJson {
    pub fn of(value: Value) -> ElementJson {
        ElementJson {
            value: Some(value),
            companion: None,
        }
    }
}

pub fn companion_key(key: &str) -> String {
    format!("_{key}")
}

fn base_key(key: &str) -> &str {
    key.strip_prefix('_').unwrap_or(key)
}

pub fn get<'a>(root: &'a Value, steps: &[Step]) -> Option<&'a Value> {
    steps.iter().try_fold(root, |v, s| match s {
        Step::Key(k) => v.get(k.as_str()),
        Step::Index(i) => v.get(*i),
    })
}

pub fn get_mut<'a>(root: &'a mut Value, steps: &[Step]) -> Option<&'a mut Value> {
    steps.iter().try_fold(root, |v, s| match s {
        Step::Key(k) => v.get_mut(k.as_str()),
        Step::Index(i) => v.get_mut(*i),
    })
}

pub fn object_mut<'a>(root: &'a mut Value, steps: &[Step]) -> Option<&'a mut Map<String, Value>> {
    get_mut(root, steps).and_then(Value::as_object_mut)
}

/// Where an element sits: the steps to the object holding it, its property name and, in a
/// repeating element, its index. None for the root (and for arrays of arrays, which FHIR
/// JSON does not have).
pub fn split(location: &Location) -> Option<(Vec<Step>, String, Option<usize>)> {
    let steps = location.steps();
    match steps {
        [prefix @ .., Step::Key(k), Step::Index(i)] => Some((prefix.to_vec(), k.clone(), Some(*i))),
        [prefix @ .., Step::Key(k)] => Some((prefix.to_vec(), k.clone(), None)),
        _ => None,
    }
}

/// Inserts a property that `obj` does not have where the definition order puts it: before
/// the first property the definition places after it (a companion right after its value),
/// at the end when the order is unknown. An existing property is replaced in place.
pub fn insert_ordered(obj: &mut Map<String, Value>, key: String, value: Value, rank: Rank) {
    if let Some(v) = obj.get_mut(&key) {
        *v = value;
        return;
    }
    let base = base_key(&key).to_string();
    let position_of = |k: &str| obj.keys().position(|x| x == k);
    let pos = if key.starts_with('_') {
        position_of(&base).map(|p| p + 1)
    } else {
        position_of(&companion_key(&base))
    };
    let pos = pos.unwrap_or_else(|| match rank(&base) {
        None => obj.len(),
        Some(r) => obj
            .keys()
            .position(|k| k != "resourceType" && rank(base_key(k)).is_some_and(|kr| kr > r))
            .unwrap_or(obj.len()),
    });
    obj.shift_insert(pos, key, value);
}

/// Whether the element `key` (value or companion) is present.
pub fn has(obj: &Map<String, Value>, key: &str) -> bool {
    obj.contains_key(key) || obj.contains_key(&companion_key(key))
}

/// Removes a non-repeating element: value and companion.
pub fn remove_single(obj: &mut Map<String, Value>, key: &str) -> ElementJson {
    ElementJson {
        value: obj.shift_remove(key),
        companion: obj.shift_remove(&companion_key(key)),
    }
}

/// Sets a non-repeating element, replacing the one at `old_key` (a choice element may change
/// its name with its type: `deceasedBoolean` -> `deceasedDateTime`) in its place.
pub fn set_single(
    obj: &mut Map<String, Value>,
    old_key: Option<&str>,
    key: &str,
    element: ElementJson,
    rank: Rank,
) {
    let place = old_key.filter(|old| *old != key).and_then(|old| {
        let p = obj
            .keys()
            .position(|k| k == old || *k == companion_key(old));
        remove_single(obj, old);
        p
    });
    let companion = companion_key(key);
    match (element.value, place) {
        (Some(v), Some(p)) if !obj.contains_key(key) => {
            obj.shift_insert(p.min(obj.len()), key.to_string(), v);
        }
        (Some(v), _) => insert_ordered(obj, key.to_string(), v, rank),
        (None, _) => {
            obj.shift_remove(key);
        }
    }
    match element.companion {
        Some(c) => match (obj.contains_key(key), place) {
            (false, Some(p)) if !obj.contains_key(&companion) => {
                obj.shift_insert(p.min(obj.len()), companion, c);
            }
            _ => insert_ordered(obj, companion, c, rank),
        },
        None => {
            obj.shift_remove(&companion);
        }
    }
}

/// Items of the repeating element `key` (the longer of value and companion arrays).
pub fn list_len(obj: &Map<String, Value>, key: &str) -> usize {
    let len = |k: &str| obj.get(k).and_then(Value::as_array).map_or(0, Vec::len);
    len(key).max(len(&companion_key(key)))
}

/// Inserts an item into the repeating element `key` at `index` (at most its length),
/// creating the arrays where the definition orders them.
pub fn list_insert(
    obj: &mut Map<String, Value>,
    key: &str,
    index: usize,
    element: ElementJson,
    rank: Rank,
) {
    let len = list_len(obj, key);
    let companion = companion_key(key);
    if !matches!(obj.get(key), Some(Value::Array(_))) {
        insert_ordered(obj, key.to_string(), Value::Array(Vec::new()), rank);
    }
    if let Some(Value::Array(values)) = obj.get_mut(key) {
        values.resize(len, Value::Null);
        values.insert(index.min(len), element.value.unwrap_or(Value::Null));
    }
    if element.companion.is_some() || obj.contains_key(&companion) {
        if !matches!(obj.get(&companion), Some(Value::Array(_))) {
            insert_ordered(obj, companion.clone(), Value::Array(Vec::new()), rank);
        }
        if let Some(Value::Array(exts)) = obj.get_mut(&companion) {
            exts.resize(len, Value::Null);
            exts.insert(index.min(len), element.companion.unwrap_or(Value::Null));
        }
    }
    tidy_list(obj, key);
}

/// Removes item `index` of the repeating element `key` (value and companion).
pub fn list_remove(obj: &mut Map<String, Value>, key: &str, index: usize) -> ElementJson {
    let mut take = |k: &str| match obj.get_mut(k) {
        Some(Value::Array(a)) if index < a.len() => Some(a.remove(index)).filter(|v| !v.is_null()),
        _ => None,
    };
    let element = ElementJson {
        value: take(key),
        companion: take(&companion_key(key)),
    };
    tidy_list(obj, key);
    element
}

/// Replaces item `index` of the repeating element `key`.
pub fn list_set(obj: &mut Map<String, Value>, key: &str, index: usize, element: ElementJson) {
    let companion = companion_key(key);
    let len = list_len(obj, key);
    if let Some(Value::Array(values)) = obj.get_mut(key) {
        values.resize(len, Value::Null);
        if let Some(slot) = values.get_mut(index) {
            *slot = element.value.unwrap_or(Value::Null);
        }
    }
    match (element.companion, obj.get_mut(&companion)) {
        (c, Some(Value::Array(exts))) => {
            exts.resize(len, Value::Null);
            if let Some(slot) = exts.get_mut(index) {
                *slot = c.unwrap_or(Value::Null);
            }
        }
        (Some(c), _) => {
            let mut exts = vec![Value::Null; len];
            if let Some(slot) = exts.get_mut(index) {
                *slot = c;
            }
            // the companion array follows its values
            let at = obj
                .keys()
                .position(|k| k == key)
                .map_or(obj.len(), |p| p + 1);
            obj.shift_insert(at, companion, Value::Array(exts));
        }
        (None, _) => {}
    }
    tidy_list(obj, key);
}

/// Keeps a repeating element valid FHIR JSON: items with neither value nor companion go,
/// a companion array of nulls goes, and empty arrays go.
fn tidy_list(obj: &mut Map<String, Value>, key: &str) {
    let companion = companion_key(key);
    let is_null_at = |obj: &Map<String, Value>, k: &str, i: usize| {
        obj.get(k)
            .and_then(Value::as_array)
            .and_then(|a| a.get(i))
            .is_none_or(Value::is_null)
    };
    let mut i = list_len(obj, key);
    while i > 0 {
        i -= 1;
        if is_null_at(obj, key, i) && is_null_at(obj, &companion, i) {
            for k in [key, companion.as_str()] {
                if let Some(Value::Array(a)) = obj.get_mut(k) {
                    if i < a.len() {
                        a.remove(i);
                    }
                }
            }
        }
    }
    let all_null = |v: Option<&Value>| {
        v.and_then(Value::as_array)
            .is_some_and(|a| a.iter().all(Value::is_null))
    };
    if all_null(obj.get(&companion)) {
        obj.shift_remove(&companion);
    }
    if obj
        .get(key)
        .and_then(Value::as_array)
        .is_some_and(Vec::is_empty)
    {
        obj.shift_remove(key);
    }
}

/// The object that holds the children of the element at `location`: the element itself
/// when it is complex, its `_name` companion when it is a primitive (created if missing,
/// since only the companion can hold a primitive's id and extensions).
pub fn children_mut<'a>(
    root: &'a mut Value,
    location: &Location,
    rank: Rank,
) -> Option<&'a mut Map<String, Value>> {
    if matches!(get(root, location.steps()), Some(Value::Object(_))) {
        return object_mut(root, location.steps());
    }
    let (parent, key, index) = split(location)?;
    let companion = companion_key(&key);
    let obj = object_mut(root, &parent)?;
    match index {
        None => {
            if !matches!(obj.get(&companion), Some(Value::Object(_))) {
                insert_ordered(obj, companion.clone(), Value::Object(Map::new()), rank);
            }
            obj.get_mut(&companion)?.as_object_mut()
        }
        Some(i) => {
            let len = list_len(obj, &key);
            if !matches!(obj.get(&companion), Some(Value::Array(_))) {
                let at = obj
                    .keys()
                    .position(|k| *k == key)
                    .map_or(obj.len(), |p| p + 1);
                obj.shift_insert(at, companion.clone(), Value::Array(Vec::new()));
            }
            let exts = obj.get_mut(&companion)?.as_array_mut()?;
            exts.resize(len, Value::Null);
            let slot = exts.get_mut(i)?;
            if !slot.is_object() {
                *slot = Value::Object(Map::new());
            }
            slot.as_object_mut()
        }
    }
}

/// Removes the element at `location` (value and companion) and then every container the
/// removal left empty. The root is never removed.
pub fn remove_element(root: &mut Value, location: &Location) {
    let Some((parent, key, index)) = split(location) else {
        return;
    };
    if let Some(obj) = object_mut(root, &parent) {
        match index {
            Some(i) => {
                list_remove(obj, &key, i);
            }
            None => {
                remove_single(obj, &key);
            }
        }
    }
    prune(root, parent);
}

/// Removes the object at `steps` if it is empty, then its container if that became empty,
/// and so on up to (not including) the root.
pub fn prune(root: &mut Value, mut steps: Vec<Step>) {
    while !steps.is_empty() {
        let empty = match get(root, &steps) {
            Some(Value::Object(o)) => o.is_empty(),
            _ => false,
        };
        if !empty {
            return;
        }
        let location = Location(steps.clone());
        let Some((parent, key, index)) = split(&location) else {
            return;
        };
        let Some(obj) = object_mut(root, &parent) else {
            return;
        };
        match (index, key.strip_prefix('_')) {
            // An emptied companion item keeps its place; the value may still be there.
            (Some(i), Some(base)) => {
                let base = base.to_string();
                if let Some(slot) = obj.get_mut(&key).and_then(|a| a.get_mut(i)) {
                    *slot = Value::Null;
                }
                tidy_list(obj, &base);
            }
            (Some(i), None) => {
                list_remove(obj, &key, i);
            }
            (None, _) => {
                obj.shift_remove(&key);
            }
        }
        steps = parent;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn order(names: &'static [&'static str]) -> impl Fn(&str) -> Option<usize> {
        move |k: &str| names.iter().position(|n| *n == k)
    }

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn text(m: &Map<String, Value>) -> String {
        serde_json::to_string(m).unwrap()
    }

    /// `contact/0/name` -> the location of that element.
    fn at(path: &str) -> Location {
        Location(
            path.split('/')
                .map(|s| match s.parse() {
                    Ok(i) => Step::Index(i),
                    Err(_) => Step::Key(s.to_string()),
                })
                .collect(),
        )
    }

    #[test]
    fn new_properties_follow_the_definition_order() {
        let rank = order(&["id", "name", "gender", "birthDate"]);
        let mut m = obj(json!({"resourceType": "Patient", "name": [], "birthDate": "x"}));
        insert_ordered(&mut m, "gender".into(), json!("male"), &rank);
        insert_ordered(&mut m, "id".into(), json!("p"), &rank);
        insert_ordered(&mut m, "_gender".into(), json!({"id": "g"}), &rank);
        assert_eq!(
            text(&m),
            r#"{"resourceType":"Patient","id":"p","name":[],"gender":"male","_gender":{"id":"g"},"birthDate":"x"}"#
        );
    }

    #[test]
    fn list_edits_keep_companions_aligned() {
        let rank = order(&["given"]);
        let mut m = obj(json!({"given": ["a", "b"], "_given": [null, {"id": "b"}]}));
        list_insert(&mut m, "given", 0, ElementJson::of(json!("z")), &rank);
        assert_eq!(
            text(&m),
            r#"{"given":["z","a","b"],"_given":[null,null,{"id":"b"}]}"#
        );
        let gone = list_remove(&mut m, "given", 2);
        assert_eq!(gone.companion, Some(json!({"id": "b"})));
        assert_eq!(text(&m), r#"{"given":["z","a"]}"#);
        list_set(
            &mut m,
            "given",
            1,
            ElementJson {
                value: Some(json!("y")),
                companion: Some(json!({"id": "y"})),
            },
        );
        assert_eq!(
            text(&m),
            r#"{"given":["z","y"],"_given":[null,{"id":"y"}]}"#
        );
    }

    #[test]
    fn a_choice_element_changes_its_name_in_place() {
        let rank = order(&["active", "deceased", "address"]);
        let mut m = obj(json!({"active": true, "deceasedBoolean": false, "address": []}));
        set_single(
            &mut m,
            Some("deceasedBoolean"),
            "deceasedDateTime",
            ElementJson::of(json!("2020")),
            &rank,
        );
        assert_eq!(
            text(&m),
            r#"{"active":true,"deceasedDateTime":"2020","address":[]}"#
        );
    }

    #[test]
    fn removal_prunes_emptied_containers_but_never_the_root() {
        let mut doc = json!({"resourceType": "Patient", "contact": [{"name": {"text": "a"}}]});
        remove_element(&mut doc, &at("contact/0/name/text"));
        assert_eq!(doc, json!({"resourceType": "Patient"}));
        let mut doc = json!({"given": ["a"], "_given": [{"extension": [{"url": "u"}]}]});
        remove_element(&mut doc, &at("_given/0/extension/0"));
        assert_eq!(doc, json!({"given": ["a"]}));
    }

    #[test]
    fn a_primitive_gets_its_children_in_the_companion() {
        let rank = order(&["birthDate"]);
        let mut doc = json!({"birthDate": "1970"});
        children_mut(&mut doc, &at("birthDate"), &rank)
            .unwrap()
            .insert("id".into(), json!("b"));
        assert_eq!(doc, json!({"birthDate": "1970", "_birthDate": {"id": "b"}}));
    }
}
