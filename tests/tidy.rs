//! Tidy: the rules a reviewer would otherwise have to remember.
//!
//! - the deterministic core (all of `src/` and `sim/src/` but the production shell and the
//!   simulator's wall-clock reporting) never names a nondeterminism hazard (the OS clock,
//!   OS randomness, threads, the environment) nor the shell's crates and module;
//! - every Rust file opens with a `//!` doc saying what it owns;
//! - every scenario file parses (unknown keys included);
//! - every mutation of the standing mutation test still applies: its `find` occurs exactly
//!   once in its file, so a change to the code it tracks cannot silently retire it.

use std::path::{Path, PathBuf};

const HAZARDS: &[&str] = &[
    "HashMap",
    "HashSet",
    "Instant::now",
    "SystemTime::now",
    "thread_rng",
    "rand::random",
    "thread::spawn",
    "thread::Builder",
    "thread::scope",
    ".elapsed()",
    "std::env",
    "env::var",
    "env::args",
    "OsRng",
    // The shell's own crates and module: the core never reaches them.
    "tokio",
    "axum",
    "hyper",
    "std::net",
    "crate::production",
    "borough::production",
];

/// Files allowed to touch the OS: the production shell, and the simulator's CLI and runner,
/// which measure wall time for their reports only.
const SHELL: &[&str] = &[
    "src/production/",
    "src/main.rs",
    "src/cli/",
    "sim/src/main.rs",
    "sim/src/runner.rs",
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rust_files(directory: &Path, found: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(directory)
        .unwrap_or_else(|error| panic!("{}: {error}", directory.display()))
        .map(|entry| entry.expect("directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, found);
        } else if path.extension().is_some_and(|extension| extension == "rs") {
            found.push(path);
        }
    }
}

fn relative(path: &Path) -> String {
    path.strip_prefix(root())
        .expect("inside the workspace")
        .to_string_lossy()
        .replace('\\', "/")
}

#[test]
fn core_names_no_nondeterminism_hazard() {
    let mut files = Vec::new();
    rust_files(&root().join("src"), &mut files);
    rust_files(&root().join("sim/src"), &mut files);
    let mut hits = Vec::new();
    for path in files {
        let name = relative(&path);
        if SHELL.iter().any(|allowed| name.starts_with(allowed)) {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("readable source");
        for (number, line) in text.lines().enumerate() {
            let code = line.trim_start();
            if code.starts_with("//") {
                continue;
            }
            for hazard in HAZARDS {
                if code.contains(hazard) {
                    hits.push(format!("{name}:{}: {hazard}: {}", number + 1, line.trim()));
                }
            }
        }
    }
    assert!(
        hits.is_empty(),
        "nondeterminism hazards in the core:\n{}",
        hits.join("\n")
    );
}

#[test]
fn every_module_opens_with_its_doc() {
    let mut files = Vec::new();
    for directory in ["src", "sim/src", "tests"] {
        rust_files(&root().join(directory), &mut files);
    }
    let missing: Vec<String> = files
        .iter()
        .filter(|path| {
            let text = std::fs::read_to_string(path).expect("readable source");
            !text.trim_start().starts_with("//!")
        })
        .map(|path| relative(path))
        .collect();
    assert!(
        missing.is_empty(),
        "files without a `//!` module doc: {missing:?}"
    );
}

#[test]
fn every_scenario_parses() {
    let files =
        borough_sim::scenario::find_scenarios(&root().join("scenarios")).expect("scenarios folder");
    assert!(!files.is_empty(), "no scenarios found");
    for path in files {
        if let Err(error) = borough_sim::scenario::Scenario::load(&path) {
            panic!("{error}");
        }
    }
}

#[test]
fn every_mutation_still_applies() {
    #[derive(serde::Deserialize)]
    struct Mutations {
        mutation: Vec<Mutation>,
    }
    #[derive(serde::Deserialize)]
    struct Mutation {
        name: String,
        file: String,
        find: String,
        replace: String,
    }
    let text = std::fs::read_to_string(root().join("mutations").join("mutations.toml"))
        .expect("mutations/mutations.toml");
    let mutations: Mutations = toml::from_str(&text).expect("mutations.toml parses");
    assert!(!mutations.mutation.is_empty(), "no mutations listed");
    let mut stale = Vec::new();
    for mutation in &mutations.mutation {
        let source = std::fs::read_to_string(root().join(&mutation.file))
            .unwrap_or_else(|error| panic!("{}: {}: {error}", mutation.name, mutation.file));
        let found = source.matches(mutation.find.as_str()).count();
        if found != 1 {
            stale.push(format!(
                "{} ({}): `find` occurs {found} times",
                mutation.name, mutation.file
            ));
        }
        if mutation.find == mutation.replace {
            stale.push(format!("{}: `replace` changes nothing", mutation.name));
        }
    }
    assert!(
        stale.is_empty(),
        "mutations that no longer apply (update them with the code they track):\n{}",
        stale.join("\n")
    );
}
