//! Where the demo's clusters live. By default on this host's loopback
//! (127.0.N.0/24 each). With `--netns` (root) each cluster is a network
//! namespace of its own (`isthmus-<cluster>`) with the same loopback
//! range inside, its east-west gateway on the WAN address 10.77.0.N, and
//! the namespaces joined by the packet-level WAN emulator of isthmus-e2e
//! with the RTT of the regions' distance and the loss asked for. There a
//! partition is iptables in the cluster's namespace dropping its WAN
//! packets, and a silent endpoint is iptables dropping packets to its
//! address: nothing answers, nothing resets.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::Duration;

use anyhow::Context;
use isthmus_e2e::wan::{self, Impairment, Sites};

use super::mesh::{CLUSTERS, Cluster};

/// The clusters' namespaces and the WAN between them; deleted on drop.
pub struct Namespaces {
    sites: Sites,
}

/// The namespace of cluster `c`.
pub fn namespace(c: &Cluster) -> String {
    format!("isthmus-{}", c.name)
}

/// The round-trip time between two regions: 20 ms within Europe, 80 ms
/// across the Atlantic.
pub fn rtt(a: &Cluster, b: &Cluster) -> Duration {
    let europe = |c: &Cluster| c.name.starts_with("eu-");
    if europe(a) == europe(b) {
        Duration::from_millis(20)
    } else {
        Duration::from_millis(80)
    }
}

/// Cluster `c`'s address on the WAN.
pub fn wan_ip(c: &Cluster) -> IpAddr {
    IpAddr::V4(wan::site_addr(usize::from(c.index) - 1))
}

fn run(mut c: Command) -> anyhow::Result<()> {
    let what = format!("{c:?}");
    let out = c.output().with_context(|| format!("running {what}"))?;
    anyhow::ensure!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// `program args` inside cluster `c`'s namespace.
fn in_cluster(c: &Cluster, program: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &namespace(c), program])
        .args(args);
    cmd
}

impl Namespaces {
    /// Makes a namespace per cluster and the WAN (each link losing
    /// `loss_percent` of its packets); from then on the demo's own
    /// connections to a cluster start inside its namespace.
    pub fn create(loss_percent: f64) -> anyhow::Result<Self> {
        anyhow::ensure!(
            isthmus_e2e::is_root() && std::path::Path::new("/dev/net/tun").exists(),
            "--netns needs root (namespaces, TUN devices, iptables) and /dev/net/tun"
        );
        anyhow::ensure!(
            (0.0..100.0).contains(&loss_percent),
            "--wan-loss {loss_percent}: a percentage below 100"
        );
        for c in CLUSTERS {
            let ns = namespace(&c);
            if std::path::Path::new("/var/run/netns").join(&ns).exists() {
                let pids = Command::new("ip").args(["netns", "pids", &ns]).output()?;
                anyhow::ensure!(
                    pids.stdout.is_empty(),
                    "the namespace {ns} exists with processes in it: is another `demo --netns` running? \
                     (stop it, or `ip netns del {ns}`)"
                );
            }
        }
        let names: Vec<String> = CLUSTERS.iter().map(namespace).collect();
        let sites = Sites::new(&names, |a, b| {
            Impairment::wan(rtt(&CLUSTERS[a], &CLUSTERS[b]), loss_percent / 100.0)
        })
        .context("making the clusters' namespaces and the WAN between them")?;
        isthmus_ctl::dial::through_namespaces(
            CLUSTERS
                .iter()
                .map(|c| {
                    let IpAddr::V4(ip) = c.ip(0) else {
                        unreachable!("the demo's ranges are IPv4")
                    };
                    let o = ip.octets();
                    ([o[0], o[1], o[2]], namespace(c))
                })
                .collect(),
        );
        for c in CLUSTERS {
            capture_app(&c).with_context(|| format!("capture rules in {}", namespace(&c)))?;
        }
        Ok(Self { sites })
    }

    /// How many packets crossed the WAN, and how many it dropped.
    pub fn packets(&self) -> (u64, u64) {
        let (mut delivered, mut lost) = (0, 0);
        for a in 0..self.sites.len() {
            for b in (0..self.sites.len()).filter(|&b| b != a) {
                let c = self.sites.counts(a, b);
                delivered += c.delivered;
                lost += c.lost;
            }
        }
        (delivered, lost)
    }
}

/// The SO_MARK of the demo's own application sockets in a cluster's
/// namespace: what its capture rules match.
pub const APP_MARK: u32 = 0x77;
/// Where the demo sends its DNS queries (the cluster DNS's usual address;
/// the query is captured before it leaves).
pub const DNS_SERVER: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 96, 0, 10)), 53);

/// Capture in cluster `c`'s namespace for the demo playing its frontend
/// application: its sockets (marked `APP_MARK`) have their DNS queries
/// sent to the frontend sidecar's DNS proxy and their TCP connections to
/// its transparent listener, as a pod's rules would; ClusterSet IPs and
/// ClusterIPs are routed (to loopback: they are captured before they
/// leave). Nothing else in the namespace is captured.
pub fn capture_app(c: &Cluster) -> anyhow::Result<()> {
    for range in ["240.240.0.0/16", "10.96.0.0/16"] {
        run(in_cluster(c, "ip", &["route", "add", range, "dev", "lo"]))?;
    }
    let mark = format!("{APP_MARK:#x}");
    let (dns, tcp) = (super::mesh::DNS_PORT, super::mesh::CAPTURE_PORT);
    for (proto, port, to) in [("udp", "53", dns), ("tcp", "53", dns), ("tcp", "", tcp)] {
        let mut args = vec!["-t", "nat", "-A", "OUTPUT", "-p", proto];
        if !port.is_empty() {
            args.extend(["--dport", port]);
        }
        let to = to.to_string();
        args.extend([
            "-m",
            "mark",
            "--mark",
            &mark,
            "-j",
            "REDIRECT",
            "--to-ports",
            &to,
        ]);
        run(in_cluster(c, "iptables", &args))?;
    }
    Ok(())
}

/// Cuts cluster `c` off the WAN (`on`), or heals the cut: iptables in its
/// namespace drops every packet to or from the other clusters.
pub fn partition(c: &Cluster, on: bool) -> anyhow::Result<()> {
    let action = if on { "-I" } else { "-D" };
    let range = "10.77.0.0/24";
    run(in_cluster(
        c,
        "iptables",
        &[action, "INPUT", "-s", range, "-j", "DROP"],
    ))?;
    run(in_cluster(
        c,
        "iptables",
        &[action, "OUTPUT", "-d", range, "-j", "DROP"],
    ))
}

/// Makes the workload at `ip` in cluster `c` silent (`on`), or not:
/// iptables drops every packet to it (connections to it hang, nothing
/// resets them).
pub fn silence(c: &Cluster, ip: Ipv4Addr, on: bool) -> anyhow::Result<()> {
    let action = if on { "-I" } else { "-D" };
    run(in_cluster(
        c,
        "iptables",
        &[action, "INPUT", "-d", &ip.to_string(), "-j", "DROP"],
    ))
}

/// The east-west gateway's address as the other clusters dial it.
pub fn gateway(c: &Cluster, netns: bool) -> SocketAddr {
    if netns {
        SocketAddr::new(wan_ip(c), c.gateway().port())
    } else {
        c.gateway()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_are_near_or_far() {
        let [west, central, east] = CLUSTERS;
        assert_eq!(rtt(&west, &central), Duration::from_millis(20));
        assert_eq!(rtt(&west, &east), Duration::from_millis(80));
        assert_eq!(rtt(&east, &central), rtt(&central, &east));
    }

    #[test]
    fn each_cluster_has_its_wan_address() {
        let addrs: Vec<SocketAddr> = CLUSTERS.iter().map(|c| gateway(c, true)).collect();
        assert_eq!(addrs[0].to_string(), "10.77.0.1:15443");
        assert_eq!(addrs[2].to_string(), "10.77.0.3:15443");
        assert_eq!(gateway(&CLUSTERS[1], false), CLUSTERS[1].gateway());
    }
}
