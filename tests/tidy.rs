//! Tidy: the rules a reviewer would otherwise have to remember.
//!
//! - the deterministic core (all of `src/` and `sim/src/` but the production shell and the
//!   simulator's wall-clock reporting) never names a nondeterminism hazard (the OS clock,
//!   OS randomness, threads, the environment) nor the shell's crates and module;
//! - the core's layers only point down: each module of `src/` names only the modules below it
//!   ([`LAYERS`]), so the seams know nothing of messages, Raft nothing of partitions, events or
//!   the coordinator, and nothing of the core names the production shell;
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

/// The core's modules, bottom up, each with the modules it may name. A module names only
/// modules listed before it; the production shell and the binary sit above them all.
const LAYERS: &[(&str, &[&str])] = &[
    ("ids", &[]),
    ("random", &[]),
    ("seams", &["ids", "random"]),
    ("storage", &["ids", "seams"]),
    ("raft", &["ids", "random"]),
    ("events", &["ids", "seams", "storage"]),
    ("placement", &["ids", "random", "seams"]),
    ("partition", &["ids", "random", "seams", "storage", "raft"]),
    ("directory", &["ids", "placement", "partition"]),
    ("maps", &["ids", "events", "partition"]),
    ("wire", &["ids", "events", "raft", "partition", "directory"]),
    (
        "coordinator",
        &[
            "ids",
            "random",
            "seams",
            "storage",
            "events",
            "raft",
            "placement",
            "partition",
            "directory",
            "maps",
            "wire",
        ],
    ),
    (
        "feeds",
        &["ids", "partition", "directory", "maps", "coordinator"],
    ),
    (
        "application",
        &[
            "ids",
            "random",
            "seams",
            "storage",
            "raft",
            "events",
            "placement",
            "partition",
            "directory",
            "maps",
            "wire",
            "coordinator",
        ],
    ),
    (
        "node",
        &[
            "ids",
            "random",
            "seams",
            "storage",
            "raft",
            "events",
            "placement",
            "partition",
            "directory",
            "maps",
            "wire",
            "coordinator",
            "application",
            "feeds",
        ],
    ),
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
            let shell_only: &[&str] = if name.starts_with("src/") {
                // The simulator reads its scenario files; the node's core has only its seams.
                &["std::fs"]
            } else {
                &[]
            };
            // `use std::{fs, net::TcpStream}` names `std::fs` and `std::net` too.
            let mut grouped = Vec::new();
            if let Some(at) = code.find("std::{") {
                for head in group_heads(&code[at + "std::{".len()..]) {
                    grouped.push(format!("std::{head}"));
                }
            }
            for hazard in HAZARDS.iter().chain(shell_only) {
                if code.contains(hazard)
                    || grouped.iter().any(|named| {
                        hazard.starts_with(named.as_str()) && named.len() > "std::".len()
                    })
                {
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

/// The top-level modules of the crate named on one line of code (`crate::x`, and each name
/// of a `crate::{x, y::z}` group).
fn crate_modules_named(code: &str) -> Vec<String> {
    let mut named = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        rest = rest[at + "crate::".len()..].trim_start();
        if let Some(group) = rest.strip_prefix('{') {
            named.extend(group_heads(group));
        } else {
            let name: String = rest
                .chars()
                .take_while(|character| character.is_alphanumeric() || *character == '_')
                .collect();
            if !name.is_empty() {
                named.push(name);
            }
        }
    }
    named
}

/// The first name of each item of a `{...}` group (`group` starts after its brace).
fn group_heads(group: &str) -> Vec<String> {
    let mut heads = Vec::new();
    let mut depth = 1;
    let mut head = String::new();
    let mut reading_head = true;
    for character in group.chars() {
        let in_name = character.is_alphanumeric() || character == '_';
        if depth == 1 && reading_head && in_name {
            head.push(character);
            continue;
        }
        if depth == 1 && reading_head && !head.is_empty() {
            heads.push(std::mem::take(&mut head));
            reading_head = false;
        }
        match character {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    break;
                }
            }
            ',' if depth == 1 => reading_head = true,
            _ => {}
        }
    }
    heads
}

#[test]
fn layers_only_point_down() {
    let mut files = Vec::new();
    rust_files(&root().join("src"), &mut files);
    let layer_names: Vec<&str> = LAYERS.iter().map(|(name, _)| *name).collect();
    let mut unlisted = Vec::new();
    let mut upward = Vec::new();
    for path in files {
        let name = relative(&path);
        let Some(inside) = name.strip_prefix("src/") else {
            continue;
        };
        let module = inside
            .split('/')
            .next()
            .unwrap_or(inside)
            .trim_end_matches(".rs");
        if ["production", "cli", "main", "lib"].contains(&module) {
            continue;
        }
        let Some((_, allowed)) = LAYERS.iter().find(|(layer, _)| *layer == module) else {
            unlisted.push(name);
            continue;
        };
        let text = std::fs::read_to_string(&path).expect("readable source");
        for dodge in ["super::super", "crate as ", "crate::{self", "use crate;"] {
            if text
                .lines()
                .any(|line| !line.trim_start().starts_with("//") && line.contains(dodge))
            {
                upward.push(format!("{name}: `{dodge}` reaches around the layer rule"));
            }
        }
        // Comments may name any module; a `use` group may span lines, so the code is read whole.
        let code: Vec<&str> = text
            .lines()
            .filter(|line| !line.trim_start().starts_with("//"))
            .collect();
        for named in crate_modules_named(&code.join("\n")) {
            if named == module || named == "self" || allowed.contains(&named.as_str()) {
                continue;
            }
            if named == "production" || layer_names.contains(&named.as_str()) {
                let line = code
                    .iter()
                    .find(|line| line.contains(&format!("{named}::")))
                    .map_or("", |line| line.trim());
                upward.push(format!("{name}: `{module}` names `{named}`: {line}"));
            }
        }
    }
    assert!(
        unlisted.is_empty(),
        "modules of the core missing from LAYERS (place them in a layer): {unlisted:?}"
    );
    assert!(
        upward.is_empty(),
        "names that point up or sideways across the core's layers:\n{}",
        upward.join("\n")
    );
}

/// The crate root only declares modules: a re-export there (`pub use partition::X;`) would let
/// any module name `crate::X` past the layer rule.
#[test]
fn the_crate_root_only_declares_modules() {
    let text = std::fs::read_to_string(root().join("src/lib.rs")).expect("src/lib.rs");
    let other: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with("//") && !line.starts_with("pub mod "))
        .collect();
    assert!(
        other.is_empty(),
        "src/lib.rs holds more than module declarations: {other:?}"
    );
}

#[test]
fn the_layer_rule_reads_grouped_and_nested_names() {
    assert_eq!(
        crate_modules_named("use crate::{ids::NodeId, wire::{self, Message}};"),
        vec!["ids", "wire"]
    );
    assert_eq!(
        crate_modules_named("let x = crate::partition::host::f(crate::raft::X);"),
        vec!["partition", "raft"]
    );
    assert_eq!(
        crate_modules_named("use crate::{\n    raft::Message,\n    partition::{a, b},\n};"),
        vec!["raft", "partition"]
    );
    assert_eq!(
        crate_modules_named("let x = crate::\n    partition::f();"),
        vec!["partition"]
    );
    assert!(crate_modules_named("use super::Thing;").is_empty());
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
