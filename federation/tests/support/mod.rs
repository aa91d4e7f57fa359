//! Helpers shared by the federation integration tests.
// Each test crate uses a subset.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long `eventually` waits.
pub const DEADLINE: Duration = Duration::from_secs(20);

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

pub fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("isthmus-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
