//! `fhirgate import PATH...`: NDJSON files (`*.ndjson`, one resource per line) and
//! Bundle files (`*.json`: a transaction, a batch, or a single resource), given as
//! files or folders (searched recursively).
//!
//! An NDJSON file is cut into batches of `batch_size` lines (batch `k` holds lines
//! `k*B+1 ..= (k+1)*B`, whatever they contain, so the cut is the same on every
//! run); each batch is one transaction of PUTs (lines with an id) and POSTs (lines
//! without), run by `jobs` workers in parallel. A bad line (not JSON, not a valid
//! resource, refused when written) is reported with its file and line number and
//! skipped, or stops the import (`OnError::Fail`). Progress is durable: each batch's
//! transaction also records `(file, batch)` in `import_progress`, where the file is
//! named by its path, size and modification time, so an interrupted import resumes
//! with exactly the batches that are not stored (none twice). The lines of a
//! stored batch that could not be stored are recorded with it (`import_failures`):
//! a rerun on the same file retries exactly those lines and reports the ones that
//! fail again, so fixing what refused them (a setting, a missing resource) and
//! running the same command again completes the import. An entry of a batch
//! Bundle that failed is retried the same way; a transaction Bundle that failed
//! stored nothing and runs again whole.

use std::collections::HashSet;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::Value;

use crate::bundle::{
    self, BundleKind, Done, Entry, EntryError, Env, Method, Origin, Payload, ReadError, Target,
};
use crate::fhir::{self, Id};
use crate::store::{StoreError, Txn};

/// What to do with a bad line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    /// Report it and go on.
    Skip,
    /// Report it and stop (what is stored stays stored; a rerun resumes).
    Fail,
}

#[derive(Debug, Clone)]
pub struct ImportOptions {
    pub paths: Vec<PathBuf>,
    pub on_error: OnError,
    /// NDJSON lines per transaction.
    pub batch_size: usize,
    /// Parallel workers (transactions in flight).
    pub jobs: usize,
    /// Draw a progress bar on stderr (when it is a terminal).
    pub progress: bool,
}

/// A line or file that was not imported.
#[derive(Debug, Clone)]
pub struct BadItem {
    pub file: PathBuf,
    /// 1-based line of an NDJSON file; the entry index (0-based) of a batch Bundle is
    /// in the message; None for a whole file.
    pub line: Option<usize>,
    pub message: String,
}

impl std::fmt::Display for BadItem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            Some(l) => write!(f, "{}:{l}: {}", self.file.display(), self.message),
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

#[derive(Debug, Default, Clone)]
pub struct ImportSummary {
    pub files: usize,
    /// Resources stored by this run.
    pub written: u64,
    /// Conditional creates that found their resource, conditional deletes of nothing.
    pub unchanged: u64,
    /// Batches and Bundles skipped because an earlier run stored them.
    pub resumed_units: u64,
    /// NDJSON lines (and single-resource files) that an earlier run could not
    /// store, tried again by this one (those that failed again are in `bad`). The
    /// entries of a batch Bundle not stored before run again too, counted with
    /// the resources they store.
    pub retried: u64,
    pub bad: Vec<BadItem>,
    pub elapsed: Duration,
    /// The import stopped at a bad item (`OnError::Fail`).
    pub stopped: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("no NDJSON (.ndjson) or JSON (.json) files under the given paths")]
    NothingToImport,
    /// A batch failed for a reason that is not one of its lines (the database).
    #[error("{path}: {reason}")]
    Batch { path: PathBuf, reason: String },
}

/// One unit of work: committed whole, recorded as `(unit, part)`.
enum Work {
    Lines {
        file: PathBuf,
        unit: String,
        part: i64,
        lines: Vec<(usize, String)>,
        bytes: u64,
        /// The lines failed in an earlier run that stored the rest of their batch.
        retry: bool,
    },
    Document {
        file: PathBuf,
        unit: String,
        bytes: u64,
        /// Parts stored by an earlier run (the entries of a batch Bundle).
        done: HashSet<i64>,
        /// The file's one resource failed in an earlier run.
        retry: bool,
    },
}

struct Shared<'a> {
    env: &'a Env<'a>,
    opts: &'a ImportOptions,
    bar: ProgressBar,
    report: &'a (dyn Fn(&BadItem) + Sync),
    stop: AtomicBool,
    written: AtomicU64,
    unchanged: AtomicU64,
    resumed: AtomicU64,
    retried: AtomicU64,
    bad: Mutex<Vec<BadItem>>,
    fatal: Mutex<Option<ImportError>>,
}

impl Shared<'_> {
    fn bad(&self, item: BadItem) {
        self.bar.suspend(|| (self.report)(&item));
        if let Ok(mut b) = self.bad.lock() {
            b.push(item);
        }
        if self.opts.on_error == OnError::Fail {
            self.stop.store(true, Ordering::SeqCst);
        }
    }

    fn fatal(&self, e: ImportError) {
        if let Ok(mut f) = self.fatal.lock() {
            f.get_or_insert(e);
        }
        self.stop.store(true, Ordering::SeqCst);
    }

    fn count(&self, done: &[Done]) {
        for d in done {
            match d {
                Done::Stored {
                    unchanged: false, ..
                }
                | Done::Deleted { .. } => {
                    self.written.fetch_add(1, Ordering::Relaxed);
                }
                _ => {
                    self.unchanged.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        self.bar.set_message(format!(
            "{} resources",
            self.written.load(Ordering::Relaxed)
        ));
    }
}

/// Imports the files under `opts.paths` through `env`; `report` is told of each bad
/// line as it is found.
pub fn import(
    env: &Env,
    opts: &ImportOptions,
    report: &(dyn Fn(&BadItem) + Sync),
) -> Result<ImportSummary, ImportError> {
    let started = Instant::now();
    let files = collect_files(&opts.paths)?;
    if files.is_empty() {
        return Err(ImportError::NothingToImport);
    }
    let total: u64 = files.iter().map(|(_, m)| m.len()).sum();
    let bar = if opts.progress {
        ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr())
    } else {
        ProgressBar::hidden()
    };
    if let Ok(style) = ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} ({eta}) {msg}",
    ) {
        bar.set_style(style);
    }
    let shared = Shared {
        env,
        opts,
        bar,
        report,
        stop: AtomicBool::new(false),
        written: AtomicU64::new(0),
        unchanged: AtomicU64::new(0),
        resumed: AtomicU64::new(0),
        retried: AtomicU64::new(0),
        bad: Mutex::new(Vec::new()),
        fatal: Mutex::new(None),
    };
    let jobs = opts.jobs.max(1);
    let (tx, rx) = mpsc::sync_channel::<Work>(jobs * 2);
    let rx = Mutex::new(rx);
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| loop {
                let next = match rx.lock() {
                    Ok(r) => r.recv(),
                    Err(_) => return,
                };
                let Ok(work) = next else { return };
                if shared.stop.load(Ordering::SeqCst) {
                    continue; // drain without working
                }
                run_work(&shared, work);
            });
        }
        for (path, meta) in &files {
            if shared.stop.load(Ordering::SeqCst) {
                break;
            }
            if let Err(e) = feed(&shared, path, meta, &tx) {
                shared.fatal(e);
            }
        }
        drop(tx);
    });
    shared.bar.finish_and_clear();
    if let Some(e) = shared.fatal.into_inner().ok().flatten() {
        return Err(e);
    }
    let bad = shared.bad.into_inner().unwrap_or_default();
    Ok(ImportSummary {
        files: files.len(),
        written: shared.written.into_inner(),
        unchanged: shared.unchanged.into_inner(),
        resumed_units: shared.resumed.into_inner(),
        retried: shared.retried.into_inner(),
        stopped: opts.on_error == OnError::Fail && !bad.is_empty(),
        bad,
        elapsed: started.elapsed(),
    })
}

/// The files to import: NDJSON and JSON files, the given ones and those found in
/// the given folders, in name order.
fn collect_files(paths: &[PathBuf]) -> Result<Vec<(PathBuf, std::fs::Metadata)>, ImportError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ImportError::Io { path, source }
    };
    let mut out = Vec::new();
    let mut stack: Vec<(PathBuf, bool)> = paths.iter().map(|p| (p.clone(), true)).collect();
    while let Some((p, given)) = stack.pop() {
        let meta = std::fs::metadata(&p).map_err(io(&p))?;
        if meta.is_dir() {
            for e in std::fs::read_dir(&p).map_err(io(&p))? {
                stack.push((e.map_err(io(&p))?.path(), false));
            }
        } else if given
            || matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("ndjson" | "json")
            )
        {
            out.push((p, meta));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// A file's name in `import_progress`: its path, size and modification time, so
/// that a changed file is imported again.
fn unit_of(path: &Path, meta: &std::fs::Metadata) -> String {
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    format!("{}|{}|{mtime}", path.display(), meta.len())
}

fn is_ndjson(path: &Path) -> bool {
    path.extension().and_then(|e| e.to_str()) == Some("ndjson")
}

/// Cuts a file into work and hands it to the workers, skipping what is stored.
fn feed(
    shared: &Shared,
    path: &Path,
    meta: &std::fs::Metadata,
    tx: &mpsc::SyncSender<Work>,
) -> Result<(), ImportError> {
    let unit = unit_of(path, meta);
    let done: HashSet<i64> = shared
        .env
        .store
        .imported_parts(&unit)?
        .into_iter()
        .collect();
    let failed: HashSet<usize> = shared
        .env
        .store
        .import_failures(&unit)?
        .into_iter()
        .filter_map(|l| usize::try_from(l).ok())
        .collect();
    if !is_ndjson(path) {
        let retry = done.contains(&0) && !failed.is_empty();
        if done.contains(&0) && !retry {
            shared.resumed.fetch_add(1, Ordering::Relaxed);
            shared.bar.inc(meta.len());
            return Ok(());
        }
        if retry {
            shared.retried.fetch_add(1, Ordering::Relaxed);
        }
        let _ = tx.send(Work::Document {
            file: path.to_path_buf(),
            unit,
            bytes: meta.len(),
            done,
            retry,
        });
        return Ok(());
    }
    let file = std::fs::File::open(path).map_err(|source| ImportError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let batch = shared.opts.batch_size.max(1);
    let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
    let mut lines: Vec<(usize, String)> = Vec::with_capacity(batch);
    let mut bytes = 0u64;
    let mut line_no = 0usize;
    let mut buf = String::new();
    loop {
        buf.clear();
        let n = reader
            .read_line(&mut buf)
            .map_err(|source| ImportError::Io {
                path: path.to_path_buf(),
                source,
            })?;
        if n > 0 {
            line_no += 1;
            bytes += n as u64;
            if !buf.trim().is_empty() {
                lines.push((line_no, std::mem::take(&mut buf)));
            }
        }
        let end_of_batch = n == 0 || line_no % batch == 0;
        if end_of_batch && (bytes > 0 || !lines.is_empty()) {
            let part = ((line_no.max(1) - 1) / batch) as i64;
            let retry = done.contains(&part);
            if retry {
                // Stored by an earlier run, but for the lines that failed then.
                lines.retain(|(n, _)| failed.contains(n));
                if lines.is_empty() {
                    shared.resumed.fetch_add(1, Ordering::Relaxed);
                } else {
                    shared
                        .retried
                        .fetch_add(lines.len() as u64, Ordering::Relaxed);
                }
            }
            if !lines.is_empty() {
                let work = Work::Lines {
                    file: path.to_path_buf(),
                    unit: unit.clone(),
                    part,
                    lines: std::mem::take(&mut lines),
                    bytes,
                    retry,
                };
                if tx.send(work).is_err() || shared.stop.load(Ordering::SeqCst) {
                    return Ok(());
                }
            } else {
                shared.bar.inc(bytes);
            }
            bytes = 0;
        }
        if n == 0 {
            return Ok(());
        }
    }
}

fn run_work(shared: &Shared, work: Work) {
    match work {
        Work::Lines {
            file,
            unit,
            part,
            lines,
            bytes,
            retry,
        } => {
            import_lines(shared, &file, &unit, part, lines, retry);
            shared.bar.inc(bytes);
        }
        Work::Document {
            file,
            unit,
            bytes,
            done,
            retry,
        } => {
            import_document(shared, &file, &unit, &done, retry);
            shared.bar.inc(bytes);
        }
    }
}

/// One NDJSON line as an entry: PUT with its id (update as create), POST without.
fn line_entry(env: &Env, text: &str) -> Result<Entry, String> {
    let resource = fhir::json::parse_json(text.trim_end().as_bytes()).map_err(|i| i.diagnostics)?;
    let rt = resource
        .get("resourceType")
        .and_then(Value::as_str)
        .ok_or("the line is not a resource (no resourceType)")?
        .to_string();
    if !env.model.is_resource_type(&rt) {
        return Err(format!(
            "`{}` is not a resource type",
            fhir::types::truncate(&rt, 60)
        ));
    }
    let issues = bundle::validate_entry(env.checks(), &resource, &rt);
    if fhir::outcome::has_errors(&issues) {
        return Err(describe_issues(&issues));
    }
    let id = resource.get("id").and_then(Value::as_str).map(Id::parse);
    let (method, target, url) = match id {
        Some(Ok(id)) => (
            Method::Put,
            Target::Instance {
                resource_type: rt.clone(),
                id: id.clone(),
            },
            format!("{rt}/{id}"),
        ),
        Some(Err(m)) => return Err(m),
        None => (Method::Post, Target::Type(rt.clone()), rt.clone()),
    };
    Ok(Entry {
        origin: Origin::Request,
        full_url: None,
        method,
        url,
        target,
        payload: Payload::Resource(resource),
        if_match: None,
        if_none_exist: None,
        if_none_match: None,
        if_modified_since: None,
    })
}

fn describe_issues(issues: &[fhir::Issue]) -> String {
    issues
        .iter()
        .filter(|i| matches!(i.severity, fhir::Severity::Error | fhir::Severity::Fatal))
        .map(|i| match &i.expression {
            Some(e) => format!("{} (at {e})", i.diagnostics),
            None => i.diagnostics.clone(),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn describe_entry_error(e: &EntryError) -> String {
    match e {
        EntryError::Invalid(i) | EntryError::Unprocessable(i) => describe_issues(i),
        EntryError::At { expression, error } => {
            format!("{} (at {expression})", describe_entry_error(error))
        }
        other => other.to_string(),
    }
}

/// Marks `(unit, part)` inside the transaction that stores it.
fn marker<'a>(unit: &'a str, part: i64) -> impl Fn(&mut dyn Txn) -> Result<(), StoreError> + 'a {
    move |txn: &mut dyn Txn| txn.mark_imported(unit, part)
}

/// Marks `(unit, part)` and which of its lines failed (and, in a retry, which
/// lines are no longer failures), inside the transaction that stores the rest.
fn batch_marker<'a>(
    unit: &'a str,
    part: i64,
    retried: &'a [i64],
    failed: &'a [i64],
) -> impl Fn(&mut dyn Txn) -> Result<(), StoreError> + 'a {
    move |txn: &mut dyn Txn| {
        txn.mark_imported(unit, part)?;
        txn.mark_import_failures(unit, retried, failed)
    }
}

/// Imports one batch of lines (`retry`: the lines of a stored batch that failed
/// in an earlier run).
fn import_lines(
    shared: &Shared,
    file: &Path,
    unit: &str,
    part: i64,
    lines: Vec<(usize, String)>,
    retry: bool,
) {
    let env = shared.env;
    let retried: Vec<i64> = if retry {
        lines.iter().map(|(n, _)| *n as i64).collect()
    } else {
        Vec::new()
    };
    let mut failed: Vec<i64> = Vec::new();
    let mut entries: Vec<Entry> = Vec::with_capacity(lines.len());
    let mut numbers: Vec<usize> = Vec::with_capacity(lines.len());
    for (n, text) in lines {
        match line_entry(env, &text) {
            Ok(e) => {
                entries.push(e);
                numbers.push(n);
            }
            Err(message) => {
                failed.push(n as i64);
                shared.bad(BadItem {
                    file: file.to_path_buf(),
                    line: Some(n),
                    message,
                })
            }
        }
    }
    if shared.stop.load(Ordering::SeqCst) {
        return;
    }
    if entries.is_empty() {
        // Every line was refused before it was written: the batch is recorded with
        // its failed lines all the same (a transaction without entries runs nothing).
        let mark = batch_marker(unit, part, &retried, &failed);
        if let Err(e) = env.store.transaction(env.ctx, &mut |t| mark(t)) {
            shared.fatal(ImportError::Store(e));
        }
        return;
    }
    // Lines refused when written are reported and the batch runs again without
    // them; every round removes at least one line.
    loop {
        let result = {
            let mark = batch_marker(unit, part, &retried, &failed);
            bundle::process_transaction(env, &entries, Some(&mark))
        };
        match result {
            Ok(done) => {
                shared.count(&done);
                return;
            }
            Err(failure) => {
                let mut at_fault: Vec<usize> = Vec::new();
                for (pos, e) in &failure.errors {
                    match pos {
                        Some(p) => at_fault.push(*p),
                        None => {
                            shared.fatal(ImportError::Batch {
                                path: file.to_path_buf(),
                                reason: describe_entry_error(e),
                            });
                            return;
                        }
                    }
                }
                let audits: Vec<_> = at_fault
                    .iter()
                    .filter_map(|p| failure.audits.get(*p))
                    .map(|r| env.audit.row(r))
                    .collect();
                if let Err(e) = env.store.append_audits(&audits) {
                    shared.fatal(ImportError::Store(e));
                    return;
                }
                at_fault.sort_unstable();
                at_fault.dedup();
                for (pos, e) in &failure.errors {
                    if let Some(p) = pos {
                        shared.bad(BadItem {
                            file: file.to_path_buf(),
                            line: numbers.get(*p).copied(),
                            message: describe_entry_error(e),
                        });
                    }
                }
                for p in at_fault.into_iter().rev() {
                    entries.remove(p);
                    failed.push(numbers.remove(p) as i64);
                }
                if shared.stop.load(Ordering::SeqCst) {
                    return;
                }
                if entries.is_empty() {
                    // Nothing left: record the batch (and its failed lines) all the same.
                    let mark = batch_marker(unit, part, &retried, &failed);
                    if let Err(e) = env.store.transaction(env.ctx, &mut |t| mark(t)) {
                        shared.fatal(ImportError::Store(e));
                    }
                    return;
                }
            }
        }
    }
}

/// A JSON file: a transaction Bundle (one transaction), a batch Bundle (each entry
/// on its own, recorded as its own part), or one resource.
fn import_document(shared: &Shared, file: &Path, unit: &str, done: &HashSet<i64>, retry: bool) {
    let env = shared.env;
    let bad = |line: Option<usize>, message: String| {
        shared.bad(BadItem {
            file: file.to_path_buf(),
            line,
            message,
        })
    };
    let bytes = match std::fs::read(file) {
        Ok(b) => b,
        Err(e) => return bad(None, e.to_string()),
    };
    let value = match fhir::json::parse_json(&bytes) {
        Ok(v) => v,
        Err(i) => return bad(None, i.diagnostics),
    };
    if value.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
        let text = String::from_utf8_lossy(&bytes).replace('\n', " ");
        return import_lines(shared, file, unit, 0, vec![(1, text)], retry);
    }
    let read = match bundle::read_bundle(env.checks(), env.base_url, value, usize::MAX) {
        Ok(r) => r,
        Err(ReadError::Invalid(issues)) => return bad(None, describe_issues(&issues)),
        Err(e) => return bad(None, e.to_string()),
    };
    let entry_bad =
        |i: usize, e: &EntryError| bad(None, format!("entry {i}: {}", describe_entry_error(e)));
    match read.kind {
        BundleKind::Transaction => {
            let mut entries = Vec::new();
            let mut invalid = false;
            for (i, e) in read.entries.into_iter().enumerate() {
                match e {
                    Ok(e) => entries.push(e),
                    Err(err) => {
                        entry_bad(i, &err);
                        invalid = true;
                    }
                }
            }
            // A transaction lands whole or not at all.
            if invalid || shared.stop.load(Ordering::SeqCst) {
                return;
            }
            let mark = marker(unit, 0);
            match bundle::process_transaction(env, &entries, Some(&mark)) {
                Ok(done) => shared.count(&done),
                Err(failure) => {
                    let rows: Vec<_> = failure.audits.iter().map(|r| env.audit.row(r)).collect();
                    if let Err(e) = env.store.append_audits(&rows) {
                        return shared.fatal(ImportError::Store(e));
                    }
                    for (pos, e) in &failure.errors {
                        bad(
                            None,
                            format!(
                                "the transaction failed{}: {}",
                                pos.map(|p| format!(" at entry {p}")).unwrap_or_default(),
                                describe_entry_error(e)
                            ),
                        );
                    }
                }
            }
        }
        BundleKind::Batch => {
            let mut failures = 0usize;
            for (i, e) in read.entries.into_iter().enumerate() {
                if shared.stop.load(Ordering::SeqCst) {
                    return;
                }
                // Parts of a batch Bundle: part 0 is the whole file, entry i is i + 1.
                let part = i as i64 + 1;
                if done.contains(&part) {
                    shared.resumed.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let entry = match e {
                    Ok(e) => e,
                    Err(err) => {
                        entry_bad(i, &err);
                        failures += 1;
                        continue;
                    }
                };
                let mark = marker(unit, part);
                match bundle::process_entry(env, &entry, Some(&mark)) {
                    Ok(done) => shared.count(std::slice::from_ref(&done)),
                    Err(failed) => {
                        let (err, record) = *failed;
                        if let Err(e) = env.store.append_audits(&[env.audit.row(&record)]) {
                            return shared.fatal(ImportError::Store(e));
                        }
                        entry_bad(i, &err);
                        failures += 1;
                    }
                }
            }
            // The file is done only when every entry is: a rerun retries the others.
            if failures == 0 {
                if let Err(e) = env
                    .store
                    .transaction(env.ctx, &mut |t| t.mark_imported(unit, 0))
                {
                    shared.fatal(ImportError::Store(e));
                }
            }
        }
    }
}
