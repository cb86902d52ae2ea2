//! FHIRPath Patch (FHIR R4 `fhirpatch.html`): a Parameters resource with one `operation`
//! parameter per change, each with parts `type` (add | insert | delete | replace | move),
//! `path` (FHIRPath), and as the type needs `name`, `value`, `index`, `source`,
//! `destination`. The path is evaluated with fhirgate's FHIRPath engine and the element it
//! selects is found in the resource by [`fhirpath::locate`]; the structure model then says
//! where a new element goes (definition order), whether it repeats, and how a choice element
//! is named for the type of its new value. A value is any `value[x]`, a `resource`, or nested
//! `part`s that build a complex value (an "anonymous type" such as `Patient.contact`).

use std::sync::Arc;

use serde_json::{Map, Value};

use super::element::{self, ElementJson};
use super::PatchError;
use crate::fhir::model::{ElementDef, TypeDef};
use crate::fhir::Model;
use crate::fhirpath::{self, EvalContext, Expression, FhirPathError, Item, Location, Step};

/// A parsed FHIRPath Patch: the operations in order, their paths compiled.
#[derive(Debug)]
pub struct FhirPathPatch {
    operations: Vec<Operation>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OperationType {
    Add,
    Insert,
    Delete,
    Replace,
    Move,
}

impl OperationType {
    fn parse(code: &str) -> Option<OperationType> {
        Some(match code {
            "add" => OperationType::Add,
            "insert" => OperationType::Insert,
            "delete" => OperationType::Delete,
            "replace" => OperationType::Replace,
            "move" => OperationType::Move,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            OperationType::Add => "add",
            OperationType::Insert => "insert",
            OperationType::Delete => "delete",
            OperationType::Replace => "replace",
            OperationType::Move => "move",
        }
    }
}

#[derive(Debug)]
struct Operation {
    kind: OperationType,
    path: String,
    expression: Expression,
    name: Option<String>,
    value: Option<PatchValue>,
    index: Option<usize>,
    source: Option<usize>,
    destination: Option<usize>,
}

/// The `value` of an operation (or of one of its nested parts).
#[derive(Debug, Clone)]
enum PatchValue {
    /// A `value[x]`: its FHIR type (from the Parameters definition) and its JSON.
    Typed {
        type_code: String,
        json: ElementJson,
    },
    /// A `resource` (for `contained`, `Bundle.entry.resource`, ...).
    Resource(Value),
    /// Nested parts naming child elements: a complex value built on the target's type.
    Parts(Vec<(String, PatchValue)>),
}

/// Why an operation could not be applied.
enum Failure {
    Reason(String),
    Evaluation(FhirPathError),
}

impl From<String> for Failure {
    fn from(s: String) -> Failure {
        Failure::Reason(s)
    }
}

impl FhirPathPatch {
    /// Reads a Parameters resource as a FHIRPath Patch. Every parameter must be an
    /// `operation` with the parts its type requires; paths must be FHIRPath.
    pub fn from_parameters(model: &Model, parameters: &Value) -> Result<FhirPathPatch, PatchError> {
        let invalid = |operation: Option<usize>, reason: String| PatchError::InvalidDocument {
            operation,
            reason,
        };
        let rt = parameters.get("resourceType").and_then(Value::as_str);
        if rt != Some("Parameters") {
            return Err(invalid(
                None,
                format!(
                    "a FHIRPath Patch is a Parameters resource, not {}",
                    rt.unwrap_or("a value without resourceType")
                ),
            ));
        }
        let value_types = ValueTypes::new(model).map_err(|r| invalid(None, r))?;
        let params = match parameters.get("parameter") {
            None => &[][..],
            Some(Value::Array(a)) => a.as_slice(),
            Some(_) => return Err(invalid(None, "`parameter` must be an array".into())),
        };
        let operations = params
            .iter()
            .enumerate()
            .map(|(i, p)| parse_operation(&value_types, i, p))
            .collect::<Result<_, _>>()?;
        Ok(FhirPathPatch { operations })
    }

    /// Applies the operations in order to a copy of `resource`.
    pub fn apply(&self, model: &Model, resource: &Value) -> Result<Value, PatchError> {
        let mut doc = resource.clone();
        for (i, op) in self.operations.iter().enumerate() {
            op.apply(model, &mut doc).map_err(|f| match f {
                Failure::Reason(reason) => PatchError::NotApplicable {
                    operation: i,
                    op: op.kind.name(),
                    path: op.path.clone(),
                    reason,
                },
                Failure::Evaluation(source) => PatchError::Evaluation {
                    operation: i,
                    op: op.kind.name(),
                    path: op.path.clone(),
                    source,
                },
            })?;
        }
        Ok(doc)
    }
}

/// Parses `parameters` as a FHIRPath Patch and applies it to `resource`.
pub fn apply_fhirpath_patch(
    model: &Model,
    resource: &Value,
    parameters: &Value,
) -> Result<Value, PatchError> {
    FhirPathPatch::from_parameters(model, parameters)?.apply(model, resource)
}

/// The types of `Parameters.parameter.value[x]`, to read the type of a value from its JSON
/// name (`valueCodeableConcept` -> `CodeableConcept`, `valueCode` -> `code`).
struct ValueTypes(Arc<TypeDef>);

const PARAMETER: &str = "Parameters.parameter";

impl ValueTypes {
    fn new(model: &Model) -> Result<ValueTypes, String> {
        let td = model.type_def("Parameters").map_err(|e| e.to_string())?;
        if td.node(PARAMETER).is_none() {
            return Err("the Parameters definition has no `parameter` element".into());
        }
        Ok(ValueTypes(td))
    }

    /// The FHIR type of the `value[x]` property `key`.
    fn type_of(&self, key: &str) -> Option<String> {
        let (el, chosen) = self.0.node(PARAMETER)?.child(key)?;
        (el.name == "value").then(|| chosen.map(str::to_string))?
    }
}

fn parse_operation(types: &ValueTypes, i: usize, p: &Value) -> Result<Operation, PatchError> {
    let invalid = |reason: String| PatchError::InvalidDocument {
        operation: Some(i),
        reason,
    };
    let name = p.get("name").and_then(Value::as_str).unwrap_or("");
    if name != "operation" {
        return Err(invalid(format!(
            "parameter `{}` is not an operation; every parameter of a FHIRPath Patch is named `operation`",
            crate::fhir::types::truncate(name, 60)
        )));
    }
    let mut parts: Map<String, Value> = Map::new();
    for part in p
        .get("part")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let part_name = part.get("name").and_then(Value::as_str).unwrap_or("");
        if !matches!(
            part_name,
            "type" | "path" | "name" | "value" | "index" | "source" | "destination"
        ) {
            return Err(invalid(format!(
                "`{}` is not a part of a FHIRPath Patch operation",
                crate::fhir::types::truncate(part_name, 60)
            )));
        }
        if parts.insert(part_name.to_string(), part.clone()).is_some() {
            return Err(invalid(format!("the part `{part_name}` is given twice")));
        }
    }
    let text = |part: &str, key: &str| -> Result<Option<String>, PatchError> {
        match parts.get(part) {
            None => Ok(None),
            Some(p) => match p.get(key).and_then(Value::as_str) {
                Some(s) => Ok(Some(s.to_string())),
                None => Err(invalid(format!("the part `{part}` needs a `{key}`"))),
            },
        }
    };
    let number = |part: &str| -> Result<Option<usize>, PatchError> {
        match parts.get(part) {
            None => Ok(None),
            Some(p) => match p.get("valueInteger").and_then(Value::as_u64) {
                Some(n) => Ok(Some(n as usize)),
                None => Err(invalid(format!(
                    "the part `{part}` needs a `valueInteger` of 0 or more"
                ))),
            },
        }
    };
    let code = text("type", "valueCode")?
        .ok_or_else(|| invalid("the operation has no `type` part".into()))?;
    let kind = OperationType::parse(&code).ok_or_else(|| {
        invalid(format!(
            "`{}` is not a FHIRPath Patch operation type (add, insert, delete, replace, move)",
            crate::fhir::types::truncate(&code, 40)
        ))
    })?;
    let path = text("path", "valueString")?
        .ok_or_else(|| invalid("the operation has no `path` part".into()))?;
    let value = match parts.get("value") {
        None => None,
        Some(v) => Some(
            part_value(types, v)
                .map_err(invalid)?
                .ok_or_else(|| invalid("the `value` part has no value".into()))?,
        ),
    };
    let op = Operation {
        kind,
        expression: Expression::new(&path).map_err(|source| PatchError::InvalidPath {
            operation: i,
            path: path.clone(),
            source,
        })?,
        path,
        name: text("name", "valueString")?,
        value,
        index: number("index")?,
        source: number("source")?,
        destination: number("destination")?,
    };
    let required: &[(&str, bool)] = match kind {
        OperationType::Add => &[("name", op.name.is_some()), ("value", op.value.is_some())],
        OperationType::Insert => &[("index", op.index.is_some()), ("value", op.value.is_some())],
        OperationType::Delete => &[],
        OperationType::Replace => &[("value", op.value.is_some())],
        OperationType::Move => &[
            ("source", op.source.is_some()),
            ("destination", op.destination.is_some()),
        ],
    };
    if let Some((missing, _)) = required.iter().find(|(_, present)| !present) {
        return Err(invalid(format!(
            "a `{}` operation needs a `{missing}` part",
            kind.name()
        )));
    }
    Ok(op)
}

/// The value a part carries: a `value[x]`, a `resource`, or nested parts.
fn part_value(types: &ValueTypes, part: &Value) -> Result<Option<PatchValue>, String> {
    let Some(obj) = part.as_object() else {
        return Err("a part must be an object".into());
    };
    let mut found: Vec<PatchValue> = Vec::new();
    for key in obj.keys() {
        let base = key.strip_prefix('_').unwrap_or(key);
        if key.starts_with('_') && obj.contains_key(base) {
            continue; // taken with its value
        }
        if let Some(type_code) = types.type_of(base) {
            found.push(PatchValue::Typed {
                type_code,
                json: ElementJson {
                    value: obj.get(base).cloned(),
                    companion: obj.get(&element::companion_key(base)).cloned(),
                },
            });
        }
    }
    if let Some(r) = obj.get("resource") {
        found.push(PatchValue::Resource(r.clone()));
    }
    if let Some(parts) = obj.get("part").and_then(Value::as_array) {
        let mut built = Vec::with_capacity(parts.len());
        for p in parts {
            let name = p
                .get("name")
                .and_then(Value::as_str)
                .ok_or("a part of a value has no `name`")?;
            let v = part_value(types, p)?
                .ok_or_else(|| format!("the part `{name}` of the value has no value"))?;
            built.push((name.to_string(), v));
        }
        found.push(PatchValue::Parts(built));
    }
    if found.len() > 1 {
        return Err("a part has more than one value (value[x], resource, part)".into());
    }
    Ok(found.pop())
}

/// The element definitions of one object: its type and the path of its node in that type
/// (`Patient`, `Patient.contact`, `HumanName`, `date`).
struct Definitions {
    td: Arc<TypeDef>,
    path: String,
}

/// What an element holds: an object of a type the model describes, or a resource (whose
/// type only its `resourceType` tells).
enum Content {
    Object(Definitions),
    Resource,
}

impl Definitions {
    fn of_type(model: &Model, name: &str) -> Option<Definitions> {
        let td = model.type_def(name).ok()?;
        Some(Definitions {
            path: td.name.clone(),
            td,
        })
    }

    fn of_resource(model: &Model, json: &Value) -> Option<Definitions> {
        Definitions::of_type(model, json.get("resourceType")?.as_str()?)
    }

    /// The element stored under JSON name `key` (`valueQuantity`), or named `key` in the
    /// definition (`value` for `value[x]`), with the type a choice name selects.
    fn element(&self, key: &str) -> Option<(ElementDef, Option<String>)> {
        let node = self.td.node(&self.path)?;
        if let Some((el, chosen)) = node.child(key) {
            return Some((el.clone(), chosen.map(str::to_string)));
        }
        node.elements
            .iter()
            .find(|e| e.choice && e.name == key)
            .map(|e| (e.clone(), None))
    }

    fn rank(&self) -> impl Fn(&str) -> Option<usize> + '_ {
        move |key: &str| self.td.node(&self.path)?.index_of(key)
    }

    fn content(&self, model: &Model, el: &ElementDef, chosen: Option<&str>) -> Option<Content> {
        if let Some(inline) = &el.inline {
            return Some(Content::Object(Definitions {
                td: self.td.clone(),
                path: inline.clone(),
            }));
        }
        let t = chosen.or_else(|| el.types.first().map(String::as_str))?;
        if matches!(t, "Resource" | "DomainResource") || model.is_resource_type(t) {
            return Some(Content::Resource);
        }
        Definitions::of_type(model, t).map(Content::Object)
    }
}

/// The definitions of the element at `steps` in `doc` (for a primitive, its type's: `id`
/// and `extension`), found by walking the structure model from the resource down.
fn definitions_at(model: &Model, doc: &Value, steps: &[Step]) -> Option<Definitions> {
    let mut json = doc;
    let mut defs = Definitions::of_resource(model, doc)?;
    let mut in_resource = false;
    for step in steps {
        match step {
            Step::Index(i) => json = json.get(*i)?,
            Step::Key(k) => {
                let base = k.strip_prefix('_').unwrap_or(k);
                let (el, chosen) = defs.element(base)?;
                json = json.get(k.as_str())?;
                match defs.content(model, &el, chosen.as_deref())? {
                    Content::Object(d) => {
                        defs = d;
                        in_resource = false;
                    }
                    Content::Resource => in_resource = true,
                }
            }
        }
        if in_resource && json.is_object() {
            defs = Definitions::of_resource(model, json)?;
            in_resource = false;
        }
    }
    (!in_resource).then_some(defs)
}

fn upper_first(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}

/// The JSON name for a value of type `ty` in element `el` (named `name` in the patch). A
/// choice element takes the type as suffix (`deceased` + `dateTime` -> `deceasedDateTime`).
fn json_name(
    el: &ElementDef,
    name: &str,
    chosen: Option<&str>,
    ty: Option<&str>,
) -> Result<String, String> {
    if !el.choice || chosen.is_some() {
        return Ok(name.to_string());
    }
    match ty {
        Some(t) if el.types.iter().any(|x| x == t) => Ok(format!("{}{}", el.name, upper_first(t))),
        Some(t) => Err(format!(
            "`{}[x]` cannot hold a {t}; its types are {}",
            el.name,
            el.types.join(", ")
        )),
        None => Err(untyped_choice(el)),
    }
}

fn untyped_choice(el: &ElementDef) -> String {
    format!(
        "`{}[x]` is a choice of types ({}); give the value as a value[x] so that its type is known",
        el.name,
        el.types.join(", ")
    )
}

/// The JSON of `value` placed in element `el` of `defs` (`chosen`: the type its JSON name
/// selects, for a choice element), with the value's FHIR type when the value states it. A
/// choice element's type comes only from a typed value, so parts cannot build one.
fn value_for(
    model: &Model,
    defs: &Definitions,
    el: &ElementDef,
    chosen: Option<&str>,
    value: &PatchValue,
) -> Result<(Option<String>, ElementJson), String> {
    if el.choice && chosen.is_none() && matches!(value, PatchValue::Parts(_)) {
        return Err(untyped_choice(el));
    }
    let content = defs.content(model, el, chosen);
    materialize(model, value, content.as_ref())
}

/// The JSON of a patch value placed in an element whose content is `content`, with the
/// value's FHIR type when the value states it.
fn materialize(
    model: &Model,
    value: &PatchValue,
    content: Option<&Content>,
) -> Result<(Option<String>, ElementJson), String> {
    match value {
        PatchValue::Typed { type_code, json } => Ok((Some(type_code.clone()), json.clone())),
        PatchValue::Resource(r) => Ok((
            r.get("resourceType")
                .and_then(Value::as_str)
                .map(str::to_string),
            ElementJson::of(r.clone()),
        )),
        PatchValue::Parts(parts) => match content {
            Some(Content::Object(defs)) => Ok((None, ElementJson::of(build(model, parts, defs)?))),
            Some(Content::Resource) => {
                Err("a resource must be given as a `resource` part, not built from parts".into())
            }
            None => {
                Err("the element's type is not known, so no value can be built from parts".into())
            }
        },
    }
}

/// A complex value built from named parts, each a child element of `defs`, in definition
/// order; repeated names of a repeating element become its items.
fn build(
    model: &Model,
    parts: &[(String, PatchValue)],
    defs: &Definitions,
) -> Result<Value, String> {
    let mut obj = Map::new();
    let rank = defs.rank();
    for (name, value) in parts {
        let (el, chosen) = defs
            .element(name)
            .ok_or_else(|| format!("`{}` has no element `{name}`", defs.path))?;
        let (ty, json) = value_for(model, defs, &el, chosen.as_deref(), value)?;
        let key = json_name(&el, name, chosen.as_deref(), ty.as_deref())?;
        if el.many {
            let n = element::list_len(&obj, &key);
            element::list_insert(&mut obj, &key, n, json, &rank);
        } else if element::has(&obj, &key) {
            return Err(format!("`{name}` is given twice, but it does not repeat"));
        } else {
            element::set_single(&mut obj, None, &key, json, &rank);
        }
    }
    if obj.is_empty() {
        return Err("a value built from parts needs at least one part".into());
    }
    Ok(Value::Object(obj))
}

/// The distinct elements of `doc` that `expression` selects.
fn select(model: &Model, doc: &Value, expression: &Expression) -> Result<Vec<Location>, Failure> {
    let ctx = EvalContext::new(model.path_model());
    let items = expression
        .evaluate(&ctx, doc)
        .map_err(Failure::Evaluation)?;
    let mut out: Vec<Location> = Vec::with_capacity(items.len());
    for item in &items {
        let Item::Node(node) = item else {
            return Err(Failure::Reason(format!(
                "the path gives the computed value {}, not an element of the resource",
                crate::fhir::types::truncate(&item.to_json().to_string(), 60)
            )));
        };
        let location = fhirpath::locate(doc, node)
            .ok_or_else(|| "the path selects an element outside the resource".to_string())?;
        if !out.contains(&location) {
            out.push(location);
        }
    }
    Ok(out)
}

fn exactly_one(mut targets: Vec<Location>, purpose: &str) -> Result<Location, Failure> {
    match targets.len() {
        1 => Ok(targets.remove(0)),
        0 => Err(Failure::Reason(format!(
            "the path selects no element {purpose}"
        ))),
        n => Err(Failure::Reason(format!(
            "the path selects {n} elements, and {purpose} it must select exactly one"
        ))),
    }
}

/// `Patient.name[0].given` -> (`Patient.name[0]`, `given`): the path of a list whose last step
/// is a plain element name. None for anything else (a function call, an indexer).
fn split_list_path(path: &str) -> Option<(&str, &str)> {
    let path = path.trim();
    let (parent, name) = path.rsplit_once('.')?;
    let plain = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    (plain && !parent.trim().is_empty()).then_some((parent.trim(), name))
}

impl Operation {
    fn value(&self) -> Result<&PatchValue, Failure> {
        self.value
            .as_ref()
            .ok_or_else(|| Failure::Reason("the operation has no value".into()))
    }

    fn apply(&self, model: &Model, doc: &mut Value) -> Result<(), Failure> {
        let targets = select(model, doc, &self.expression)?;
        match self.kind {
            OperationType::Delete => self.delete(doc, targets),
            OperationType::Replace => self.replace(model, doc, targets),
            OperationType::Add => self.add(model, doc, targets),
            OperationType::Insert | OperationType::Move => self.reorder(model, doc, targets),
        }
    }

    /// "Only a single element can be deleted"; a path that selects nothing is not an error.
    fn delete(&self, doc: &mut Value, targets: Vec<Location>) -> Result<(), Failure> {
        if targets.is_empty() {
            return Ok(());
        }
        let target = exactly_one(targets, "to delete")?;
        if target.is_root() {
            return Err(Failure::Reason(
                "the resource itself cannot be deleted".into(),
            ));
        }
        element::remove_element(doc, &target);
        Ok(())
    }

    fn replace(
        &self,
        model: &Model,
        doc: &mut Value,
        targets: Vec<Location>,
    ) -> Result<(), Failure> {
        let target = exactly_one(targets, "to replace")?;
        let (parent, key, index) = element::split(&target)
            .ok_or_else(|| "the resource itself cannot be replaced; use update".to_string())?;
        let defs = definitions_at(model, doc, &parent)
            .ok_or_else(|| format!("the type of the element holding `{key}` is not known"))?;
        let (el, chosen) = defs
            .element(&key)
            .ok_or_else(|| format!("`{}` has no element `{key}`", defs.path))?;
        let (ty, json) = value_for(model, &defs, &el, chosen.as_deref(), self.value()?)?;
        // A choice element takes the name of its new value's type.
        let new_key = match ty.as_deref() {
            Some(_) if el.choice => json_name(&el, &el.name, None, ty.as_deref())?,
            _ => key.clone(),
        };
        let rank = defs.rank();
        let obj = element::object_mut(doc, &parent)
            .ok_or_else(|| "the element's container is not an object".to_string())?;
        match index {
            Some(i) => element::list_set(obj, &key, i, json),
            None => element::set_single(obj, Some(&key), &new_key, json, &rank),
        }
        Ok(())
    }

    /// Adds `name` to the one element the path selects: appended when it repeats, set when
    /// it does not and is absent ("Add can be used for non-repeating elements as long as they
    /// do not already exist").
    fn add(&self, model: &Model, doc: &mut Value, targets: Vec<Location>) -> Result<(), Failure> {
        let name = self.name.as_deref().unwrap_or_default();
        let target = exactly_one(targets, "to add to")?;
        let defs = definitions_at(model, doc, target.steps())
            .ok_or_else(|| "the type of the selected element is not known".to_string())?;
        let (el, chosen) = defs
            .element(name)
            .ok_or_else(|| format!("`{}` has no element `{name}`", defs.path))?;
        let (ty, json) = value_for(model, &defs, &el, chosen.as_deref(), self.value()?)?;
        let key = json_name(&el, name, chosen.as_deref(), ty.as_deref())?;
        let rank = defs.rank();
        let occupied = |obj: &Map<String, Value>| {
            obj.keys().any(|k| {
                let base = k.strip_prefix('_').unwrap_or(k);
                defs.element(base).is_some_and(|(e, _)| e.name == el.name)
            })
        };
        let obj = element::children_mut(doc, &target, &rank)
            .ok_or_else(|| "the selected element cannot hold children".to_string())?;
        if el.many {
            let n = element::list_len(obj, &key);
            element::list_insert(obj, &key, n, json, &rank);
        } else if occupied(obj) {
            return Err(Failure::Reason(format!(
                "`{name}` already has a value and does not repeat; use replace"
            )));
        } else {
            element::set_single(obj, None, &key, json, &rank);
        }
        Ok(())
    }

    /// `insert` and `move`: the path names a list (the items of one repeating element).
    fn reorder(
        &self,
        model: &Model,
        doc: &mut Value,
        targets: Vec<Location>,
    ) -> Result<(), Failure> {
        let (holder, key) = self.list(model, doc, targets)?;
        let defs = definitions_at(model, doc, holder.steps())
            .ok_or_else(|| "the type of the element holding the list is not known".to_string())?;
        let (el, chosen) = defs
            .element(&key)
            .ok_or_else(|| format!("`{}` has no element `{key}`", defs.path))?;
        if !el.many {
            return Err(Failure::Reason(format!(
                "`{key}` does not repeat, so it is not a list"
            )));
        }
        let inserted = match self.kind {
            OperationType::Insert => {
                Some(value_for(model, &defs, &el, chosen.as_deref(), self.value()?)?.1)
            }
            _ => None,
        };
        let rank = defs.rank();
        let obj = element::children_mut(doc, &holder, &rank)
            .ok_or_else(|| "the element holding the list cannot hold children".to_string())?;
        let len = element::list_len(obj, &key);
        match inserted {
            Some(json) => {
                let index = self.index.unwrap_or_default();
                if index > len {
                    return Err(Failure::Reason(format!(
                        "index {index} is past the end of the list ({len} items)"
                    )));
                }
                element::list_insert(obj, &key, index, json, &rank);
            }
            None => {
                let (from, to) = (
                    self.source.unwrap_or_default(),
                    self.destination.unwrap_or_default(),
                );
                if from >= len || to >= len {
                    return Err(Failure::Reason(format!(
                        "source {from} and destination {to} must both be less than the list's {len} items"
                    )));
                }
                let item = element::list_remove(obj, &key, from);
                element::list_insert(obj, &key, to, item, &rank);
            }
        }
        Ok(())
    }

    /// The list the path names: the element holding it and its name. When the path selects
    /// items, they must all be items of one list; when it selects nothing (an empty list), its
    /// last step names the list and the rest must select the one element that holds it.
    fn list(
        &self,
        model: &Model,
        doc: &Value,
        targets: Vec<Location>,
    ) -> Result<(Location, String), Failure> {
        if targets.is_empty() {
            let (parent, name) = split_list_path(&self.path).ok_or_else(|| {
                "the path selects nothing, and does not end in an element name that could name an empty list".to_string()
            })?;
            let expression = Expression::new(parent).map_err(Failure::Evaluation)?;
            let holder = exactly_one(select(model, doc, &expression)?, "to hold the list")?;
            return Ok((holder, name.to_string()));
        }
        let mut list: Option<(Vec<Step>, String)> = None;
        for t in &targets {
            let (parent, key, index) = element::split(t)
                .ok_or_else(|| "the path selects the resource itself".to_string())?;
            if index.is_none() {
                return Err(Failure::Reason(format!(
                    "the path selects `{key}`, which is not an item of a list"
                )));
            }
            match &list {
                None => list = Some((parent, key)),
                Some(l) if *l == (parent, key) => {}
                Some(_) => {
                    return Err(Failure::Reason(
                        "the path selects items of more than one list".into(),
                    ))
                }
            }
        }
        let (parent, key) = list.ok_or_else(|| "the path selects no list".to_string())?;
        Ok((Location(parent), key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_paths_split_at_a_plain_last_name() {
        assert_eq!(
            split_list_path("Patient.name[0].given"),
            Some(("Patient.name[0]", "given"))
        );
        assert_eq!(
            split_list_path("Patient.identifier"),
            Some(("Patient", "identifier"))
        );
        assert_eq!(split_list_path("Patient.name.where(use = 'x')"), None);
        assert_eq!(split_list_path("identifier"), None);
    }

    #[test]
    fn choice_elements_are_named_by_the_type_of_their_value() {
        let el = ElementDef {
            name: "deceased".into(),
            min: 0,
            many: false,
            choice: true,
            types: vec!["boolean".into(), "dateTime".into()],
            summary: true,
            modifier: true,
            xml_attr: false,
            inline: None,
        };
        assert_eq!(
            json_name(&el, "deceased", None, Some("dateTime")).unwrap(),
            "deceasedDateTime"
        );
        assert!(json_name(&el, "deceased", None, Some("string")).is_err());
        assert!(json_name(&el, "deceased", None, None).is_err());
        assert_eq!(
            json_name(&el, "deceasedBoolean", Some("boolean"), Some("string")).unwrap(),
            "deceasedBoolean"
        );
    }
}
