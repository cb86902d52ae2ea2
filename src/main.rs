//! The `fhirgate` command line: parses arguments and calls the library.
#![allow(clippy::disallowed_macros)] // the CLI is where output belongs

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use fhirgate::config::Settings;
use fhirgate::packages::{PackageCache, PackageRef};
use fhirgate::{fhir, startup, telemetry};

/// jemalloc instead of glibc's malloc: after the largest requests the defaults admit,
/// glibc kept the process at about 2 GiB of a 2.8 GiB peak once idle; jemalloc, whose
/// background threads purge freed pages after its decay time even while no request comes,
/// gave most of it back (docs/decisions.md, "Memory after large requests"; figures in docs/benchmarks.md).
/// Only the binary: the library's own tests keep the system allocator.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(name = "fhirgate", version, about = "FHIR R4 interoperability gateway")]
struct Cli {
    /// Settings file (TOML); default `fhirgate.toml` when present.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (migrates the database first).
    Serve {
        /// Do not apply database migrations at start.
        #[arg(long)]
        no_migrate: bool,
    },
    /// Apply database migrations and exit.
    Migrate,
    /// Validate resources offline (JSON or XML): structure, the type's definition, the
    /// profiles they claim and those named; one OperationOutcome per file on stdout; exit 1
    /// when any file has an error.
    Validate {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// A profile (canonical URL) every file must conform to; repeatable.
        #[arg(long = "profile")]
        profiles: Vec<String>,
        /// A package to load besides the core (`ID#VERSION`); repeatable. Without it, the
        /// configured `packages.load` are used.
        #[arg(long = "package")]
        packages: Vec<String>,
    },
    /// Evaluate a FHIRPath expression against a resource (FILE or stdin, JSON or
    /// XML); prints the result collection as a JSON array.
    Fhirpath {
        expression: String,
        file: Option<PathBuf>,
    },
    /// FHIR package cache management.
    Packages {
        #[command(subcommand)]
        command: PackagesCommand,
    },
    /// Load NDJSON files (one resource per line) and Bundle files (transaction,
    /// batch, or one resource per file), or folders of them, through the same write
    /// path as the API. Resumes where an interrupted import stopped.
    Import {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Stop at the first bad line instead of reporting it and going on.
        #[arg(long)]
        fail_fast: bool,
        /// NDJSON lines per transaction.
        #[arg(long, default_value_t = 500)]
        batch_size: usize,
        /// Transactions in flight (default: the number of cores).
        #[arg(long)]
        jobs: Option<usize>,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
    },
    /// The audit log's tamper-evident chain.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Key management.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// A consistent backup of the database while the server serves (`--out FILE`;
    /// SQLite: VACUUM INTO; PostgreSQL: pg_dump on one snapshot), with a manifest of
    /// every table's rows and digest; `backup verify FILE` checks one.
    #[command(args_conflicts_with_subcommands = true)]
    Backup {
        #[command(subcommand)]
        command: Option<BackupCommand>,
        /// The backup file to write (never overwritten).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Restores a backup into an empty database (default: `database.url`) and
    /// verifies it: every table's rows and digest, every sealed body opened with
    /// the configured master key, the audit chain.
    Restore {
        #[arg(long)]
        from: PathBuf,
        #[arg(long)]
        database: Option<String>,
    },
    /// OAuth clients of the SMART authorization server.
    Clients {
        #[command(subcommand)]
        command: ClientsCommand,
    },
    /// Users of the authorization server's login page.
    Users {
        #[command(subcommand)]
        command: UsersCommand,
    },
    /// Prints an opaque EHR launch id (single use, 5 minutes) for the `launch`
    /// parameter of an authorization request.
    Launch {
        /// The patient in context: Patient/ID.
        #[arg(long)]
        patient: String,
        /// The encounter in context: Encounter/ID.
        #[arg(long)]
        encounter: Option<String>,
        /// The only user who may use the launch.
        #[arg(long)]
        user: Option<String>,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Links what is committed, then walks the whole chain and checks every
    /// position, hash and signed checkpoint: exit 0 and {"verified": N, "head": ...};
    /// exit 1 and {"brokenAt": N, "problem": ...} when the log was tampered with.
    Verify {
        /// Checkpoints kept outside the database (default: audit.checkpoint_file).
        #[arg(long)]
        checkpoint_file: Option<PathBuf>,
        /// The audit public key (PEM) checkpoints must be signed with; without it
        /// the keys stored in the database are trusted.
        #[arg(long)]
        public_key: Option<PathBuf>,
    },
    /// Prints the audit signing public key (PEM), made if there is none yet.
    PublicKey,
    /// Removes the AuditEvents recorded before DATE (which must be older than
    /// audit.retention_days), as a prefix of the chain, and records a signed
    /// purge checkpoint from which `audit verify` starts; prints
    /// {"purged": N, "keptFrom": POSITION}.
    Purge {
        /// A date or dateTime (2019-01-01, 2019-01-01T00:00:00Z).
        #[arg(long)]
        before: String,
    },
    /// A patient's accounting of disclosures (HIPAA 164.528): every AuditEvent
    /// recording access to the patient's data, denied attempts included, oldest
    /// first, one line each (recorded, action, subtype, outcome, user, client,
    /// address, entity, purposeOfUse). The report is itself audited.
    Report {
        /// Patient/ID (or ID).
        #[arg(long)]
        patient: String,
        /// From this date or dateTime on (2026-12-01, 2026-12-01T10:00:00Z).
        #[arg(long)]
        since: Option<String>,
        /// Up to the end of this date or dateTime.
        #[arg(long)]
        until: Option<String>,
        /// csv (RFC 4180, a header line) or json (an array of objects).
        #[arg(long, value_enum, default_value_t = ReportFormat::Csv)]
        format: ReportFormat,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ReportFormat {
    Csv,
    Json,
}

#[derive(Subcommand)]
enum ClientsCommand {
    /// Registers a client; prints {"client_id": ..., "client_secret": ...} (the
    /// secret only with --secret, shown once).
    Add {
        #[arg(long)]
        name: String,
        /// An exact redirect URI; repeatable.
        #[arg(long = "redirect-uri")]
        redirect_uris: Vec<String>,
        /// No secret (browser and native apps; PKCE protects the codes).
        #[arg(long, group = "kind")]
        public: bool,
        /// A generated client secret.
        #[arg(long, group = "kind")]
        secret: bool,
        /// A JWK Set file with the public keys of the client's assertions.
        #[arg(long, group = "kind")]
        jwks_file: Option<PathBuf>,
        /// Where the client publishes its JWK Set.
        #[arg(long, group = "kind")]
        jwks_uri: Option<String>,
        /// The most the client may ever get (default: every scope).
        #[arg(long)]
        scope: Option<String>,
        /// Comma-separated: authorization_code, refresh_token, client_credentials.
        #[arg(long, value_delimiter = ',')]
        grant_types: Option<Vec<String>>,
    },
    /// One JSON object per client, no secrets.
    List,
    /// Removes a client.
    Remove { client_id: String },
}

#[derive(Subcommand)]
enum UsersCommand {
    /// Registers a user (the password is hashed with argon2).
    Add {
        #[arg(long)]
        username: String,
        /// A file holding the password (trailing line breaks are removed).
        #[arg(long)]
        password_file: PathBuf,
        /// Patient/ID, Practitioner/ID or RelatedPerson/ID.
        #[arg(long)]
        fhir_user: String,
        /// patient, clinician, compliance or admin.
        #[arg(long)]
        role: String,
        /// The clinician may use emergency access (break the glass).
        #[arg(long)]
        break_glass: bool,
    },
    /// One JSON object per user, no password hashes.
    List,
    /// Removes a user.
    Remove { username: String },
}

#[derive(Subcommand)]
enum PackagesCommand {
    /// Install `ID#VERSION` from the registry, or a local `.tgz` package file.
    Install {
        #[arg(required = true)]
        packages: Vec<String>,
    },
    /// List installed packages.
    List,
}

#[derive(Subcommand)]
enum BackupCommand {
    /// Checks a backup without restoring it: the data against the manifest (size,
    /// SHA-256), the master key against its key check; a SQLite backup also every
    /// table's digest, every sealed body and the audit chain (on a copy).
    Verify { file: PathBuf },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// New data key for future writes; with --new-master-key-file, also re-wrap every
    /// data key under that master key (created, mode 0600, when the file does not exist).
    Rotate {
        #[arg(long)]
        new_master_key_file: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("fhirgate: {e}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(&settings.log);
    match run(cli.command, settings) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("fhirgate: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(command: Command, settings: Settings) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve { no_migrate } => {
            let state = startup::build_state(&settings, !no_migrate)?;
            let system = actix_rt::System::new();
            system.block_on(async move {
                let (server, port) = startup::build_server(&settings, actix_web::web::Data::new(state), None)?;
                tracing::info!(listen = %settings.server.listen, port, base_url = %settings.base_url(), "fhirgate serving");
                server.await.context("server")?;
                tracing::info!("fhirgate stopped");
                Ok::<_, anyhow::Error>(())
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Migrate => {
            let store = fhirgate::store::Store::connect(
                &settings.database.url,
                1,
                std::time::Duration::from_millis(settings.database.pool_timeout_ms),
            )?;
            let n = store.migrate()?;
            println!("applied {n} migration(s)");
            Ok(ExitCode::SUCCESS)
        }
        Command::Validate {
            files,
            profiles,
            packages,
        } => {
            let mut settings = settings;
            if !packages.is_empty() {
                let core = "hl7.fhir.r4.core#4.0.1";
                settings.packages.load = std::iter::once(core.to_string())
                    .chain(packages.into_iter().filter(|p| p != core))
                    .collect();
            }
            let model = startup::load_model(&settings)?;
            let validator = startup::build_validator(&settings, &model)?;
            let mut failed = false;
            for f in files {
                // A file that cannot be read is reported like one that is invalid.
                let issues = match std::fs::read(&f) {
                    Err(e) => vec![fhir::Issue::error(
                        "exception",
                        format!("cannot read {}: {e}", f.display()),
                    )
                    .severity(fhir::Severity::Fatal)],
                    Ok(bytes) => match fhir::read_wire(&model, &bytes, sniff_format(&bytes)) {
                        Ok(v) => validator.validate(&v, &profiles),
                        Err(issues) => issues,
                    },
                };
                failed |= fhir::outcome::has_errors(&issues);
                let mut oo = fhir::operation_outcome(&issues);
                oo["id"] = serde_json::json!(f
                    .display()
                    .to_string()
                    .replace(
                        |c: char| !c.is_ascii_alphanumeric() && c != '-' && c != '.',
                        "-"
                    )
                    .chars()
                    .take(64)
                    .collect::<String>());
                println!("{}", serde_json::to_string(&oo)?);
            }
            Ok(if failed {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Fhirpath { expression, file } => {
            let bytes = match &file {
                Some(f) => std::fs::read(f).with_context(|| format!("reading {}", f.display()))?,
                None => {
                    let mut b = Vec::new();
                    std::io::Read::read_to_end(&mut std::io::stdin(), &mut b)
                        .context("reading stdin")?;
                    b
                }
            };
            let model = startup::load_model(&settings)?;
            let resource = match fhir::parse_resource(&model, &bytes, sniff_format(&bytes)) {
                Ok(v) => v,
                Err(issues) => {
                    println!(
                        "{}",
                        serde_json::to_string(&fhir::operation_outcome(&issues))?
                    );
                    return Ok(ExitCode::from(1));
                }
            };
            let offset = chrono::Local::now().offset().local_minus_utc() / 60;
            match fhirgate::fhirpath::evaluate_to_json(
                &expression,
                &resource,
                model.path_model(),
                offset,
            ) {
                Ok(values) => {
                    println!("{}", serde_json::to_string(&values)?);
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!("fhirgate: {e}");
                    Ok(ExitCode::from(1))
                }
            }
        }
        Command::Packages { command } => {
            let cache = PackageCache::new(
                settings.packages.cache_dir(),
                settings.packages.registry.clone(),
            );
            match command {
                PackagesCommand::Install { packages } => {
                    for p in packages {
                        if p.ends_with(".tgz") && std::path::Path::new(&p).is_file() {
                            let r = cache.install_file(std::path::Path::new(&p))?;
                            println!("installed {r} from {p}");
                        } else {
                            let r: PackageRef = p.parse()?;
                            if cache.is_installed(&r) {
                                println!("{r} is already installed");
                            } else {
                                cache.install(&r)?;
                                println!("installed {r}");
                            }
                        }
                    }
                }
                PackagesCommand::List => {
                    for p in cache.list()? {
                        println!("{p}");
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Import {
            paths,
            fail_fast,
            batch_size,
            jobs,
            quiet,
        } => {
            let options = fhirgate::bulk::ImportOptions {
                paths,
                on_error: if fail_fast {
                    fhirgate::bulk::OnError::Fail
                } else {
                    fhirgate::bulk::OnError::Skip
                },
                batch_size,
                jobs: jobs
                    .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get())),
                progress: !quiet,
            };
            let summary = startup::import(&settings, &options, &|bad| eprintln!("{bad}"))?;
            let secs = summary.elapsed.as_secs_f64();
            println!(
                "imported {} resources from {} files in {secs:.1} s ({:.0} resources/s); {} unchanged, {} units already imported, {} lines retried, {} bad",
                summary.written,
                summary.files,
                summary.written as f64 / secs.max(1e-9),
                summary.unchanged,
                summary.resumed_units,
                summary.retried,
                summary.bad.len()
            );
            if !summary.bad.is_empty() {
                println!("the bad items are listed above; run the same command again (after fixing what refused them) to retry exactly those");
            }
            if summary.stopped {
                println!("stopped at the first bad item (--fail-fast); run again to resume");
            }
            Ok(if summary.bad.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Audit { command } => audit(&settings, command),
        Command::Backup { command, out } => {
            let master = configured_master_key(&settings)?;
            match (command, out) {
                (Some(BackupCommand::Verify { file }), _) => {
                    let (manifest, proof) = fhirgate::backup::verify(&file, &master)?;
                    println!(
                        "{}",
                        serde_json::json!({"verified": file.display().to_string(), "backend": manifest.backend, "created": manifest.created, "proof": proof})
                    );
                    Ok(ExitCode::SUCCESS)
                }
                (None, Some(out)) => {
                    let manifest = fhirgate::backup::backup(&settings.database.url, &out)?;
                    let rows: i64 = manifest.tables.values().map(|t| t.rows).sum();
                    println!(
                        "{}",
                        serde_json::json!({"backup": out.display().to_string(), "backend": manifest.backend, "tables": manifest.tables.len(), "rows": rows, "bytes": manifest.data_bytes, "sha256": manifest.data_sha256})
                    );
                    Ok(ExitCode::SUCCESS)
                }
                (None, None) => anyhow::bail!("backup needs --out FILE (or `backup verify FILE`)"),
            }
        }
        Command::Restore { from, database } => {
            let master = configured_master_key(&settings)?;
            let url = database.unwrap_or_else(|| settings.database.url.clone());
            let (manifest, proof) = fhirgate::backup::restore(&from, &url, &master)?;
            println!(
                "{}",
                serde_json::json!({"restored": from.display().to_string(), "backend": manifest.backend, "created": manifest.created, "proof": proof})
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Clients { command } => clients(&settings, command),
        Command::Users { command } => users(&settings, command),
        Command::Launch {
            patient,
            encounter,
            user,
        } => {
            let store = auth_store(&settings)?;
            let id = fhirgate::auth::new_launch(
                &store,
                &patient,
                encounter.as_deref(),
                user.as_deref(),
            )?;
            println!("{id}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Keys {
            command: KeysCommand::Rotate {
                new_master_key_file,
            },
        } => {
            let store = fhirgate::store::Store::connect(
                &settings.database.url,
                1,
                std::time::Duration::from_millis(settings.database.pool_timeout_ms),
            )?;
            let master = startup::master_key(&settings, &store)?;
            let new_master = match &new_master_key_file {
                Some(f) if f.exists() => Some(fhirgate::crypto::MasterKey::read_file(f)?),
                Some(f) => {
                    let k = fhirgate::crypto::MasterKey::generate()?;
                    k.write_new_file(f)?;
                    Some(k)
                }
                None => None,
            };
            let id = store.rotate_keys(&master, new_master.as_ref())?;
            println!("new data key {id} is active for new writes");
            // Signing keys: a new one signs from the next start; old ones stay
            // published until every token they signed has expired.
            store.migrate()?;
            let keep = settings
                .auth
                .access_token_secs
                .max(fhirgate::auth::jwt::MIN_KEY_LIFETIME_SECS) as i64;
            let kid = fhirgate::auth::jwt::rotate(&store, keep)?;
            println!("new token signing key {kid} signs new tokens within a minute on every running node");
            if let Some(f) = new_master_key_file {
                println!(
                    "every data key is now wrapped by the master key in {}; point crypto.master_key_file at it before the next start",
                    f.display()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The store for the authorization commands (migrated, keys open).
/// The master key the settings name (a backup's data is checked and restored
/// with it); never a new one.
fn configured_master_key(settings: &Settings) -> anyhow::Result<fhirgate::crypto::MasterKey> {
    let c = &settings.crypto;
    if let Some(k) = &c.master_key {
        return Ok(fhirgate::crypto::MasterKey::parse(k)?);
    }
    if let Some(f) = c.master_key_file.as_ref().or(c.dev_key_file.as_ref()) {
        return Ok(fhirgate::crypto::MasterKey::read_file(f)?);
    }
    anyhow::bail!("no master key is configured (crypto.master_key_file): a backup is checked and restored with the key its data is sealed under")
}

fn auth_store(settings: &Settings) -> anyhow::Result<fhirgate::store::Store> {
    Ok(startup::open_store(settings, true)?)
}

fn audit(settings: &Settings, command: AuditCommand) -> anyhow::Result<ExitCode> {
    use fhirgate::audit::chain::{self, Chainer, VerifyOptions};
    let store = auth_store(settings)?;
    let chainer = Chainer::new(store.clone(), startup::chain_policy(settings));
    match command {
        AuditCommand::Verify {
            checkpoint_file,
            public_key,
        } => {
            let public_key_pem = match public_key {
                Some(f) => Some(std::fs::read_to_string(&f).map_err(|e| {
                    anyhow::anyhow!("cannot read the public key file {}: {e}", f.display())
                })?),
                None => None,
            };
            let verdict = chainer.verify(&VerifyOptions {
                checkpoint_file: checkpoint_file.or_else(|| settings.audit.checkpoint_file.clone()),
                public_key_pem,
            })?;
            println!("{}", verdict.to_json());
            Ok(if verdict.broken.is_none() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        AuditCommand::Purge { before } => {
            let Some((at, _)) = fhirgate::search::values::date_range(&before) else {
                anyhow::bail!("--before {before}: not a FHIR date or dateTime");
            };
            let days = i64::from(settings.audit.retention_days);
            let oldest_allowed = fhirgate::fhir::now_micros() - days * 86_400 * 1_000_000;
            if at > oldest_allowed {
                anyhow::bail!(
                    "--before {before} is within the retention period (audit.retention_days = {days}): AuditEvents younger than that are kept"
                );
            }
            let purged = chainer.purge(at)?;
            println!(
                "{}",
                serde_json::json!({"purged": purged.removed, "keptFrom": purged.kept_from})
            );
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Report {
            patient,
            since,
            until,
            format,
        } => {
            use fhirgate::audit::disclosures::{self, Period};
            let id = disclosures::patient_id(&patient)?;
            let period = Period::parse(since.as_deref(), until.as_deref(), ("--since", "--until"))?;
            let mut command = format!("fhirgate audit report --patient Patient/{}", id.as_str());
            for (flag, v) in [("--since", &period.start), ("--until", &period.end)] {
                if let Some(v) = v {
                    command.push_str(&format!(" {flag} {v}"));
                }
            }
            let rows = startup::audit_report(settings, &id, &period, &command)?;
            match format {
                ReportFormat::Csv => print!("{}", disclosures::to_csv(&rows)),
                ReportFormat::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
            }
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::PublicKey => {
            chainer.ensure_signing_key()?;
            print!("{}", chain::public_key_pem(&store)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn clients(settings: &Settings, command: ClientsCommand) -> anyhow::Result<ExitCode> {
    use fhirgate::auth::clients::{self, ClientKind, ClientSpec};
    let store = auth_store(settings)?;
    match command {
        ClientsCommand::Add {
            name,
            redirect_uris,
            public: _,
            secret,
            jwks_file,
            jwks_uri,
            scope,
            grant_types,
        } => {
            let kind = match (secret, jwks_file, jwks_uri) {
                (true, _, _) => ClientKind::Secret,
                (_, Some(f), _) => ClientKind::JwksFile(f),
                (_, _, Some(u)) => ClientKind::JwksUri(u),
                _ => ClientKind::Public,
            };
            let registered = clients::register(
                &store,
                &ClientSpec {
                    name,
                    redirect_uris,
                    kind,
                    scope,
                    grant_types,
                },
            )?;
            println!("{}", serde_json::to_string(&registered)?);
        }
        ClientsCommand::List => {
            for c in clients::list(&store)? {
                println!("{c}");
            }
        }
        ClientsCommand::Remove { client_id } => {
            if !clients::remove(&store, &client_id)? {
                eprintln!("fhirgate: no client {client_id}");
                return Ok(ExitCode::from(1));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn users(settings: &Settings, command: UsersCommand) -> anyhow::Result<ExitCode> {
    use fhirgate::auth::users::{self, UserSpec};
    let store = auth_store(settings)?;
    match command {
        UsersCommand::Add {
            username,
            password_file,
            fhir_user,
            role,
            break_glass,
        } => {
            let role = role.parse().map_err(anyhow::Error::msg)?;
            let password = users::read_password_file(&password_file)?;
            users::register(
                &store,
                &UserSpec {
                    username,
                    password,
                    fhir_user,
                    role,
                    break_glass,
                },
            )?;
        }
        UsersCommand::List => {
            for u in users::list(&store)? {
                println!("{u}");
            }
        }
        UsersCommand::Remove { username } => {
            if !users::remove(&store, &username)? {
                eprintln!("fhirgate: no user {username}");
                return Ok(ExitCode::from(1));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// XML when the first non-blank byte is `<`, else JSON.
fn sniff_format(bytes: &[u8]) -> fhir::Format {
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'<') {
        fhir::Format::Xml
    } else {
        fhir::Format::Json
    }
}
