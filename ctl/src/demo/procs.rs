//! The demo's processes: each control plane, gateway, sidecar and sample
//! app is a real child process, its output in a log file of its own. They
//! can be stopped (SIGKILL, like a crashed pod) and started again with the
//! same arguments; at the end all get SIGTERM, then SIGKILL after a grace.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use tokio::process::{Child, Command};

/// How to start one process.
#[derive(Debug, Clone)]
pub struct Spec {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub log: PathBuf,
    /// The network namespace it runs in (None: this one).
    pub netns: Option<String>,
}

struct Running {
    spec: Spec,
    child: Option<Child>,
}

/// The demo's processes by name (`eu-west/gateway`, ...).
#[derive(Default)]
pub struct Procs {
    all: BTreeMap<String, Running>,
}

fn spawn(spec: &Spec) -> anyhow::Result<Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&spec.log)
        .with_context(|| format!("opening {}", spec.log.display()))?;
    let mut command = match &spec.netns {
        // `ip netns exec` execs the program: the child's pid is its own.
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(&spec.program);
            c
        }
        None => Command::new(&spec.program),
    };
    command
        .args(&spec.args)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .env(
            "ISTHMUS_LOG",
            std::env::var("ISTHMUS_LOG").unwrap_or("info".into()),
        )
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", spec.program.display()))
}

fn signal(child: &Child, sig: rustix::process::Signal) {
    if let Some(pid) = child
        .id()
        .and_then(|id| rustix::process::Pid::from_raw(id as i32))
    {
        let _ = rustix::process::kill_process(pid, sig);
    }
}

impl Procs {
    pub fn start(&mut self, name: &str, spec: Spec) -> anyhow::Result<()> {
        let child = spawn(&spec).with_context(|| name.to_string())?;
        self.all.insert(
            name.to_string(),
            Running {
                spec,
                child: Some(child),
            },
        );
        Ok(())
    }

    /// Kills `name` at once (SIGKILL), as a node failure would.
    pub async fn kill(&mut self, name: &str) -> anyhow::Result<()> {
        let r = self
            .all
            .get_mut(name)
            .with_context(|| format!("no process {name}"))?;
        if let Some(mut child) = r.child.take() {
            child.kill().await?;
        }
        Ok(())
    }

    /// Starts `name` again with the arguments it had.
    pub fn restart(&mut self, name: &str) -> anyhow::Result<()> {
        let r = self
            .all
            .get_mut(name)
            .with_context(|| format!("no process {name}"))?;
        if r.child.is_none() {
            r.child = Some(spawn(&r.spec)?);
        }
        Ok(())
    }

    /// Processes that exited by themselves, with their status and log.
    pub fn exited(&mut self) -> Vec<(String, String, PathBuf)> {
        let mut out = Vec::new();
        for (name, r) in &mut self.all {
            if let Some(child) = r.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                out.push((name.clone(), status.to_string(), r.spec.log.clone()));
                r.child = None;
            }
        }
        out
    }

    /// SIGTERM to all, then SIGKILL to those still running after `grace`.
    /// Returns how many stopped by themselves.
    pub async fn shutdown(&mut self, grace: Duration) -> (usize, usize) {
        let mut children: Vec<Child> = self
            .all
            .values_mut()
            .filter_map(|r| r.child.take())
            .collect();
        for c in &children {
            signal(c, rustix::process::Signal::TERM);
        }
        let deadline = tokio::time::Instant::now() + grace;
        let (mut clean, mut killed) = (0, 0);
        for c in &mut children {
            match tokio::time::timeout_at(deadline, c.wait()).await {
                Ok(_) => clean += 1,
                Err(_) => {
                    let _ = c.kill().await;
                    killed += 1;
                }
            }
        }
        (clean, killed)
    }
}

/// `program` beside this executable (or in `dir`), or a clear error.
pub fn find(dir: &Path, program: &str) -> anyhow::Result<PathBuf> {
    let path = dir.join(program);
    anyhow::ensure!(
        path.is_file(),
        "{program} is not in {}: the demo runs the real binaries; build them all first \
         (cargo build --release), or say where they are with --bin-dir",
        dir.display()
    );
    Ok(path)
}
