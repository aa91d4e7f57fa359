//! The upstream crates carried in `patches/` are the ones built: Cargo
//! only warns when a `[patch.crates-io]` entry stops matching (say, after
//! a version bump of the dependency), and the build would then silently
//! go back to the unpatched crate from crates.io.

use std::path::{Path, PathBuf};

use isthmus_tests::workspace::root;

/// The machine's target triple (`rustc -vV`).
fn host() -> String {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let out = std::process::Command::new(rustc)
        .arg("-vV")
        .output()
        .expect("rustc runs");
    let text = String::from_utf8(out.stdout).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("host: "))
        .expect("rustc -vV names the host")
        .to_string()
}

/// The packages of the dependency graph built for this machine (offline:
/// only what the lock file has fetched).
fn packages() -> Vec<serde_json::Value> {
    isthmus_tests::workspace::packages(&["--filter-platform", &host()])
}

#[test]
fn every_carried_crate_is_the_one_the_build_uses() {
    let root = root();
    let readme = std::fs::read_to_string(root.join("patches/README.md")).unwrap();
    let packages = packages();
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root.join("patches"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("Cargo.toml").is_file())
        .collect();
    dirs.sort();
    assert!(!dirs.is_empty(), "patches/ holds the carried crates");
    for dir in dirs {
        let folder = dir.file_name().unwrap().to_str().unwrap().to_string();
        let manifest = dir.join("Cargo.toml");
        let carried = packages
            .iter()
            .find(|p| Path::new(p["manifest_path"].as_str().unwrap()) == manifest)
            .unwrap_or_else(|| {
                panic!(
                    "patches/{folder} is not in the build: its [patch.crates-io] entry \
                     no longer matches the dependency (align the versions)"
                )
            });
        let name = carried["name"].as_str().unwrap();
        let versions = packages.iter().filter(|p| p["name"] == name).count();
        assert_eq!(
            versions, 1,
            "only the carried {name} is built, not also one from crates.io"
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
