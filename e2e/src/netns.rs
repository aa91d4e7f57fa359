//! Network namespaces: created with `ip netns add` (loopback up), deleted
//! when dropped. `spawn` runs a closure on a new thread inside the
//! namespace: sockets it (and any runtime it builds) creates live there.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("`{command}` failed: {reason} (this needs root and iproute2)")]
    Command { command: String, reason: String },
    #[error("cannot enter network namespace {name}: {source} (this needs root)")]
    Enter {
        name: String,
        source: std::io::Error,
    },
}

/// A network namespace this process made; deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

/// Runs `ip` with `args`, naming the command in the error.
pub fn ip(args: &[&str]) -> Result<(), NetnsError> {
    let command = format!("ip {}", args.join(" "));
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| NetnsError::Command {
            command: command.clone(),
            reason: e.to_string(),
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NetnsError::Command {
            command,
            reason: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

impl Netns {
    /// Creates namespace `name` (replacing a stale one of that name, left
    /// by a killed run) with its loopback up.
    pub fn create(name: &str) -> Result<Self, NetnsError> {
        let _ = ip(&["netns", "del", name]);
        ip(&["netns", "add", name])?;
        let ns = Netns { name: name.into() };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n <this> args`.
    pub fn ip(&self, args: &[&str]) -> Result<(), NetnsError> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// Joins this namespace and `other` with a veth pair (`dev` here,
    /// `peer` there), each end given its address (`10.1.0.1/30`) and up.
    pub fn veth(
        &self,
        dev: &str,
        addr: &str,
        other: &Netns,
        peer: &str,
        peer_addr: &str,
    ) -> Result<(), NetnsError> {
        ip(&[
            "link",
            "add",
            dev,
            "netns",
            &self.name,
            "type",
            "veth",
            "peer",
            "name",
            peer,
            "netns",
            &other.name,
        ])?;
        for (ns, d, a) in [(self, dev, addr), (other, peer, peer_addr)] {
            ns.ip(&["addr", "add", a, "dev", d])?;
            ns.ip(&["link", "set", d, "up"])?;
        }
        Ok(())
    }

    /// A command that runs `program` inside this namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Moves the calling thread into this namespace (for good: use it on a
    /// thread of its own, as `spawn` does).
    pub fn enter(&self) -> Result<(), NetnsError> {
        let err = |source| NetnsError::Enter {
            name: self.name.clone(),
            source,
        };
        let f = File::open(format!("/var/run/netns/{}", self.name)).map_err(err)?;
        setns(&f).map_err(err)
    }

    /// Runs `f` on a new thread inside this namespace.
    pub fn spawn<T: Send + 'static>(
        &self,
        name: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<std::thread::JoinHandle<T>, NetnsError> {
        spawn_in(&self.name, name, f)
    }
}

/// Runs `f` on a new thread (`thread` its name) inside the namespace
/// `ns`, which this process need not own.
pub fn spawn_in<T: Send + 'static>(
    ns: &str,
    thread: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<std::thread::JoinHandle<T>, NetnsError> {
    let (tx, rx) = std::sync::mpsc::channel();
    let target = Netns { name: ns.into() };
    let h = std::thread::Builder::new()
        .name(thread.into())
        .spawn(move || {
            let entered = target.enter();
            std::mem::forget(target); // not ours to delete
            let ok = entered.is_ok();
            let _ = tx.send(entered);
            assert!(ok, "entering the namespace failed");
            f()
        })
        .map_err(|e| NetnsError::Enter {
            name: ns.into(),
            source: e,
        })?;
    rx.recv().map_err(|_| NetnsError::Enter {
        name: ns.into(),
        source: std::io::Error::other("the thread ended before entering"),
    })??;
    Ok(h)
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// setns(2) on the calling thread.
#[allow(unsafe_code)] // setns(2) has no safe wrapper in std; `f` is an open namespace file for the whole call.
fn setns(f: &File) -> std::io::Result<()> {
    // SAFETY: a plain syscall on a valid file descriptor; no memory is shared.
    let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
