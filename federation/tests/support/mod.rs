//! Helpers shared by the federation integration tests.

use std::path::Path;
use std::process::Command;

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
