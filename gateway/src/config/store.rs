//! The one state store of a proxy: the snapshot in effect, swapped
//! atomically on every accepted update. The request path loads it once per
//! request (lock-free); listeners watch it for changes. A refused update
//! leaves the snapshot untouched and is remembered for /config_dump.

use parking_lot::Mutex;
use std::sync::Arc;

use arc_swap::ArcSwap;
use isthmus_api::model::ProxyConfig;
use tokio::sync::watch;

use super::compile::{CompileError, compile};
use super::snapshot::Snapshot;

pub struct Store {
    current: ArcSwap<Snapshot>,
    generation: watch::Sender<u64>,
    last_error: Mutex<Option<String>>,
}

impl Default for Store {
    fn default() -> Self {
        Self::new()
    }
}

impl Store {
    pub fn new() -> Self {
        Self {
            current: ArcSwap::from_pointee(Snapshot::empty()),
            generation: watch::Sender::new(0),
            last_error: Mutex::new(None),
        }
    }

    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Generation 0 means no configuration has been applied yet.
    pub fn generation(&self) -> u64 {
        *self.generation.borrow()
    }

    pub fn is_loaded(&self) -> bool {
        self.generation() > 0
    }

    /// Changes of generation; the value is the new generation.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Compiles and installs `cfg`. On error the snapshot in effect stays.
    pub fn apply(&self, cfg: &ProxyConfig) -> Result<u64, CompileError> {
        let snapshot = compile(cfg)?;
        self.install(snapshot);
        Ok(self.generation())
    }

    pub fn install(&self, snapshot: Snapshot) {
        self.current.store(Arc::new(snapshot));
        *self.last_error.lock() = None;
        self.generation.send_modify(|g| *g += 1);
    }

    /// Records why an update was refused.
    pub fn reject(&self, why: String) {
        *self.last_error.lock() = Some(why);
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().clone()
    }
}
