//! The Dockerfile and the workspace checked against each other: the
//! packages it builds exist and make binaries, it copies exactly the
//! binaries they build, each image runs the binary it carries, every role
//! has its image, and the toolchain it builds with is the workspace's.
//! (Images cannot be built here: no container engine. A user builds them
//! with the commands at the top of the Dockerfile.)

use isthmus_tests::workspace::root;
use std::collections::{BTreeMap, BTreeSet};

/// The workspace's packages and the binaries each builds (`cargo metadata`).
fn workspace_bins() -> BTreeMap<String, BTreeSet<String>> {
    isthmus_tests::workspace::packages(&["--no-deps"])
        .iter()
        .map(|p| {
            let bins = p["targets"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|t| t["kind"].as_array().unwrap().iter().any(|k| k == "bin"))
                .map(|t| t["name"].as_str().unwrap().to_string())
                .collect();
            (p["name"].as_str().unwrap().to_string(), bins)
        })
        .collect()
}

/// The Dockerfile with continuation lines joined.
fn dockerfile() -> Vec<String> {
    let text = std::fs::read_to_string(root().join("Dockerfile")).expect("a Dockerfile");
    let mut lines = Vec::new();
    let mut cur = String::new();
    for l in text.lines() {
        let l = l.trim();
        if l.starts_with('#') || l.is_empty() {
            continue;
        }
        match l.strip_suffix('\\') {
            Some(head) => {
                cur.push_str(head);
                cur.push(' ');
            }
            None => {
                cur.push_str(l);
                lines.push(std::mem::take(&mut cur));
            }
        }
    }
    lines
}

#[test]
fn the_dockerfile_builds_and_ships_what_the_workspace_makes() {
    let bins = workspace_bins();
    let lines = dockerfile();
    let build = lines
        .iter()
        .find(|l| l.contains("cargo build --profile dist"))
        .expect("a cargo build in the build stage");
    let words: Vec<&str> = build.split_whitespace().collect();
    let cargo_build = build
        .split("&&")
        .find(|c| c.contains("cargo build"))
        .unwrap();
    let cargo_words: Vec<&str> = cargo_build.split_whitespace().collect();
    let packages: Vec<&str> = cargo_words
        .windows(2)
        .filter(|w| w[0] == "-p")
        .map(|w| w[1])
        .collect();
    assert!(build.contains("--locked"), "builds what Cargo.lock says");
    let mut built = BTreeSet::new();
    for p in &packages {
        let b = bins
            .get(*p)
            .unwrap_or_else(|| panic!("the Dockerfile builds {p}, not a workspace package"));
        assert!(!b.is_empty(), "{p} makes no binary");
        built.extend(b.iter().cloned());
    }
    // Copied out of the build: every binary those packages make, no other.
    let copied: BTreeSet<String> = words
        .iter()
        .filter_map(|w| w.strip_prefix("target/dist/"))
        .map(str::to_string)
        .collect();
    assert_eq!(copied, built, "the binaries copied out of the build");

    // Each image: the binary it copies is the one it runs.
    let mut images: BTreeMap<String, String> = BTreeMap::new();
    let mut stage = String::new();
    let mut carried = None;
    for l in &lines {
        if let Some(rest) = l.strip_prefix("FROM ") {
            stage = rest.rsplit(" AS ").next().unwrap_or_default().to_string();
            carried = None;
        } else if let Some(rest) = l.strip_prefix("COPY --from=build /out/") {
            let bin = rest.split_whitespace().next().unwrap().to_string();
            assert!(
                built.contains(&bin),
                "{stage} copies {bin}, which is not built"
            );
            carried = Some(bin);
        } else if let Some(rest) = l.strip_prefix("ENTRYPOINT ") {
            let entry: Vec<String> = serde_json::from_str(rest).expect("exec-form ENTRYPOINT");
            let bin = carried
                .clone()
                .unwrap_or_else(|| panic!("{stage} copies no binary"));
            assert_eq!(entry[0], format!("/usr/local/bin/{bin}"), "{stage}");
            images.insert(stage.clone(), bin);
        }
    }
    let want: BTreeMap<String, String> = [
        ("gateway", "isthmus-gateway"),
        ("federation", "isthmus-federation"),
        ("ctl", "isthmusctl"),
        ("sample", "isthmus-sample"),
    ]
    .into_iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(images, want, "one image per role");
    let shipped: BTreeSet<String> = images.values().cloned().collect();
    assert_eq!(shipped, built, "every built binary has its image");

    // The gateway image can run `init-iptables`.
    let gateway_stage: Vec<&String> = lines
        .iter()
        .skip_while(|l| !l.ends_with(" AS gateway"))
        .take_while(|l| !l.starts_with("ENTRYPOINT"))
        .collect();
    assert!(
        gateway_stage
            .iter()
            .any(|l| l.contains("install") && l.contains("iptables")),
        "iptables in the gateway image: {gateway_stage:?}"
    );
}

#[test]
fn the_image_toolchain_is_the_workspace_toolchain() {
    let manifest = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
    let wanted = manifest
        .lines()
        .find_map(|l| l.trim().strip_prefix("rust-version = "))
        .expect("rust-version in the workspace")
        .trim_matches('"')
        .to_string();
    let arg = dockerfile()
        .into_iter()
        .find_map(|l| l.strip_prefix("ARG RUST_VERSION=").map(str::to_string))
        .expect("ARG RUST_VERSION");
    assert_eq!(arg, wanted);
}

/// Cargo.toml's `[section]`s and their `key = value` lines (enough TOML for
/// the profiles: one value per line).
fn manifest_sections() -> BTreeMap<String, BTreeMap<String, String>> {
    let text = std::fs::read_to_string(root().join("Cargo.toml")).expect("Cargo.toml");
    let mut sections: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut current = String::new();
    for line in text.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = name.to_string();
            sections.entry(current.clone()).or_default();
        } else if let Some((k, v)) = line.split_once('=')
            && !line.starts_with('#')
        {
            sections
                .entry(current.clone())
                .or_default()
                .insert(k.trim().to_string(), v.trim().to_string());
        }
    }
    sections
}

#[test]
fn the_images_ship_the_dist_profile_fully_optimized() {
    let s = manifest_sections();
    let dist = s
        .get("profile.dist")
        .expect("a [profile.dist] in Cargo.toml");
    assert_eq!(dist.get("lto").map(String::as_str), Some("\"fat\""));
    assert_eq!(dist.get("codegen-units").map(String::as_str), Some("1"));
    // A package the quick release profile optimizes less is set back to
    // level 3 for the images (dist inherits release's package overrides).
    let opt = |section: &str| -> BTreeMap<String, String> {
        s.get(section)
            .into_iter()
            .flatten()
            .map(|(package, v)| (package.clone(), v.replace(' ', "")))
            .collect()
    };
    let lowered = opt("profile.release.package");
    let dist_packages = opt("profile.dist.package");
    assert!(!lowered.is_empty(), "the release profile lowers no package");
    for package in lowered.keys() {
        assert_eq!(
            dist_packages.get(package).map(String::as_str),
            Some("{opt-level=3}"),
            "[profile.dist.package] must set {package} = {{ opt-level = 3 }}"
        );
    }
    // The benchmarks measure what the images ship.
    let bench = s.get("profile.bench").expect("a [profile.bench]");
    assert_eq!(bench.get("inherits").map(String::as_str), Some("\"dist\""));
}
