//! The Bundle planner: any bytes posted as a Bundle (JSON) are read into entries
//! (`bundle::read_bundle`, with the entry checks the server runs) and, as a
//! transaction and as a batch, planned, resolved against an empty database and
//! prepared (ids drawn, `urn:uuid` and conditional references rewritten, index
//! rows built) by `bundle::dry_run`: the work before the first database call.
//! Every answer is entries or errors, never a panic. The server state sits over a
//! throw-away SQLite file that the dry run never reads.
#![no_main]

use std::sync::OnceLock;

use fhirgate::access::AccessContext;
use fhirgate::bundle::{self, BundleKind};
use fhirgate::http::AppState;
use libfuzzer_sys::fuzz_target;

fn state() -> &'static AppState {
    static STATE: OnceLock<AppState> = OnceLock::new();
    STATE.get_or_init(|| {
        fhirgate::startup::build_state(&fhirgate_fuzz::settings(), true)
            .expect("a server state over a temporary SQLite file")
    })
}

fuzz_target!(
    init: {
        fhirgate_fuzz::write_seeds_if_asked(fhirgate_fuzz::bundle_seeds);
        state();
    },
    |data: &[u8]| {
        let state = state();
        let Ok(value) = fhirgate::fhir::json::parse_json(data) else {
            return;
        };
        let ctx = AccessContext::open("fuzz", None);
        let env = state.bundle_env(&ctx, false);
        let Ok(read) = bundle::read_bundle(
            env.checks(),
            &state.base_url,
            value,
            state.settings.bundle.max_entries,
        ) else {
            return;
        };
        let entries: Vec<bundle::Entry> = read.entries.into_iter().filter_map(Result::ok).collect();
        let _ = bundle::dry_run(&env, &entries, read.kind == BundleKind::Batch);
        if read.kind == BundleKind::Transaction {
            let _ = bundle::dry_run(&env, &entries, true);
        }
    }
);
