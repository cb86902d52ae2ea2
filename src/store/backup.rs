//! The database side of `fhirgate backup` and `fhirgate restore`: a consistent
//! copy taken while the server serves (SQLite: `VACUUM INTO`, which reads one
//! snapshot; PostgreSQL: `pg_dump` on a snapshot exported from a repeatable-read
//! transaction), the row count and digest of every table on that same snapshot,
//! the restore into an empty database, and the proof that every sealed body
//! opens with the configured key.
//!
//! A table's digest is the sum (modulo 2^256) of the SHA-256 of each row's text
//! (PostgreSQL: the row as a record, `t::text`; SQLite: the columns `quote()`d),
//! so it does not depend on the order rows are read in; a restore of the same
//! backend reproduces it exactly.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use diesel::connection::SimpleConnection;
use diesel::sql_types::{BigInt, Binary, Text};
use diesel::{Connection, PgConnection, QueryableByName, RunQueryDsl, SqliteConnection};

use super::{Store, StoreError};

/// Rows and digest of one table.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TableDigest {
    pub rows: i64,
    pub digest: String,
}

/// The running digest of a table: row count and the lane-wise sum of the
/// rows' SHA-256.
#[derive(Default)]
struct Digest {
    rows: i64,
    lanes: [u64; 4],
}

impl Digest {
    fn add(&mut self, row: &[u8]) {
        let h = openssl::sha::sha256(row);
        for (i, lane) in self.lanes.iter_mut().enumerate() {
            let mut b = [0u8; 8];
            b.copy_from_slice(&h[i * 8..i * 8 + 8]);
            *lane = lane.wrapping_add(u64::from_be_bytes(b));
        }
        self.rows += 1;
    }

    fn finish(&self) -> TableDigest {
        TableDigest {
            rows: self.rows,
            digest: format!(
                "sha256-sum:{}",
                self.lanes
                    .iter()
                    .map(|l| format!("{l:016x}"))
                    .collect::<String>()
            ),
        }
    }
}

fn db(e: diesel::result::Error) -> StoreError {
    StoreError::Database(e)
}

fn io(what: &str, e: std::io::Error) -> StoreError {
    StoreError::Backup(format!("{what}: {e}"))
}

#[derive(QueryableByName)]
struct Name {
    #[diesel(sql_type = Text)]
    name: String,
}

#[derive(QueryableByName)]
struct RowText {
    #[diesel(sql_type = Text)]
    r: String,
}

#[derive(QueryableByName)]
struct RowId {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = Binary)]
    r: Vec<u8>,
}

#[derive(QueryableByName)]
struct KeyedRow {
    #[diesel(sql_type = Text)]
    k: String,
    #[diesel(sql_type = Binary)]
    r: Vec<u8>,
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

fn quoted(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn sqlite_open(path: &Path) -> Result<SqliteConnection, StoreError> {
    let mut c = SqliteConnection::establish(&path.display().to_string())
        .map_err(|e| StoreError::Backup(format!("cannot open {}: {e}", path.display())))?;
    c.batch_execute("PRAGMA busy_timeout = 10000").map_err(db)?;
    Ok(c)
}

fn sqlite_tables(c: &mut SqliteConnection) -> Result<Vec<String>, StoreError> {
    diesel::sql_query(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name",
    )
    .load::<Name>(c)
    .map(|v| v.into_iter().map(|n| n.name).collect())
    .map_err(db)
}

/// A consistent copy of a live SQLite database (`VACUUM INTO`: one read
/// snapshot; writers go on).
pub fn sqlite_snapshot(db_path: &Path, out: &Path) -> Result<(), StoreError> {
    let mut c = sqlite_open(db_path)?;
    let target = out.display().to_string().replace('\'', "''");
    c.batch_execute(&format!("VACUUM INTO '{target}'"))
        .map_err(db)
}

/// The digests of every table of a SQLite file (read in pages by rowid; the
/// search index's WITHOUT ROWID table by its primary key).
pub fn sqlite_digests(path: &Path) -> Result<BTreeMap<String, TableDigest>, StoreError> {
    let mut c = sqlite_open(path)?;
    let mut out = BTreeMap::new();
    c.batch_execute("BEGIN").map_err(db)?;
    for t in sqlite_tables(&mut c)? {
        let columns: Vec<String> = diesel::sql_query(format!(
            "SELECT name FROM pragma_table_info('{}') ORDER BY cid",
            t.replace('\'', "''")
        ))
        .load::<Name>(&mut c)
        .map_err(db)?
        .into_iter()
        .map(|n| n.name)
        .collect();
        let row = columns
            .iter()
            .map(|n| format!("quote({})", quoted(n)))
            .collect::<Vec<_>>()
            .join(" || char(31) || ");
        let without_rowid = diesel::sql_query(format!(
            "SELECT COUNT(*) AS n FROM sqlite_master WHERE name = '{}' AND sql LIKE '%WITHOUT ROWID%'",
            t.replace('\'', "''")
        ))
        .get_result::<Count>(&mut c)
        .map_err(db)?
        .n
            > 0;
        let mut d = Digest::default();
        if without_rowid {
            // No rowid to page by: pages by the primary key (integers in
            // fhirgate's only such table, the blind search index).
            let pk: Vec<String> = diesel::sql_query(format!(
                "SELECT name FROM pragma_table_info('{}') WHERE pk > 0 ORDER BY pk",
                t.replace('\'', "''")
            ))
            .load::<Name>(&mut c)
            .map_err(db)?
            .into_iter()
            .map(|n| quoted(&n.name))
            .collect();
            let keys = pk.join(", ");
            let mut after: Option<String> = None;
            loop {
                let rows = diesel::sql_query(format!(
                    "SELECT json_array({keys}) AS k, CAST({row} AS BLOB) AS r FROM {} {} ORDER BY {keys} LIMIT 5000",
                    quoted(&t),
                    after
                        .as_ref()
                        .map(|a| format!("WHERE ({keys}) > ({a})"))
                        .unwrap_or_default()
                ))
                .load::<KeyedRow>(&mut c)
                .map_err(db)?;
                let Some(last) = rows.last() else {
                    break;
                };
                // The key's values go back into the statement: integers only.
                let values: Vec<i64> = serde_json::from_str(&last.k).map_err(|_| {
                    StoreError::Backup(format!("the primary key of {t} is not made of integers"))
                })?;
                after = Some(
                    values
                        .iter()
                        .map(i64::to_string)
                        .collect::<Vec<_>>()
                        .join(", "),
                );
                for r in &rows {
                    d.add(&r.r);
                }
            }
        } else {
            let mut after = i64::MIN;
            loop {
                let rows = diesel::sql_query(format!(
                    "SELECT rowid AS id, CAST({row} AS BLOB) AS r FROM {} WHERE rowid > {after} ORDER BY rowid LIMIT 5000",
                    quoted(&t)
                ))
                .load::<RowId>(&mut c)
                .map_err(db)?;
                let Some(last) = rows.last() else {
                    break;
                };
                after = last.id;
                for r in &rows {
                    d.add(&r.r);
                }
            }
        }
        out.insert(t, d.finish());
    }
    c.batch_execute("COMMIT").map_err(db)?;
    Ok(out)
}

fn pg_tables(c: &mut PgConnection) -> Result<Vec<String>, StoreError> {
    diesel::sql_query(
        "SELECT tablename::text AS name FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename",
    )
    .load::<Name>(c)
    .map(|v| v.into_iter().map(|n| n.name).collect())
    .map_err(db)
}

/// The digests of every table, inside the caller's transaction (a cursor per
/// table, so memory stays bounded).
fn pg_digests_in(c: &mut PgConnection) -> Result<BTreeMap<String, TableDigest>, StoreError> {
    let mut out = BTreeMap::new();
    for t in pg_tables(c)? {
        c.batch_execute(&format!(
            "DECLARE fg_rows NO SCROLL CURSOR FOR SELECT t::text AS r FROM {} t",
            quoted(&t)
        ))
        .map_err(db)?;
        let mut d = Digest::default();
        loop {
            let rows = diesel::sql_query("FETCH 5000 FROM fg_rows")
                .load::<RowText>(c)
                .map_err(db)?;
            if rows.is_empty() {
                break;
            }
            for r in &rows {
                d.add(r.r.as_bytes());
            }
        }
        c.batch_execute("CLOSE fg_rows").map_err(db)?;
        out.insert(t, d.finish());
    }
    Ok(out)
}

/// The URL without its password, and the password (percent-decoded): the
/// PostgreSQL tools get it in `PGPASSWORD`, never on their command line, where
/// any local user could read it.
fn split_password(url: &str) -> (String, Option<String>) {
    let Some((scheme, rest)) = url.split_once("://") else {
        return (url.to_string(), None);
    };
    let (authority, tail) = match rest.find(['/', '?']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let Some((userinfo, host)) = authority.rsplit_once('@') else {
        return (url.to_string(), None);
    };
    let Some((user, password)) = userinfo.split_once(':') else {
        return (url.to_string(), None);
    };
    let password = percent_encoding::percent_decode_str(password)
        .decode_utf8_lossy()
        .to_string();
    (format!("{scheme}://{user}@{host}{tail}"), Some(password))
}

/// A PostgreSQL client tool for `url`, its password in the environment.
fn pg_tool(tool: &str, url: &str) -> Command {
    let (url, password) = split_password(url);
    let mut cmd = Command::new(tool);
    if let Some(p) = password {
        cmd.env("PGPASSWORD", p);
    }
    cmd.arg(format!("--dbname={url}"));
    cmd
}

fn pg_connect(url: &str) -> Result<PgConnection, StoreError> {
    PgConnection::establish(url)
        .map_err(|e| StoreError::Backup(format!("cannot connect to the database: {e}")))
}

/// What a backup's manifest says of the database's contents, read on the
/// backup's snapshot.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub tables: BTreeMap<String, TableDigest>,
    /// The sealed constant only the right master key opens (not a secret).
    pub key_check: Option<Vec<u8>>,
}

#[derive(QueryableByName)]
struct KeyCheck {
    #[diesel(sql_type = Binary)]
    sealed: Vec<u8>,
}

const KEY_CHECK: &str = "SELECT sealed FROM key_check ORDER BY id LIMIT 1";

/// The key check and digests of a SQLite file.
pub fn sqlite_contents(path: &Path) -> Result<Snapshot, StoreError> {
    let tables = sqlite_digests(path)?;
    let mut c = sqlite_open(path)?;
    let key_check = diesel::sql_query(KEY_CHECK)
        .load::<KeyCheck>(&mut c)
        .map_err(db)?
        .into_iter()
        .next()
        .map(|k| k.sealed);
    Ok(Snapshot { tables, key_check })
}

/// `pg_dump` of one snapshot into `out` (custom format), and the digests of
/// every table and the key check on that same snapshot.
pub fn pg_dump(url: &str, out: &Path) -> Result<Snapshot, StoreError> {
    #[derive(QueryableByName)]
    struct Exported {
        #[diesel(sql_type = Text)]
        s: String,
    }
    let mut c = pg_connect(url)?;
    c.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .map_err(db)?;
    let snapshot = diesel::sql_query("SELECT pg_export_snapshot() AS s")
        .get_result::<Exported>(&mut c)
        .map_err(db)?
        .s;
    let mut dump = pg_tool("pg_dump", url)
        .arg("--format=custom")
        .arg("--no-owner")
        .arg("--no-privileges")
        .arg(format!("--snapshot={snapshot}"))
        .arg(format!("--file={}", out.display()))
        .spawn()
        .map_err(|e| io("cannot run pg_dump (install the PostgreSQL client)", e))?;
    // The snapshot stays exported while this transaction is open: the digests
    // read the very rows pg_dump writes.
    let digests = pg_digests_in(&mut c);
    let key_check = diesel::sql_query(KEY_CHECK).load::<KeyCheck>(&mut c);
    let status = dump.wait().map_err(|e| io("pg_dump", e))?;
    c.batch_execute("COMMIT").map_err(db)?;
    if !status.success() {
        return Err(StoreError::Backup(format!("pg_dump failed ({status})")));
    }
    Ok(Snapshot {
        tables: digests?,
        key_check: key_check.map_err(db)?.into_iter().next().map(|k| k.sealed),
    })
}

/// The digests of every table of a PostgreSQL database, on one snapshot.
pub fn pg_digests(url: &str) -> Result<BTreeMap<String, TableDigest>, StoreError> {
    let mut c = pg_connect(url)?;
    c.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .map_err(db)?;
    let d = pg_digests_in(&mut c)?;
    c.batch_execute("COMMIT").map_err(db)?;
    Ok(d)
}

/// The tables of `tables` that exist (`existing`) and hold rows (`count`): a
/// restore refuses such a database.
fn with_rows(
    existing: &[String],
    tables: &[String],
    mut count: impl FnMut(&str) -> Result<i64, StoreError>,
) -> Result<Vec<String>, StoreError> {
    let mut full = Vec::new();
    for t in tables.iter().filter(|t| existing.contains(t)) {
        if count(&format!("SELECT COUNT(*) AS n FROM {}", quoted(t)))? > 0 {
            full.push(t.clone());
        }
    }
    Ok(full)
}

/// The tables of `tables` in a PostgreSQL database that hold rows.
pub fn pg_tables_with_rows(url: &str, tables: &[String]) -> Result<Vec<String>, StoreError> {
    let mut c = pg_connect(url)?;
    let existing = pg_tables(&mut c)?;
    with_rows(&existing, tables, |q| {
        diesel::sql_query(q)
            .get_result::<Count>(&mut c)
            .map(|r| r.n)
            .map_err(db)
    })
}

/// The tables of `tables` (none named: every table) in a SQLite file that
/// hold rows.
pub fn sqlite_tables_with_rows(path: &Path, tables: &[String]) -> Result<Vec<String>, StoreError> {
    let mut c = sqlite_open(path)?;
    let existing = sqlite_tables(&mut c)?;
    let tables = if tables.is_empty() {
        existing.as_slice()
    } else {
        tables
    };
    with_rows(&existing, tables, |q| {
        diesel::sql_query(q)
            .get_result::<Count>(&mut c)
            .map(|r| r.n)
            .map_err(db)
    })
}

/// `pg_restore` of a dump into an existing database whose fhirgate tables
/// (if any) are empty: they are dropped and made again by the dump.
pub fn pg_restore(url: &str, dump: &Path) -> Result<(), StoreError> {
    let output = pg_tool("pg_restore", url)
        .arg("--no-owner")
        .arg("--no-privileges")
        .arg("--clean")
        .arg("--if-exists")
        .arg("--exit-on-error")
        // All or nothing: a failed restore leaves no rows that would make the
        // next attempt refuse the database as not empty.
        .arg("--single-transaction")
        .arg(dump)
        .output()
        .map_err(|e| io("cannot run pg_restore (install the PostgreSQL client)", e))?;
    if !output.status.success() {
        return Err(StoreError::Backup(format!(
            "pg_restore failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(())
}

/// Lists a dump's contents (`pg_restore --list`): proof that it reads.
pub fn pg_dump_lists(dump: &Path) -> Result<usize, StoreError> {
    let output = Command::new("pg_restore")
        .arg("--list")
        .arg(dump)
        .output()
        .map_err(|e| io("cannot run pg_restore (install the PostgreSQL client)", e))?;
    if !output.status.success() {
        return Err(StoreError::Backup(format!(
            "the dump does not read: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|l| l.contains("TABLE DATA"))
        .count())
}

#[derive(QueryableByName)]
struct SealedLine {
    #[diesel(sql_type = BigInt)]
    seq: i64,
    #[diesel(sql_type = Text)]
    aad: String,
    #[diesel(sql_type = BigInt)]
    key_id: i64,
    #[diesel(sql_type = Binary)]
    body: Vec<u8>,
}

/// What [`Store::open_every_body`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SealedCount {
    pub versions: i64,
    pub audit_events: i64,
}

impl Store {
    /// Opens every sealed resource version and AuditEvent with this store's
    /// keys (a restored backup's proof that its data reads with the configured
    /// master key): the counts, or the first row that does not open.
    pub fn open_every_body(&self) -> Result<SealedCount, StoreError> {
        let ring = self.keyring()?;
        let mut count = SealedCount::default();
        for (table, aad, n) in [
            (
                "resource_versions",
                "resource_type || '/' || resource_id || '/' || CAST(version_id AS TEXT)",
                &mut count.versions,
            ),
            (
                "audit_log",
                "'AuditEvent/' || audit_id || '/1'",
                &mut count.audit_events,
            ),
        ] {
            let mut after = i64::MIN;
            loop {
                let lines = self.pool.read(|c| {
                    let mut sql = c.sql();
                    sql.push(&format!(
                        "SELECT seq, {aad} AS aad, key_id, body FROM {table} WHERE seq > "
                    ))
                    .i64(after)
                    .push(" ORDER BY seq LIMIT 2000");
                    c.load::<SealedLine>(sql)
                })?;
                let Some(last) = lines.last() else {
                    break;
                };
                after = last.seq;
                for l in &lines {
                    ring.open_box(l.key_id, &l.body, l.aad.as_bytes())?;
                    *n += 1;
                }
            }
        }
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    use super::split_password;

    #[test]
    fn the_password_leaves_the_url() {
        assert_eq!(
            split_password("postgres://fg:s%40cret@db.example:5432/fhir?sslmode=require"),
            (
                "postgres://fg@db.example:5432/fhir?sslmode=require".to_string(),
                Some("s@cret".to_string())
            )
        );
        assert_eq!(
            split_password("postgres://postgres@127.0.0.1:5432/test"),
            ("postgres://postgres@127.0.0.1:5432/test".to_string(), None)
        );
    }
}
