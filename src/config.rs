//! Settings: one typed struct with a default for every value, layered
//! defaults -> TOML file -> `FHIRGATE_<SECTION>__<KEY>` environment variables.
//!
//! This is the only module that reads the process environment for settings.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

/// Everything the server and the CLI can be told.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub server: ServerSettings,
    pub database: DatabaseSettings,
    pub packages: PackageSettings,
    pub crypto: CryptoSettings,
    pub auth: AuthSettings,
    pub tls: TlsSettings,
    pub audit: AuditSettings,
    pub log: LogSettings,
    pub search: SearchSettings,
    pub validation: ValidationSettings,
    pub bundle: BundleSettings,
    pub ratelimit: RateLimitSettings,
    pub subscriptions: SubscriptionSettings,
    pub bulk: BulkSettings,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    /// Address the HTTP server binds.
    pub listen: String,
    /// Public base of the FHIR API; defaults to `http://<listen>/fhir`.
    pub base_url: Option<String>,
    /// Largest request body accepted, in bytes (larger -> 413).
    pub max_body_bytes: usize,
    /// Worker threads of the HTTP server (0 = number of cores).
    pub workers: usize,
    /// Page size of history and search bundles when `_count` is absent.
    pub default_page_size: usize,
    /// Largest `_count` honoured (history and search).
    pub max_page_size: usize,
    /// Seconds in-flight requests get to finish on shutdown.
    pub shutdown_timeout_secs: u64,
    /// Origins whose browser scripts may call the FHIR API and the token endpoint
    /// (CORS); none by default, `*` for any. The SMART discovery documents allow
    /// any origin whatever this says.
    pub cors_origins: Vec<String>,
    /// Seconds a request's database work may take (0: no limit). Enforced in the
    /// database: SQLite interrupts the statement, PostgreSQL's `statement_timeout`
    /// stops it; the client gets 400 `too-costly`.
    pub request_timeout_secs: u64,
    /// Seconds a client has to send a request's whole body (0: no limit); a body
    /// still arriving then is answered 408 and the connection closed.
    pub body_timeout_secs: u64,
    /// JSON nodes (elements, arrays, values) a request's resource may have; more:
    /// 400 `too-costly` before anything works on it.
    pub max_elements: usize,
    /// Items one array of a request's resource may have (a Bundle's entries are
    /// bounded by `bundle.max_entries` too); more: 400 `too-costly`. The R4 core
    /// ImplementationGuide example lists 28,517 resources in one array.
    pub max_array_items: usize,
}

impl ServerSettings {
    /// The bounds on a request's resource (`max_elements`, `max_array_items`).
    pub fn shape_limits(&self) -> crate::fhir::shape::ShapeLimits {
        crate::fhir::shape::ShapeLimits {
            max_elements: self.max_elements,
            max_array_items: self.max_array_items,
        }
    }

    /// The request budget; None when `request_timeout_secs` is 0.
    pub fn request_timeout(&self) -> Option<std::time::Duration> {
        (self.request_timeout_secs > 0)
            .then(|| std::time::Duration::from_secs(self.request_timeout_secs))
    }

    /// The body budget; None when `body_timeout_secs` is 0.
    pub fn body_timeout(&self) -> Option<std::time::Duration> {
        (self.body_timeout_secs > 0).then(|| std::time::Duration::from_secs(self.body_timeout_secs))
    }
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            listen: "127.0.0.1:8080".into(),
            base_url: None,
            max_body_bytes: 16 * 1024 * 1024,
            workers: 0,
            default_page_size: 50,
            max_page_size: 1000,
            shutdown_timeout_secs: 30,
            cors_origins: Vec::new(),
            request_timeout_secs: 30,
            body_timeout_secs: 60,
            max_elements: 1_000_000,
            max_array_items: 50_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseSettings {
    /// `sqlite://path/to/file.db` (embedded) or `postgres://user@host/db`.
    pub url: String,
    /// Connections in the pool (0 = automatic: cores + 4 for SQLite, 4x cores for PostgreSQL).
    pub pool_size: u32,
    /// How long a request waits for a connection (or for a slot of its share)
    /// before it gets a 503 with `Retry-After`.
    pub pool_timeout_ms: u64,
    /// Connections of the pool that searches, history and Bundles never
    /// take, so that reads by id and single writes are served however many of
    /// those run (0 = automatic: a third of the pool, at least 2; always at least
    /// one connection is left to expensive work). The audit writer has
    /// connections of its own besides the pool (1 on SQLite, 2 on PostgreSQL).
    pub reserved_connections: u32,
    /// Connections searches may hold at once (0 = automatic: on PostgreSQL the
    /// whole share of expensive work, i.e. the pool minus the reserved
    /// connections; on SQLite, whose statements run on fhirgate's own cores, half
    /// the cores, at least 1).
    pub search_connections: u32,
    /// Connections history requests may hold at once (0 = automatic: half of the
    /// share of expensive work, at least 1).
    pub history_connections: u32,
    /// Connections batch and transaction Bundles may hold at once (0 = automatic:
    /// half of the share of expensive work, at least 1). On SQLite a Bundle's
    /// write transaction waits for the one writer and takes no slot while waiting.
    pub bundle_connections: u32,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        DatabaseSettings {
            url: "sqlite://fhirgate.db".into(),
            pool_size: 0,
            pool_timeout_ms: 5000,
            reserved_connections: 0,
            search_connections: 0,
            history_connections: 0,
            bundle_connections: 0,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PackageSettings {
    /// The FHIR package cache shared with other FHIR tools.
    pub cache: Option<PathBuf>,
    /// Packages loaded at start, `id#version`.
    pub load: Vec<String>,
    /// FHIR package registry that missing packages are fetched from.
    pub registry: String,
    /// fhirgate's own package folder (`profiles/`: its AuditEvent profiles), loaded
    /// beside `load`. Unset: found beside the binary ([`PackageSettings::profiles_dir`]).
    pub profiles: Option<PathBuf>,
}

impl Default for PackageSettings {
    fn default() -> Self {
        PackageSettings {
            cache: None,
            load: vec!["hl7.fhir.r4.core#4.0.1".into()],
            registry: "https://packages.fhir.org".into(),
            profiles: None,
        }
    }
}

impl PackageSettings {
    /// fhirgate's own package folder: configured, else the first that exists of
    /// `profiles/` beside the binary, `../share/fhirgate/profiles` from the binary
    /// (an installed layout), and `profiles/` of the source tree the binary was built
    /// from (a clean clone in CI, the tests, `cargo run`). None when none exists.
    pub fn profiles_dir(&self) -> Option<PathBuf> {
        if let Some(p) = &self.profiles {
            return Some(p.clone());
        }
        let exe_dir = std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(Path::to_path_buf));
        let mut candidates = Vec::new();
        if let Some(d) = exe_dir {
            candidates.push(d.join("profiles"));
            candidates.push(d.join("../share/fhirgate/profiles"));
        }
        candidates.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("profiles"));
        candidates
            .into_iter()
            .find(|d| d.join("package.json").is_file())
    }

    /// The cache folder: configured, else `~/.fhir/packages`.
    pub fn cache_dir(&self) -> PathBuf {
        match &self.cache {
            Some(p) => p.clone(),
            None => dirs::home_dir()
                .unwrap_or_else(|| PathBuf::from("."))
                .join(".fhir")
                .join("packages"),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct CryptoSettings {
    /// The master key (key-encryption key): 32 bytes, base64 or hex.
    pub master_key: Option<String>,
    /// A file holding the master key (base64 or hex).
    pub master_key_file: Option<PathBuf>,
    /// Where the development key is created when no key is configured.
    pub dev_key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// `false` is a development mode, refused unless the server listens on loopback.
    pub enabled: bool,
    /// External identity providers whose JWTs are accepted as access tokens.
    pub issuers: Vec<IssuerSettings>,
    /// Lifetime of every access token fhirgate issues (backend-services tokens:
    /// never above 300 s; break-glass tokens: never above 3600 s).
    pub access_token_secs: u64,
    /// Lifetime of a refresh token (`offline_access`, `online_access`).
    pub refresh_token_secs: u64,
    /// Failed logins in a row that lock an account (0: never locked).
    pub max_failed_logins: u32,
    /// How long a locked account stays locked.
    pub lockout_secs: u64,
}

impl Default for AuthSettings {
    fn default() -> Self {
        AuthSettings {
            enabled: true,
            issuers: Vec::new(),
            access_token_secs: 3600,
            refresh_token_secs: 30 * 24 * 3600,
            max_failed_logins: 5,
            lockout_secs: 900,
        }
    }
}

/// An external identity provider (`auth.issuers`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct IssuerSettings {
    /// The `iss` of its tokens.
    pub issuer: String,
    /// Where its signing keys are published.
    pub jwks_uri: String,
    /// The `aud` its tokens must carry for fhirgate.
    pub audience: String,
}

/// Request rates (DESIGN section 11): per client on the FHIR API, per client
/// address on the token and login endpoints.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitSettings {
    /// FHIR requests per second of one client (0: unlimited).
    pub per_client_per_sec: u32,
    /// Requests a client may send at once above its rate.
    pub burst: u32,
    /// Token and login requests per minute from one address (0: unlimited).
    pub auth_per_addr_per_min: u32,
}

impl Default for RateLimitSettings {
    fn default() -> Self {
        RateLimitSettings {
            per_client_per_sec: 1000,
            burst: 2000,
            auth_per_addr_per_min: 120,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSettings {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditSettings {
    /// Name of this server in `AuditEvent.source.observer`.
    pub observer: String,
    /// Most audit records committed in one group commit.
    pub max_batch: usize,
    /// Milliseconds between the rounds of the background audit indexer, which
    /// puts committed AuditEvents into the search index (0: no background
    /// rounds; every AuditEvent search still indexes what it needs first).
    pub index_interval_ms: u64,
    /// Milliseconds between the rounds of the background audit chainer, which
    /// links committed AuditEvents into the tamper-evident hash chain (at least
    /// 10; every verification links what is committed first).
    pub chain_interval_ms: u64,
    /// A signed checkpoint of the chain's head at least every this many
    /// AuditEvents (0: not by count).
    pub checkpoint_every: i64,
    /// A signed checkpoint at least this often while the chain grows, in
    /// seconds (0: not by time).
    pub checkpoint_secs: u64,
    /// Each checkpoint is also appended to this file (one JSON object a line),
    /// outside the database, so that a cut tail is detected; `audit verify`
    /// reads it.
    pub checkpoint_file: Option<std::path::PathBuf>,
    /// Seconds between full verifications of the chain by every node, whose
    /// verdict is the `fhirgate_audit_chain_ok` metric (0: none).
    pub verify_interval_secs: u64,
    /// Days AuditEvents are kept at least: `fhirgate audit purge` removes only
    /// older ones. HIPAA 164.316(b)(2) asks six years; a lower value is refused.
    pub retention_days: u32,
}

/// The lowest `audit.retention_days` accepted: six years (HIPAA 164.316(b)(2)).
pub const MIN_AUDIT_RETENTION_DAYS: u32 = 2190;

impl Default for AuditSettings {
    fn default() -> Self {
        AuditSettings {
            observer: "fhirgate".into(),
            max_batch: 512,
            index_interval_ms: 1000,
            chain_interval_ms: 1000,
            checkpoint_every: 10_000,
            checkpoint_secs: 60,
            checkpoint_file: None,
            verify_interval_secs: 3600,
            retention_days: MIN_AUDIT_RETENTION_DAYS,
        }
    }
}

/// FHIR Subscriptions (DESIGN section 13).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SubscriptionSettings {
    /// Subscriptions are accepted and delivered; off: a Subscription is refused
    /// (422) and this node delivers nothing.
    pub enabled: bool,
    /// Endpoints may be `http` (and full-resource payloads go over it): for
    /// development only.
    pub allow_http: bool,
    /// Host names or IP addresses that may be private, loopback or link-local
    /// (matched exactly against the endpoint's host and each address it
    /// resolves to).
    pub allowed_hosts: Vec<String>,
    /// Hours a failing endpoint is retried before the subscription's status
    /// becomes `error`.
    pub retry_hours: u64,
    /// Milliseconds before the first retry of a failed delivery (at most 5,000:
    /// DESIGN section 13); the wait then doubles up to 10 minutes.
    pub first_retry_ms: u64,
    /// Seconds one delivery may take (connect, send, answer).
    pub delivery_timeout_secs: u64,
    /// Milliseconds between the delivery worker's looks at the outbox when
    /// nothing woke it (a write on this node wakes it at once).
    pub poll_interval_ms: u64,
    /// Subscriptions that may be `active` at once on this server (every node):
    /// a create or update that would make one more is refused (422); 0: no
    /// limit. Each active subscription is matched inside every write of its type.
    pub max_active: u64,
    /// Hours stored events and delivery attempts are kept (`$events` replays and
    /// a websocket catches up within them); older ones are removed, delivered or
    /// not.
    pub retention_hours: u64,
}

impl Default for SubscriptionSettings {
    fn default() -> Self {
        SubscriptionSettings {
            enabled: true,
            allow_http: false,
            allowed_hosts: Vec::new(),
            retry_hours: 24,
            first_retry_ms: 5000,
            delivery_timeout_secs: 10,
            poll_interval_ms: 500,
            max_active: 5000,
            retention_hours: 72,
        }
    }
}

/// Bulk Data `$export` (DESIGN section 14).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BulkSettings {
    /// Where export files are kept, encrypted (default: a folder beside the
    /// SQLite database, `<database>-bulk`; `fhirgate-bulk` in the working folder
    /// for PostgreSQL). Nodes that share a database must share this folder.
    pub dir: Option<PathBuf>,
    /// Resources per export file; a type with more is split into several files.
    pub max_file_resources: u64,
    /// Hours a finished export's files are kept; then the job and its files go.
    pub retention_hours: u64,
    /// Exports one client may have queued or running at once (more: 429).
    pub max_jobs_per_client: u64,
    /// Seconds a node holds a running export before another node may take it
    /// over (a node that died); renewed every quarter of it while it runs.
    pub lease_secs: u64,
}

impl Default for BulkSettings {
    fn default() -> Self {
        BulkSettings {
            dir: None,
            max_file_resources: 10_000,
            retention_hours: 24,
            max_jobs_per_client: 3,
            lease_secs: 60,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    /// `tracing` filter, e.g. `info` or `fhirgate=debug,actix_web=info`.
    pub level: String,
    /// `text` or `json`.
    pub format: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            level: "info".into(),
            format: "text".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SearchSettings {
    /// Most matches a search may sort or check after decryption (sorting by a
    /// string or token, starts-with longer than the indexed prefixes, `:contains`).
    pub max_in_memory: usize,
    /// Most resources `_include`/`_revinclude` add to one page.
    pub max_includes: usize,
    /// `_total` when the request does not say: `none`, `estimate` or `accurate`.
    pub default_total: String,
    /// Most values one search parameter may have in a request, its repeats and
    /// comma-separated alternatives counted together.
    pub max_values_per_param: usize,
    /// Most search parameters (criteria and result controls, repeats counted) in
    /// one request.
    pub max_params: usize,
    /// Most links in one chain (`subject:Patient.organization.name` has two).
    pub max_chain_depth: usize,
    /// Most `_has` nested in one parameter.
    pub max_has_depth: usize,
    /// Most rounds of `_include:iterate`/`_revinclude:iterate`; the answer says
    /// when iteration stopped before its end.
    pub max_include_rounds: usize,
    /// Most search index rows one written resource may make (before duplicates
    /// are removed); more: 400 `too-costly`. A string makes its exact form, 12
    /// prefixes and a trigram per character for each parameter that reads it.
    pub max_index_rows: usize,
}

impl Default for SearchSettings {
    fn default() -> Self {
        SearchSettings {
            max_in_memory: 5000,
            max_includes: 1000,
            default_total: "accurate".into(),
            max_values_per_param: 100,
            max_params: 30,
            max_chain_depth: 3,
            max_has_depth: 2,
            max_include_rounds: 4,
            max_index_rows: 250_000,
        }
    }
}

/// How much of validation runs on create and update.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ValidationMode {
    /// Only well-formedness (JSON/XML, a known resource type): no strict structural read,
    /// no profiles. For trusted bulk loads and measurements.
    Off,
    /// The strict structural reader (unknown elements, primitive formats, ...).
    Structure,
    /// The strict reader plus profile validation: the type's definition, `meta.profile`
    /// claims and `required_profiles`.
    #[default]
    Full,
}

/// Severity for a `meta.profile` claim that no loaded package defines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum UnknownProfile {
    #[default]
    Warning,
    Error,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct ValidationSettings {
    pub mode: ValidationMode,
    /// Resource type -> profile canonicals every written resource of that type must meet
    /// (matched case-insensitively, so environment variables can set it).
    pub required_profiles: std::collections::BTreeMap<String, Vec<String>>,
    pub unknown_profile: UnknownProfile,
}

impl ValidationSettings {
    /// The profiles required for `resource_type`.
    pub fn required_for(&self, resource_type: &str) -> &[String] {
        self.required_profiles
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(resource_type))
            .map(|(_, v)| v.as_slice())
            .unwrap_or(&[])
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BundleSettings {
    /// Most entries of one batch or transaction Bundle (more -> 413). A transaction
    /// holds its locks until its last entry is written.
    pub max_entries: usize,
}

impl Default for BundleSettings {
    fn default() -> Self {
        BundleSettings {
            max_entries: 10_000,
        }
    }
}

/// A settings file or variable that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(#[from] Box<figment::Error>);

impl Settings {
    /// Defaults, then `file` (or `fhirgate.toml` when present), then the environment.
    pub fn load(file: Option<&Path>) -> Result<Settings, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Settings::default()));
        match file {
            Some(f) => figment = figment.merge(Toml::file_exact(f)),
            None => {
                if Path::new("fhirgate.toml").exists() {
                    figment = figment.merge(Toml::file_exact("fhirgate.toml"));
                }
            }
        }
        // Only `SECTION__KEY` names are settings; other FHIRGATE_ variables (test
        // harness knobs) are not.
        figment = figment.merge(
            Env::prefixed("FHIRGATE_")
                .filter(|k| k.as_str().contains("__"))
                .split("__"),
        );
        let settings: Settings = figment.extract().map_err(|e| ConfigError(Box::new(e)))?;
        if settings.audit.retention_days < MIN_AUDIT_RETENTION_DAYS {
            return Err(ConfigError(Box::new(figment::Error::from(format!(
                "audit.retention_days is {}: AuditEvents are kept at least {MIN_AUDIT_RETENTION_DAYS} days (six years, HIPAA 164.316(b)(2))",
                settings.audit.retention_days
            )))));
        }
        Ok(settings)
    }

    /// The public FHIR base URL, without a trailing slash.
    pub fn base_url(&self) -> String {
        match &self.server.base_url {
            Some(b) => b.trim_end_matches('/').to_string(),
            None => format!("http://{}/fhir", self.server.listen),
        }
    }

    /// Where the authorization server's endpoints live: the base URL without its
    /// `/fhir` (so `/auth/token` sits beside `/fhir`).
    pub fn auth_base(&self) -> String {
        let base = self.base_url();
        match base.strip_suffix("/fhir") {
            Some(root) => root.to_string(),
            None => base,
        }
    }

    /// Where export files are kept (`bulk.dir`, else beside the database).
    pub fn bulk_dir(&self) -> PathBuf {
        if let Some(d) = &self.bulk.dir {
            return d.clone();
        }
        match self.database.url.strip_prefix("sqlite://") {
            Some(file) if !file.is_empty() && !file.starts_with(':') => {
                PathBuf::from(format!("{}-bulk", file.trim_end_matches(".db")))
            }
            _ => PathBuf::from("fhirgate-bulk"),
        }
    }

    /// True when the server speaks TLS (or says its public base is https).
    pub fn uses_tls(&self) -> bool {
        self.tls.cert.is_some() || self.base_url().starts_with("https://")
    }

    /// True when the listen address is a loopback address.
    pub fn listens_on_loopback(&self) -> bool {
        match self.server.listen.parse::<SocketAddr>() {
            Ok(a) => a.ip().is_loopback(),
            Err(_) => self.server.listen.starts_with("localhost:"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_work_on_a_laptop() {
        let s = Settings::default();
        assert_eq!(s.server.listen, "127.0.0.1:8080");
        assert_eq!(s.base_url(), "http://127.0.0.1:8080/fhir");
        assert_eq!(s.database.url, "sqlite://fhirgate.db");
        assert!(s.auth.enabled);
        assert!(s.listens_on_loopback());
        assert!(s.packages.cache_dir().ends_with(".fhir/packages"));
        assert_eq!(s.validation.mode, ValidationMode::Full);
        assert_eq!(s.validation.unknown_profile, UnknownProfile::Warning);
    }

    #[test]
    fn required_profiles_match_the_type_in_any_case() {
        let mut s = ValidationSettings::default();
        s.required_profiles
            .insert("patient".into(), vec!["urn:profile".into()]);
        assert_eq!(s.required_for("Patient"), ["urn:profile".to_string()]);
        assert!(s.required_for("Observation").is_empty());
    }
}
