//! `isthmus-gateway`: the Isthmus data plane binary.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use isthmus_gateway::eastwest::config::EastWestConfig;
use isthmus_gateway::iptables::{self, CaptureSettings};
use isthmus_gateway::launch::{HealthFlags, NodeFlags, Settings, serve};
use secrecy::SecretString;

mod heap;

/// A secret argument: kept out of Debug output (the arguments are logged).
fn secret(s: &str) -> Result<SecretString, std::convert::Infallible> {
    Ok(s.into())
}

#[derive(Parser, Debug)]
#[command(
    name = "isthmus-gateway",
    version,
    about = "Isthmus data plane: sidecar proxy and east-west gateway"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log lines as `text` (for people) or `json` (one object per line:
    /// timestamp, level, target, message and fields, for log pipelines).
    /// The lines saying where each port is bound stay plain text.
    #[arg(long, global = true, env = "ISTHMUS_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run beside a workload: outbound, transparent and inbound proxying.
    Sidecar(Box<SidecarArgs>),
    /// Install the iptables rules that redirect a pod's traffic to the
    /// sidecar (run once, as root / CAP_NET_ADMIN, before the app starts).
    InitIptables(IptablesArgs),
    /// Run the cluster's east-west gateway: HTTP/3 (QUIC) tunnels to the
    /// gateways of linked clusters with an HTTP/2-over-TLS fallback, and a
    /// local entry for this cluster's workloads. Takes a sidecar's flags
    /// (identity, services from --config or --control-plane, admin) and
    /// --eastwest-config for listeners and peers.
    Eastwest(Box<EastWestArgs>),
}

#[derive(clap::Args, Debug)]
struct EastWestArgs {
    /// Listeners, admitted peers and peer gateways (YAML).
    #[arg(long)]
    eastwest_config: PathBuf,
    #[command(flatten)]
    sidecar: SidecarArgs,
}

#[derive(clap::Args, Debug)]
struct SidecarArgs {
    /// Proxy configuration (YAML, the api/ model); reloaded on change.
    /// With --control-plane: the bootstrap (node and listeners only).
    #[arg(
        long,
        env = "ISTHMUS_CONFIG",
        required_unless_present = "control_plane"
    )]
    config: Option<PathBuf>,
    /// Get services from the control plane's discovery (host:port).
    #[arg(long, env = "ISTHMUS_CONTROL_PLANE")]
    control_plane: Option<String>,
    #[command(flatten)]
    node: NodeArgs,
    /// Admin address: /metrics, /healthz, /readyz, /config_dump.
    #[arg(long, default_value = "127.0.0.1:15020", env = "ISTHMUS_ADMIN")]
    admin: SocketAddr,
    /// Credential for the CA (a bootstrap token from `isthmus-federation
    /// token`, or a ServiceAccount token): enables the workload identity and
    /// the mesh mTLS transport.
    #[arg(long, env = "ISTHMUS_CA_TOKEN", hide_env_values = true, value_parser = secret)]
    ca_token: Option<SecretString>,
    /// The same, read from a file (a projected ServiceAccount token).
    #[arg(long, env = "ISTHMUS_CA_TOKEN_FILE", conflicts_with = "ca_token")]
    ca_token_file: Option<PathBuf>,
    /// The CA's address; the control plane's by default.
    #[arg(long, env = "ISTHMUS_CA_ADDRESS")]
    ca: Option<String>,
    /// The control plane's CA root (PEM): the discovery and CA connections
    /// use TLS, verifying the control plane against it. Without it they
    /// are plaintext (development only).
    #[arg(long, env = "ISTHMUS_CA_ROOTS")]
    ca_roots: Option<PathBuf>,
    /// The control plane's SPIFFE ID; by default
    /// spiffe://<the roots' trust domain>/ns/isthmus-system/sa/isthmus-federation.
    #[arg(long, env = "ISTHMUS_CONTROL_PLANE_ID")]
    control_plane_id: Option<String>,
    /// The workload certificate from files (PEM, leaf first) written by
    /// something outside the mesh (a SPIRE agent, cert-manager): used
    /// instead of the CA, re-read when they change. Needs --key-file and
    /// --ca-roots (the trust roots).
    #[arg(long, requires_all = ["key_file", "ca_roots"], conflicts_with_all = ["ca_token", "ca_token_file"])]
    cert_file: Option<PathBuf>,
    #[arg(long, requires = "cert_file")]
    key_file: Option<PathBuf>,
    /// Lifetime asked for the workload certificate (renewed at half).
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    cert_ttl: Duration,
    /// Port of the mesh transport listener (mTLS HTTP/2 CONNECT) when the
    /// listeners are the pod defaults.
    #[arg(long, default_value_t = 15008)]
    tunnel_port: u16,
    /// Access log: "stdout", "off" or a file path.
    #[arg(long, default_value = "stdout", env = "ISTHMUS_ACCESS_LOG")]
    access_log: String,
    /// Send spans (one per request through this proxy) to this OTLP/gRPC
    /// collector, e.g. http://otel-collector.observability:4317.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    /// Percent of new traces sampled (a request without `traceparent`); a
    /// caller's decision is always kept. Istio's default: 1.
    #[arg(long, default_value_t = 1.0, value_parser = parse_percent, env = "ISTHMUS_TRACE_SAMPLING")]
    trace_sampling: f64,
    /// On SIGTERM, how long in-flight requests get to finish.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    drain_timeout: Duration,
    /// How often the config file is checked for changes.
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    reload_interval: Duration,
    /// SO_MARK set on the proxy's upstream sockets, so capture rules made
    /// with `init-iptables --proxy-mark` skip them.
    #[arg(long, env = "ISTHMUS_SOCKET_MARK")]
    mark: Option<u32>,
    /// A connection to an upstream inside the cluster whose sent data goes
    /// unacknowledged this long is given up (a silent peer: packets
    /// dropped, nothing resets); its requests are retried as after a
    /// reset. `0s` leaves the kernel's (~15 minutes). Not applied to
    /// passthrough destinations outside the mesh.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    tcp_user_timeout: Duration,
    /// Do not follow this cluster's east-west gateway's verdicts on linked
    /// clusters (a cluster whose gateway is gone is then chosen until its
    /// requests fail): the baseline of the failover benchmarks.
    #[arg(long)]
    no_peer_liveness: bool,
    /// The app's probes, served on the admin port at
    /// /app-health/<container>/<probe> (JSON object of "container/probe":
    /// "PORT=tcp|http:/PATH|grpc[:SERVICE]"; the injector writes it and
    /// points the pod's probes there).
    #[arg(long, env = "ISTHMUS_APP_PROBES")]
    app_probes: Option<String>,
    /// Serve DNS here (UDP and TCP; 127.0.0.1:15053 in a pod, where
    /// `init-iptables --dns-port` sends the pod's queries): the mesh's
    /// names, clusterset ones included, are answered from their virtual
    /// IPs; the rest is forwarded to --dns-resolv-conf's servers.
    #[arg(long, env = "ISTHMUS_DNS")]
    dns: Option<SocketAddr>,
    /// The resolvers the DNS proxy forwards to, and the search list.
    #[arg(
        long,
        default_value = "/etc/resolv.conf",
        env = "ISTHMUS_DNS_RESOLV_CONF"
    )]
    dns_resolv_conf: PathBuf,
    /// Forward to these resolvers (IP:PORT, comma separated) instead of
    /// --dns-resolv-conf's nameservers.
    #[arg(long, value_delimiter = ',')]
    dns_upstream: Vec<SocketAddr>,
    /// Worker threads; default: the CPUs this process may use. With 1 the
    /// proxy runs on a single-threaded runtime (no cross-thread wakeups),
    /// the usual choice for a sidecar limited to one core.
    #[arg(long, env = "ISTHMUS_WORKER_THREADS")]
    worker_threads: Option<usize>,
}

/// Who the proxy runs for (with --control-plane). In a pod these come from
/// the downward API; flags win over the bootstrap file's `node`.
#[derive(clap::Args, Debug)]
struct NodeArgs {
    #[arg(long, env = "POD_NAME")]
    name: Option<String>,
    #[arg(long, env = "POD_NAMESPACE")]
    namespace: Option<String>,
    #[arg(long, env = "SERVICE_ACCOUNT")]
    service_account: Option<String>,
    #[arg(long, env = "ISTHMUS_CLUSTER")]
    cluster: Option<String>,
    #[arg(long, env = "ISTHMUS_REGION")]
    region: Option<String>,
    #[arg(long, env = "ISTHMUS_ZONE")]
    zone: Option<String>,
    /// Workload labels, key=value (repeat or comma separate).
    #[arg(long = "label", value_delimiter = ',', env = "ISTHMUS_LABELS")]
    labels: Vec<String>,
    /// Services outside its namespace the workload calls (name.namespace,
    /// comma separated): the `isthmus.dev/calls` label.
    #[arg(long, value_delimiter = ',')]
    calls: Vec<String>,
    /// Register the workload as an endpoint at this address (`files` mode
    /// control planes, which have no Pods).
    #[arg(long, env = "INSTANCE_IP")]
    workload_address: Option<std::net::IpAddr>,
    /// The workload's ports, [name=]port (repeat or comma separate).
    #[arg(long = "workload-port", value_delimiter = ',')]
    workload_ports: Vec<String>,
    /// How a registered port's app is checked: PORT[=tcp|http:/PATH|grpc[:SERVICE]]
    /// (repeat or comma separate); other registered ports get a TCP check.
    /// The control plane takes a failing port's workload out of the
    /// Services that reach it.
    #[arg(long = "health-check", value_delimiter = ',')]
    health_checks: Vec<String>,
    /// How often each port is checked.
    #[arg(long, default_value = "250ms", value_parser = parse_duration)]
    health_interval: Duration,
    /// How long a check may take.
    #[arg(long, default_value = "200ms", value_parser = parse_duration)]
    health_timeout: Duration,
    /// Failures in a row that make a port unhealthy.
    #[arg(long, default_value_t = 3)]
    health_failures: u32,
    /// Successes in a row that make it healthy again.
    #[arg(long, default_value_t = 1)]
    health_successes: u32,
    /// Do not check the app (its endpoints stay healthy while registered).
    #[arg(long)]
    no_health_checks: bool,
}

impl NodeArgs {
    fn flags(&self) -> NodeFlags {
        NodeFlags {
            name: self.name.clone(),
            namespace: self.namespace.clone(),
            service_account: self.service_account.clone(),
            cluster: self.cluster.clone(),
            region: self.region.clone(),
            zone: self.zone.clone(),
            labels: self.labels.clone(),
            calls: self.calls.clone(),
            workload_address: self.workload_address,
            workload_ports: self.workload_ports.clone(),
            health: HealthFlags {
                checks: self.health_checks.clone(),
                settings: isthmus_gateway::health::Settings {
                    interval: self.health_interval,
                    timeout: self.health_timeout,
                    unhealthy_after: self.health_failures,
                    healthy_after: self.health_successes,
                },
                off: self.no_health_checks,
            },
        }
    }
}

impl SidecarArgs {
    fn settings(&self, eastwest: Option<EastWestConfig>) -> Settings {
        Settings {
            config: self.config.clone(),
            control_plane: self.control_plane.clone(),
            node: self.node.flags(),
            admin: self.admin,
            ca_token: self.ca_token.clone(),
            ca_token_file: self.ca_token_file.clone(),
            ca: self.ca.clone(),
            ca_roots: self.ca_roots.clone(),
            control_plane_id: self.control_plane_id.clone(),
            cert_file: self.cert_file.clone(),
            key_file: self.key_file.clone(),
            cert_ttl: self.cert_ttl,
            tunnel_port: self.tunnel_port,
            access_log: self.access_log.clone(),
            otlp_endpoint: self.otlp_endpoint.clone(),
            trace_sampling: self.trace_sampling / 100.0,
            drain_timeout: self.drain_timeout,
            reload_interval: self.reload_interval,
            mark: self.mark,
            tcp_user_timeout: (!self.tcp_user_timeout.is_zero()).then_some(self.tcp_user_timeout),
            peer_liveness: !self.no_peer_liveness,
            app_probes: self.app_probes.clone(),
            eastwest,
            dns: self.dns.map(|address| isthmus_gateway::dns::DnsSettings {
                address,
                resolv_conf: self.dns_resolv_conf.clone(),
                upstream: (!self.dns_upstream.is_empty()).then(|| self.dns_upstream.clone()),
                mark: self.mark,
            }),
        }
    }
}

#[derive(clap::Args, Debug)]
struct IptablesArgs {
    #[arg(long, default_value_t = 15001)]
    outbound_port: u16,
    #[arg(long, default_value_t = 15006)]
    inbound_port: u16,
    /// The proxy's uid, exempt from capture (Istio uses 1337).
    #[arg(long)]
    proxy_uid: Option<u32>,
    /// The proxy's SO_MARK, exempt from capture (see `sidecar --mark`).
    #[arg(long)]
    proxy_mark: Option<u32>,
    /// Only these inbound ports are captured (comma separated).
    #[arg(long, value_delimiter = ',')]
    include_inbound_ports: Vec<u16>,
    #[arg(long, value_delimiter = ',', default_value = "15008,15020,15021")]
    exclude_inbound_ports: Vec<u16>,
    /// Only these outbound destination CIDRs are captured.
    #[arg(long, value_delimiter = ',')]
    include_outbound_cidrs: Vec<String>,
    #[arg(long, value_delimiter = ',')]
    exclude_outbound_cidrs: Vec<String>,
    #[arg(long, value_delimiter = ',')]
    exclude_outbound_ports: Vec<u16>,
    /// Send the pod's DNS queries (UDP and TCP 53) to the sidecar's DNS
    /// proxy on this port (`sidecar --dns 127.0.0.1:PORT`); the proxy's
    /// own queries are exempt by --proxy-uid / --proxy-mark.
    #[arg(long)]
    dns_port: Option<u16>,
    /// Print the rules instead of installing them.
    #[arg(long)]
    dry_run: bool,
}

/// "250ms", "5s", "2m" or a number of seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, mult) = if let Some(v) = s.strip_suffix("ms") {
        (v, 0.001)
    } else if let Some(v) = s.strip_suffix('s') {
        (v, 1.0)
    } else if let Some(v) = s.strip_suffix('m') {
        (v, 60.0)
    } else if let Some(v) = s.strip_suffix('h') {
        (v, 3600.0)
    } else {
        (s, 1.0)
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 500ms, 5s, 2m or 24h"))?;
    if !(n >= 0.0 && n.is_finite()) {
        return Err(format!("{s:?} must be a non-negative duration"));
    }
    Duration::try_from_secs_f64(n * mult).map_err(|_| format!("{s:?} is too long a duration"))
}

/// A percentage, 0 to 100.
fn parse_percent(s: &str) -> Result<f64, String> {
    match s.trim_end_matches('%').parse::<f64>() {
        Ok(p) if (0.0..=100.0).contains(&p) => Ok(p),
        _ => Err(format!("{s:?} is not a percentage from 0 to 100")),
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ISTHMUS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr);
    if cli.log_format == "json" {
        logs.json().flatten_event(true).init();
    } else {
        logs.init();
    }
    heap::tune();
    match cli.command {
        Command::InitIptables(a) => {
            let s = CaptureSettings {
                outbound_port: a.outbound_port,
                inbound_port: a.inbound_port,
                proxy_uid: if a.proxy_uid.is_none() && a.proxy_mark.is_none() {
                    Some(1337)
                } else {
                    a.proxy_uid
                },
                proxy_mark: a.proxy_mark,
                include_inbound_ports: a.include_inbound_ports,
                exclude_inbound_ports: a.exclude_inbound_ports,
                include_outbound_cidrs: a.include_outbound_cidrs,
                exclude_outbound_cidrs: a.exclude_outbound_cidrs,
                exclude_outbound_ports: a.exclude_outbound_ports,
                dns_port: a.dns_port,
            };
            if a.dry_run {
                print!("{}", iptables::rules(&s)?);
            } else {
                iptables::apply(&s)?;
                eprintln!(
                    "capture rules installed (outbound -> {}, inbound -> {})",
                    s.outbound_port, s.inbound_port
                );
            }
            Ok(())
        }
        Command::Sidecar(a) => {
            heap::trim_in_background();
            run_sidecar(&runtime(a.worker_threads)?, *a, None)
        }
        Command::Eastwest(a) => {
            heap::trim_in_background();
            let mut ew = EastWestConfig::load(&a.eastwest_config)?;
            // The file may leave the cluster's name to --cluster
            // (ISTHMUS_CLUSTER): one config for every cluster.
            if ew.cluster.is_none() {
                ew.cluster = a.sidecar.node.cluster.clone();
            }
            run_sidecar(&runtime(a.sidecar.worker_threads)?, a.sidecar, Some(ew))
        }
    }
}

/// The runtime for `--worker-threads`: 1 is a current-thread runtime (no
/// cross-thread wakeups), N a multi-thread one with N workers, none the
/// CPUs this process may use.
fn runtime(workers: Option<usize>) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut b = match workers {
        Some(0) => anyhow::bail!("--worker-threads must be at least 1"),
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    Ok(b.enable_all().build()?)
}

fn run_sidecar(
    runtime: &tokio::runtime::Runtime,
    a: SidecarArgs,
    eastwest: Option<EastWestConfig>,
) -> anyhow::Result<()> {
    tracing::info!(?a, "starting sidecar");
    serve(runtime, a.settings(eastwest), &|running| {
        // Where it listens, on stderr before it serves (tests and scripts
        // read these lines).
        for (name, addr) in running.sidecar.listeners.bound() {
            eprintln!("listener {name} on {addr}");
        }
        if let Some(d) = &running.dns {
            eprintln!("dns on udp {} and tcp {}", d.udp, d.tcp);
        }
        if let Some(ew) = &running.eastwest {
            eprintln!(
                "east-west: QUIC on udp {}, fallback on tcp {}, local entry on {}",
                ew.quic, ew.tcp, ew.local
            );
        }
        eprintln!(
            "admin on http://{}/ (metrics, healthz, readyz, config_dump)",
            running.sidecar.admin_addr()
        );
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn durations_parse_or_say_why() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("soon").unwrap_err().contains("500ms"));
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("1e300s").is_err());
    }
}

#[cfg(test)]
mod cli_tests {
    use super::*;
    use isthmus_gateway::launch::default_listeners;
    use secrecy::ExposeSecret;

    fn sidecar_args(args: &[&str]) -> SidecarArgs {
        let mut all = vec!["isthmus-gateway", "sidecar"];
        all.extend_from_slice(args);
        match Cli::try_parse_from(all).expect("parses").command {
            Command::Sidecar(a) => *a,
            _ => unreachable!(),
        }
    }

    #[test]
    fn secrets_stay_out_of_the_logged_arguments() {
        let a = sidecar_args(&["--config=x.yaml", "--ca-token=s3cr3t-bootstrap-token"]);
        let logged = format!("{a:?}");
        assert!(!logged.contains("s3cr3t"), "{logged}");
        assert_eq!(
            a.ca_token.as_ref().map(|t| t.expose_secret()),
            Some("s3cr3t-bootstrap-token")
        );
    }

    #[test]
    fn worker_threads_choose_the_runtime() {
        use tokio::runtime::RuntimeFlavor;
        let flavor = |w| runtime(w).unwrap().handle().runtime_flavor();
        assert_eq!(flavor(Some(1)), RuntimeFlavor::CurrentThread);
        assert_eq!(flavor(Some(2)), RuntimeFlavor::MultiThread);
        assert_eq!(flavor(None), RuntimeFlavor::MultiThread);
        assert_eq!(
            runtime(Some(3)).unwrap().metrics().num_workers(),
            3,
            "as many workers as asked"
        );
        assert!(runtime(Some(0)).is_err());
        let a = sidecar_args(&["--config=x.yaml", "--worker-threads=1"]);
        assert_eq!(a.worker_threads, Some(1));
    }

    #[test]
    fn control_plane_mode_needs_an_identity_and_registers_the_workload() {
        assert!(
            Cli::try_parse_from(["isthmus-gateway", "sidecar"]).is_err(),
            "--config or --control-plane"
        );
        let a = sidecar_args(&["--control-plane", "cp:15010"]);
        let e = a
            .node
            .flags()
            .resolve(Default::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("--name and --namespace"), "{e}");

        let a = sidecar_args(&[
            "--control-plane=cp:15010",
            "--name=catalog-0",
            "--namespace=shop",
            "--region=eu-west",
            "--label=app=catalog,version=v1",
            "--calls=ratings.backend,stars.backend",
            "--workload-address=10.1.0.7",
            "--workload-port=http=8080,9090",
        ]);
        let (node, w) = a.node.flags().resolve(Default::default()).unwrap();
        assert_eq!(
            (node.name.as_str(), node.namespace.as_str()),
            ("catalog-0", "shop")
        );
        assert_eq!(node.locality.unwrap().region, "eu-west");
        assert_eq!(node.labels["version"], "v1");
        assert_eq!(
            node.labels["isthmus.dev/calls"],
            "ratings.backend,stars.backend"
        );
        let w = w.expect("registers");
        assert_eq!(w.address, "10.1.0.7");
        let ports: Vec<(&str, u32)> = w.ports.iter().map(|p| (p.name.as_str(), p.port)).collect();
        assert_eq!(ports, [("http", 8080), ("", 9090)]);
        let listeners = default_listeners(Some(&w), None);
        assert_eq!(listeners.len(), 2, "transparent outbound and inbound");
        assert_eq!(listeners[1].address, "0.0.0.0:15006");
        let listeners = default_listeners(Some(&w), Some(15008));
        let names: Vec<&str> = listeners.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["outbound", "tunnel", "inbound"]);
        assert_eq!(listeners[1].address, "0.0.0.0:15008");

        // Health at the source: every registered port is checked, by TCP
        // unless --health-check says how, at the tightened defaults.
        let app: std::net::IpAddr = "127.0.0.1".parse().unwrap();
        let plan = a.node.flags().health_plan(Some(&w), app).unwrap().unwrap();
        let checks: Vec<(u16, isthmus_gateway::health::Probe)> = plan
            .checks
            .iter()
            .map(|c| (c.port, c.probe.clone()))
            .collect();
        use isthmus_gateway::health::Probe;
        assert_eq!(checks, [(8080, Probe::Tcp), (9090, Probe::Tcp)]);
        assert_eq!(plan.settings, isthmus_gateway::health::Settings::default());
        let with = |extra: &[&str]| {
            let mut args = vec![
                "--control-plane=cp:15010",
                "--name=x",
                "--namespace=shop",
                "--workload-address=10.1.0.7",
                "--workload-port=http=8080,9090",
            ];
            args.extend_from_slice(extra);
            let f = sidecar_args(&args).node.flags();
            let (_, w) = f.resolve(Default::default()).unwrap();
            f.health_plan(w.as_ref(), app)
        };
        let plan = with(&[
            "--health-check=9090=grpc,8080=http:/ready",
            "--health-interval=1s",
            "--health-timeout=500ms",
            "--health-failures=2",
        ])
        .unwrap()
        .unwrap();
        let checks: Vec<(u16, Probe)> = plan
            .checks
            .iter()
            .map(|c| (c.port, c.probe.clone()))
            .collect();
        assert_eq!(
            checks,
            [
                (
                    9090,
                    Probe::Grpc {
                        service: String::new()
                    }
                ),
                (
                    8080,
                    Probe::Http {
                        path: "/ready".into()
                    }
                )
            ]
        );
        assert_eq!(plan.settings.interval, Duration::from_secs(1));
        assert_eq!(plan.settings.unhealthy_after, 2);
        assert!(with(&["--no-health-checks"]).unwrap().is_none());
        for (bad, says) in [
            (
                &["--health-check=7777"][..],
                "not one of the --workload-port",
            ),
            (&["--health-check=8080=ftp"][..], "PORT[=tcp"),
            (&["--health-timeout=2s"][..], "longer than the interval"),
            (&["--health-failures=0"][..], "thresholds start at 1"),
        ] {
            let e = with(bad).unwrap_err().to_string();
            assert!(e.contains(says), "{bad:?}: {e}");
        }

        let a = sidecar_args(&[
            "--control-plane=cp:15010",
            "--name=x",
            "--namespace=shop",
            "--workload-port=8080",
        ]);
        let e = a
            .node
            .flags()
            .resolve(Default::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("--workload-address"), "{e}");
        let a = sidecar_args(&[
            "--control-plane=cp:15010",
            "--name=x",
            "--namespace=shop",
            "--label=novalue",
        ]);
        assert!(a.node.flags().resolve(Default::default()).is_err());
    }
}
