//! Builds the application from `Settings`: packages, structure model, store
//! (migrations, keys), audit writer, HTTP server. `main` and the tests use the
//! very same functions.

use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::middleware::from_fn;
use actix_web::{web, App, HttpServer};
use openssl::ssl::{SslAcceptor, SslFiletype, SslMethod, SslVersion};

use crate::audit::AuditWriter;
use crate::config::Settings;
use crate::crypto::{KeyError, MasterKey};
use crate::fhir::compartment::PatientCompartment;
use crate::fhir::Model;
use crate::http::{self, AppState};
use crate::packages::{PackageCache, PackageError, PackageRef, PackageSet};
use crate::search::{SearchEngine, SearchSettings, Total};
use crate::store::{Store, StoreError};
use crate::terminology::Terminology;
use crate::validation::{ValidationError, Validator, ValidatorOptions};

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Packages(#[from] PackageError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Keys(#[from] KeyError),
    #[error("auth.enabled = false is a development mode and is refused unless server.listen is a loopback address (it is {0})")]
    InsecureDevMode(String),
    #[error("this database already holds data, but no master key is configured (crypto.master_key or crypto.master_key_file) and the development key file {0} does not exist; fhirgate will not create a new key for existing data")]
    MissingKeyForData(PathBuf),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("no packages configured (packages.load is empty); the core package hl7.fhir.r4.core#4.0.1 is needed")]
    NoPackages,
    #[error("validation.required_profiles for {resource_type}")]
    RequiredProfile {
        resource_type: String,
        #[source]
        source: ValidationError,
    },
    #[error("validation.required_profiles for {resource_type}: {profile} constrains {constrains}, not {resource_type}")]
    RequiredProfileType {
        resource_type: String,
        profile: String,
        constrains: String,
    },
    #[error(transparent)]
    Import(#[from] crate::bulk::ImportError),
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthStartError),
    #[error("the audit console's pages: {0}")]
    Console(String),
    #[error("the report's AuditEvent search failed: {0}")]
    Report(#[from] crate::search::SearchError),
}

/// Loads the configured packages (installing missing ones) and compiles nothing yet.
pub fn load_model(settings: &Settings) -> Result<Arc<Model>, StartupError> {
    let cache = PackageCache::new(
        settings.packages.cache_dir(),
        settings.packages.registry.clone(),
    );
    let refs: Vec<PackageRef> = settings
        .packages
        .load
        .iter()
        .map(|s| s.parse())
        .collect::<Result<_, _>>()?;
    if refs.is_empty() {
        return Err(StartupError::NoPackages);
    }
    let profiles = settings.packages.profiles_dir();
    match &profiles {
        Some(dir) => tracing::info!(profiles = %dir.display(), "loading fhirgate's own package"),
        None => tracing::warn!("fhirgate's own package (profiles/) was not found beside the binary; set packages.profiles: the AuditEvents of failures and denials claim profiles it defines"),
    }
    let set = PackageSet::load_with_local(&cache, &refs, profiles.as_deref())?;
    Ok(Arc::new(Model::new(Arc::new(set))))
}

/// The validator over the model's packages; every required profile must compile (a
/// misspelt canonical stops the start instead of letting every write fail).
pub fn build_validator(
    settings: &Settings,
    model: &Arc<Model>,
) -> Result<Arc<Validator>, StartupError> {
    let terminology = Arc::new(Terminology::new(model.packages().clone()));
    let options = ValidatorOptions {
        unknown_profile: match settings.validation.unknown_profile {
            crate::config::UnknownProfile::Warning => crate::fhir::Severity::Warning,
            crate::config::UnknownProfile::Error => crate::fhir::Severity::Error,
        },
    };
    let validator = Validator::new(model.clone(), terminology, options);
    for (resource_type, profiles) in &settings.validation.required_profiles {
        for p in profiles {
            let plan = validator
                .plan(p)
                .map_err(|source| StartupError::RequiredProfile {
                    resource_type: resource_type.clone(),
                    source,
                })?;
            if !plan.type_name.eq_ignore_ascii_case(resource_type) {
                return Err(StartupError::RequiredProfileType {
                    resource_type: resource_type.clone(),
                    profile: p.clone(),
                    constrains: plan.type_name.clone(),
                });
            }
        }
    }
    Ok(Arc::new(validator))
}

/// Connects to the database, optionally migrates, and opens the data keys.
pub fn open_store(settings: &Settings, migrate: bool) -> Result<Store, StartupError> {
    open_store_with_deadline(settings, migrate, None)
}

/// Like [`open_store`], with a budget for each request's database work
/// (`server.request_timeout_secs`, the server's store). Migrations run on a
/// connection of their own without it: an index built over a large table may
/// take longer than any request should.
fn open_store_with_deadline(
    settings: &Settings,
    migrate: bool,
    request_timeout: Option<Duration>,
) -> Result<Store, StartupError> {
    let pool_timeout = Duration::from_millis(settings.database.pool_timeout_ms);
    if migrate {
        let n = Store::connect(&settings.database.url, 1, pool_timeout)?.migrate()?;
        if n > 0 {
            tracing::info!(migrations = n, "database migrated");
        }
    }
    let store = Store::connect_with_deadline(
        &settings.database.url,
        settings.database.pool_size,
        pool_timeout,
        request_timeout,
        shares(&settings.database),
    )?;
    let master = master_key(settings, &store)?;
    store.unlock(&master)?;
    store.start_maintenance();
    Ok(store)
}

/// The sizes of the connection shares of expensive work (store::share).
fn shares(db: &crate::config::DatabaseSettings) -> crate::store::ShareSizes {
    crate::store::ShareSizes {
        reserved: db.reserved_connections,
        search: db.search_connections,
        history: db.history_connections,
        bundle: db.bundle_connections,
    }
}

/// The configured master key; without one, a development key file (created with
/// mode 0600 and a warning), unless the database already holds data.
pub fn master_key(settings: &Settings, store: &Store) -> Result<MasterKey, StartupError> {
    let c = &settings.crypto;
    if let Some(k) = &c.master_key {
        return Ok(MasterKey::parse(k)?);
    }
    if let Some(f) = &c.master_key_file {
        return Ok(MasterKey::read_file(f)?);
    }
    let dev = c
        .dev_key_file
        .clone()
        .unwrap_or_else(|| PathBuf::from("fhirgate-dev.key"));
    if dev.exists() {
        tracing::warn!(path = %dev.display(), "using the development master key file; configure crypto.master_key_file for production");
        return Ok(MasterKey::read_file(&dev)?);
    }
    if store.has_keys()? {
        return Err(StartupError::MissingKeyForData(dev));
    }
    let key = MasterKey::generate()?;
    key.write_new_file(&dev)?;
    tracing::warn!(path = %dev.display(), "no master key configured: created a development key file (mode 0600); keep it, or the data cannot be read");
    Ok(key)
}

/// The search limits from the settings.
pub fn search_settings(settings: &Settings) -> SearchSettings {
    SearchSettings {
        default_count: settings.server.default_page_size.max(1),
        max_count: settings.server.max_page_size.max(1),
        max_in_memory: settings.search.max_in_memory,
        max_includes: settings.search.max_includes,
        max_values_per_param: settings.search.max_values_per_param,
        max_params: settings.search.max_params,
        max_chain_depth: settings.search.max_chain_depth,
        max_has_depth: settings.search.max_has_depth,
        max_include_rounds: settings.search.max_include_rounds,
        max_index_rows: settings.search.max_index_rows,
        default_total: match settings.search.default_total.as_str() {
            "none" => Total::None,
            "estimate" => Total::Estimate,
            _ => Total::Accurate,
        },
    }
}

/// The search engine over the model and the validator's terminology, with the
/// custom SearchParameters the store holds loaded into its registry.
fn search_engine(
    settings: &Settings,
    model: &Arc<Model>,
    validator: &Validator,
    base_url: &str,
    store: &Store,
) -> Result<SearchEngine, StartupError> {
    let search = SearchEngine::new(
        model.clone(),
        validator.terminology().clone(),
        base_url.to_string(),
        search_settings(settings),
    );
    crate::search::reindex::reload_registry(store, &search)?;
    Ok(search)
}

/// Everything the handlers share.
pub fn build_state(settings: &Settings, migrate: bool) -> Result<AppState, StartupError> {
    if !settings.auth.enabled {
        if !settings.listens_on_loopback() {
            return Err(StartupError::InsecureDevMode(
                settings.server.listen.clone(),
            ));
        }
        tracing::warn!("auth.enabled = false: every request is served without authorization (development mode, loopback only)");
    }
    let model = load_model(settings)?;
    let validator = build_validator(settings, &model)?;
    let store = open_store_with_deadline(settings, migrate, settings.server.request_timeout())?;
    let base_url = settings.base_url();
    let audit = AuditWriter::start(
        store.clone(),
        base_url.clone(),
        settings.audit.observer.clone(),
        settings.audit.max_batch,
    );
    let capability = http::capability::build(&model, &base_url, settings);
    let search = Arc::new(search_engine(
        settings, &model, &validator, &base_url, &store,
    )?);
    crate::search::reindex::start(&store, &search);
    crate::subscription::install(&store, &search);
    let metrics = http::ops::Metrics::new();
    let compartment = Arc::new(PatientCompartment::new(model.clone()));
    let gate = Arc::new(crate::validation::WriteGate::new(
        validator.clone(),
        settings.validation.clone(),
    ));
    crate::subscription::worker::start(
        &store,
        &search,
        &audit,
        &settings.subscriptions,
        &base_url,
        &metrics.subscriptions,
        crate::subscription::worker::WritePath {
            model: model.clone(),
            compartment: compartment.clone(),
            gate: gate.clone(),
        },
    );
    crate::search::audit_index::start(
        &store,
        &search,
        Duration::from_millis(settings.audit.index_interval_ms),
    );
    let chainer = Arc::new(crate::audit::chain::Chainer::new(
        store.clone(),
        chain_policy(settings),
    ));
    crate::audit::chain::start(
        &chainer,
        Duration::from_millis(settings.audit.chain_interval_ms.max(10)),
        Duration::from_secs(settings.audit.verify_interval_secs),
    );
    let auth =
        crate::auth::AuthService::start(settings, store.clone(), search.clone(), audit.clone())?;
    let exporter = crate::bulk::export::Exporter::new(
        store.clone(),
        search.clone(),
        compartment.clone(),
        settings.bulk_dir(),
        settings.bulk.clone(),
    );
    exporter.start();
    Ok(AppState {
        exporter,
        auth,
        settings: settings.clone(),
        base_url,
        compartment,
        search,
        gate,
        validator,
        model,
        store,
        audit,
        metrics,
        capability,
        chainer,
        console: Arc::new(crate::console::Pages::new().map_err(StartupError::Console)?),
    })
}

/// When the audit chain is checkpointed (`audit.checkpoint_*`).
pub fn chain_policy(settings: &Settings) -> crate::audit::chain::CheckpointPolicy {
    crate::audit::chain::CheckpointPolicy {
        every: settings.audit.checkpoint_every,
        secs: settings.audit.checkpoint_secs,
        file: settings.audit.checkpoint_file.clone(),
    }
}

/// Binds the listener (or takes a bound one) and builds the server; it runs when awaited.
/// The state is shared: the caller may keep a handle on it (the tests do).
pub fn build_server(
    settings: &Settings,
    state: web::Data<AppState>,
    listener: Option<TcpListener>,
) -> Result<(Server, u16), StartupError> {
    let listener = match listener {
        Some(l) => l,
        None => {
            TcpListener::bind(&settings.server.listen).map_err(|source| StartupError::Listen {
                addr: settings.server.listen.clone(),
                source,
            })?
        }
    };
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
    let workers = match settings.server.workers {
        0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
        n => n,
    };
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .wrap(from_fn(crate::auth::authenticate))
            .wrap(from_fn(crate::auth::secure_headers))
            .wrap(from_fn(http::ops::observe))
            .configure(http::configure)
    })
    .workers(workers)
    .on_connect(http::hangup::on_connect)
    .shutdown_timeout(settings.server.shutdown_timeout_secs);
    let server = match (&settings.tls.cert, &settings.tls.key) {
        (Some(cert), Some(key)) => {
            let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server())
                .map_err(|e| StartupError::Tls(e.to_string()))?;
            b.set_min_proto_version(Some(SslVersion::TLS1_2))
                .map_err(|e| StartupError::Tls(e.to_string()))?;
            b.set_private_key_file(key, SslFiletype::PEM)
                .map_err(|e| StartupError::Tls(format!("{}: {e}", key.display())))?;
            b.set_certificate_chain_file(cert)
                .map_err(|e| StartupError::Tls(format!("{}: {e}", cert.display())))?;
            server.listen_openssl(listener, b)
        }
        (None, None) => server.listen(listener),
        _ => {
            return Err(StartupError::Tls(
                "tls.cert and tls.key must be set together".into(),
            ))
        }
    }
    .map_err(|source| StartupError::Listen {
        addr: settings.server.listen.clone(),
        source,
    })?;
    Ok((server.run(), port))
}

/// `fhirgate import`: the pieces of the write path (model, store, search, audit)
/// without the HTTP server, and the import through them.
pub fn import(
    settings: &Settings,
    options: &crate::bulk::ImportOptions,
    report: &(dyn Fn(&crate::bulk::BadItem) + Sync),
) -> Result<crate::bulk::ImportSummary, StartupError> {
    let model = load_model(settings)?;
    let store = open_store(settings, true)?;
    let base_url = settings.base_url();
    let validator = build_validator(settings, &model)?;
    let gate = crate::validation::WriteGate::new(validator.clone(), settings.validation.clone());
    let search = Arc::new(search_engine(
        settings, &model, &validator, &base_url, &store,
    )?);
    crate::subscription::install(&store, &search);
    let audit = AuditWriter::start(
        store.clone(),
        base_url.clone(),
        settings.audit.observer.clone(),
        settings.audit.max_batch,
    );
    let compartment = PatientCompartment::new(model.clone());
    let ctx = crate::access::AccessContext::open(format!("import-{}", uuid::Uuid::new_v4()), None);
    let env = crate::bundle::Env {
        model: &model,
        search: &search,
        store: &store,
        audit: &audit,
        compartment: &compartment,
        gate: &gate,
        ctx: &ctx,
        base_url: &base_url,
        return_bodies: false,
        subscriptions: &settings.subscriptions,
    };
    Ok(crate::bulk::import(&env, options, report)?)
}

/// `fhirgate audit report`: a patient's accounting of disclosures from the
/// command line, through the same AuditEvent search as `$disclosures` (model,
/// store and search engine, no HTTP server), as the system itself; the report
/// is itself recorded as an AuditEvent (`operation` `disclosures`, the command
/// as its query), after the search so that it is not in its own report.
pub fn audit_report(
    settings: &Settings,
    patient: &crate::fhir::types::Id,
    period: &crate::audit::disclosures::Period,
    command: &str,
) -> Result<Vec<crate::audit::disclosures::ReportRow>, StartupError> {
    use crate::audit::disclosures::{self, ReportRow};
    let model = load_model(settings)?;
    let store = open_store(settings, true)?;
    let base_url = settings.base_url();
    let validator = build_validator(settings, &model)?;
    let search = search_engine(settings, &model, &validator, &base_url, &store)?;
    let ctx = crate::access::AccessContext::open(format!("cli-{}", uuid::Uuid::new_v4()), None);
    let (events, _) = disclosures::collect(&store, &search, &ctx, patient, period, usize::MAX)?;
    let mut record = crate::audit::AuditRecord::new(
        crate::audit::Interaction::Operation("disclosures".into()),
        &ctx,
    );
    record.resource_type = Some(crate::audit::RESOURCE_TYPE.into());
    record.query = Some(command.to_string());
    store.append_audits(&[record.to_row(
        &base_url,
        &settings.audit.observer,
        crate::fhir::now_micros(),
    )])?;
    Ok(events.iter().map(ReportRow::of).collect())
}
