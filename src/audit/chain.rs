//! The tamper-evident chain of the audit log: what a link's hash covers, the
//! chainer that links committed AuditEvents (in a background thread of every node,
//! and before every verification), signed checkpoints of the chain's head, and
//! the verification of the whole chain (`fhirgate audit verify`,
//! `AuditEvent/$verify`, the `fhirgate_audit_chain_ok` metric).
//!
//! A link at position `n` holds `SHA-256("fhirgate:audit-chain:v1" || hash(n-1)
//! || n || the row as stored)`, where the row is its `seq`, id, recorded time,
//! action, outcome, data key id and sealed body (length-prefixed). The sealed
//! body is authenticated encryption bound to the AuditEvent's id, so the chain
//! covers the event's content without the verifier holding any key, and a
//! verification runs at the speed of SHA-256 over the stored bytes.
//!
//! Events are linked after commit, not in the transaction that writes them: a
//! chain head locked by every transaction would make every write and every group
//! commit of reads, on every node, wait for each other (docs/decisions.md). An
//! event is unlinked for at most one chainer interval; a verification links
//! everything committed first.
//!
//! Architecture invariant: the chain is only appended to; verification reads and
//! never repairs.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use base64::Engine;
use openssl::ec::{EcGroup, EcKey};
use openssl::ecdsa::EcdsaSig;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private, Public};
use parking_lot::Mutex;
use serde_json::{json, Value};

use crate::store::{Checkpoint, Link, RawAudit, Store, StoreError, StoredLink};

/// Rows linked per chainer batch.
const BATCH: usize = 2000;
/// Links read per verification batch.
const VERIFY_BATCH: usize = 5000;
/// Threads reading links for a verification (the walk hashes meanwhile).
const READERS: usize = 2;
const HASH_DOMAIN: &[u8] = b"fhirgate:audit-chain:v1";
const CHECKPOINT_DOMAIN: &[u8] = b"fhirgate:audit-checkpoint:v1";
const PURGE_DOMAIN: &[u8] = b"fhirgate:audit-purge:v1";

#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("audit signing key: {0}")]
    Key(String),
    #[error("checkpoint file {path}: {reason}")]
    CheckpointFile { path: String, reason: String },
}

impl From<openssl::error::ErrorStack> for ChainError {
    fn from(e: openssl::error::ErrorStack) -> Self {
        ChainError::Key(e.to_string())
    }
}

/// The hash of the link at `pos` after a link with hash `prev`.
pub fn link_hash(prev: &[u8; 32], pos: i64, row: &RawAudit) -> [u8; 32] {
    let mut h = openssl::sha::Sha256::new();
    h.update(HASH_DOMAIN);
    h.update(prev);
    h.update(&pos.to_be_bytes());
    h.update(&row.seq.to_be_bytes());
    for part in [
        row.audit_id.as_bytes(),
        row.action.as_bytes(),
        row.outcome.as_bytes(),
        &row.body,
    ] {
        h.update(&(part.len() as u64).to_be_bytes());
        h.update(part);
    }
    h.update(&row.recorded.to_be_bytes());
    h.update(&row.key_id.to_be_bytes());
    h.finish()
}

/// The bytes a checkpoint's signature covers (a purge checkpoint's also say
/// before when events were removed).
fn checkpoint_message(cp: &Checkpoint) -> Vec<u8> {
    let mut m = Vec::with_capacity(PURGE_DOMAIN.len() + 56);
    match cp.purged_before {
        None => m.extend_from_slice(CHECKPOINT_DOMAIN),
        Some(_) => m.extend_from_slice(PURGE_DOMAIN),
    }
    m.extend_from_slice(&cp.pos.to_be_bytes());
    m.extend_from_slice(&cp.hash);
    m.extend_from_slice(&cp.time.to_be_bytes());
    if let Some(b) = cp.purged_before {
        m.extend_from_slice(&b.to_be_bytes());
    }
    m
}

/// When checkpoints are made and where else they go.
#[derive(Debug, Clone)]
pub struct CheckpointPolicy {
    /// A checkpoint at least every this many links (0: not by count).
    pub every: i64,
    /// A checkpoint at least this often while the chain grows (0: not by time).
    pub secs: u64,
    /// Each checkpoint is also appended to this file (one JSON object a line).
    pub file: Option<PathBuf>,
}

/// The signing half of the audit key.
struct Signer {
    kid: String,
    key: PKey<Private>,
}

/// Links committed AuditEvents into the chain and signs checkpoints.
pub struct Chainer {
    store: Store,
    policy: CheckpointPolicy,
    /// Rounds of this node take turns.
    turn: Mutex<()>,
    signer: Mutex<Option<Arc<Signer>>>,
    /// The periodic verification's verdict: 1 verified, 0 broken, -1 not yet.
    pub chain_ok: AtomicI64,
    /// Held by the verification running on request (one at a time).
    pub verifying: Mutex<()>,
    /// This node's newest finished verification (periodic or on request): what
    /// the audit console shows, so no page view walks the chain.
    last: Mutex<Option<Verified>>,
}

/// A verification that ran, and when it finished.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub verdict: Verdict,
    /// Unix microseconds.
    pub at: i64,
}

impl Verified {
    /// The last position verified in order (0: none).
    pub fn through(&self) -> i64 {
        if self.verdict.verified == 0 {
            0
        } else {
            self.verdict.kept_from + self.verdict.verified - 1
        }
    }
}

impl Chainer {
    pub fn new(store: Store, policy: CheckpointPolicy) -> Chainer {
        Chainer {
            store,
            policy,
            turn: Mutex::new(()),
            signer: Mutex::new(None),
            chain_ok: AtomicI64::new(-1),
            verifying: Mutex::new(()),
            last: Mutex::new(None),
        }
    }

    /// Links every AuditEvent committed now (stopping once a batch reads the end
    /// of the log), then makes a checkpoint when one is due. Returns the head
    /// position.
    pub fn catch_up(&self) -> Result<i64, ChainError> {
        loop {
            let (done, head) = self.batch()?;
            if done {
                self.checkpoint_if_due(head)?;
                return Ok(head);
            }
        }
    }

    /// One batch: (read the end of the log, head position).
    fn batch(&self) -> Result<(bool, i64), ChainError> {
        let _turn = self.turn.lock();
        let state = self.store.audit_chain_state()?;
        let rows = self.store.audit_unchained(&state, BATCH)?;
        let tail = rows.iter().filter(|r| r.seq > state.after_seq).count();
        if rows.is_empty() {
            return Ok((true, state.head_pos));
        }
        let through = rows
            .iter()
            .map(|r| r.seq)
            .max()
            .unwrap_or(state.after_seq)
            .max(state.after_seq);
        let mut prev = state.head_hash;
        let mut pos = state.head_pos;
        let links: Vec<Link> = rows
            .iter()
            .map(|r| {
                pos += 1;
                prev = link_hash(&prev, pos, r);
                Link {
                    pos,
                    seq: r.seq,
                    hash: prev,
                }
            })
            .collect();
        let committed = self.store.audit_chain_commit(&state, &links, through)?;
        let head = if committed { pos } else { state.head_pos };
        Ok((committed && tail < BATCH, head))
    }

    fn checkpoint_if_due(&self, head: i64) -> Result<(), ChainError> {
        if head == 0 || (self.policy.every <= 0 && self.policy.secs == 0) {
            return Ok(());
        }
        let last = self.store.audit_last_checkpoint()?;
        let now = crate::fhir::now_micros();
        let (last_pos, last_time) = last.map_or((0, 0), |c| (c.pos, c.time));
        if head <= last_pos {
            return Ok(());
        }
        let by_count = self.policy.every > 0 && head - last_pos >= self.policy.every;
        let by_time = self.policy.secs > 0
            && now - last_time >= (self.policy.secs as i64).saturating_mul(1_000_000);
        if !(by_count || by_time) {
            return Ok(());
        }
        // The head's hash as linked (another node may have moved on since).
        let Some(link) = self.store.audit_chain_links(head, 1)?.into_iter().next() else {
            return Ok(());
        };
        let cp = self.signed(head, link.hash, now, None)?;
        if self.store.audit_add_checkpoint(&cp)? {
            if let Some(path) = &self.policy.file {
                append_checkpoint(path, &cp)?;
            }
        }
        Ok(())
    }

    /// A checkpoint signed by the audit signing key.
    fn signed(
        &self,
        pos: i64,
        hash: Vec<u8>,
        time: i64,
        purged_before: Option<i64>,
    ) -> Result<Checkpoint, ChainError> {
        let signer = self.signer()?;
        let mut cp = Checkpoint {
            pos,
            hash,
            time,
            kid: signer.kid.clone(),
            signature: Vec::new(),
            purged_before,
        };
        cp.signature = sign(&signer.key, &checkpoint_message(&cp))?;
        Ok(cp)
    }

    /// Removes the AuditEvents recorded before `before` (Unix microseconds) that
    /// form a prefix of the chain (an event recorded later stops it), with their
    /// links and index rows, and stores a signed purge checkpoint at the last
    /// removed position, from which verification starts. The caller has checked
    /// the retention period.
    pub fn purge(&self, before: i64) -> Result<Purged, ChainError> {
        self.catch_up()?;
        let _turn = self.turn.lock();
        let Some(plan) = self.store.audit_purge_plan(before)? else {
            return Ok(Purged {
                removed: 0,
                kept_from: None,
            });
        };
        let cp = self.signed(
            plan.last,
            plan.hash.clone(),
            crate::fhir::now_micros(),
            Some(before),
        )?;
        let removed = self.store.audit_purge(&plan, &cp)?.ok_or_else(|| {
            ChainError::Key("another purge ran at the same time; run it again".into())
        })?;
        if let Some(path) = &self.policy.file {
            append_checkpoint(path, &cp)?;
        }
        Ok(Purged {
            removed,
            kept_from: Some(plan.last + 1),
        })
    }

    /// The audit signing key, made on first use. The oldest key signs, so nodes
    /// that made one at the same moment agree on which.
    fn signer(&self) -> Result<Arc<Signer>, ChainError> {
        let mut slot = self.signer.lock();
        if let Some(s) = slot.as_ref() {
            return Ok(s.clone());
        }
        if self.store.audit_signing_keys()?.is_empty() {
            let (kid, private_der, public_pem) = new_key()?;
            self.store
                .audit_add_signing_key(&kid, &private_der, &public_pem)?;
        }
        let (kid, private, _) = self
            .store
            .audit_signing_keys()?
            .into_iter()
            .next()
            .ok_or_else(|| ChainError::Key("no audit signing key".into()))?;
        let der = private.ok_or_else(|| {
            ChainError::Key(format!(
                "the audit signing key {kid} does not open with this node's keys"
            ))
        })?;
        let key = PKey::private_key_from_der(&der)?;
        let s = Arc::new(Signer { kid, key });
        *slot = Some(s.clone());
        Ok(s)
    }

    /// Makes the audit signing key if there is none.
    pub fn ensure_signing_key(&self) -> Result<(), ChainError> {
        self.signer().map(|_| ())
    }

    /// Verifies the whole chain, after linking what is committed.
    pub fn verify(&self, options: &VerifyOptions) -> Result<Verdict, ChainError> {
        self.catch_up()?;
        let verdict = verify(&self.store, options)?;
        self.remember(&verdict);
        Ok(verdict)
    }

    /// This node's newest verification, if one ran since it started.
    pub fn last_verified(&self) -> Option<Verified> {
        self.last.lock().clone()
    }

    fn remember(&self, verdict: &Verdict) {
        *self.last.lock() = Some(Verified {
            verdict: verdict.clone(),
            at: crate::fhir::now_micros(),
        });
    }
}

/// What a purge removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Purged {
    /// AuditEvents removed.
    pub removed: i64,
    /// The position the kept chain starts at (None: nothing was removed).
    pub kept_from: Option<i64>,
}

/// A new P-256 audit signing key: (kid, PKCS#8 DER, public PEM).
fn new_key() -> Result<(String, Vec<u8>, String), ChainError> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1)?;
    let key = PKey::from_ec_key(EcKey::generate(&group)?)?;
    let public_der = key.public_key_to_der()?;
    let kid = hex::encode(&openssl::sha::sha256(&public_der)[..8]);
    let public_pem =
        String::from_utf8(key.public_key_to_pem()?).map_err(|e| ChainError::Key(e.to_string()))?;
    Ok((kid, key.private_key_to_pkcs8()?, public_pem))
}

fn sign(key: &PKey<Private>, message: &[u8]) -> Result<Vec<u8>, ChainError> {
    let digest = openssl::sha::sha256(message);
    let ec = key.ec_key()?;
    Ok(EcdsaSig::sign(&digest, &ec)?.to_der()?)
}

fn signature_holds(keys: &[PKey<Public>], message: &[u8], signature: &[u8]) -> bool {
    let digest = openssl::sha::sha256(message);
    let Ok(sig) = EcdsaSig::from_der(signature) else {
        return false;
    };
    keys.iter().any(|k| {
        k.ec_key()
            .ok()
            .and_then(|ec| sig.verify(&digest, &ec).ok())
            .unwrap_or(false)
    })
}

/// Public keys from PEM text (one or several `PUBLIC KEY` blocks).
pub fn public_keys_from_pem(pem: &str) -> Result<Vec<PKey<Public>>, ChainError> {
    let mut keys = Vec::new();
    let marker = "-----END PUBLIC KEY-----";
    let mut rest = pem;
    while let Some(end) = rest.find(marker) {
        let block = &rest[..end + marker.len()];
        keys.push(PKey::public_key_from_pem(block.trim_start().as_bytes())?);
        rest = &rest[end + marker.len()..];
    }
    if keys.is_empty() {
        return Err(ChainError::Key(
            "no PUBLIC KEY block in the public key file".into(),
        ));
    }
    Ok(keys)
}

/// The public keys of the audit signing keys stored in the database, as PEM.
pub fn public_key_pem(store: &Store) -> Result<String, ChainError> {
    Ok(store
        .audit_signing_keys()?
        .into_iter()
        .map(|(_, _, pem)| pem)
        .collect::<Vec<_>>()
        .join(""))
}

fn append_checkpoint(path: &Path, cp: &Checkpoint) -> Result<(), ChainError> {
    let time = chrono::DateTime::from_timestamp_micros(cp.time)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
        .unwrap_or_default();
    let mut line = json!({
        "position": cp.pos,
        "hash": hex::encode(&cp.hash),
        "time": time,
        "signature": base64::engine::general_purpose::STANDARD.encode(&cp.signature),
    });
    if let Some(b) = cp.purged_before {
        line["purgedBefore"] = json!(b);
    }
    let err = |e: std::io::Error| ChainError::CheckpointFile {
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(err)?;
    writeln!(f, "{line}").map_err(err)?;
    f.sync_data().map_err(err)
}

/// The checkpoints of a checkpoint file.
fn read_checkpoint_file(path: &Path) -> Result<Vec<Checkpoint>, ChainError> {
    let bad = |reason: String| ChainError::CheckpointFile {
        path: path.display().to_string(),
        reason,
    };
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        // No checkpoint was made yet.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(bad(e.to_string())),
    };
    let mut out = Vec::new();
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let v: Value =
            serde_json::from_str(line).map_err(|e| bad(format!("line {}: {e}", n + 1)))?;
        let field = |k: &str| {
            v.get(k)
                .ok_or_else(|| bad(format!("line {}: no `{k}`", n + 1)))
        };
        let pos = field("position")?
            .as_i64()
            .ok_or_else(|| bad(format!("line {}: `position` is not an integer", n + 1)))?;
        let hash = field("hash")?
            .as_str()
            .and_then(|h| hex::decode(h).ok())
            .ok_or_else(|| bad(format!("line {}: `hash` is not hex", n + 1)))?;
        let time = field("time")?
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.timestamp_micros())
            .ok_or_else(|| bad(format!("line {}: `time` is not an RFC 3339 time", n + 1)))?;
        let signature = field("signature")?
            .as_str()
            .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
            .ok_or_else(|| bad(format!("line {}: `signature` is not base64", n + 1)))?;
        let purged_before =
            match v.get("purgedBefore") {
                None => None,
                Some(b) => Some(b.as_i64().ok_or_else(|| {
                    bad(format!("line {}: `purgedBefore` is not an integer", n + 1))
                })?),
            };
        out.push(Checkpoint {
            pos,
            hash,
            time,
            kid: String::new(),
            signature,
            purged_before,
        });
    }
    Ok(out)
}

/// What a verification checks against besides the database.
#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    /// Checkpoints kept outside the database.
    pub checkpoint_file: Option<PathBuf>,
    /// The public key(s) checkpoints must be signed with (PEM); without it the
    /// keys stored in the database are trusted.
    pub public_key_pem: Option<String>,
}

/// The result of a verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Links verified (from the start of the kept chain up to the first break or
    /// the head).
    pub verified: i64,
    /// The head's hash (hex; empty for an empty chain).
    pub head: String,
    /// Where the kept chain starts: 1, or after the last purge.
    pub kept_from: i64,
    /// The first broken position and what is wrong there.
    pub broken: Option<(i64, String)>,
}

impl Verdict {
    /// `{"verified": N, "head": "..."}`, with `keptFrom` after a purge and
    /// `brokenAt` and `problem` when broken.
    pub fn to_json(&self) -> Value {
        let mut v = json!({"verified": self.verified, "head": self.head});
        if self.kept_from > 1 {
            v["keptFrom"] = json!(self.kept_from);
        }
        if let Some((at, problem)) = &self.broken {
            v["brokenAt"] = json!(at);
            v["problem"] = json!(problem);
        }
        v
    }
}

/// A verification in progress: where it stands, to word a break.
struct Walk {
    kept_from: i64,
    /// The next position expected.
    expected: i64,
    prev: [u8; 32],
}

impl Walk {
    fn verified(&self) -> i64 {
        self.expected - self.kept_from
    }

    fn head(&self) -> String {
        if self.verified() == 0 {
            String::new()
        } else {
            hex::encode(self.prev)
        }
    }

    fn broken(&self, at: i64, problem: String) -> Verdict {
        Verdict {
            verified: self.verified(),
            head: self.head(),
            kept_from: self.kept_from,
            broken: Some((at, problem)),
        }
    }
}

/// Walks the whole chain (streaming, in batches) and checks every link's
/// position and hash against the rows as stored, that no row was slipped in
/// behind the chainer, and every checkpoint (database and file): its signature,
/// and that the chain still has its hash at its position. After a purge the walk
/// starts from the signed purge checkpoint (its position and hash).
pub fn verify(store: &Store, options: &VerifyOptions) -> Result<Verdict, ChainError> {
    let keys = match &options.public_key_pem {
        Some(pem) => public_keys_from_pem(pem)?,
        None => public_keys_from_pem(&public_key_pem(store)?).unwrap_or_default(),
    };
    let mut checkpoints: Vec<(Checkpoint, &'static str)> = store
        .audit_checkpoints()?
        .into_iter()
        .map(|c| (c, "database"))
        .collect();
    if let Some(f) = &options.checkpoint_file {
        checkpoints.extend(read_checkpoint_file(f)?.into_iter().map(|c| (c, "file")));
    }
    checkpoints.sort_by_key(|(c, _)| c.pos);
    // Every checkpoint is signed by the audit key.
    for (cp, from) in &checkpoints {
        if !signature_holds(&keys, &checkpoint_message(cp), &cp.signature) {
            let walk = Walk {
                kept_from: 1,
                expected: 1,
                prev: [0; 32],
            };
            return Ok(walk.broken(
                cp.pos.max(1),
                format!(
                    "forged checkpoint: the {from}'s checkpoint at position {} is not signed by the audit signing key",
                    cp.pos
                ),
            ));
        }
    }
    // The kept chain starts after the last purge, from its signed link.
    let mut walk = Walk {
        kept_from: 1,
        expected: 1,
        prev: [0; 32],
    };
    if let Some((purge, _)) = checkpoints
        .iter()
        .filter(|(c, _)| c.purged_before.is_some())
        .max_by_key(|(c, _)| c.pos)
    {
        if purge.hash.len() == 32 {
            walk.prev.copy_from_slice(&purge.hash);
        }
        walk.kept_from = purge.pos + 1;
        walk.expected = purge.pos + 1;
    }
    let kept_from = walk.kept_from;
    checkpoints.retain(|(c, _)| c.pos >= kept_from);
    let state = store.audit_chain_state()?;
    if let Some(broken) = walk_links(store, &mut walk, &checkpoints, state.head_pos)? {
        return Ok(broken);
    }
    let head_pos = walk.expected - 1;
    if let Some((cp, from)) = checkpoints.iter().find(|(c, _)| c.pos > head_pos) {
        return Ok(walk.broken(
            head_pos + 1,
            format!(
                "truncated: the chain ends at position {head_pos}, but the {from} has a signed checkpoint at position {}",
                cp.pos
            ),
        ));
    }
    if state.head_pos > head_pos {
        return Ok(walk.broken(
            head_pos + 1,
            format!(
                "truncated: the chain ends at position {head_pos}, but the chainer linked up to {}",
                state.head_pos
            ),
        ));
    }
    if let Some((seq, pos)) = store.audit_unchained_behind(&state)? {
        let at = pos.unwrap_or(head_pos + 1);
        return Ok(walk.broken(
            at,
            format!("inserted: an AuditEvent row (seq {seq}) that is not in the chain sits before position {at}"),
        ));
    }
    Ok(Verdict {
        verified: walk.verified(),
        head: walk.head(),
        kept_from,
        broken: None,
    })
}

/// Walks the links from `walk.expected` through `until` (the chainer's head when
/// the verification began): each link's position and hash against its row as
/// stored, and the checkpoints at its position. [`READERS`] threads fetch the
/// next ranges of positions while this one hashes (the database's work and the
/// hashing overlap). Some(verdict) at the first break.
fn walk_links(
    store: &Store,
    walk: &mut Walk,
    checkpoints: &[(Checkpoint, &'static str)],
    until: i64,
) -> Result<Option<Verdict>, ChainError> {
    std::thread::scope(|scope| {
        // Readers take every READERS-th range; the walk takes their batches in
        // turn, so it sees the positions in order.
        let mut batches = Vec::with_capacity(READERS);
        for k in 0..READERS {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Vec<StoredLink>, StoreError>>(1);
            batches.push(rx);
            let first = walk.expected + (k * VERIFY_BATCH) as i64;
            scope.spawn(move || {
                let mut from = first;
                while from <= until {
                    let batch = store.audit_chain_links(from, VERIFY_BATCH);
                    let failed = batch.is_err();
                    // The walk stopped (a break, an error): nothing more to read.
                    if tx.send(batch).is_err() || failed {
                        return;
                    }
                    from += (READERS * VERIFY_BATCH) as i64;
                }
            });
        }
        let mut next_cp = 0;
        let mut turn = 0;
        while let Ok(links) = batches[turn % READERS].recv() {
            turn += 1;
            for link in links? {
                if let Some(broken) = check_link(walk, &link, checkpoints, &mut next_cp) {
                    return Ok(Some(broken));
                }
            }
        }
        Ok(None)
    })
}

/// One link: its position, its row, its hash, and the checkpoints signed at its
/// position. Some(verdict) when it breaks the chain; otherwise the walk moves on.
fn check_link(
    walk: &mut Walk,
    link: &StoredLink,
    checkpoints: &[(Checkpoint, &'static str)],
    next_cp: &mut usize,
) -> Option<Verdict> {
    let expected = walk.expected;
    if link.pos != expected {
        return Some(walk.broken(
            expected,
            format!(
                "missing: the chain has no link at position {expected} (the next is {})",
                link.pos
            ),
        ));
    }
    let Some(row) = &link.row else {
        return Some(walk.broken(
            expected,
            format!(
                "missing: the AuditEvent linked at position {expected} (seq {}) is gone",
                link.seq
            ),
        ));
    };
    let h = link_hash(&walk.prev, link.pos, row);
    if link.hash != h {
        return Some(walk.broken(
            expected,
            format!(
                "changed: the AuditEvent at position {expected} (id {}) is not what was linked",
                row.audit_id
            ),
        ));
    }
    while *next_cp < checkpoints.len() && checkpoints[*next_cp].0.pos == expected {
        let (cp, from) = &checkpoints[*next_cp];
        if cp.hash != h {
            return Some(walk.broken(
                expected,
                format!("changed: the chain at position {expected} does not match the checkpoint of the {from} signed at that position"),
            ));
        }
        *next_cp += 1;
    }
    walk.prev = h;
    walk.expected += 1;
    None
}

/// Starts this node's background chainer: a round every `interval`, and a full
/// verification every `verify_every` (zero: none) whose verdict the
/// `fhirgate_audit_chain_ok` metric reports. The thread ends with the chainer.
pub fn start(chainer: &Arc<Chainer>, interval: Duration, verify_every: Duration) {
    let weak = Arc::downgrade(chainer);
    let spawned = std::thread::Builder::new()
        .name("audit-chainer".into())
        .spawn(move || worker(weak, interval, verify_every));
    if let Err(e) = spawned {
        tracing::error!(error = %e, "could not start the audit chainer; AuditEvents are linked when verified");
    }
}

fn worker(chainer: Weak<Chainer>, interval: Duration, verify_every: Duration) {
    let mut last_verify: Option<std::time::Instant> = None;
    loop {
        std::thread::sleep(interval);
        let Some(chainer) = chainer.upgrade() else {
            return;
        };
        if let Err(e) = chainer.catch_up() {
            tracing::warn!(error = %e, "audit chaining round failed; the next round resumes");
            continue;
        }
        let due =
            !verify_every.is_zero() && last_verify.is_none_or(|t| t.elapsed() >= verify_every);
        if due {
            last_verify = Some(std::time::Instant::now());
            match verify(
                &chainer.store,
                &VerifyOptions {
                    checkpoint_file: chainer.policy.file.clone(),
                    public_key_pem: None,
                },
            ) {
                Ok(v) => {
                    chainer.remember(&v);
                    if let Some((at, problem)) = &v.broken {
                        tracing::error!(audit.chain.broken_at = at, problem = %problem, "the audit chain does not verify");
                    }
                    chainer
                        .chain_ok
                        .store(i64::from(v.broken.is_none()), Ordering::Relaxed);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the periodic audit chain verification failed to run")
                }
            }
        }
    }
}
