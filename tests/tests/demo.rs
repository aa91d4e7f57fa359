//! `isthmusctl demo` end to end: the real binaries as processes, three
//! clusters on 127.0.1-3.0/24. On this host's loopback (the demo's
//! addresses are fixed: one test): the canary and failover scenarios run
//! and go as expected, then a demo without scenario shows its links in
//! `isthmusctl status` and, stopped with SIGINT, leaves nothing running.
//! In network namespaces joined by the WAN emulator (`--netns`, root):
//! every way a region fails (`regions`) and random kills (`chaos`) lose
//! no GET.
//!
//! Needs `isthmusctl`, `isthmus-gateway`, `isthmus-federation` and
//! `isthmus-sample` built: `cargo test --workspace` builds them (each
//! crate's own tests run its binary).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn isthmusctl() -> PathBuf {
    for other in ["isthmus-gateway", "isthmus-federation", "isthmus-sample"] {
        isthmus_testkit::workspace_bin(other);
    }
    isthmus_testkit::workspace_bin("isthmusctl")
}

/// One demo at a time: two (38 processes of debug builds) overload a
/// 2-core machine, and a starved process is not what these tests judge.
static ONE_DEMO: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_demo() -> std::sync::MutexGuard<'static, ()> {
    ONE_DEMO
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// `isthmusctl demo <args> --dir <dir>` to its end: its status, stdout
/// and stderr.
fn demo(
    ctl: &std::path::Path,
    dir: &std::path::Path,
    args: &[&str],
) -> (std::process::Output, String, String) {
    let out = Command::new(ctl)
        .arg("demo")
        .args(args)
        .arg("--dir")
        .arg(dir)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("isthmusctl runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out, stdout, stderr)
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("isthmus-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn the_demo_runs_its_scenarios_and_stops_cleanly_on_ctrl_c() {
    let _one = one_demo();
    let ctl = isthmusctl();
    let dir = temp_dir("demo");

    // 1. Both scenarios, by themselves; the exit status says how they went.
    let (out, stdout, stderr) = demo(
        &ctl,
        &dir,
        &[
            "--scenario",
            "canary,failover",
            "--exit-after-scenario",
            "--rate",
            "20",
        ],
    );
    assert!(
        out.status.success(),
        "the scenarios failed:\n{stdout}\n{stderr}\n(logs in {})",
        dir.display()
    );
    for expected in [
        "an HTTPRoute written once in eu-west",
        "weights 90/10: in each frontend sidecar",
        "weights 0/100: in each frontend sidecar",
        "(100 % v2, 0 errors); eu-central ",
        "x-canary: always -> us-east, of 20 requests each: eu-west 20, eu-central 20, us-east 20",
        "rolled back (one file deleted in eu-west): eu-west ",
        "scenario Canary: done, as expected",
        "1. eu-west's catalog killed: all answers from eu-central",
        "2. eu-central's gateway killed: no catalog left",
        "3. eu-central's gateway restarted: eu-central answers again",
        "4. eu-west's catalog restarted: traffic back in eu-west",
        "scenario Failover: done, as expected",
    ] {
        assert!(stdout.contains(expected), "{expected:?} missing:\n{stdout}");
    }
    // The live table (every 5 s when not on a terminal) and its links.
    assert!(stdout.contains("eu-west     catalog"), "{stdout}");
    // Every HTTP answer, local or from another cluster, saw the calling
    // frontend's own SPIFFE ID (end-to-end mTLS through both gateways).
    let mut checked = 0;
    for line in stdout
        .lines()
        .filter(|l| l.contains(" catalog ") || l.contains(" reviews "))
    {
        let Some((ok, told)) = line.rsplit(' ').next().and_then(|c| c.split_once('/')) else {
            continue;
        };
        assert_eq!(ok, told, "an answer saw another caller: {line}");
        checked += 1;
    }
    assert!(checked >= 6, "caller columns in the table:\n{stdout}");
    // us-east has no catalog: both other regions serve it, balanced (one
    // gateway entry stands for both, yet their connections are apart).
    assert!(
        stdout.lines().any(|l| l.starts_with("us-east     catalog")
            && l.contains("eu-central")
            && l.contains("eu-west")),
        "us-east's catalog traffic should split between eu-west and eu-central:\n{stdout}"
    );
    assert!(stdout.contains("-> eu-central  quic"), "{stdout}");
    assert!(
        stderr.contains("killed after 5 s") && stderr.contains(" 0 killed after"),
        "every process stopped on SIGTERM: {stderr}"
    );

    // 2. No scenario: runs until SIGINT, then stops every process.
    let mut demo = Command::new(&ctl)
        .args(["demo", "--rate", "5"])
        .arg("--dir")
        .arg(&dir)
        .env("RUST_BACKTRACE", "0")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("isthmusctl runs");
    let mut lines = BufReader::new(demo.stdout.take().unwrap()).lines();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut seen = String::new();
    // The first table: the clusters are up, linked and answering.
    while !seen.contains("links\n") {
        assert!(Instant::now() < deadline, "no table within 120 s:\n{seen}");
        match lines.next() {
            Some(Ok(l)) => {
                seen.push_str(&l);
                seen.push('\n');
            }
            _ => panic!("the demo ended before its first table:\n{seen}"),
        }
    }
    // `isthmusctl status` on eu-west's control plane: both links up.
    let status = Command::new(&ctl)
        .args(["status", "--admin", "127.0.1.1:15030"])
        .output()
        .expect("isthmusctl status runs");
    let table = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success(), "{table}");
    for peer in ["eu-central", "us-east"] {
        let line = table
            .lines()
            .find(|l| l.starts_with(peer))
            .unwrap_or_else(|| panic!("no {peer} in:\n{table}"));
        assert!(line.contains("Connected     quic"), "{table}");
        assert!(line.contains(".shop"), "imports listed: {table}");
    }
    let pid = rustix::process::Pid::from_raw(demo.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::INT).unwrap();
    let status = demo.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut demo.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(status.success(), "{status}: {stderr}");
    assert!(stderr.contains(" 0 killed after"), "{stderr}");
    // Nothing is left holding the clusters' addresses.
    for i in 1..=3u8 {
        std::net::TcpListener::bind((std::net::Ipv4Addr::new(127, 0, i, 1), 15010))
            .unwrap_or_else(|e| panic!("127.0.{i}.1:15010 still taken after the demo: {e}"));
        std::net::TcpListener::bind((std::net::Ipv4Addr::new(127, 0, i, 10), 15001))
            .unwrap_or_else(|e| panic!("127.0.{i}.10:15001 still taken after the demo: {e}"));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `demo --netns --scenario regions,chaos`: three clusters in network
/// namespaces across the WAN emulator (20 and 80 ms RTT). A remote app,
/// sidecar, gateway and control plane killed, a remote endpoint silent
/// and a remote gateway partitioned (iptables), a local endpoint killed,
/// each healed: no GET fails, no POST sent after the traffic left the
/// broken path fails, and the broken cluster serves again. Then three
/// random kills, judged the same way. Needs root and /dev/net/tun;
/// skipped without them unless ISTHMUS_REQUIRE_NETNS=1 (CI).
#[test]
fn every_way_a_region_fails_loses_no_get_across_a_wan() {
    if !isthmus_e2e::netns_available() {
        return;
    }
    let _one = one_demo();
    let ctl = isthmusctl();
    let dir = temp_dir("demo-netns");
    let (out, stdout, stderr) = demo(
        &ctl,
        &dir,
        &[
            "--netns",
            "--scenario",
            "regions,chaos",
            "--chaos-rounds",
            "3",
            "--exit-after-scenario",
            "--rate",
            "20",
        ],
    );
    let narration: Vec<&str> = stdout.lines().filter(|l| l.starts_with('[')).collect();
    eprintln!("{}", narration.join("\n"));
    assert!(
        out.status.success(),
        "the scenarios failed:\n{stdout}\n{stderr}\n(logs in {})",
        dir.display()
    );
    for step in [
        "remote app killed: 0 of ",
        "remote sidecar killed: 0 of ",
        "remote endpoint silent: 0 of ",
        "remote gateway killed: 0 of ",
        "remote gateway partitioned: 0 of ",
        "remote control plane killed: 0 of ",
        "local endpoint killed: 0 of ",
        "scenario Regions: done, as expected",
        "scenario Chaos: done, as expected",
    ] {
        assert!(stdout.contains(step), "{step:?} missing:\n{stdout}");
    }
    // The links cross the emulated WAN: QUIC measures its RTT.
    assert!(
        stdout.contains("us-east     -> eu-west     quic  rtt 8")
            || stdout.contains("us-east     -> eu-west     quic  rtt 9"),
        "us-east to eu-west is 80 ms away:\n{stdout}"
    );
    assert!(stderr.contains("the WAN carried"), "{stderr}");
    let gone = |c: &str| {
        !std::path::Path::new("/var/run/netns")
            .join(format!("isthmus-{c}"))
            .exists()
    };
    assert!(
        ["eu-west", "eu-central", "us-east"].into_iter().all(gone),
        "the namespaces are deleted"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
