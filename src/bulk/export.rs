//! Bulk Data 2.0 `$export` (DESIGN section 14): a kick-off becomes a job in the
//! database; any node's exporter runs it, writing NDJSON files encrypted at rest
//! (bulk::sealed) and recording each file with the position it reaches in one
//! transaction, so a job that a dead node left is resumed by another from its
//! last committed file with nothing twice.
//!
//! What is exported: the current versions whose last update is at or before the
//! job's `transactionTime` (and after `_since`), of the types asked for and the
//! caller may search, narrowed by the caller's grant exactly as its searches are
//! (the grant is compiled again from the kept [`Owner`] when the job runs). A
//! resource changed after `transactionTime` is left for the next export with
//! `_since` = this one's `transactionTime`. Deleted resources are not exported.
//! A patient-level export takes the patient compartment of every patient the
//! caller may see; a group's, of the group's members active at `transactionTime`.
//! AuditEvents only when `_type` names them, at system level, for a caller who
//! may search them.
//!
//! Architecture invariant: the exporter reads only through the store's search
//! ([`Store::search_page`]) with the owner's access context; it knows nothing of
//! HTTP. A file's bytes are never on disk unencrypted.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::sealed::{SealedError, SealedReader, SealedWriter};
use crate::access::{AccessContext, Action, Owner, Visibility};
use crate::config::BulkSettings;
use crate::fhir::compartment::PatientCompartment;
use crate::fhir::now_micros;
use crate::search::{SearchEngine, SearchError};
use crate::store::{
    Bound, ExportFile, ExportJob, Filter, Hit, NewExportFile, Position, Query, Rows, Store,
    StoreError, Verify,
};

/// The output format of every file.
pub const NDJSON: &str = "application/fhir+ndjson";
/// Resources read per page while a job runs.
const PAGE: usize = 1_000;
/// How often an idle exporter looks for jobs of other nodes (its own kick-offs
/// wake it at once).
const POLL: Duration = Duration::from_secs(1);
/// How often finished jobs past `bulk.retention_hours` are removed.
const SWEEP: Duration = Duration::from_secs(60);
const AUDIT_EVENT: &str = crate::audit::RESOURCE_TYPE;

/// Where the export starts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    System,
    Patient,
    Group,
}

/// What a job exports, kept sealed with it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Spec {
    pub owner: Owner,
    /// The kick-off request's URL (the manifest's `request`).
    pub request: String,
    pub level: Level,
    pub group: Option<String>,
    /// In export order.
    pub types: Vec<String>,
    pub since: Option<i64>,
    /// `_typeFilter` searches, (type, query); several of one type are OR-ed.
    pub type_filters: Vec<(String, String)>,
    /// The patients whose compartments a patient-level or group export takes
    /// (ids); None: every patient the owner may see.
    pub patients: Option<Vec<String>>,
    /// The audit log position AuditEvents are exported up to.
    pub audit_through: Option<i64>,
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// A kick-off parameter that cannot be honoured (400).
    #[error("{reason}")]
    Invalid { name: String, reason: String },
    /// Refused by the caller's grant (403).
    #[error("{0}")]
    Denied(String),
    #[error("{0}")]
    NotFound(String),
    /// The client has as many exports running as it may (429).
    #[error("{0}")]
    Busy(String),
    #[error(transparent)]
    Search(#[from] SearchError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    File(#[from] SealedError),
    #[error("the export job is damaged: {0}")]
    Damaged(String),
}

impl ExportError {
    /// Why a job failed, as stored with it and logged: never the text of a
    /// search (a `_typeFilter` may carry values the sealed spec hides).
    fn reason(&self) -> &'static str {
        match self {
            ExportError::Search(_) | ExportError::Invalid { .. } => {
                "a _typeFilter search or the compartment could not be run (a search parameter it needs may have changed)"
            }
            ExportError::File(_) => "an export file could not be written (see the server's disk)",
            ExportError::Damaged(_) => "the job's record does not read",
            ExportError::Store(_) => "the database failed",
            ExportError::Denied(_) | ExportError::NotFound(_) | ExportError::Busy(_) => {
                "the job's owner may no longer run it"
            }
        }
    }
}

fn invalid(name: &str, reason: impl Into<String>) -> ExportError {
    ExportError::Invalid {
        name: name.to_string(),
        reason: reason.into(),
    }
}

/// A kick-off request, parameters already taken from the query or the
/// Parameters body.
pub struct KickOff<'a> {
    pub level: Level,
    pub group: Option<&'a str>,
    pub params: &'a [(String, String)],
    /// `Prefer: handling=strict`: an unsupported parameter is an error, not a
    /// warning.
    pub strict: bool,
    pub request: String,
}

/// An accepted kick-off.
#[derive(Debug)]
pub struct Accepted {
    pub job_id: String,
    /// Parameters ignored (lenient handling), to tell the client.
    pub warnings: Vec<String>,
}

/// Runs the exports of this node and answers for their jobs.
pub struct Exporter {
    store: Store,
    engine: Arc<SearchEngine>,
    compartment: Arc<PatientCompartment>,
    dir: PathBuf,
    settings: BulkSettings,
    node: String,
    /// Wakes the worker (a kick-off on this node). Its own `Arc`: the worker
    /// waits without holding the exporter, so a server that stops lets go of
    /// its store at once.
    wake: Arc<(Mutex<bool>, Condvar)>,
}

impl Exporter {
    pub fn new(
        store: Store,
        engine: Arc<SearchEngine>,
        compartment: Arc<PatientCompartment>,
        dir: PathBuf,
        settings: BulkSettings,
    ) -> Arc<Exporter> {
        Arc::new(Exporter {
            store,
            engine,
            compartment,
            dir,
            settings,
            node: format!("node-{}", uuid::Uuid::new_v4().simple()),
            wake: Arc::new((Mutex::new(false), Condvar::new())),
        })
    }

    /// Starts this node's export worker; it ends when the exporter is dropped.
    pub fn start(self: &Arc<Exporter>) {
        let weak = Arc::downgrade(self);
        let wake = self.wake.clone();
        let spawned = std::thread::Builder::new()
            .name("bulk-export".into())
            .spawn(move || worker(weak, wake));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "could not start the export worker; $export jobs will not run on this node");
        }
    }

    /// The folder of a job's files.
    fn job_dir(&self, job_id: &str) -> PathBuf {
        self.dir.join(job_id)
    }

    fn notify(&self) {
        *self.wake.0.lock() = true;
        self.wake.1.notify_one();
    }

    /// How long a node holds a job before another may take it over
    /// (`bulk.lease_secs`); renewed every quarter of it.
    fn lease(&self) -> Duration {
        Duration::from_secs(self.settings.lease_secs.max(1))
    }

    fn lease_end(&self) -> i64 {
        now_micros() + self.lease().as_micros() as i64
    }

    /// Checks a kick-off and stores its job (blocking).
    pub fn kick_off(&self, ctx: &AccessContext, k: KickOff<'_>) -> Result<Accepted, ExportError> {
        let mut warnings = Vec::new();
        let mut types_asked: Vec<String> = Vec::new();
        let mut since = None;
        let mut filters: Vec<(String, String)> = Vec::new();
        let mut patients_asked: Vec<String> = Vec::new();
        let model = self.engine.model();
        for (name, value) in k.params {
            match name.as_str() {
                "_outputFormat" => {
                    if !matches!(
                        value.as_str(),
                        "application/fhir+ndjson" | "application/ndjson" | "ndjson"
                    ) {
                        return Err(invalid(
                            name,
                            format!(
                                "the only output format is {NDJSON}, not `{}`",
                                crate::fhir::types::truncate(value, 60)
                            ),
                        ));
                    }
                }
                "_since" => {
                    if since.is_some() {
                        return Err(invalid(name, "`_since` is given more than once"));
                    }
                    since = Some(parse_instant(value).ok_or_else(|| {
                        invalid(
                            name,
                            format!(
                                "`_since` must be an instant with a time zone, such as 2024-01-31T10:00:00Z, not `{}`",
                                crate::fhir::types::truncate(value, 60)
                            ),
                        )
                    })?);
                }
                "_type" => {
                    for t in value.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                        if !model.is_resource_type(t) {
                            return Err(invalid(
                                name,
                                format!(
                                    "`{}` is not a resource type this server knows",
                                    crate::fhir::types::truncate(t, 60)
                                ),
                            ));
                        }
                        if !types_asked.iter().any(|x| x == t) {
                            types_asked.push(t.to_string());
                        }
                    }
                }
                "_typeFilter" => {
                    for f in split_type_filters(value) {
                        let (t, q) = f.split_once('?').ok_or_else(|| {
                            invalid(
                                name,
                                "a `_typeFilter` is a search such as `Observation?status=final`",
                            )
                        })?;
                        if !model.is_resource_type(t) {
                            return Err(invalid(
                                name,
                                format!(
                                    "`{}` is not a resource type this server knows",
                                    crate::fhir::types::truncate(t, 60)
                                ),
                            ));
                        }
                        // Checked now, so a bad search is a 400, not a failed job.
                        self.engine
                            .condition(t, q)
                            .map_err(|e| invalid(name, format!("`{t}?...`: {e}")))?;
                        filters.push((t.to_string(), q.to_string()));
                    }
                }
                "patient" => {
                    if k.level == Level::System {
                        return Err(invalid(
                            name,
                            "`patient` is a parameter of a patient-level or group export",
                        ));
                    }
                    let id = value
                        .strip_prefix("Patient/")
                        .filter(|id| crate::fhir::types::Id::parse(id).is_ok())
                        .ok_or_else(|| {
                            invalid(name, "`patient` must be a reference such as Patient/123")
                        })?;
                    patients_asked.push(id.to_string());
                }
                "includeAssociatedData" => {
                    return Err(invalid(
                        name,
                        "fhirgate exports no associated data (includeAssociatedData); ask again without it",
                    ));
                }
                "_format" | "_pretty" => {}
                other => {
                    let msg = format!(
                        "`{}` is not a parameter of $export that fhirgate supports (_outputFormat, _since, _type, _typeFilter, patient)",
                        crate::fhir::types::truncate(other, 60)
                    );
                    if k.strict {
                        return Err(invalid(other, msg));
                    }
                    warnings.push(format!("{msg}; it was ignored"));
                }
            }
        }
        if let Some((t, _)) = filters
            .iter()
            .find(|(t, _)| !types_asked.is_empty() && !types_asked.contains(t))
        {
            return Err(invalid(
                "_typeFilter",
                format!("`_typeFilter` names {t}, which `_type` does not"),
            ));
        }
        if k.level != Level::System {
            // The compartments are those of the Patients the caller may search.
            ctx.decide("Patient", Action::Search).map_err(|d| {
                ExportError::Denied(format!(
                    "a patient-level or group export needs access to the Patients: {}",
                    d.0
                ))
            })?;
        }
        let types = self.types(ctx, k.level, &types_asked)?;
        let transaction_time = now_micros();
        let patients = match k.level {
            Level::System => None,
            Level::Patient if patients_asked.is_empty() => None,
            Level::Patient => Some(patients_asked),
            Level::Group => {
                let group = k.group.unwrap_or_default();
                let members = self.group_members(ctx, group, transaction_time)?;
                Some(if patients_asked.is_empty() {
                    members
                } else {
                    members
                        .into_iter()
                        .filter(|m| patients_asked.contains(m))
                        .collect()
                })
            }
        };
        let audit_through = if types.iter().any(|t| t == AUDIT_EVENT) {
            Some(crate::search::audit_index::catch_up(
                &self.engine,
                &self.store,
            )?)
        } else {
            None
        };
        let max = self.settings.max_jobs_per_client;
        if max > 0 && self.store.export_unfinished(ctx.client_id.as_deref())? >= max as i64 {
            return Err(ExportError::Busy(format!(
                "this client has {max} exports queued or running (bulk.max_jobs_per_client); wait for one to finish or cancel one"
            )));
        }
        let spec = Spec {
            owner: ctx.owner(),
            request: k.request,
            level: k.level,
            group: k.group.map(str::to_string),
            types,
            since,
            type_filters: filters,
            patients,
            audit_through,
        };
        let job_id = uuid::Uuid::new_v4().to_string();
        let json = serde_json::to_vec(&spec).map_err(|e| ExportError::Damaged(e.to_string()))?;
        self.store
            .export_create(&job_id, ctx.client_id.as_deref(), &json, transaction_time)?;
        self.notify();
        Ok(Accepted { job_id, warnings })
    }

    /// The types a kick-off exports: those asked for (each must be searchable
    /// by the caller, else 403), or every type the caller may search (of the
    /// patient compartment, below system level). AuditEvents only when asked.
    fn types(
        &self,
        ctx: &AccessContext,
        level: Level,
        asked: &[String],
    ) -> Result<Vec<String>, ExportError> {
        let compartment: Option<BTreeSet<String>> = (level != Level::System).then(|| {
            self.engine
                .compartment_types("Patient")
                .into_iter()
                .collect()
        });
        if !asked.is_empty() {
            for t in asked {
                if t == AUDIT_EVENT && level != Level::System {
                    return Err(invalid(
                        "_type",
                        "AuditEvents are exported at system level only (/$export?_type=AuditEvent)",
                    ));
                }
                if t != AUDIT_EVENT && compartment.as_ref().is_some_and(|c| !c.contains(t)) {
                    return Err(invalid(
                        "_type",
                        format!("{t} is not in the patient compartment; export it at system level"),
                    ));
                }
                ctx.decide(t, Action::Search)
                    .map_err(|d| ExportError::Denied(d.0))?;
            }
            return Ok(asked.to_vec());
        }
        let types: Vec<String> = match &compartment {
            Some(c) => c.iter().cloned().collect(),
            None => self
                .engine
                .model()
                .resource_types()
                .iter()
                .cloned()
                .collect(),
        };
        let types: Vec<String> = types
            .into_iter()
            .filter(|t| t != AUDIT_EVENT && ctx.decide(t, Action::Search).is_ok())
            .collect();
        if types.is_empty() {
            return Err(ExportError::Denied(
                "the caller may search none of the resource types this export would take".into(),
            ));
        }
        Ok(types)
    }

    /// The patients of a group that are members at `at`: `inactive` not true
    /// and a `period` (if any) that covers `at`. The Group must be readable.
    fn group_members(
        &self,
        ctx: &AccessContext,
        group: &str,
        at: i64,
    ) -> Result<Vec<String>, ExportError> {
        ctx.decide("Group", Action::Read)
            .map_err(|d| ExportError::Denied(d.0))?;
        let missing = || ExportError::NotFound(format!("Group/{group} does not exist"));
        let stored = self
            .store
            .read(ctx, "Group", group, None)?
            .filter(|v| !v.deleted)
            .ok_or_else(missing)?;
        let body: Value = serde_json::from_slice(&stored.body)
            .map_err(|e| ExportError::Damaged(e.to_string()))?;
        let mut members = Vec::new();
        for m in body
            .get("member")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if m.get("inactive").and_then(Value::as_bool) == Some(true) {
                continue;
            }
            if let Some(p) = m.get("period") {
                let start = p
                    .get("start")
                    .and_then(Value::as_str)
                    .and_then(crate::search::values::date_range);
                let end = p
                    .get("end")
                    .and_then(Value::as_str)
                    .and_then(crate::search::values::date_range);
                if start.is_some_and(|(lo, _)| lo > at) || end.is_some_and(|(_, hi)| hi < at) {
                    continue;
                }
            }
            let reference = m
                .get("entity")
                .and_then(|e| e.get("reference"))
                .and_then(Value::as_str)
                .unwrap_or("");
            let local = reference
                .strip_prefix(self.engine.base_url())
                .map(|r| r.trim_start_matches('/'))
                .unwrap_or(reference);
            if let Some(id) = local.strip_prefix("Patient/") {
                if crate::fhir::types::Id::parse(id).is_ok() && !members.iter().any(|x| x == id) {
                    members.push(id.to_string());
                }
            }
        }
        Ok(members)
    }

    /// A job `ctx` may see: its owner's (same client and user). Another
    /// caller's job is None, as if it did not exist.
    pub fn job_for(
        &self,
        ctx: &AccessContext,
        job_id: &str,
    ) -> Result<Option<(ExportJob, Spec)>, ExportError> {
        if uuid::Uuid::parse_str(job_id).is_err() {
            return Ok(None);
        }
        let Some(job) = self.store.export_job(job_id)? else {
            return Ok(None);
        };
        let spec: Spec =
            serde_json::from_slice(&job.spec).map_err(|e| ExportError::Damaged(e.to_string()))?;
        // The same client and user, and the same patient context (a later token
        // of the client for another patient does not reach this job).
        let same = spec.owner.acts_as(ctx) && ctx.owner().patient == spec.owner.patient;
        Ok(same.then_some((job, spec)))
    }

    pub fn files(&self, job_id: &str) -> Result<Vec<ExportFile>, ExportError> {
        Ok(self.store.export_files(job_id)?)
    }

    /// Cancels a job (or removes a finished one): its rows and files go.
    pub fn cancel(&self, job_id: &str) -> Result<bool, ExportError> {
        let removed = self.store.export_delete(job_id)?;
        remove_dir(&self.job_dir(job_id));
        Ok(removed)
    }

    /// Opens file `seq` of a job for reading, with the patients it holds.
    pub fn open_file(
        &self,
        job_id: &str,
        seq: i64,
    ) -> Result<Option<(ExportFile, Vec<String>, SealedReader)>, ExportError> {
        let Some(file) = self.files(job_id)?.into_iter().find(|f| f.seq == seq) else {
            return Ok(None);
        };
        let patients = self.store.export_file_patients(job_id, seq)?;
        let reader = match SealedReader::open(&self.store, &self.job_dir(job_id), &file.name) {
            Ok(r) => r,
            // Removed since it was listed (a cancel, the end of its retention).
            Err(SealedError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        Ok(Some((file, patients, reader)))
    }

    /// Runs one job held by this node to its end (or until the lease is lost).
    fn run(&self, job: ExportJob) -> Result<(), ExportError> {
        let spec: Spec =
            serde_json::from_slice(&job.spec).map_err(|e| ExportError::Damaged(e.to_string()))?;
        let ctx = spec
            .owner
            .context(&self.engine, &format!("export-{}", job.job_id));
        let dir = self.job_dir(&job.job_id);
        let max = self.settings.max_file_resources.max(1);
        let mut type_index = usize::try_from(job.type_index).unwrap_or(usize::MAX);
        let mut after = job.after_rid;
        let mut renewed = Instant::now();
        tracing::info!(job.id = %job.job_id, from_type = type_index, "export job running");
        // A write stamped at or before transactionTime may still be committing:
        // the scan starts when it has (else it would be in neither this export
        // nor the next one's `_since`).
        if !self
            .store
            .wait_for_writes_before(job.transaction_time, self.lease() / 2)?
        {
            tracing::warn!(job.id = %job.job_id, "transactions older than the export's transactionTime are still open; the export starts anyway");
        }
        while type_index < spec.types.len() {
            let t = spec.types[type_index].clone();
            let plan = self.plan(&spec, &ctx, &t, job.transaction_time)?;
            let mut out: Option<Pending> = None;
            loop {
                let q = Query {
                    types: Some(vec![t.clone()]),
                    rows: plan.rows,
                    filters: plan.filters.clone(),
                    limit: PAGE,
                    after: after.map(|rid| Position {
                        keys: Vec::new(),
                        rid,
                    }),
                    ..Query::default()
                };
                let hits = self.store.search_page(&ctx, &q)?;
                let kept = plan.keep(&self.store, &ctx, &t, &hits)?;
                for (hit, keep) in hits.iter().zip(kept) {
                    after = Some(hit.rid);
                    if !keep {
                        continue;
                    }
                    let pending = match &mut out {
                        Some(p) => p,
                        None => out.insert(Pending::create(&self.store, &dir)?),
                    };
                    pending.write(&self.compartment, &t, hit)?;
                    if pending.writer.lines >= max {
                        if let Some(p) = out.take() {
                            if !self.commit(&job.job_id, &dir, type_index, after, &t, p)? {
                                return Ok(());
                            }
                            renewed = Instant::now();
                        }
                    }
                }
                if hits.len() < PAGE {
                    break;
                }
                if renewed.elapsed() > self.lease() / 4 {
                    if !self
                        .store
                        .export_renew(&self.node, &job.job_id, self.lease_end())?
                    {
                        if let Some(p) = out.take() {
                            p.writer.abandon();
                        }
                        self.forget_if_cancelled(&job.job_id, &dir);
                        return Ok(());
                    }
                    renewed = Instant::now();
                }
            }
            type_index += 1;
            after = None;
            let committed = match out.take() {
                Some(p) => self.commit(&job.job_id, &dir, type_index, None, &t, p)?,
                None => self.store.export_advance(
                    &self.node,
                    &job.job_id,
                    type_index as i64,
                    None,
                    None,
                    self.lease_end(),
                )?,
            };
            if !committed {
                self.forget_if_cancelled(&job.job_id, &dir);
                return Ok(());
            }
            renewed = Instant::now();
        }
        if self.store.export_finish(&self.node, &job.job_id, None)? {
            self.remove_strays(&job.job_id, &dir);
            tracing::info!(job.id = %job.job_id, "export job done");
        }
        Ok(())
    }

    /// After this node lost a job: if it was cancelled (its row is gone), its
    /// folder goes too (the cancel removed it, and this node's writing may
    /// have made it again).
    fn forget_if_cancelled(&self, job_id: &str, dir: &Path) {
        if matches!(self.store.export_job(job_id), Ok(None)) {
            remove_dir(dir);
        }
    }

    /// Removes what a node that lost the job (it died, or its lease ran out)
    /// left in the job's folder: unfinished files, and a file it finished but
    /// could not record. Only the recorded files are the export.
    fn remove_strays(&self, job_id: &str, dir: &Path) {
        let Ok(files) = self.store.export_files(job_id) else {
            return;
        };
        let recorded: BTreeSet<&str> = files.iter().map(|f| f.name.as_str()).collect();
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if !recorded.contains(name.as_str()) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }

    /// Finishes a file and records it with the position after it; false when
    /// this node no longer holds the job (the file is removed again).
    fn commit(
        &self,
        job_id: &str,
        dir: &Path,
        type_index: usize,
        after: Option<i64>,
        resource_type: &str,
        p: Pending,
    ) -> Result<bool, ExportError> {
        let name = p.name.clone();
        let file = NewExportFile {
            resource_type: resource_type.to_string(),
            name: name.clone(),
            resources: p.writer.lines as i64,
            bytes: p.writer.bytes as i64,
            patients: p.patients.into_iter().collect(),
        };
        p.writer.finish()?;
        let held = self.store.export_advance(
            &self.node,
            job_id,
            type_index as i64,
            after,
            Some(file),
            self.lease_end(),
        );
        // Lost the job: the file is not the export's. An error may have come
        // after the commit (a connection lost): the file stays, and the job's
        // end removes it if it was not recorded.
        if matches!(held, Ok(false)) {
            let _ = std::fs::remove_file(dir.join(&name));
            self.forget_if_cancelled(job_id, dir);
        }
        Ok(held?)
    }

    /// How one type of a job is read.
    fn plan(
        &self,
        spec: &Spec,
        ctx: &AccessContext,
        resource_type: &str,
        transaction_time: i64,
    ) -> Result<Plan, ExportError> {
        let mut window = vec![Bound::LoLe(transaction_time)];
        if let Some(s) = spec.since {
            window.push(Bound::LoGt(s));
        }
        let mut filters = vec![Filter::LastUpdated(vec![window])];
        if spec.level != Level::System && resource_type != AUDIT_EVENT {
            filters.push(self.engine.compartment_members_filter(
                "Patient",
                &[resource_type.to_string()],
                spec.patients.as_deref(),
            )?);
        }
        let mut alternatives = Vec::new();
        for (_, q) in spec.type_filters.iter().filter(|(t, _)| t == resource_type) {
            let c = self.engine.condition(resource_type, q)?;
            alternatives.push(Alternative {
                filters: c.query.filters,
                verify: c.verify,
            });
        }
        if !alternatives.is_empty() {
            filters.push(Filter::Any(
                alternatives
                    .iter()
                    .map(|a| Filter::All(a.filters.clone()))
                    .collect(),
            ));
        }
        let rows = match (resource_type == AUDIT_EVENT, spec.audit_through) {
            (true, Some(through)) => Rows::AuditLog { through },
            (true, None) => return Err(ExportError::Damaged("no audit log position".into())),
            _ => Rows::Resources,
        };
        // A grant that lost this type since the kick-off exports nothing of it.
        if matches!(
            ctx.visibility(resource_type, Action::Search),
            Visibility::Where(Filter::Nothing)
        ) {
            filters.push(Filter::Nothing);
        }
        Ok(Plan {
            rows,
            filters,
            alternatives,
        })
    }
}

/// A file being written, with the patients whose data it holds.
struct Pending {
    name: String,
    writer: SealedWriter,
    patients: BTreeSet<String>,
}

impl Pending {
    fn create(store: &Store, dir: &Path) -> Result<Pending, ExportError> {
        // A name of its own: a node that lost the job mid-file cannot clobber
        // the file of the node that took it over.
        let name = format!("{}.ndjson.sealed", uuid::Uuid::new_v4().simple());
        Ok(Pending {
            writer: SealedWriter::create(store, dir, &name)?,
            name,
            patients: BTreeSet::new(),
        })
    }

    fn write(
        &mut self,
        compartment: &PatientCompartment,
        resource_type: &str,
        hit: &Hit,
    ) -> Result<(), ExportError> {
        let parse = || -> Result<Value, ExportError> {
            serde_json::from_slice(&hit.version.body)
                .map_err(|e| ExportError::Damaged(e.to_string()))
        };
        // Parsed only where the patients must be read from the body (a Patient
        // is its own; AuditEvents name no patient's data), or to put it on one line.
        let value = match resource_type {
            "Patient" => {
                self.patients.insert(format!("Patient/{}", hit.version.id));
                None
            }
            AUDIT_EVENT => None,
            _ => {
                let v = parse()?;
                self.patients.extend(compartment.patients_of(
                    resource_type,
                    Some(&hit.version.id),
                    Some(&v),
                ));
                Some(v)
            }
        };
        if hit.version.body.contains(&b'\n') {
            let value = match value {
                Some(v) => v,
                None => parse()?,
            };
            let line =
                serde_json::to_vec(&value).map_err(|e| ExportError::Damaged(e.to_string()))?;
            self.writer.line(&line)?;
        } else {
            self.writer.line(&hit.version.body)?;
        }
        Ok(())
    }
}

/// One `_typeFilter` search of a type.
struct Alternative {
    filters: Vec<Filter>,
    verify: Option<Arc<Verify>>,
}

struct Plan {
    rows: Rows,
    filters: Vec<Filter>,
    alternatives: Vec<Alternative>,
}

impl Plan {
    /// Which hits of a page the `_typeFilter` searches keep: the SQL took every
    /// resource that one of them may match; what the blind index can only
    /// approximate is checked on the body, against the searches whose SQL
    /// conditions the resource meets.
    fn keep(
        &self,
        store: &Store,
        ctx: &AccessContext,
        resource_type: &str,
        hits: &[Hit],
    ) -> Result<Vec<bool>, ExportError> {
        if self.alternatives.iter().all(|a| a.verify.is_none()) {
            return Ok(vec![true; hits.len()]);
        }
        if let [only] = self.alternatives.as_slice() {
            return Ok(hits
                .iter()
                .map(|h| only.verify.as_ref().is_none_or(|v| v(&h.version)))
                .collect());
        }
        let rids: Vec<i64> = hits.iter().map(|h| h.rid).collect();
        let mut keep = vec![false; hits.len()];
        for a in &self.alternatives {
            let mut filters = vec![Filter::Rids(rids.clone())];
            filters.extend(a.filters.iter().cloned());
            let q = Query {
                types: Some(vec![resource_type.to_string()]),
                rows: self.rows,
                filters,
                limit: rids.len().max(1),
                probe: true,
                ..Query::default()
            };
            let matched: BTreeSet<i64> = store
                .search_ids(ctx, &q)?
                .into_iter()
                .map(|(rid, _)| rid)
                .collect();
            for (i, h) in hits.iter().enumerate() {
                if !keep[i]
                    && matched.contains(&h.rid)
                    && a.verify.as_ref().is_none_or(|v| v(&h.version))
                {
                    keep[i] = true;
                }
            }
        }
        Ok(keep)
    }
}

fn remove_dir(dir: &Path) {
    if let Err(e) = std::fs::remove_dir_all(dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(error = %e, "could not remove an export's folder");
        }
    }
}

/// The searches of one `_typeFilter` value. Bulk Data 2.0 separates them with
/// commas; a comma inside a search (`code=a,b`, an OR) should arrive encoded, but
/// many clients do not encode it, so a piece that does not start a new search
/// (`Type?`) belongs to the one before.
fn split_type_filters(value: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for piece in value.split(',') {
        let starts_search = piece
            .split_once('?')
            .is_some_and(|(t, _)| !t.is_empty() && t.chars().all(|c| c.is_ascii_alphabetic()));
        match out.last_mut() {
            Some(last) if !starts_search => {
                last.push(',');
                last.push_str(piece);
            }
            _ if piece.trim().is_empty() => {}
            _ => out.push(piece.to_string()),
        }
    }
    out
}

/// A FHIR instant (with a time zone).
fn parse_instant(v: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(v)
        .ok()
        .map(|t| t.timestamp_micros())
}

fn worker(exporter: Weak<Exporter>, wake: Arc<(Mutex<bool>, Condvar)>) {
    let mut swept: Option<Instant> = None;
    loop {
        let busy = {
            let Some(ex) = exporter.upgrade() else {
                return;
            };
            if swept.is_none_or(|s| s.elapsed() > SWEEP) {
                ex.sweep();
                swept = Some(Instant::now());
            }
            ex.round()
        };
        if busy {
            continue;
        }
        let (lock, cvar) = (&wake.0, &wake.1);
        let mut woken = lock.lock();
        if !*woken {
            cvar.wait_for(&mut woken, POLL);
        }
        *woken = false;
    }
}

impl Exporter {
    /// Claims and runs one job; true when there was one (look again at once).
    fn round(&self) -> bool {
        match self.store.export_claim(&self.node, self.lease_end()) {
            Ok(Some(job)) => {
                let id = job.job_id.clone();
                match self.run(job) {
                    Ok(()) => {}
                    Err(ExportError::Store(e)) => {
                        // The database may come back: the lease runs out and the
                        // job resumes from its last committed file.
                        tracing::warn!(job.id = %id, error = %e, "export job interrupted; it resumes later");
                    }
                    Err(e) => {
                        let reason = e.reason();
                        tracing::warn!(job.id = %id, error = reason, "export job failed");
                        let _ = self.store.export_finish(&self.node, &id, Some(reason));
                    }
                }
                true
            }
            Ok(None) => false,
            Err(e) => {
                tracing::debug!(error = %e, "no export job claimed");
                false
            }
        }
    }
}

impl Exporter {
    /// Removes jobs finished longer than `bulk.retention_hours` ago, with their
    /// files, and folders no job owns (a job cancelled while a node wrote).
    fn sweep(&self) {
        let hours = self.settings.retention_hours;
        let before = now_micros() - (hours as i64).saturating_mul(3_600_000_000);
        match self.store.export_expired(before, 100) {
            Ok(ids) => {
                for id in ids {
                    if let Err(e) = self.cancel(&id) {
                        tracing::warn!(job.id = %id, error = %e, "could not remove an expired export");
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "expired exports not looked for"),
        }
        let Ok(known) = self.store.export_job_ids() else {
            return;
        };
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|m| m.elapsed().ok())
                .is_some_and(|age| age > Duration::from_secs(3_600));
            if uuid::Uuid::parse_str(&name).is_ok() && !known.contains(&name) && old {
                remove_dir(&entry.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::split_type_filters;

    #[test]
    fn type_filters_split_at_each_new_search() {
        assert_eq!(
            split_type_filters("Observation?code=a,b,Condition?clinical-status=active"),
            vec!["Observation?code=a,b", "Condition?clinical-status=active"]
        );
        assert_eq!(
            split_type_filters("Patient?gender=male"),
            vec!["Patient?gender=male"]
        );
        assert_eq!(split_type_filters(""), Vec::<String>::new());
        assert_eq!(split_type_filters("nonsense"), vec!["nonsense"]);
    }
}
