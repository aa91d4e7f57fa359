//! The kind walkthrough (`e2e/kind/`) cannot run here (no container
//! engine), so it is checked the way it can be: `shellcheck`, and a
//! `--dry-run` of each script that prints every command — the order of the
//! steps, every cluster and every ordered pair linked, the kind configs
//! with distinct pod and service ranges, and each `isthmusctl` command a
//! script runs accepted by the binary (its flags exist). The manifests
//! those commands render are validated by `install.rs`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

const CLUSTERS: [&str; 3] = ["eu-west", "eu-central", "us-east"];

fn kind_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../e2e/kind")
}

/// Runs `script --dry-run`: its printed commands (`+ ...` lines).
fn dry_run(script: &str, work: &Path) -> Vec<String> {
    let out = Command::new("bash")
        .arg(kind_dir().join(script))
        .arg("--dry-run")
        .env("WORK", work)
        .env("ISTHMUSCTL", isthmus_testkit::workspace_bin("isthmusctl"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{script} --dry-run failed:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("+ "))
        .map(str::to_string)
        .collect()
}

fn position(lines: &[String], needle: &str) -> usize {
    lines
        .iter()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no {needle:?} in:\n{}", lines.join("\n")))
}

#[test]
fn the_scripts_pass_shellcheck() {
    if !isthmus_testkit::have("shellcheck") {
        assert!(
            std::env::var_os("ISTHMUS_REQUIRE_SHELLCHECK").is_none(),
            "shellcheck is not installed"
        );
        eprintln!("skipped: no shellcheck");
        return;
    }
    let out = Command::new("shellcheck")
        .current_dir(kind_dir())
        .args(["-x", "lib.sh", "up.sh", "scenarios.sh", "down.sh"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn up_creates_installs_links_and_deploys_in_order() {
    let work = isthmus_testkit::temp_dir("kind-up");
    let lines = dry_run("up.sh", &work);
    // Clusters, then load balancers, images, install, links, the sample.
    let steps = [
        "kind create cluster --name eu-west",
        "cloud-provider-kind",
        "docker build --target gateway",
        "kind load docker-image",
        "check --pre --context kind-eu-west",
        "install --cluster eu-west",
        "link create",
        "sample --cluster eu-west",
        "link list --context kind-us-east",
        "check --context kind-eu-west --context kind-eu-central --context kind-us-east",
    ];
    let at: Vec<usize> = steps.iter().map(|s| position(&lines, s)).collect();
    assert!(
        at.windows(2).all(|w| w[0] < w[1]),
        "out of order: {steps:?} at {at:?}"
    );
    for c in CLUSTERS {
        position(&lines, &format!("kind create cluster --name {c} "));
        position(&lines, &format!("install --cluster {c} --registry"));
        position(&lines, &format!("--context kind-{c}"));
        for target in ["gateway", "federation", "sample"] {
            position(
                &lines,
                &format!(
                    "kind load docker-image ghcr.io/isthmus-mesh/isthmus-{target}:dev --name {c}"
                ),
            );
        }
    }
    // Every cluster linked with every other, both ways.
    let mut pairs = BTreeSet::new();
    for l in lines.iter().filter(|l| l.contains(" link create ")) {
        let from = l.split("--from-context kind-").nth(1).unwrap();
        let to = l.split("--to-context kind-").nth(1).unwrap();
        pairs.insert((
            from.split_whitespace().next().unwrap().to_string(),
            to.split_whitespace().next().unwrap().to_string(),
        ));
        assert!(
            !l.contains("--gateway"),
            "gateways come from the load balancers: {l}"
        );
    }
    assert_eq!(pairs.len(), 6, "{pairs:?}");
    // Distinct pod and service ranges on the one docker network.
    let mut ranges = BTreeSet::new();
    for c in CLUSTERS {
        let config = std::fs::read_to_string(work.join(format!("kind-{c}.yaml"))).unwrap();
        let v: serde_json::Value = serde_saphyr::from_str(&config).unwrap();
        assert_eq!(v["kind"], "Cluster");
        assert_eq!(v["name"], c);
        for field in ["podSubnet", "serviceSubnet"] {
            let r = v["networking"][field].as_str().unwrap().to_string();
            assert!(
                ranges.insert(r.clone()),
                "{c}: {field} {r} is another cluster's"
            );
        }
        assert_eq!(v["nodes"][0]["labels"]["topology.kubernetes.io/region"], c);
    }
}

#[test]
fn scenarios_and_down_do_what_they_say() {
    let work = isthmus_testkit::temp_dir("kind-scenarios");
    let lines = dry_run("scenarios.sh", &work);
    for step in [
        "port-forward deploy/frontend",
        "--canary 10",
        "--canary 50",
        "--canary 100",
        "delete httproute reviews-canary",
        "scale deploy/catalog-v1 --replicas 0",
        "scale deploy/isthmus-eastwest --replicas 0",
        "scale deploy/isthmus-eastwest --replicas 2",
        "scale deploy/catalog-v1 --replicas 1",
    ] {
        position(&lines, step);
    }
    let lines = dry_run("down.sh", &work);
    for c in CLUSTERS {
        position(&lines, &format!("kind delete cluster --name {c}"));
    }
}

#[test]
fn every_isthmusctl_command_of_the_scripts_is_one_it_takes() {
    let work = isthmus_testkit::temp_dir("kind-flags");
    let bin = isthmus_testkit::workspace_bin("isthmusctl");
    let bin = bin.to_str().unwrap();
    let mut checked = 0;
    for script in ["up.sh", "scenarios.sh"] {
        for l in dry_run(script, &work) {
            let Some(rest) = l.strip_prefix(bin) else {
                continue;
            };
            let args: Vec<&str> = rest
                .split(" > ")
                .next()
                .unwrap()
                .split_whitespace()
                .collect();
            let out = Command::new(bin)
                .args(&args)
                .arg("--help")
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "isthmusctl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            checked += 1;
        }
    }
    assert!(checked >= 15, "only {checked} isthmusctl commands seen");
}
