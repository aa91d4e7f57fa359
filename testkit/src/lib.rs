//! isthmus-testkit: test support that needs none of the crates under test,
//! so every crate's own tests can take it as a dev-dependency (one copy of
//! each crate in a test build):
//!
//! - `pki`: test CAs per trust domain issuing SPIFFE certificates.
//! - `jwt`: a JWT issuer publishing its JWKS.
//! - `kube_api`: a fake Kubernetes API server that records every call as
//!   RBAC sees it.
//! - here: `eventually` (poll with a deadline, never a sleep as
//!   synchronisation), temporary directories, one-shot HTTP/1.1,
//!   `kubectl kustomize`, `kubernetes-validate`, the workspace's binaries and `Started` (a gateway
//!   process started at port 0, and where it says it listens).
#![forbid(unsafe_code)]

pub mod crd_schema;
pub mod jwt;
pub mod kube_api;
pub mod pki;
pub mod prometheus;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long `eventually` waits.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// Polls `f` until it returns Some, or fails after DEADLINE saying `what`.
pub async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let until = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One HTTP/1.1 request; (status, body).
pub async fn http(addr: SocketAddr, host: &str, path: &str) -> Option<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).await.ok()?;
    let status = out.get(9..12)?.parse().ok()?;
    Some((status, out.split_once("\r\n\r\n")?.1.to_string()))
}

/// A fresh directory under the system's temporary directory, named by
/// `tag` and this process.
pub fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("isthmus-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `kubectl kustomize DIR` (offline, as `kubectl apply -k` would build it):
/// the YAML, or None when kubectl is not installed (a failure instead when
/// ISTHMUS_REQUIRE_KUBECTL is set, as CI does). A failing build panics
/// with kubectl's message.
pub fn kubectl_kustomize(dir: &Path) -> Option<String> {
    let out = match Command::new("kubectl").arg("kustomize").arg(dir).output() {
        Ok(out) => out,
        Err(e) => {
            assert!(
                std::env::var_os("ISTHMUS_REQUIRE_KUBECTL").is_none(),
                "kubectl is required here: {e}"
            );
            eprintln!("kubectl not installed; skipping");
            return None;
        }
    };
    assert!(
        out.status.success(),
        "kubectl kustomize {} failed: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A binary of this workspace, built beside the running test (in
/// `target/<profile>/`): `cargo test --workspace` builds them all. A test
/// of the crate that owns the binary uses `env!("CARGO_BIN_EXE_<name>")`.
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test knows where it is");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("tests run from target/<profile>/deps");
    let bin = dir.join(name);
    assert!(
        bin.exists(),
        "{} is not built: run `cargo test --workspace` (or `cargo build --bins`) first",
        bin.display()
    );
    bin
}

/// A gateway process started with every address at port 0, and where it
/// says (on stderr, before it serves) each one was bound: its listeners by
/// name, the east-west QUIC/TCP/local entry, the admin port. The process is
/// killed when this is dropped.
pub struct Started {
    pub child: std::process::Child,
    pub listeners: std::collections::HashMap<String, std::net::SocketAddr>,
    /// QUIC (udp), fallback (tcp), local entry: `eastwest` only.
    pub eastwest: Option<[std::net::SocketAddr; 3]>,
    /// The DNS proxy (udp and tcp share it): with `--dns` only.
    pub dns: Option<std::net::SocketAddr>,
    pub admin: std::net::SocketAddr,
}

impl Started {
    /// Spawns `cmd` (stderr piped) and reads its start lines, up to 20 s.
    pub fn spawn(mut cmd: Command) -> Self {
        use std::io::BufRead;
        let mut child = cmd.stderr(Stdio::piped()).spawn().expect("the binary runs");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        // Read to the end, so the process never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { return };
                let _ = tx.send(line);
            }
        });
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let mut seen = String::new();
        let mut listeners = std::collections::HashMap::new();
        let mut eastwest = None;
        let mut dns = None;
        let addr = |s: &str| -> std::net::SocketAddr {
            s.trim_start_matches("http://")
                .trim_end_matches('/')
                .trim_end_matches(',')
                .parse()
                .unwrap_or_else(|e| panic!("{s:?} is not an address: {e}"))
        };
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let Ok(line) = rx.recv_timeout(left) else {
                let _ = child.kill();
                panic!("the process did not say where it listens within 20 s:\n{seen}");
            };
            seen.push_str(&line);
            seen.push('\n');
            let words: Vec<&str> = line.split_whitespace().collect();
            match words[..] {
                ["listener", name, "on", at] => {
                    listeners.insert(name.to_string(), addr(at));
                }
                [
                    "east-west:",
                    "QUIC",
                    "on",
                    "udp",
                    quic,
                    "fallback",
                    "on",
                    "tcp",
                    tcp,
                    "local",
                    "entry",
                    "on",
                    local,
                ] => {
                    eastwest = Some([addr(quic), addr(tcp), addr(local)]);
                }
                ["dns", "on", "udp", at, "and", "tcp", _] => dns = Some(addr(at)),
                ["admin", "on", at, ..] => {
                    return Self {
                        child,
                        listeners,
                        eastwest,
                        dns,
                        admin: addr(at),
                    };
                }
                _ => {}
            }
        }
    }

    pub fn listener(&self, name: &str) -> std::net::SocketAddr {
        self.listeners[name]
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `kubernetes-validate --strict` (the PyPI package; offline schemas) of
/// `yaml` for Kubernetes `version`: whether it passed and what it said;
/// None when the tool is missing.
pub fn kubernetes_validate(yaml: &str, version: &str, tag: &str) -> Option<(bool, String)> {
    if !have("kubernetes-validate") {
        return None;
    }
    let path = temp_dir(tag).join("manifests.yaml");
    std::fs::write(&path, yaml).ok()?;
    let out = Command::new("kubernetes-validate")
        .args(["--strict", "--quiet", "-k", version])
        .arg(&path)
        .output()
        .ok()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some((out.status.success() && !text.contains("ERROR"), text))
}

/// Whether `cmd` is on PATH.
pub fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
