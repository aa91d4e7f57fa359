//! Process-level helpers shared by the tests that run real processes
//! (binary.rs, netns.rs) and by the proxy benchmark.
// Each including crate uses a subset of these.
#![allow(dead_code)]

use std::process::{Command, Stdio};

/// A gateway process started with every address at port 0, and where it
/// says (on stderr, before it serves) each one was bound: its listeners by
/// name, the east-west QUIC/TCP/local entry, the admin port. The process is
/// killed when this is dropped.
pub struct Started {
    pub child: std::process::Child,
    pub listeners: std::collections::HashMap<String, std::net::SocketAddr>,
    /// QUIC (udp), fallback (tcp), local entry: `eastwest` only.
    pub eastwest: Option<[std::net::SocketAddr; 3]>,
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
                ["admin", "on", at, ..] => {
                    return Self {
                        child,
                        listeners,
                        eastwest,
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

/// Whether `cmd` is on PATH.
pub fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
