//! Differential test of fhirgate's FHIRPath engine against the reference JavaScript engine,
//! fhirpath.js (npm package `fhirpath`, pinned in `tests/fhirpath_differential/package.json`).
//!
//! Every expression of `tests/fhirpath_differential/expressions.txt` is evaluated on its R4
//! example (from `testdata/r4-examples.tgz`) by both engines, and the result collections are
//! compared item by item: the FHIRPath type of each item and its value. Where the engines
//! represent the same result differently, both sides are reduced to one form (rules in
//! `item_agrees` and the functions it calls, summed up in the deviations file). A case that disagrees must be listed, with the reason, in
//! `conformance/fhirpath-differential-deviations.md`; an unlisted disagreement, a listed case
//! that now agrees, a listed case that no longer exists, or a panic of our engine fails the
//! test.
//!
//! Needs Node.js (20 or later; `FHIRGATE_NODE` names another binary) and the package installed
//! with `npm ci --prefix tests/fhirpath_differential`; the test fails, saying so, when either
//! is missing. Both engines run with UTC as the local time zone. `FHIRPATH_DIFF_VERBOSE=1`
//! prints the results of agreeing cases as well.
// A test that reports every case by name (STYLE: specification suites) prints, and the node
// binary may be chosen by the environment.
#![allow(clippy::disallowed_macros, clippy::disallowed_methods)]

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::process::Command;

use fhirgate::fhirpath::{self, EvalContext, Item, ModelInfo};
use serde_json::{json, Value};

use crate::support;

fn js_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fhirpath_differential")
}

fn deviations_file() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("conformance/fhirpath-differential-deviations.md")
}

/// One expression evaluated on one example resource.
#[derive(Debug, Clone)]
struct Case {
    line: usize,
    resource: String,
    expression: String,
}

impl Case {
    /// How the deviations file names the case.
    fn key(&self) -> String {
        format!("{}: {}", self.resource, self.expression)
    }
}

/// The expressions file: `[File.json]` selects the example the following lines are evaluated
/// on; every other non-blank line not starting with `#` is an expression.
fn read_cases() -> Vec<Case> {
    let path = js_dir().join("expressions.txt");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let mut cases = Vec::new();
    let mut resource = None::<String>;
    for (i, line) in text.lines().enumerate() {
        let l = line.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        if let Some(name) = l.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            resource = Some(name.to_string());
            continue;
        }
        let resource = resource
            .clone()
            .unwrap_or_else(|| panic!("line {}: expression before any [File.json]", i + 1));
        cases.push(Case {
            line: i + 1,
            resource,
            expression: l.to_string(),
        });
    }
    cases
}

/// One item of a result collection as both engines are reduced to it: its FHIRPath type
/// (`FHIR.HumanName`, `System.String`, "" when unknown), its value (JSON of a node; a System
/// value as FHIR JSON; a Quantity as `{"value", "unit"}`; a TypeInfo as `{"namespace",
/// "name"}`) and, for a primitive node, the `_name` companion holding its id and extensions.
#[derive(Debug, Clone)]
struct Out {
    ty: String,
    value: Value,
    ext: Option<Value>,
}

#[derive(Debug, Clone)]
enum Outcome {
    Items(Vec<Out>),
    Error(String),
}

impl Outcome {
    fn render(&self) -> String {
        match self {
            Outcome::Error(e) => format!("error: {e}"),
            Outcome::Items(items) => {
                let parts: Vec<String> = items
                    .iter()
                    .map(|o| {
                        let mut v = o.value.to_string();
                        if v.chars().count() > 160 {
                            v = format!("{}...", v.chars().take(160).collect::<String>());
                        }
                        match &o.ext {
                            Some(e) => format!("{} {v} (+{e})", o.ty),
                            None => format!("{} {v}", o.ty),
                        }
                    })
                    .collect();
                format!("[{}]", parts.join(", "))
            }
        }
    }
}

/// The FHIRPath type name of one of our items.
fn our_type(item: &Item, model: &dyn ModelInfo) -> String {
    match item {
        Item::Node(n) => {
            if n.ty.is_empty() {
                return String::new();
            }
            // inline backbone elements are named by their path (`Patient.contact`); their
            // type is the BackboneElement or Element they derive from
            let mut t = n.ty;
            while t.contains('.') {
                match model.base_type(t) {
                    Some(b) => t = b,
                    None => break,
                }
            }
            format!("FHIR.{t}")
        }
        Item::TypeInfo(..) => "TypeInfo".to_string(),
        other => format!(
            "System.{}",
            other.sys_type().map(|s| s.name()).unwrap_or("?")
        ),
    }
}

fn our_item(item: &Item, model: &dyn ModelInfo) -> Out {
    let ty = our_type(item, model);
    match item {
        Item::Node(n) => Out {
            ty,
            value: n.json.cloned().unwrap_or(Value::Null),
            ext: n.ext.cloned(),
        },
        Item::Quantity(q) => Out {
            ty,
            value: json!({"value": q.value.to_string(), "unit": q.unit}),
            ext: None,
        },
        other => Out {
            ty,
            value: other.to_json(),
            ext: None,
        },
    }
}

fn ours(case: &Case, resource: &Value, model: &dyn ModelInfo) -> Result<Outcome, String> {
    let run = || -> Result<Vec<Out>, String> {
        let expr = fhirpath::compile(&case.expression).map_err(|e| e.to_string())?;
        let mut ctx = EvalContext::new(model);
        ctx.resource = Some(resource);
        ctx.root_resource = Some(resource);
        let items = expr.evaluate(&ctx, resource).map_err(|e| e.to_string())?;
        Ok(items.iter().map(|i| our_item(i, model)).collect())
    };
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)) {
        Ok(Ok(items)) => Ok(Outcome::Items(items)),
        Ok(Err(e)) => Ok(Outcome::Error(e)),
        Err(p) => Err(p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default()),
    }
}

/// Runs `runner.js` over every case at once.
fn reference(cases: &[Case]) -> HashMap<usize, Outcome> {
    let dir = js_dir();
    assert!(
        dir.join("node_modules/fhirpath/package.json").is_file(),
        "fhirpath.js is not installed: run `npm ci --prefix tests/fhirpath_differential` \
         (Node.js 20 or later) before this test"
    );
    let examples: HashMap<&str, &Value> = support::r4_examples()
        .iter()
        .map(|(name, v)| (name.as_str(), v))
        .collect();
    let mut resources = serde_json::Map::new();
    for c in cases {
        let r = examples.get(c.resource.as_str()).unwrap_or_else(|| {
            panic!(
                "line {}: no R4 example named {} in r4-examples.tgz",
                c.line, c.resource
            )
        });
        resources.insert(c.resource.clone(), (*r).clone());
    }
    let input = json!({
        "resources": resources,
        "cases": cases.iter().map(|c| json!({
            "id": c.line, "resource": c.resource, "expression": c.expression
        })).collect::<Vec<_>>(),
    });
    let tmp = tempfile::tempdir().expect("temp dir");
    let input_path = tmp.path().join("cases.json");
    std::fs::write(&input_path, serde_json::to_vec(&input).unwrap()).expect("write cases");
    let node = std::env::var_os("FHIRGATE_NODE").unwrap_or_else(|| "node".into());
    let output = Command::new(&node)
        .arg(dir.join("runner.js"))
        .arg(&input_path)
        .current_dir(&dir)
        .env("TZ", "UTC")
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run Node.js ({}): {e}; install Node.js 20 or later (or set FHIRGATE_NODE) \
                 and run `npm ci --prefix tests/fhirpath_differential`",
                node.to_string_lossy()
            )
        });
    assert!(
        output.status.success(),
        "runner.js failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let results: Vec<Value> = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        let text = String::from_utf8_lossy(&output.stdout);
        panic!(
            "runner.js output is not JSON ({e}): {}",
            text.chars().take(500).collect::<String>()
        )
    });
    let mut out = HashMap::new();
    for r in results {
        let id = r["id"].as_u64().expect("id") as usize;
        let outcome = match r.get("error") {
            Some(e) => Outcome::Error(e.as_str().unwrap_or_default().to_string()),
            None => Outcome::Items(
                r["result"]
                    .as_array()
                    .expect("result")
                    .iter()
                    .map(|i| Out {
                        ty: i["type"].as_str().unwrap_or_default().to_string(),
                        value: i["value"].clone(),
                        ext: i.get("ext").cloned(),
                    })
                    .collect(),
            ),
        };
        out.insert(id, outcome);
    }
    out
}

/// A number as both sides write it: a JSON number, or fhirpath.js's `{"$decimal": "1.50"}`
/// (its decimal type).
fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_str().parse().ok(),
        Value::Object(m) if m.len() == 1 => m.get("$decimal")?.as_str()?.parse().ok(),
        _ => None,
    }
}

/// Decimals compare numerically (fhirpath.js reads resources with `JSON.parse`, so `1.50`
/// arrives as `1.5`): equal to 12 significant digits.
fn numbers_agree(a: f64, b: f64) -> bool {
    a == b || (a - b).abs() <= 1e-12 * a.abs().max(b.abs())
}

fn agree(ours: &Value, theirs: &Value) -> bool {
    if let (Some(a), Some(b)) = (number(ours), number(theirs)) {
        return numbers_agree(a, b);
    }
    match (ours, theirs) {
        (Value::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| agree(x, y))
        }
        (Value::Object(a), Value::Object(b)) => {
            // a Quantity value is a decimal string on both sides
            if let (Some(Value::String(x)), Some(Value::String(y))) =
                (a.get("value"), b.get("value"))
            {
                if a.len() == 2 && b.len() == 2 && a.contains_key("unit") {
                    return match (x.parse::<f64>(), y.parse::<f64>()) {
                        (Ok(x), Ok(y)) => numbers_agree(x, y) && a.get("unit") == b.get("unit"),
                        _ => x == y && a.get("unit") == b.get("unit"),
                    };
                }
            }
            a.len() == b.len() && a.iter().all(|(k, v)| b.get(k).is_some_and(|w| agree(v, w)))
        }
        _ => ours == theirs,
    }
}

/// fhirpath.js keeps numbers as JavaScript numbers and infers Integer or Decimal from the value
/// (`185 * 2` is an Integer to it), and types a TypeInfo as `System.Object`.
fn type_agrees(ours: &str, theirs: &str) -> bool {
    ours == theirs
        || (matches!(ours, "System.Integer" | "System.Decimal")
            && matches!(theirs, "System.Integer" | "System.Decimal"))
        || (ours == "TypeInfo" && theirs == "System.Object")
}

/// A System DateTime or Time value split into what FHIRPath compares: the local fields (date
/// and time digits with the fraction of a second in milliseconds) and the zone offset in
/// minutes, if any.
fn date_time_parts(text: &str) -> Option<(Vec<i64>, Option<i64>)> {
    let (body, offset) = if let Some(b) = text.strip_suffix('Z') {
        (b, Some(0))
    } else {
        match text.rfind(['+', '-']).filter(|&i| text[..i].contains(':')) {
            Some(i) => {
                let (h, m) = text[i + 1..].split_once(':')?;
                let minutes = h.parse::<i64>().ok()? * 60 + m.parse::<i64>().ok()?;
                let sign = if text[i..].starts_with('-') { -1 } else { 1 };
                (&text[..i], Some(sign * minutes))
            }
            None => (text, None),
        }
    };
    let (body, millis) = match body.split_once('.') {
        Some((b, f)) => {
            let digits: String = f.chars().chain("000".chars()).take(3).collect();
            (b, Some(digits.parse::<i64>().ok()?))
        }
        None => (body, None),
    };
    let mut fields = body
        .split(['-', 'T', ':'])
        .filter(|f| !f.is_empty())
        .map(|f| f.parse::<i64>().ok())
        .collect::<Option<Vec<_>>>()?;
    fields.extend(millis);
    Some((fields, offset))
}

/// DateTime and Time values agree when they have the same precision and denote the same
/// moment: fhirpath.js writes every computed DateTime in UTC with `-00:00` (we keep the zone
/// of the input), and `10:20:30.5` and `10:20:30.500` are the same Time.
fn date_times_agree(ours: &Value, theirs: &Value) -> bool {
    let (Some(a), Some(b)) = (ours.as_str(), theirs.as_str()) else {
        return false;
    };
    let (Some((fa, za)), Some((fb, zb))) = (date_time_parts(a), date_time_parts(b)) else {
        return false;
    };
    if fa.len() != fb.len() || za.is_some() != zb.is_some() {
        return false;
    }
    match (za, zb) {
        (Some(za), Some(zb)) if fa.len() >= 5 => {
            let instant = |f: &[i64], z: i64| {
                let date = chrono::NaiveDate::from_ymd_opt(f[0] as i32, f[1] as u32, f[2] as u32);
                let time = chrono::NaiveTime::from_hms_milli_opt(
                    f[3] as u32,
                    f[4] as u32,
                    f.get(5).copied().unwrap_or(0) as u32,
                    f.get(6).copied().unwrap_or(0) as u32,
                );
                Some(date?.and_time(time?) - chrono::Duration::minutes(z))
            };
            instant(&fa, za).is_some() && instant(&fa, za) == instant(&fb, zb)
        }
        _ => fa == fb && za == zb,
    }
}

fn item_agrees(ours: &Out, theirs: &Out) -> bool {
    let values_agree =
        if matches!(ours.ty.as_str(), "System.DateTime" | "System.Time") && ours.ty == theirs.ty {
            date_times_agree(&ours.value, &theirs.value)
        } else {
            agree(&ours.value, &theirs.value)
        };
    type_agrees(&ours.ty, &theirs.ty)
        && values_agree
        && match (&ours.ext, &theirs.ext) {
            (None, None) => true,
            (Some(a), Some(b)) => agree(a, b),
            _ => false,
        }
}

/// Operations whose result order the specification leaves open (`children()`,
/// `descendants()`, `repeat()`, union and `distinct()`: "no expectation of order").
fn order_is_open(expression: &str) -> bool {
    [
        "|",
        "union(",
        "distinct(",
        "children(",
        "descendants(",
        "repeat(",
    ]
    .iter()
    .any(|op| expression.contains(op))
}

/// How the two outcomes of a case compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Agreement {
    Same,
    /// The same items in another order, where the specification leaves the order open.
    Reordered,
    BothErrors,
    Differ,
}

fn compare(case: &Case, ours: &Outcome, theirs: &Outcome) -> Agreement {
    match (ours, theirs) {
        (Outcome::Error(_), Outcome::Error(_)) => Agreement::BothErrors,
        (Outcome::Items(a), Outcome::Items(b)) => {
            if a.len() != b.len() {
                return Agreement::Differ;
            }
            if a.iter().zip(b).all(|(x, y)| item_agrees(x, y)) {
                return Agreement::Same;
            }
            if !order_is_open(&case.expression) {
                return Agreement::Differ;
            }
            let mut unused: Vec<&Out> = b.iter().collect();
            let reordered = a
                .iter()
                .all(|x| match unused.iter().position(|y| item_agrees(x, y)) {
                    Some(i) => {
                        unused.remove(i);
                        true
                    }
                    None => false,
                });
            if reordered {
                Agreement::Reordered
            } else {
                Agreement::Differ
            }
        }
        _ => Agreement::Differ,
    }
}

/// Case keys listed in the deviations file: lines `File.json: expression` inside fenced
/// code blocks.
fn listed_deviations() -> BTreeSet<String> {
    let text = std::fs::read_to_string(deviations_file()).unwrap_or_default();
    let mut listed = BTreeSet::new();
    let mut in_block = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_block = !in_block;
            continue;
        }
        if in_block && line.contains(".json: ") {
            listed.insert(line.trim().to_string());
        }
    }
    listed
}

#[test]
fn fhirpath_js_and_our_engine_agree_on_the_r4_examples() {
    let model = support::path_model();
    let cases = read_cases();
    assert!(cases.len() >= 300, "only {} expressions", cases.len());
    let theirs = reference(&cases);
    let examples: HashMap<&str, &Value> = support::r4_examples()
        .iter()
        .map(|(name, v)| (name.as_str(), v))
        .collect();
    let listed = listed_deviations();
    // FHIRPATH_DIFF_VERBOSE=1 prints both results of agreeing cases too
    let verbose = std::env::var_os("FHIRPATH_DIFF_VERBOSE").is_some();
    let mut keys = BTreeSet::new();
    let (mut agreeing, mut both_errors, mut reordered, mut listed_seen) = (0, 0, 0, 0);
    let mut unexpected = Vec::new();
    let mut now_agreeing = Vec::new();
    let mut panics = Vec::new();
    for case in &cases {
        let key = case.key();
        assert!(
            keys.insert(key.clone()),
            "line {}: duplicate case {key}",
            case.line
        );
        let resource = examples[case.resource.as_str()];
        let ours = match ours(case, resource, model) {
            Ok(o) => o,
            Err(message) => {
                println!("line {} PANIC {key}: {message}", case.line);
                panics.push(key);
                continue;
            }
        };
        let theirs = theirs
            .get(&case.line)
            .unwrap_or_else(|| panic!("runner.js gave no result for line {}", case.line));
        let agreement = compare(case, &ours, theirs);
        if agreement != Agreement::Differ {
            agreeing += 1;
            if listed.contains(&key) {
                now_agreeing.push(key.clone());
            }
            let tag = match agreement {
                Agreement::BothErrors => {
                    both_errors += 1;
                    "ok (both errors)"
                }
                Agreement::Reordered => {
                    reordered += 1;
                    "ok (other order)"
                }
                _ => "ok",
            };
            if verbose || agreement != Agreement::Same {
                println!(
                    "line {} {tag} {key}\n    fhirgate:    {}\n    fhirpath.js: {}",
                    case.line,
                    ours.render(),
                    theirs.render()
                );
            } else {
                println!("line {} {tag} {key}", case.line);
            }
            continue;
        }
        let tag = if listed.contains(&key) {
            listed_seen += 1;
            "deviation (listed)"
        } else {
            unexpected.push(key.clone());
            "DIFFERS"
        };
        println!(
            "line {} {tag} {key}\n    fhirgate:    {}\n    fhirpath.js: {}",
            case.line,
            ours.render(),
            theirs.render()
        );
    }
    let stale: Vec<_> = listed.iter().filter(|k| !keys.contains(*k)).collect();
    println!(
        "fhirpath.js differential: {} expressions, {agreeing} agree ({both_errors} of them by \
         both failing, {reordered} in another order), {listed_seen} listed deviations, {} \
         unlisted disagreements, {} panics",
        cases.len(),
        unexpected.len(),
        panics.len()
    );
    assert!(panics.is_empty(), "our engine panicked on {panics:#?}");
    assert!(
        unexpected.is_empty(),
        "disagreements with fhirpath.js not listed in {}: {unexpected:#?}",
        deviations_file().display()
    );
    assert!(
        now_agreeing.is_empty(),
        "listed as deviations but agreeing now (remove them from the list): {now_agreeing:#?}"
    );
    assert!(
        stale.is_empty(),
        "listed deviations naming no case: {stale:#?}"
    );
}
