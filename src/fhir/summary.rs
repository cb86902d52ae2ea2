//! `_summary` and `_elements`: subsets of a resource (FHIR R4 search, 3.1.1.5.8 and
//! 3.1.1.5.9). A subsetted resource carries the `SUBSETTED` security tag.

use serde_json::{json, Map, Value};

use super::model::Model;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subset {
    /// The whole resource.
    Full,
    /// `_summary=true`: the elements marked summary in the base definition.
    Summary,
    /// `_summary=text`: text, id, meta and the mandatory top-level elements.
    Text,
    /// `_summary=data`: everything but the narrative.
    Data,
    /// `_elements=a,b`: the named top-level elements plus the mandatory ones.
    Elements(Vec<String>),
}

impl Subset {
    /// From the `_summary` and `_elements` query values; `count` is for searches only.
    pub fn from_query(summary: Option<&str>, elements: Option<&str>) -> Result<Subset, String> {
        match summary {
            Some("true") => return Ok(Subset::Summary),
            Some("text") => return Ok(Subset::Text),
            Some("data") => return Ok(Subset::Data),
            Some("false") | None => {}
            Some("count") => return Err("_summary=count applies to searches only".into()),
            Some(other) => {
                return Err(format!(
                    "_summary must be one of true, text, data, count, false; not `{}`",
                    super::types::truncate(other, 40)
                ))
            }
        }
        if let Some(e) = elements {
            let names: Vec<String> = e
                .split(',')
                .map(|s| s.trim())
                .filter(|s| !s.is_empty())
                .map(|s| s.split('.').next_back().unwrap_or(s).to_string())
                .collect();
            if !names.is_empty() {
                return Ok(Subset::Elements(names));
            }
        }
        Ok(Subset::Full)
    }
}

/// Applies the subset; returns the resource unchanged for [`Subset::Full`].
pub fn apply(model: &Model, resource: &Value, subset: &Subset) -> Value {
    let Some(obj) = resource.as_object() else {
        return resource.clone();
    };
    if *subset == Subset::Full {
        return resource.clone();
    }
    let rt = obj
        .get("resourceType")
        .and_then(|v| v.as_str())
        .unwrap_or("");
    let Ok(td) = model.type_def(rt) else {
        return resource.clone();
    };
    let root = td.root();
    let keep = |key: &str| -> bool {
        if matches!(key, "resourceType" | "id" | "meta") {
            return true;
        }
        let base = key.strip_prefix('_').unwrap_or(key);
        let Some((el, _)) = root.child(base) else {
            return false;
        };
        match subset {
            Subset::Full => true,
            Subset::Summary => el.summary,
            Subset::Text => el.name == "text" || el.min > 0,
            Subset::Data => el.name != "text",
            Subset::Elements(names) => {
                el.min > 0 || names.iter().any(|n| n == base || *n == el.name)
            }
        }
    };
    let mut out = Map::new();
    for (k, v) in obj {
        if keep(k) {
            out.insert(k.clone(), v.clone());
        }
    }
    mark_subsetted(&mut out);
    Value::Object(out)
}

fn mark_subsetted(obj: &mut Map<String, Value>) {
    let tag = json!({"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED"});
    let meta = obj
        .entry("meta")
        .or_insert_with(|| Value::Object(Map::new()));
    if let Some(meta) = meta.as_object_mut() {
        let tags = meta
            .entry("tag")
            .or_insert_with(|| Value::Array(Vec::new()));
        if let Some(tags) = tags.as_array_mut() {
            if !tags
                .iter()
                .any(|t| t.get("code") == tag.get("code") && t.get("system") == tag.get("system"))
            {
                tags.push(tag);
            }
        }
    }
}
