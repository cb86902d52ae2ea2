//! Issues found in what a client sent, and the OperationOutcome that reports them.

use serde_json::{json, Map, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Fatal,
    Error,
    Warning,
    Information,
}

impl Severity {
    pub fn code(self) -> &'static str {
        match self {
            Severity::Fatal => "fatal",
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Information => "information",
        }
    }
}

/// One finding: severity, an issue-type code (FHIR value set `issue-type`), a
/// sentence for a person, where (a FHIRPath expression with indexes), and optionally
/// what raised it (the canonical of the profile whose rule failed).
#[derive(Debug, Clone, PartialEq)]
pub struct Issue {
    pub severity: Severity,
    pub code: &'static str,
    pub diagnostics: String,
    pub expression: Option<String>,
    pub source: Option<String>,
}

/// The core extension that names the source of an issue (R4 `operationoutcome-issue-source`).
pub const ISSUE_SOURCE_EXT: &str =
    "http://hl7.org/fhir/StructureDefinition/operationoutcome-issue-source";

impl Issue {
    pub fn error(code: &'static str, diagnostics: impl Into<String>) -> Issue {
        Issue {
            severity: Severity::Error,
            code,
            diagnostics: diagnostics.into(),
            expression: None,
            source: None,
        }
    }

    /// Names what raised the issue (rendered as the `operationoutcome-issue-source` extension).
    pub fn from_source(mut self, source: impl Into<String>) -> Issue {
        self.source = Some(source.into());
        self
    }

    pub fn at(mut self, expression: impl Into<String>) -> Issue {
        self.expression = Some(expression.into());
        self
    }

    pub fn severity(mut self, s: Severity) -> Issue {
        self.severity = s;
        self
    }

    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        if let Some(source) = &self.source {
            m.insert(
                "extension".into(),
                json!([{"url": ISSUE_SOURCE_EXT, "valueString": source}]),
            );
        }
        m.insert("severity".into(), json!(self.severity.code()));
        m.insert("code".into(), json!(self.code));
        m.insert("diagnostics".into(), json!(self.diagnostics));
        if let Some(e) = &self.expression {
            m.insert("expression".into(), json!([e]));
        }
        Value::Object(m)
    }
}

/// An OperationOutcome resource holding the issues (one `information` issue when empty).
pub fn operation_outcome(issues: &[Issue]) -> Value {
    let issues: Vec<Value> = if issues.is_empty() {
        vec![json!({"severity": "information", "code": "informational", "diagnostics": "All OK"})]
    } else {
        issues.iter().map(Issue::to_json).collect()
    };
    json!({"resourceType": "OperationOutcome", "issue": issues})
}

pub fn has_errors(issues: &[Issue]) -> bool {
    issues
        .iter()
        .any(|i| matches!(i.severity, Severity::Error | Severity::Fatal))
}
