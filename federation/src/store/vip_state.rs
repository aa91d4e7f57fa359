//! `files` mode: the ClusterSet IPs handed out, kept in a state file
//! beside the store (`<store>/state/clusterset-ips.json`) so a restarted
//! control plane gives every name the address it had. (`kube` mode keeps
//! them in the ServiceImports instead: `translate::vips::persisted`.)
//!
//! The file is written whole and renamed into place; an unreadable one is
//! reported and ignored (addresses then start from their names' hashes,
//! which gives most names the same address again).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum VipStateError {
    #[error("cannot read the ClusterSet IP state {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the ClusterSet IP state {path} is not valid ({source}): move it away; addresses are handed out again"
    )]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error(
        "cannot write the ClusterSet IP state {path}: {source} (is the store directory writable?)"
    )]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct File {
    /// Proxy name → address.
    clusterset_ips: BTreeMap<String, Ipv4Addr>,
}

/// The state file of a store directory.
pub fn path(store_dir: &Path) -> PathBuf {
    store_dir.join("state").join("clusterset-ips.json")
}

/// What the file holds; nothing when there is no file yet.
pub fn load(path: &Path) -> Result<BTreeMap<String, Ipv4Addr>, VipStateError> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(source) => {
            return Err(VipStateError::Read {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let f: File = serde_json::from_slice(&text).map_err(|source| VipStateError::Parse {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(f.clusterset_ips)
}

/// Replaces the file with `ips` (written aside, then renamed).
pub fn save(path: &Path, ips: &BTreeMap<String, Ipv4Addr>) -> Result<(), VipStateError> {
    let err = |source| VipStateError::Write {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let body = serde_json::to_vec_pretty(&File {
        clusterset_ips: ips.clone(),
    })
    .expect("a map of strings and addresses serializes");
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, body).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_state_loads_back_and_a_missing_file_is_empty() {
        let dir = isthmus_testkit::temp_dir("vip-state");
        let p = path(&dir);
        assert!(load(&p).unwrap().is_empty());
        let ips = BTreeMap::from([
            (
                "catalog.shop.svc.clusterset.local".to_string(),
                Ipv4Addr::new(240, 240, 3, 4),
            ),
            (
                "catalog-eu-central.shop".to_string(),
                Ipv4Addr::new(240, 240, 9, 1),
            ),
        ]);
        save(&p, &ips).unwrap();
        assert_eq!(load(&p).unwrap(), ips);
        // Not a store document: hidden from nothing, but not YAML either.
        assert!(crate::store::files::load_dir(&dir).0.is_empty());
    }

    #[test]
    fn a_corrupt_file_is_named() {
        let dir = isthmus_testkit::temp_dir("vip-state-bad");
        let p = path(&dir);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, b"{\"clustersetIps\": {\"a\": \"not an ip\"}}").unwrap();
        let e = load(&p).unwrap_err().to_string();
        assert!(e.contains("clusterset-ips.json is not valid"), "{e}");
        assert!(e.contains("move it away"), "{e}");
    }
}
