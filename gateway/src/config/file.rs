//! The YAML file source: reads the proxy configuration from a file and
//! feeds every valid change into the store. Changes are detected by polling
//! the file's content (robust to editors that replace the file and to
//! ConfigMap symlink swaps); SIGHUP forces a check. A file that fails to
//! parse or validate is reported with field and line, and the last good
//! configuration stays in effect.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use isthmus_api::model::ProxyConfig;
use tokio_util::sync::CancellationToken;

use super::Store;
use crate::telemetry::metrics::{Metrics, ResultLabels};

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {source}")]
    Invalid {
        path: PathBuf,
        source: isthmus_api::ConfigError,
    },
    #[error("config file {path}: {source}")]
    Compile {
        path: PathBuf,
        source: super::compile::CompileError,
    },
}

pub fn read(path: &Path) -> Result<(ProxyConfig, String), FileError> {
    let text = std::fs::read_to_string(path).map_err(|source| FileError::Read {
        path: path.to_owned(),
        source,
    })?;
    let cfg = isthmus_api::parse_yaml(&text).map_err(|source| FileError::Invalid {
        path: path.to_owned(),
        source,
    })?;
    Ok((cfg, text))
}

/// Loads `path` into the store once.
pub fn load_into(path: &Path, store: &Store) -> Result<String, FileError> {
    let (cfg, text) = read(path)?;
    store.apply(&cfg).map_err(|source| FileError::Compile {
        path: path.to_owned(),
        source,
    })?;
    Ok(text)
}

/// Watches `path` until `stop`, applying each changed, valid version.
pub async fn watch(
    path: PathBuf,
    mut last_text: String,
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    interval: Duration,
    stop: CancellationToken,
) {
    #[cfg(unix)]
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    loop {
        #[cfg(unix)]
        let hangup = async {
            match hup.as_mut() {
                Some(h) => {
                    h.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let hangup = std::future::pending::<()>();
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
            _ = hangup => {}
        }
        // Read inline: a config file is a few KiB on a local disk, and
        // tokio::fs would hand each poll to a blocking-pool thread, which
        // wakes a second thread on the proxy's core twice a second.
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            // Mid-replace or briefly missing: try again on the next tick.
            Err(_) => continue,
        };
        if text == last_text {
            continue;
        }
        last_text = text.clone();
        let result = isthmus_api::parse_yaml(&text)
            .map_err(|e| e.to_string())
            .and_then(|cfg| store.apply(&cfg).map_err(|e| e.to_string()));
        match result {
            Ok(generation) => {
                metrics
                    .config_reloads
                    .get_or_create(&ResultLabels {
                        result: "applied".into(),
                    })
                    .inc();
                tracing::info!(path = %path.display(), generation, "configuration reloaded");
            }
            Err(e) => {
                metrics
                    .config_reloads
                    .get_or_create(&ResultLabels {
                        result: "rejected".into(),
                    })
                    .inc();
                let why = format!("{}: {e}", path.display());
                tracing::error!("configuration change refused, keeping the last good one: {why}");
                store.reject(why);
            }
        }
    }
}
