//! Every way a region fails, across the WAN emulator, with the real
//! release binaries (issue 19): `isthmusctl demo --netns --scenario
//! regions` runs each scenario at BENCH_RATE requests a second (100) from
//! us-east's frontend to catalog (eu-west and eu-central serve it), once
//! as built and once with `--baseline` (the sidecars without health at
//! the source and peer liveness), in the same run. Printed per scenario
//! and mode: failed GETs and POSTs, how long the fault was felt (answers
//! late, from the broken cluster or failed), p99 and max latency while
//! it lasted, and how long after the heal the broken cluster served
//! again.
//!
//! `cargo build --release && sudo cargo bench -p isthmus-tests --bench regions`
//! (root: network namespaces, TUN, iptables). Skipped, saying why,
//! without root or without the release binaries.

use std::path::PathBuf;
use std::process::Command;

/// One scenario's line as the demo says it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Step {
    name: String,
    /// "0 of 203 GETs failed, 0 of 68 POSTs; felt for ... ; back ..."
    summary: String,
}

/// The scenario lines of a demo's output (`  <name>: <n> of <m> GETs ...`).
fn steps(stdout: &str) -> Vec<Step> {
    stdout
        .lines()
        .filter_map(|l| {
            let l = l.split_once("] ").map_or(l, |(_, rest)| rest).trim();
            let (name, summary) = l.split_once(": ")?;
            summary.contains(" GETs failed").then(|| Step {
                name: name.to_string(),
                summary: summary.to_string(),
            })
        })
        .collect()
}

fn run(ctl: &PathBuf, rate: &str, baseline: bool) -> Vec<Step> {
    let dir = std::env::temp_dir().join(format!(
        "isthmus-bench-regions-{}-{}",
        if baseline { "baseline" } else { "on" },
        std::process::id()
    ));
    let mut c = Command::new(ctl);
    c.args([
        "demo",
        "--netns",
        "--scenario",
        "regions",
        "--exit-after-scenario",
        "--rate",
        rate,
    ])
    .arg("--dir")
    .arg(&dir);
    if baseline {
        c.arg("--baseline");
    }
    let out = c.output().expect("isthmusctl runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let found = steps(&stdout);
    if found.is_empty() {
        eprintln!(
            "no scenario ran:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    found
}

fn main() {
    let release = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release");
    let ctl = release.join("isthmusctl");
    if !isthmus_e2e::is_root() {
        eprintln!("skipped: needs root (network namespaces, TUN devices, iptables)");
        return;
    }
    if !ctl.is_file() || !release.join("isthmus-gateway").is_file() {
        eprintln!("skipped: build the release binaries first (cargo build --release)");
        return;
    }
    let rate = std::env::var("BENCH_RATE").unwrap_or_else(|_| "100".into());
    println!(
        "regions across the WAN emulator (20 ms RTT in Europe, 80 ms to us-east), {rate} req/s per frontend and service; \
         us-east calls catalog (eu-west, eu-central); eu-central breaks, then eu-west's own"
    );
    let on = run(&ctl, &rate, false);
    let off = run(&ctl, &rate, true);
    for s in &on {
        println!("{}", s.name);
        println!("  as built:  {}", s.summary);
        match off.iter().find(|o| o.name == s.name) {
            Some(o) => println!("  baseline:  {}", o.summary),
            None => println!("  baseline:  (did not run: the cluster did not serve before it)"),
        }
    }
}
