//! The link credentials this cluster holds: what each peer's control plane
//! issued us once it admitted our join token (`server::issue_credential`),
//! presented instead of the join token from then on, so a link outlives
//! its join token; and each peer's trust bundle as it last sent it
//! (`<peer>.bundle`), trusted from the start after a restart. They are kept where a restarted control plane finds
//! them: a file per peer under the store directory (`ca/links/<peer>`,
//! mode 0600) in `files` mode, or the fields of one Secret
//! (`isthmus-link-credentials`, a field per peer) in the control plane's
//! namespace in `kube` mode.

use std::collections::BTreeMap;
use std::path::PathBuf;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use parking_lot::Mutex;

/// `kube` mode: the Secret holding the credentials.
pub const SECRET_NAME: &str = "isthmus-link-credentials";

#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error(
        "link credential file {path}: {source} (the control plane needs to write its store directory's ca/links/)"
    )]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "link credentials in Secret {namespace}/{SECRET_NAME}: {reason} (the control plane's Role must allow get and patch on it, and create)"
    )]
    Kube { namespace: String, reason: String },
}

enum Backing {
    Dir(PathBuf),
    Secret {
        client: kube::Client,
        namespace: String,
    },
    Memory,
}

/// Where the credentials are kept, with what was last read or written.
pub struct CredentialStore {
    backing: Backing,
    cache: Mutex<BTreeMap<String, Option<String>>>,
}

impl std::fmt::Debug for CredentialStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let backing = match &self.backing {
            Backing::Dir(d) => format!("dir {}", d.display()),
            Backing::Secret { namespace, .. } => format!("Secret {namespace}/{SECRET_NAME}"),
            Backing::Memory => "memory".into(),
        };
        f.debug_struct("CredentialStore")
            .field("backing", &backing)
            .finish_non_exhaustive()
    }
}

impl CredentialStore {
    /// Files under `store_dir/ca/links/`.
    pub fn dir(store_dir: impl Into<PathBuf>) -> Self {
        Self::new(Backing::Dir(store_dir.into().join("ca").join("links")))
    }

    /// The Secret `isthmus-link-credentials` in `namespace`.
    pub fn secret(client: kube::Client, namespace: &str) -> Self {
        Self::new(Backing::Secret {
            client,
            namespace: namespace.into(),
        })
    }

    /// Nowhere: lost with the process.
    pub fn memory() -> Self {
        Self::new(Backing::Memory)
    }

    fn new(backing: Backing) -> Self {
        Self {
            backing,
            cache: Mutex::new(BTreeMap::new()),
        }
    }

    /// The credential `peer` issued us, if we hold one.
    pub async fn load(&self, peer: &str) -> Result<Option<String>, CredentialError> {
        if let Some(held) = self.cache.lock().get(peer) {
            return Ok(held.clone());
        }
        let found = match &self.backing {
            Backing::Dir(dir) => {
                let path = dir.join(peer);
                match tokio::fs::read_to_string(&path).await {
                    Ok(t) => Some(t.trim().to_string()).filter(|t| !t.is_empty()),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                    Err(source) => return Err(CredentialError::Io { path, source }),
                }
            }
            Backing::Secret { client, namespace } => {
                let api: kube::Api<Secret> = kube::Api::namespaced(client.clone(), namespace);
                let secret = api
                    .get_opt(SECRET_NAME)
                    .await
                    .map_err(|e| kube_error(namespace, e))?;
                secret
                    .and_then(|s| s.data?.remove(peer))
                    .and_then(|b| String::from_utf8(b.0).ok())
                    .filter(|t| !t.is_empty())
            }
            Backing::Memory => None,
        };
        self.cache.lock().insert(peer.into(), found.clone());
        Ok(found)
    }

    /// Keeps `token` as `peer`'s credential (replacing the one held).
    pub async fn save(&self, peer: &str, token: &str) -> Result<(), CredentialError> {
        if self.cache.lock().get(peer).and_then(Option::as_deref) == Some(token) {
            return Ok(());
        }
        self.write(peer, Some(token)).await?;
        self.cache.lock().insert(peer.into(), Some(token.into()));
        Ok(())
    }

    /// Drops `peer`'s credential (the peer refused it).
    pub async fn forget(&self, peer: &str) -> Result<(), CredentialError> {
        self.write(peer, None).await?;
        self.cache.lock().insert(peer.into(), None);
        Ok(())
    }

    async fn write(&self, peer: &str, token: Option<&str>) -> Result<(), CredentialError> {
        match &self.backing {
            Backing::Dir(dir) => write_file(dir, peer, token).await,
            Backing::Secret { client, namespace } => {
                // One field, patched alone: other peers' fields, written by
                // other link tasks, are left as they are.
                let fields = vec![(peer.to_string(), token.map(|t| ByteString(t.into())))];
                crate::store::kube::patch_secret_fields(client, namespace, SECRET_NAME, fields)
                    .await
                    .map_err(|e| kube_error(namespace, e))
            }
            Backing::Memory => Ok(()),
        }
    }
}

fn kube_error(namespace: &str, e: kube::Error) -> CredentialError {
    CredentialError::Kube {
        namespace: namespace.into(),
        reason: e.to_string(),
    }
}

/// Written whole to a temporary file and renamed: a crash leaves the old
/// credential or the new one, never half of one.
async fn write_file(
    dir: &std::path::Path,
    peer: &str,
    token: Option<&str>,
) -> Result<(), CredentialError> {
    let path = dir.join(peer);
    let io = |path: &std::path::Path| {
        let path = path.to_path_buf();
        move |source| CredentialError::Io { path, source }
    };
    let Some(token) = token else {
        return match tokio::fs::remove_file(&path).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(&path)(e)),
            _ => Ok(()),
        };
    };
    tokio::fs::create_dir_all(dir).await.map_err(io(dir))?;
    let tmp = dir.join(format!(".{peer}.tmp"));
    let text = token.to_string();
    let t = tmp.clone();
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&t)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()
    })
    .await
    .map_err(|e| io(&tmp)(std::io::Error::other(e)))?
    .map_err(io(&tmp))?;
    tokio::fs::rename(&tmp, &path).await.map_err(io(&path))
}

#[cfg(test)]
mod tests;
