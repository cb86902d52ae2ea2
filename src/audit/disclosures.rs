//! The accounting of disclosures (HIPAA 164.528): the AuditEvents that record
//! access to one patient's data, denied attempts included, over a period. It is
//! an AuditEvent search (`patient=Patient/ID`, `date=ge`/`le`, `_sort=date`)
//! run by the search engine like any other, with the audit indexer's catch-up,
//! so `Patient/{id}/$disclosures`, `fhirgate audit report` and the console's
//! report read exactly what `AuditEvent?patient=...` reads. Here: the period,
//! the search's parameters, the paging through every page, and the report's
//! rows (one per AuditEvent) with their CSV form.
//!
//! Architecture invariant: no HTTP; no SQL of its own (the search engine and the
//! store narrow what the caller may see, and callers decide access first with
//! `AccessContext::decide_disclosures`).

use serde::Serialize;
use serde_json::Value;

use crate::access::AccessContext;
use crate::fhir::types::Id;
use crate::search::{SearchEngine, SearchError};
use crate::store::Store;

/// The report's columns, in order (DESIGN section 12).
pub const COLUMNS: [&str; 9] = [
    "recorded",
    "action",
    "subtype",
    "outcome",
    "user",
    "client",
    "address",
    "entity",
    "purposeOfUse",
];

/// The AuditEvents of one page of the search.
const PAGE: usize = 500;

/// A period of an accounting: its bounds as the caller wrote them (a FHIR date
/// or dateTime), each checked. `start` includes the whole of its date or
/// instant's precision onwards, `end` everything up to the end of its own.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Period {
    pub start: Option<String>,
    pub end: Option<String>,
}

/// Why a period or patient was refused (a 400 for the API, exit 1 for the CLI).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeriodError {
    #[error("`{name}` is not a FHIR date or dateTime (e.g. 2026-12-01 or 2026-12-01T10:00:00Z): `{value}`")]
    NotADate { name: &'static str, value: String },
    #[error("`start` ({start}) is after `end` ({end})")]
    Reversed { start: String, end: String },
    #[error("the patient must be Patient/ID or ID with a FHIR id: `{0}`")]
    Patient(String),
}

/// A checked bound: the text as written and the instants it stands for.
struct Bound {
    text: String,
    /// Unix microseconds: the first and the last instant of its precision.
    range: (i64, i64),
}

impl Bound {
    fn parse(name: &'static str, v: Option<&str>) -> Result<Option<Bound>, PeriodError> {
        let Some(v) = v.map(str::trim).filter(|v| !v.is_empty()) else {
            return Ok(None);
        };
        crate::search::values::date_range(v)
            .filter(|_| is_date_text(v))
            .map(|range| {
                Some(Bound {
                    text: v.to_string(),
                    range,
                })
            })
            .ok_or_else(|| PeriodError::NotADate {
                name,
                value: crate::fhir::types::truncate(v, 80),
            })
    }
}

impl Period {
    /// Checks the bounds; `names` are the parameter names used in errors
    /// (`start`/`end` for the API, `since`/`until` for the CLI).
    pub fn parse(
        start: Option<&str>,
        end: Option<&str>,
        names: (&'static str, &'static str),
    ) -> Result<Period, PeriodError> {
        let start = Bound::parse(names.0, start)?;
        let end = Bound::parse(names.1, end)?;
        if let (Some(s), Some(e)) = (&start, &end) {
            if s.range.0 > e.range.1 {
                return Err(PeriodError::Reversed {
                    start: s.text.clone(),
                    end: e.text.clone(),
                });
            }
        }
        Ok(Period {
            start: start.map(|s| s.text),
            end: end.map(|e| e.text),
        })
    }
}

/// Only the characters of a FHIR date or dateTime (the search's date parser is
/// lenient about what follows a valid prefix in places; a bound is not).
fn is_date_text(v: &str) -> bool {
    v.len() <= 40
        && v.bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'-' | b':' | b'T' | b'Z' | b'+' | b'.'))
}

/// `Patient/ID` or `ID` as the patient's id.
pub fn patient_id(reference: &str) -> Result<Id, PeriodError> {
    let id = reference.strip_prefix("Patient/").unwrap_or(reference);
    Id::parse(id).map_err(|_| PeriodError::Patient(crate::fhir::types::truncate(reference, 80)))
}

/// The AuditEvent search of an accounting, oldest first.
pub fn search_params(patient: &Id, period: &Period) -> Vec<(String, String)> {
    let mut p = vec![(
        "patient".to_string(),
        format!("Patient/{}", patient.as_str()),
    )];
    if let Some(s) = &period.start {
        p.push(("date".into(), format!("ge{s}")));
    }
    if let Some(e) = &period.end {
        p.push(("date".into(), format!("le{e}")));
    }
    p.push(("_sort".into(), "date".into()));
    p
}

/// Every AuditEvent of the accounting (blocking: run it on the store's blocking
/// pool or from the command line), oldest first, at most `limit` (the rest
/// cut: `true` in the answer). One search: every page reads the audit log up to
/// the position its first page's catch-up reached.
pub fn collect(
    store: &Store,
    search: &SearchEngine,
    ctx: &AccessContext,
    patient: &Id,
    period: &Period,
    limit: usize,
) -> Result<(Vec<Value>, bool), SearchError> {
    let mut params = search_params(patient, period);
    params.push(("_count".into(), PAGE.min(limit.max(1)).to_string()));
    params.push(("_total".into(), "none".into()));
    let request = search.parse(vec![super::RESOURCE_TYPE.into()], &params, true)?;
    let mut events = Vec::new();
    let mut cursor = None;
    loop {
        let page = search.execute(store, ctx, &request, cursor.as_ref())?;
        for hit in &page.matches {
            if events.len() >= limit {
                return Ok((events, true));
            }
            if let Ok(v) = serde_json::from_slice::<Value>(&hit.version.body) {
                events.push(v);
            }
        }
        match page.next {
            Some(next) => cursor = Some(next),
            None => return Ok((events, false)),
        }
    }
}

/// One line of the report: who saw what, when, from where, why, and whether it
/// was allowed. `id` is the AuditEvent's (not a column).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReportRow {
    #[serde(skip)]
    pub id: String,
    pub recorded: String,
    pub action: String,
    /// The subtype codes (`read`, `search-type`, `operation verify`), space-separated.
    pub subtype: String,
    /// The outcome code (0 success, 4 refused or failed for the client's
    /// reason, 8 the server's), with the reason when there is one: `4: ...`.
    pub outcome: String,
    /// The user (fhirUser reference) the access was for.
    pub user: String,
    /// The OAuth client.
    pub client: String,
    /// The client's network address.
    pub address: String,
    /// What was touched: resource references and decoded queries, besides the
    /// patient (space-separated).
    pub entity: String,
    #[serde(rename = "purposeOfUse")]
    pub purpose_of_use: String,
}

fn text(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

impl ReportRow {
    /// The row of one AuditEvent as fhirgate writes them (DESIGN section 12:
    /// clients as `who.identifier` with system `urn:fhirgate:client`, users as
    /// `who.reference`).
    pub fn of(ev: &Value) -> ReportRow {
        let empty = Vec::new();
        let list = |v: &Value| v.as_array().unwrap_or(&empty).clone();
        let agents = list(&ev["agent"]);
        let subtype = list(&ev["subtype"])
            .iter()
            .map(|c| text(&c["code"]).to_string())
            .filter(|c| !c.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        let outcome = match (text(&ev["outcome"]), text(&ev["outcomeDesc"])) {
            (code, "") => code.to_string(),
            (code, desc) => format!("{code}: {desc}"),
        };
        let user = agents
            .iter()
            .filter_map(|a| a["who"]["reference"].as_str())
            .collect::<Vec<_>>()
            .join(" ");
        let client = agents
            .iter()
            .filter(|a| a["who"]["identifier"]["system"] == "urn:fhirgate:client")
            .filter_map(|a| a["who"]["identifier"]["value"].as_str())
            .collect::<Vec<_>>()
            .join(" ");
        // The client's address: network type 2 (IP address); the server's is 5.
        let address = agents
            .iter()
            .filter(|a| a["network"]["type"] == "2")
            .filter_map(|a| a["network"]["address"].as_str())
            .collect::<Vec<_>>()
            .join(" ");
        let entity = list(&ev["entity"])
            .iter()
            .filter(|e| e["type"]["code"] != "XrequestId" && e["role"]["code"] != "1")
            .filter_map(|e| {
                e["what"]["reference"]
                    .as_str()
                    .map(str::to_string)
                    .or_else(|| e["query"].as_str().map(decode_query))
            })
            .collect::<Vec<_>>()
            .join(" ");
        let purpose_of_use = list(&ev["purposeOfEvent"])
            .iter()
            .map(|p| {
                let codes = list(&p["coding"])
                    .iter()
                    .map(|c| text(&c["code"]).to_string())
                    .collect::<Vec<_>>()
                    .join(" ");
                match p["text"].as_str() {
                    Some(t) => format!("{codes}: {t}"),
                    None => codes,
                }
            })
            .collect::<Vec<_>>()
            .join("; ");
        ReportRow {
            id: text(&ev["id"]).to_string(),
            recorded: text(&ev["recorded"]).to_string(),
            action: text(&ev["action"]).to_string(),
            subtype,
            outcome,
            user,
            client,
            address,
            entity,
            purpose_of_use,
        }
    }

    /// The values in [`COLUMNS`] order.
    pub fn values(&self) -> [&str; 9] {
        [
            &self.recorded,
            &self.action,
            &self.subtype,
            &self.outcome,
            &self.user,
            &self.client,
            &self.address,
            &self.entity,
            &self.purpose_of_use,
        ]
    }
}

/// An AuditEvent query entity's text (`entity.query` is base64 of the query).
pub fn decode_query(b64: &str) -> String {
    use base64::Engine as _;
    match base64::engine::general_purpose::STANDARD.decode(b64) {
        Ok(bytes) => {
            String::from_utf8(bytes).unwrap_or_else(|_| "(a query that is not text)".into())
        }
        Err(_) => "(a query that is not base64)".into(),
    }
}

/// The report as CSV (RFC 4180: a header line, CRLF line ends, fields with a
/// comma, quote or line break quoted, quotes doubled). A field that a
/// spreadsheet would take for a formula (`=`, `+`, `-`, `@`, tab, CR first)
/// gets a leading `'` (OWASP, CSV injection): client ids, queries and reasons
/// come from callers.
pub fn to_csv(rows: &[ReportRow]) -> String {
    let mut out = String::new();
    out.push_str(&COLUMNS.join(","));
    out.push_str("\r\n");
    for r in rows {
        let line: Vec<String> = r.values().iter().map(|v| csv_field(v)).collect();
        out.push_str(&line.join(","));
        out.push_str("\r\n");
    }
    out
}

fn csv_field(v: &str) -> String {
    let v = if v.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{v}")
    } else {
        v.to_string()
    };
    if v.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", v.replace('"', "\"\""))
    } else {
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn periods_take_dates_and_date_times_and_refuse_the_rest() {
        let names = ("start", "end");
        let p = Period::parse(Some("2026-12-01"), Some("2026-12-04T10:00:00Z"), names).unwrap();
        assert_eq!(p.start.as_deref(), Some("2026-12-01"));
        assert_eq!(p.end.as_deref(), Some("2026-12-04T10:00:00Z"));
        assert_eq!(
            Period::parse(None, Some(" "), names).unwrap(),
            Period::default()
        );
        for bad in [
            "yesterday",
            "2026-13-01",
            "2026-12-01 10:00",
            "2026-12-01T25:00:00Z",
            "12/01/2026",
        ] {
            assert!(
                matches!(
                    Period::parse(Some(bad), None, names),
                    Err(PeriodError::NotADate { name: "start", .. })
                ),
                "{bad}"
            );
        }
        assert!(matches!(
            Period::parse(Some("2026-12-05"), Some("2026-12-04"), names),
            Err(PeriodError::Reversed { .. })
        ));
        // One day as both bounds is that whole day.
        assert!(Period::parse(Some("2026-12-04"), Some("2026-12-04"), names).is_ok());
    }

    #[test]
    fn the_search_names_the_patient_the_period_and_the_order() {
        let id = patient_id("Patient/p1").unwrap();
        assert_eq!(patient_id("p1").unwrap(), id);
        assert!(patient_id("Patient/a b").is_err());
        let p = Period::parse(Some("2026-12-01"), Some("2026-12-04"), ("s", "e")).unwrap();
        assert_eq!(
            search_params(&id, &p),
            vec![
                ("patient".to_string(), "Patient/p1".to_string()),
                ("date".into(), "ge2026-12-01".into()),
                ("date".into(), "le2026-12-04".into()),
                ("_sort".into(), "date".into()),
            ]
        );
    }

    #[test]
    fn a_row_says_who_what_when_where_why_and_the_outcome() {
        use base64::Engine as _;
        let q = base64::engine::general_purpose::STANDARD
            .encode("/fhir/Observation?subject=Patient/p1");
        let ev = json!({"resourceType": "AuditEvent", "id": "a1",
            "subtype": [{"code": "operation"}, {"code": "x"}],
            "action": "E", "recorded": "2026-12-04T10:00:00.000Z", "outcome": "4",
            "outcomeDesc": "refused, \"no\"",
            "purposeOfEvent": [{"coding": [{"code": "BTG"}], "text": "emergency"}],
            "agent": [
                {"who": {"identifier": {"system": "urn:fhirgate:client", "value": "c1"}},
                 "network": {"address": "10.0.0.1", "type": "2"}},
                {"who": {"display": "fhirgate"}, "network": {"address": "http://x/fhir", "type": "5"}},
                {"who": {"reference": "Practitioner/d1"}}],
            "entity": [
                {"type": {"code": "XrequestId"}, "what": {"identifier": {"value": "r1"}}},
                {"what": {"reference": "Observation/o1/_history/2"}, "role": {"code": "4"}},
                {"query": q, "role": {"code": "24"}},
                {"what": {"reference": "Patient/p1"}, "role": {"code": "1"}}]});
        let r = ReportRow::of(&ev);
        assert_eq!(r.id, "a1");
        assert_eq!(
            r.values(),
            [
                "2026-12-04T10:00:00.000Z",
                "E",
                "operation x",
                "4: refused, \"no\"",
                "Practitioner/d1",
                "c1",
                "10.0.0.1",
                "Observation/o1/_history/2 /fhir/Observation?subject=Patient/p1",
                "BTG: emergency",
            ]
        );
        let j = serde_json::to_value(&r).unwrap();
        let keys: Vec<&str> = j.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(
            keys, COLUMNS,
            "the JSON form has the CSV's columns, in order"
        );
        assert!(j.get("id").is_none() && j["purposeOfUse"] == "BTG: emergency");
    }

    #[test]
    fn csv_is_quoted_and_defused() {
        let row = ReportRow {
            recorded: "2026-12-04T10:00:00Z".into(),
            outcome: "4: a, \"b\"\nc".into(),
            client: "=HYPERLINK(\"x\")".into(),
            address: "-1".into(),
            ..ReportRow::default()
        };
        let csv = to_csv(&[row]);
        let mut lines = csv.split("\r\n");
        assert_eq!(
            lines.next().unwrap(),
            "recorded,action,subtype,outcome,user,client,address,entity,purposeOfUse"
        );
        assert_eq!(
            lines.next().unwrap(),
            "2026-12-04T10:00:00Z,,,\"4: a, \"\"b\"\"\nc\",,\"'=HYPERLINK(\"\"x\"\")\",'-1,,"
        );
    }
}
