//! A StructureDefinition snapshot compiled once into a validation plan: the element tree
//! (children by element id, slices beside the element they slice, `contentReference`
//! resolved), with per element the cardinality, allowed types and their profiles, fixed and
//! pattern values, the binding that is checked (required and extensible), the constraints
//! compiled to FHIRPath plans and the slicing with its discriminators compiled.

use std::sync::Arc;

use serde_json::Value;

use crate::fhir::model::type_code;
use crate::fhir::Severity;
use crate::fhirpath::{self, Expression};
use crate::terminology::Expansion;

/// `ElementDefinition.binding.strength`, the two strengths a validator enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strength {
    Required,
    Extensible,
}

#[derive(Debug)]
pub struct Binding {
    pub strength: Strength,
    pub value_set: String,
    /// The expansion, looked up on first use (None: not available).
    pub expansion: once_cell::sync::OnceCell<Option<Arc<Expansion>>>,
}

#[derive(Debug)]
pub struct Constraint {
    pub key: String,
    pub severity: Severity,
    pub human: String,
    pub expression: Arc<Expression>,
}

#[derive(Debug, Clone)]
pub struct TypeRule {
    pub code: String,
    pub profiles: Vec<String>,
    pub target_profiles: Vec<String>,
}

/// `ElementDefinition.slicing.discriminator.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiscriminatorKind {
    Value,
    Pattern,
    Type,
    Profile,
    Exists,
}

#[derive(Debug)]
pub struct Discriminator {
    pub kind: DiscriminatorKind,
    pub path: String,
    /// The path compiled; None for `$this`.
    pub expression: Option<Arc<Expression>>,
}

/// `ElementDefinition.slicing.rules`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlicingRules {
    Open,
    Closed,
    OpenAtEnd,
}

#[derive(Debug)]
pub struct Slicing {
    pub discriminators: Vec<Discriminator>,
    pub rules: SlicingRules,
    /// `ordered`: the values appear in the order of the slices' definitions.
    pub ordered: bool,
}

/// What a slice expects at one discriminator of its slicing, read from the slice's element
/// tree when the plan is compiled (`slicing::compile_keys`).
#[derive(Debug, Clone)]
pub enum SliceKey {
    Fixed(Value),
    Pattern(Value),
    /// An extension slice stands for its profile's URL.
    Url(String),
    /// No fixed value: the values of a required binding.
    Binding(String),
    Types(Vec<String>),
    Profiles(Vec<String>),
    Exists(bool),
    /// The slice does not say (or says through `resolve()`): matching cannot tell.
    Unknown,
}

/// One element definition of the snapshot.
#[derive(Debug)]
pub struct ElementRule {
    pub id: String,
    pub path: String,
    /// The last path segment without `[x]`.
    pub name: String,
    /// `_name`, the JSON key of a primitive's id and extensions.
    pub companion: String,
    pub choice: bool,
    pub min: u32,
    /// None: unbounded (`*`).
    pub max: Option<u32>,
    pub types: Vec<TypeRule>,
    /// The type name FHIRPath knows this element by: the type code, or the defining path of
    /// an inline BackboneElement/Element (`Timing.repeat`) or a `contentReference`.
    pub path_type: String,
    pub fixed: Option<Value>,
    pub pattern: Option<Value>,
    pub binding: Option<Binding>,
    pub constraints: Vec<Constraint>,
    pub max_length: Option<usize>,
    /// `minValue[x]` and `maxValue[x]` (integers, decimals, dates and times, Quantity).
    pub min_value: Option<Value>,
    pub max_value: Option<Value>,
    pub slice_name: Option<String>,
    pub slicing: Option<Slicing>,
    /// The slices of this element (their rules sit beside it in the snapshot).
    pub slices: Vec<usize>,
    /// For a slice: its key for each discriminator of the slicing it belongs to.
    pub slice_keys: Vec<SliceKey>,
    /// Child elements in snapshot order.
    pub children: Vec<usize>,
    /// `contentReference`: the element whose children this one has.
    pub content_reference: Option<usize>,
}

impl ElementRule {
    /// The type rule for an instance of type `code`.
    pub fn type_rule(&self, code: &str) -> Option<&TypeRule> {
        self.types.iter().find(|t| t.code == code)
    }

    pub fn is_extension(&self) -> bool {
        matches!(self.name.as_str(), "extension" | "modifierExtension")
            && self.types.len() == 1
            && self.types[0].code == "Extension"
    }
}

/// A compiled StructureDefinition.
#[derive(Debug)]
pub struct Plan {
    pub url: String,
    pub version: Option<String>,
    /// `StructureDefinition.type`: the resource or data type constrained.
    pub type_name: String,
    pub elements: Vec<ElementRule>,
    /// `StructureDefinition.context` of an extension definition: (type, expression).
    pub contexts: Vec<(String, String)>,
}

impl Plan {
    pub fn root(&self) -> &ElementRule {
        &self.elements[0]
    }

    /// The canonical with version, as issues cite it.
    pub fn canonical(&self) -> String {
        match &self.version {
            Some(v) => format!("{}|{v}", self.url),
            None => self.url.clone(),
        }
    }

    /// The child rule of `parent` called `name` (a slice's children included).
    pub fn child(&self, parent: usize, name: &str) -> Option<usize> {
        let el = &self.elements[parent];
        let kids = match el.content_reference {
            Some(target) => &self.elements[target].children,
            None => &el.children,
        };
        kids.iter()
            .copied()
            .find(|&c| self.elements[c].name == name)
    }

    /// The children that apply to an instance of `element`.
    pub fn children_of(&self, element: usize) -> &[usize] {
        let el = &self.elements[element];
        match el.content_reference {
            Some(target) => &self.elements[target].children,
            None => &el.children,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("StructureDefinition {url} has no snapshot")]
    NoSnapshot { url: String },
    #[error("StructureDefinition {url}: element {element}: {reason}")]
    BadElement {
        url: String,
        element: String,
        reason: String,
    },
}

const BEST_PRACTICE_EXT: &str =
    "http://hl7.org/fhir/StructureDefinition/elementdefinition-bestpractice";

/// R4 core constraints whose published expression is wrong by FHIRPath's own rules, with
/// the correction later FHIR versions published. que-7 tests `answer is Boolean`, but a
/// FHIR `boolean` is not a System Boolean (official FHIRPath suite, testType12), so the R4
/// text fails every valid `exists` condition; R5 reads `answer is boolean`.
const CORRECTED: &[(&str, &str, &str)] = &[(
    "que-7",
    "operator = 'exists' implies (answer is Boolean)",
    "operator = 'exists' implies (answer is boolean)",
)];

fn corrected<'t>(key: &str, text: &'t str) -> &'t str {
    CORRECTED
        .iter()
        .find(|(k, published, _)| *k == key && *published == text)
        .map_or(text, |(_, _, fixed)| fixed)
}

/// ele-1 is checked natively (faster than FHIRPath, and the strict reader already refuses
/// empty objects, so only `{"id": ...}`-only elements are left for it).
pub const ELE_1: &str = "ele-1";

/// Compiles a StructureDefinition with a snapshot.
pub fn compile(sd: &Value) -> Result<Plan, PlanError> {
    let url = sd
        .get("url")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let version = sd
        .get("version")
        .and_then(Value::as_str)
        .map(str::to_string);
    let type_name = sd
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let elements = sd
        .pointer("/snapshot/element")
        .and_then(Value::as_array)
        .filter(|e| !e.is_empty())
        .ok_or_else(|| PlanError::NoSnapshot { url: url.clone() })?;
    let mut rules: Vec<ElementRule> = Vec::with_capacity(elements.len());
    let mut by_id: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    let mut references: Vec<(usize, String)> = Vec::new();
    for e in elements {
        let path = e.get("path").and_then(Value::as_str).unwrap_or_default();
        let id = e
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or(path)
            .to_string();
        let index = rules.len();
        let rule = element_rule(&url, &id, path, e)?;
        if let Some(cr) = e.get("contentReference").and_then(Value::as_str) {
            references.push((index, cr.trim_start_matches('#').to_string()));
        }
        // Attach: a slice to the element it slices, anything else to its parent.
        if let Some((parent, last)) = id.rsplit_once('.') {
            // `name:slice` slices `name`; a re-slice `name:slice/sub` slices `name:slice`.
            if let Some(cut) = last.rfind([':', '/']) {
                let base_id = format!("{parent}.{}", &last[..cut]);
                if let Some(&b) = by_id.get(&base_id) {
                    rules[b].slices.push(index);
                }
            } else if let Some(&p) = by_id.get(parent) {
                rules[p].children.push(index);
            }
        }
        by_id.insert(id, index);
        rules.push(rule);
    }
    for (index, target) in references {
        rules[index].content_reference = by_id.get(&target).copied();
        if let Some(t) = rules[index].content_reference {
            rules[index].path_type = rules[t].path.clone();
        }
    }
    let contexts = sd
        .get("context")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| {
            Some((
                c.get("type")?.as_str()?.to_string(),
                c.get("expression")?.as_str()?.to_string(),
            ))
        })
        .collect();
    Ok(Plan {
        url,
        version,
        type_name,
        elements: rules,
        contexts,
    })
}

fn element_rule(url: &str, id: &str, path: &str, e: &Value) -> Result<ElementRule, PlanError> {
    let bad = |reason: String| PlanError::BadElement {
        url: url.to_string(),
        element: id.to_string(),
        reason,
    };
    let last = path.rsplit('.').next().unwrap_or(path);
    let choice = last.ends_with("[x]");
    let name = last.trim_end_matches("[x]").to_string();
    let types: Vec<TypeRule> = e
        .get("type")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|t| {
            Some(TypeRule {
                code: type_code(t)?,
                profiles: strings(t.get("profile")),
                target_profiles: strings(t.get("targetProfile")),
            })
        })
        .collect();
    let base_path = e
        .pointer("/base/path")
        .and_then(Value::as_str)
        .unwrap_or(path)
        .trim_end_matches("[x]");
    let path_type = match types.first().map(|t| t.code.as_str()) {
        Some("BackboneElement") | Some("Element") if path.contains('.') => base_path.to_string(),
        Some(code) if types.len() == 1 => code.to_string(),
        // the root, or a choice whose type is taken from the instance's key
        _ if !path.contains('.') => path.to_string(),
        _ => String::new(),
    };
    let max = match e.get("max").and_then(Value::as_str) {
        None | Some("*") => None,
        Some(m) => Some(
            m.parse::<u32>()
                .map_err(|_| bad(format!("max `{m}` is not a number or *")))?,
        ),
    };
    let min = e.get("min").and_then(Value::as_u64).unwrap_or(0) as u32;
    let (fixed, pattern) = fixed_and_pattern(e);
    let binding = e.get("binding").and_then(|b| {
        let strength = match b.get("strength").and_then(Value::as_str)? {
            "required" => Strength::Required,
            "extensible" => Strength::Extensible,
            _ => return None,
        };
        Some(Binding {
            strength,
            value_set: b.get("valueSet").and_then(Value::as_str)?.to_string(),
            expansion: once_cell::sync::OnceCell::new(),
        })
    });
    let mut constraints = Vec::new();
    for c in e
        .get("constraint")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let key = c.get("key").and_then(Value::as_str).unwrap_or_default();
        if key == ELE_1 {
            continue;
        }
        let Some(text) = c.get("expression").and_then(Value::as_str) else {
            continue;
        };
        let text = corrected(key, text);
        let best_practice = c
            .get("extension")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .any(|x| {
                x.get("url").and_then(Value::as_str) == Some(BEST_PRACTICE_EXT)
                    && x.get("valueBoolean").and_then(Value::as_bool) == Some(true)
            });
        let severity = match c.get("severity").and_then(Value::as_str) {
            Some("error") if !best_practice => Severity::Error,
            _ => Severity::Warning,
        };
        let expression = fhirpath::compile(text)
            .map_err(|err| bad(format!("constraint {key} does not compile: {err}")))?;
        constraints.push(Constraint {
            key: key.to_string(),
            severity,
            human: c
                .get("human")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            expression,
        });
    }
    let slicing = match e.get("slicing") {
        Some(s) => Some(slicing(s).map_err(bad)?),
        None => None,
    };
    Ok(ElementRule {
        id: id.to_string(),
        path: path.to_string(),
        companion: format!("_{name}"),
        name,
        choice,
        min,
        max,
        types,
        path_type,
        fixed,
        pattern,
        binding,
        constraints,
        max_length: e
            .get("maxLength")
            .and_then(Value::as_u64)
            .map(|n| n as usize),
        min_value: choice_value(e, "minValue"),
        max_value: choice_value(e, "maxValue"),
        slice_name: e
            .get("sliceName")
            .and_then(Value::as_str)
            .map(str::to_string),
        slicing,
        slices: Vec::new(),
        slice_keys: Vec::new(),
        children: Vec::new(),
        content_reference: None,
    })
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect()
}

/// `fixed[x]` and `pattern[x]` of an element definition.
fn fixed_and_pattern(e: &Value) -> (Option<Value>, Option<Value>) {
    let (mut fixed, mut pattern) = (None, None);
    if let Some(o) = e.as_object() {
        for (k, v) in o {
            if k.starts_with("fixed") && k.len() > 5 {
                fixed = Some(v.clone());
            } else if k.starts_with("pattern") && k.len() > 7 {
                pattern = Some(v.clone());
            }
        }
    }
    (fixed, pattern)
}

/// The value of a choice element of an element definition (`minValueDate`, ...).
fn choice_value(e: &Value, name: &str) -> Option<Value> {
    e.as_object()?
        .iter()
        .find(|(k, _)| {
            k.strip_prefix(name)
                .is_some_and(|t| t.starts_with(|c: char| c.is_ascii_uppercase()))
        })
        .map(|(_, v)| v.clone())
}

fn slicing(s: &Value) -> Result<Slicing, String> {
    let rules = match s.get("rules").and_then(Value::as_str) {
        Some("closed") => SlicingRules::Closed,
        Some("openAtEnd") => SlicingRules::OpenAtEnd,
        _ => SlicingRules::Open,
    };
    let mut discriminators = Vec::new();
    for d in s
        .get("discriminator")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let kind = match d.get("type").and_then(Value::as_str) {
            Some("value") => DiscriminatorKind::Value,
            Some("pattern") => DiscriminatorKind::Pattern,
            Some("type") => DiscriminatorKind::Type,
            Some("profile") => DiscriminatorKind::Profile,
            Some("exists") => DiscriminatorKind::Exists,
            other => return Err(format!("unknown discriminator type {other:?}")),
        };
        let path = d
            .get("path")
            .and_then(Value::as_str)
            .unwrap_or("$this")
            .to_string();
        let expression = if path == "$this" {
            None
        } else {
            Some(
                fhirpath::compile(&path)
                    .map_err(|e| format!("discriminator path `{path}` does not compile: {e}"))?,
            )
        };
        discriminators.push(Discriminator {
            kind,
            path,
            expression,
        });
    }
    Ok(Slicing {
        discriminators,
        rules,
        ordered: s.get("ordered").and_then(Value::as_bool).unwrap_or(false),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_published_que_7_is_replaced_by_its_correction() {
        let plan = compile(
            &json!({"url": "urn:q", "type": "Questionnaire", "snapshot": {"element": [
            {"id": "Questionnaire", "path": "Questionnaire"},
            {"id": "Questionnaire.item.enableWhen", "path": "Questionnaire.item.enableWhen",
             "constraint": [{"key": "que-7", "severity": "error", "human": "h",
                             "expression": "operator = 'exists' implies (answer is Boolean)"}]}]}}),
        )
        .unwrap();
        assert_eq!(
            plan.elements[1].constraints[0].expression.text(),
            "operator = 'exists' implies (answer is boolean)"
        );
    }

    #[test]
    fn slices_sit_beside_their_element_and_children_under_their_parent() {
        let plan = compile(&json!({
            "url": "urn:p", "type": "Patient",
            "snapshot": {"element": [
                {"id": "Patient", "path": "Patient", "min": 0, "max": "*"},
                {"id": "Patient.identifier", "path": "Patient.identifier", "min": 1, "max": "*",
                 "type": [{"code": "Identifier"}],
                 "slicing": {"discriminator": [{"type": "value", "path": "system"}], "rules": "closed"}},
                {"id": "Patient.identifier:mrn", "path": "Patient.identifier", "sliceName": "mrn",
                 "min": 1, "max": "1", "type": [{"code": "Identifier"}]},
                {"id": "Patient.identifier:mrn.system", "path": "Patient.identifier.system",
                 "min": 1, "max": "1", "type": [{"code": "uri"}], "fixedUri": "urn:mrn"}
            ]}
        }))
        .unwrap();
        assert_eq!(plan.root().children, vec![1]);
        assert_eq!(plan.elements[1].slices, vec![2]);
        assert_eq!(plan.elements[2].children, vec![3]);
        assert_eq!(plan.elements[3].fixed, Some(json!("urn:mrn")));
        assert_eq!(
            plan.elements[1].slicing.as_ref().unwrap().rules,
            SlicingRules::Closed
        );
        assert_eq!(plan.elements[2].max, Some(1));
    }
}
