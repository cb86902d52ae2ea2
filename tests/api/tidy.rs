//! What reviewers forget: every source file says what it is for, lower layers
//! never reach up into HTTP, no test is silently ignored, and the integration tests stay
//! one binary.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let p = entry.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

fn sources(sub: &str) -> Vec<(PathBuf, String)> {
    let mut files = Vec::new();
    rust_files(&Path::new(env!("CARGO_MANIFEST_DIR")).join(sub), &mut files);
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let t = std::fs::read_to_string(&p).unwrap();
            (p, t)
        })
        .collect()
}

#[test]
fn every_source_file_opens_with_a_module_paragraph() {
    let missing: Vec<String> = sources("src")
        .into_iter()
        .filter(|(_, text)| !text.trim_start().starts_with("//!"))
        .map(|(p, _)| p.display().to_string())
        .collect();
    assert!(
        missing.is_empty(),
        "files without a //! paragraph: {missing:?}"
    );
}

#[test]
fn lower_layers_never_use_the_http_layer() {
    let mut offenders = Vec::new();
    for layer in [
        "store",
        "fhirpath",
        "validation",
        "terminology",
        "crypto",
        "fhir",
        "packages",
        "audit",
        "patch",
        "bundle",
        "bulk",
        "search",
        "access",
    ] {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("src")
            .join(layer);
        if !dir.exists() {
            continue;
        }
        for (p, text) in sources(&format!("src/{layer}")) {
            if text.contains("crate::http") || text.contains("actix_web") {
                offenders.push(p.display().to_string());
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "these files reach up into HTTP: {offenders:?}"
    );
}

/// The store's core paths are functions (no `macro_rules!` with hidden returns),
/// AuditEvent rows enter the database through the audit sink only, and the store
/// never decides by a resource type's name.
#[test]
fn the_store_writes_through_one_path_and_one_audit_sink() {
    for (p, text) in sources("src/store") {
        let name = p.display().to_string();
        assert!(!text.contains("macro_rules!"), "{name} defines a macro");
        if !name.ends_with("audit_log.rs") {
            assert!(
                !text.contains("INTO audit_log"),
                "{name} writes AuditEvent rows outside the audit sink"
            );
        }
        for type_name in [
            "\"AuditEvent\"",
            "\"SearchParameter\"",
            "\"Patient\"",
            "\"Subscription\"",
        ] {
            let code: String = text
                .lines()
                .filter(|l| !l.trim_start().starts_with("//"))
                .collect::<Vec<_>>()
                .join("\n");
            if name.ends_with("audit_log.rs") && type_name == "\"AuditEvent\"" {
                continue;
            }
            assert!(
                !code.contains(type_name),
                "{name} branches on the type name {type_name}"
            );
        }
    }
}

#[test]
fn fhirpath_does_no_io_and_knows_no_storage() {
    for (p, text) in sources("src/fhirpath") {
        for banned in [
            "std::fs",
            "std::net",
            "crate::store",
            "diesel",
            "crate::packages",
        ] {
            assert!(!text.contains(banned), "{} uses {banned}", p.display());
        }
    }
}

#[test]
fn patch_knows_nothing_of_storage() {
    for (p, text) in sources("src/patch") {
        for banned in ["crate::store", "diesel", "std::fs", "std::net"] {
            assert!(!text.contains(banned), "{} uses {banned}", p.display());
        }
    }
}

#[test]
fn bundle_and_bulk_write_only_through_the_store_transaction() {
    for dir in ["src/bundle", "src/bulk"] {
        for (p, text) in sources(dir) {
            for banned in ["diesel", "crate::store::pool", "std::net"] {
                assert!(!text.contains(banned), "{} uses {banned}", p.display());
            }
        }
    }
}

#[test]
fn no_test_is_ignored_or_expects_a_panic_without_a_reason() {
    let mut offenders = Vec::new();
    for (p, text) in sources("tests").into_iter().chain(sources("src")) {
        if p.ends_with("tidy.rs") {
            continue;
        }
        for (n, line) in text.lines().enumerate() {
            let l = line.trim();
            if (l.starts_with("#[ignore") || l.starts_with("#[should_panic")) && !l.contains("= \"")
            {
                offenders.push(format!("{}:{}", p.display(), n + 1));
            }
        }
    }
    assert!(offenders.is_empty(), "{offenders:?}");
}

/// The integration tests are one binary, `tests/api/main.rs`. A test binary of its own
/// (`tests/NAME.rs`, `tests/NAME/main.rs`) is for a test that needs its process alone, and
/// docs/testing.md names it with the reason; test code hides nothing behind
/// `allow(dead_code)`.
#[test]
fn tests_are_one_binary_unless_docs_say_why() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let docs = std::fs::read_to_string(root.join("docs/testing.md")).unwrap();
    let mut unexplained = Vec::new();
    for entry in std::fs::read_dir(root.join("tests")).unwrap().flatten() {
        let p = entry.path();
        let name = entry.file_name().to_string_lossy().to_string();
        let binary = if p.is_dir() {
            (name != "api" && p.join("main.rs").is_file()).then(|| format!("tests/{name}/"))
        } else {
            name.ends_with(".rs").then(|| format!("tests/{name}"))
        };
        if let Some(binary) = binary {
            if !docs.contains(&format!("`{binary}`")) {
                unexplained.push(binary);
            }
        }
    }
    assert!(
        unexplained.is_empty(),
        "test binaries docs/testing.md does not explain: {unexplained:?}"
    );
    let hiding: Vec<String> = sources("tests")
        .into_iter()
        .filter(|(p, text)| !p.ends_with("tidy.rs") && text.contains("allow(dead_code"))
        .map(|(p, _)| p.display().to_string())
        .collect();
    assert!(hiding.is_empty(), "allow(dead_code) in {hiding:?}");
}
