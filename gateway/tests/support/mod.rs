//! Process-level helpers shared by the tests that run real processes
//! (binary.rs, netns.rs) and by the proxy benchmark.
// Each including crate uses a subset of these.
#![allow(dead_code)]

use std::net::TcpListener;
use std::process::{Command, Stdio};

/// A port that was free a moment ago (for processes that need a fixed one).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port on 127.0.0.1")
}

/// Whether `cmd` is on PATH.
pub fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
