//! Test and benchmark support for Isthmus (needs root).
//!
//! - `netns`: network namespaces made with `ip netns`, deleted on drop;
//!   code enters one on a thread of its own, so the sockets it makes there
//!   live in that namespace (two gateways in one process, on two "hosts").
//! - `tun`: TUN devices (raw IP packets in and out).
//! - `wan`: a packet-level WAN emulator between two namespaces: each side
//!   has a TUN device routed to the other, and a userspace loop carries
//!   every IP packet across with delay, jitter, random loss, a bandwidth
//!   cap with a drop-tail queue, and an optional UDP black-hole. QUIC and
//!   TCP cross the same emulated link, so comparisons between them are
//!   fair (this kernel has no netem).
//!
//! The binary `isthmus-wan` sets up the same link for manual use.
//!
//! Unsafe code is denied except for three syscalls without a safe
//! wrapper (setns, the TUNSETIFF ioctl, registering the TUN fd), each
//! allowed where it is made.
#![deny(unsafe_code)]

pub mod netns;
pub mod tun;
pub mod wan;

/// Whether a test that needs namespaces and TUN devices can run here:
/// false (the caller skips, saying so) when not root or without
/// /dev/net/tun; a panic instead when ISTHMUS_REQUIRE_NETNS=1 (CI), where
/// skipping would hide that the test did not run.
pub fn netns_available() -> bool {
    if is_root() && std::path::Path::new("/dev/net/tun").exists() {
        return true;
    }
    assert!(
        std::env::var("ISTHMUS_REQUIRE_NETNS").map_or(true, |v| v != "1"),
        "ISTHMUS_REQUIRE_NETNS=1 but this is not root with /dev/net/tun"
    );
    eprintln!("skipped: needs root and /dev/net/tun");
    false
}

/// Whether this process runs as root (namespaces and TUN need it).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}
