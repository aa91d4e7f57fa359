//! The upstream crates carried in `patches/` are the ones built: Cargo
//! only warns when a `[patch.crates-io]` entry stops matching (say, after
//! a version bump of the dependency), and the build would then silently
//! go back to the unpatched crate from crates.io.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The value of the first `key = "value"` line in `text`.
fn value<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines().find_map(|l| {
        let rest = l.trim().strip_prefix(key)?.trim_start().strip_prefix('=')?;
        Some(rest.trim().trim_matches('"'))
    })
}

/// The `[package]` name and version of a crate's manifest.
fn package(dir: &Path) -> (String, String) {
    let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
    let at = manifest.find("[package]").expect("a [package] table");
    let table = &manifest[at..];
    (
        value(table, "name").unwrap().to_string(),
        value(table, "version").unwrap().to_string(),
    )
}

#[test]
fn every_carried_crate_is_the_one_the_lock_file_builds() {
    let root = root();
    let lock = std::fs::read_to_string(root.join("Cargo.lock")).unwrap();
    let workspace = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    let readme = std::fs::read_to_string(root.join("patches/README.md")).unwrap();
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root.join("patches"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("Cargo.toml").is_file())
        .collect();
    dirs.sort();
    assert!(!dirs.is_empty(), "patches/ holds the carried crates");
    for dir in dirs {
        let folder = dir.file_name().unwrap().to_str().unwrap().to_string();
        let (name, version) = package(&dir);
        assert!(
            workspace.contains(&format!("{name} = {{ path = \"patches/{folder}\" }}")),
            "Cargo.toml's [patch.crates-io] names patches/{folder}"
        );
        // The lock file's entry for the crate: the path copy has no source.
        let entries: Vec<&str> = lock
            .split("[[package]]")
            .filter(|e| value(e, "name") == Some(name.as_str()))
            .collect();
        assert_eq!(entries.len(), 1, "one version of {name} in the build");
        assert_eq!(
            value(entries[0], "version"),
            Some(version.as_str()),
            "{name} is built at the version carried in patches/{folder}"
        );
        assert_eq!(
            value(entries[0], "source"),
            None,
            "{name} comes from patches/{folder}, not from crates.io \
             (a [patch] that no longer matches is only a warning)"
        );
        // What we changed is marked and said.
        let marked = walk(&dir.join("src"))
            .iter()
            .any(|f| std::fs::read_to_string(f).is_ok_and(|t| t.contains("(isthmus patch)")));
        assert!(
            marked,
            "patches/{folder} marks its change `(isthmus patch)`"
        );
        assert!(
            readme.contains(&format!("`{folder}/`")),
            "patches/README.md says what patches/{folder} changes"
        );
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
