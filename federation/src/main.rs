//! `isthmus-federation`: the Isthmus control plane.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(name = "isthmus-federation", version, about = "Isthmus control plane")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log lines as `text` (for people) or `json` (one object per line:
    /// timestamp, level, target, message and fields, for log pipelines).
    /// The lines saying where each port is bound stay plain text.
    #[arg(long, global = true, env = "ISTHMUS_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the control plane on a `files` store directory: watches it,
    /// translates every change, streams it to proxies (discovery), serves
    /// /config_dump, /proxy_config, /healthz, /readyz.
    Run(Box<RunArgs>),
    /// Prints a bootstrap token proving a workload identity to the CA of
    /// the control plane on this store directory (`files` mode).
    Token {
        #[arg(long)]
        store_dir: PathBuf,
        #[arg(long)]
        namespace: String,
        #[arg(long)]
        service_account: String,
        #[arg(long, default_value = "24h", value_parser = isthmus_federation::resources::duration::parse_arg)]
        ttl: Duration,
        /// Default: the Mesh's, else cluster.local.
        #[arg(long)]
        trust_domain: Option<String>,
    },
    /// Writes the isthmus.dev CRDs (YAML, from the Rust types) into a directory.
    Crdgen {
        /// Target directory.
        #[arg(long, default_value = "crds")]
        out: PathBuf,
        /// Only compare; exit 1 if the directory is out of date.
        #[arg(long)]
        check: bool,
    },
}

#[derive(Args)]
struct RunArgs {
    /// Directory of Kubernetes YAML (the files store).
    #[arg(long, required_unless_present = "kube", conflicts_with = "kube")]
    store_dir: Option<PathBuf>,
    /// Read the cluster through the Kubernetes API (in-cluster config or
    /// KUBECONFIG) instead of a directory; write status as the leader.
    #[arg(long)]
    kube: bool,
    /// Namespace of the leader-election Lease (`kube` mode).
    #[arg(long, env = "POD_NAMESPACE", default_value = "isthmus-system")]
    lease_namespace: String,
    #[arg(long, default_value = "isthmus-federation")]
    lease_name: String,
    /// Discovery (gRPC) address proxies subscribe to.
    #[arg(long, default_value = "127.0.0.1:15010")]
    discovery: SocketAddr,
    #[arg(long, default_value = "127.0.0.1:15020")]
    admin: SocketAddr,
    /// How long a registered workload outlives its dropped stream.
    #[arg(long, default_value = "30s", value_parser = isthmus_federation::resources::duration::parse_arg)]
    registration_grace: Duration,
    /// After a start, how long proxies get to come back and register
    /// before anything is pushed to them or to linked clusters (until
    /// then they keep what they had): a restarted control plane would
    /// otherwise withdraw every endpoint it has not heard from yet.
    #[arg(long, default_value = "3s", value_parser = isthmus_federation::resources::duration::parse_arg)]
    warm_up: Duration,
    /// The trust domain of the CA (`files` mode; default: the Mesh's,
    /// else cluster.local).
    #[arg(long)]
    trust_domain: Option<String>,
    /// This replica's name, sent to proxies (default: from the pid).
    #[arg(long, env = "POD_NAME")]
    replica: Option<String>,
    /// How often the directory is looked at.
    #[arg(long, default_value = "200ms", value_parser = isthmus_federation::resources::duration::parse_arg)]
    poll: Duration,
    /// Serve discovery and the CA without TLS (development only).
    #[arg(long)]
    insecure_plaintext: bool,
    /// A plugged-in CA (PEM): the operator's root, or an intermediate
    /// with --ca-root-bundle; instead of the generated root.
    #[arg(long, requires = "ca_key")]
    ca_cert: Option<PathBuf>,
    #[arg(long, requires = "ca_cert")]
    ca_key: Option<PathBuf>,
    /// The roots an intermediate --ca-cert chains to (sent to proxies
    /// as the trust bundle).
    #[arg(long, requires = "ca_cert")]
    ca_root_bundle: Option<PathBuf>,
    /// Quiet time after a change before it is applied.
    #[arg(long, default_value = "100ms", value_parser = isthmus_federation::resources::duration::parse_arg)]
    debounce: Duration,
    /// Federation port: linked clusters' control planes subscribe here
    /// to our exports, through our east-west gateway (e.g.
    /// 127.0.0.1:15012). Off when not given.
    #[arg(long)]
    federation: Option<SocketAddr>,
    /// The address our gateway dials for the federation port (default:
    /// the --federation address, when it is not a wildcard).
    #[arg(long)]
    federation_advertise: Option<SocketAddr>,
    /// This cluster's east-west gateway entry (its 15009): sidecars
    /// reach imported services through it, and so do our links. An
    /// address, or HOST:PORT resolved at start (in a cluster, the entry's
    /// ClusterIP Service: `isthmus-eastwest-local.isthmus-system.svc:15009`).
    #[arg(long)]
    gateway_entry: Option<String>,
    /// Serve the sidecar injection webhook here over TLS (`kube` mode;
    /// e.g. 0.0.0.0:15017); the leader writes the CA's root into the
    /// caBundle of the MutatingWebhookConfiguration isthmus-injector.
    #[arg(long, requires = "kube")]
    injector: Option<SocketAddr>,
    /// The image of injected sidecars (isthmus-gateway).
    #[arg(long, default_value = "ghcr.io/isthmus-mesh/isthmus-gateway:latest")]
    proxy_image: String,
    #[arg(long, default_value = "IfNotPresent")]
    proxy_pull_policy: String,
    /// Where ClusterSet IPs (the virtual IPs of imported services) come
    /// from.
    #[arg(long, default_value = "240.240.0.0/16", value_parser = parse_range)]
    clusterset_ip_range: isthmus_federation::translate::vips::Range,
    /// A range never handed out as a ClusterSet IP (the cluster's Service
    /// and Pod CIDRs where they overlap the range); repeatable. Local
    /// Services' ClusterIPs are never handed out either.
    #[arg(long, value_parser = parse_range)]
    reserved_range: Vec<isthmus_federation::translate::vips::Range>,
    /// Where injected sidecars reach discovery and the CA (default:
    /// isthmus-federation.<namespace>.svc:<the --discovery port>).
    #[arg(long)]
    proxy_control_plane: Option<String>,
}

fn parse_range(s: &str) -> Result<isthmus_federation::translate::vips::Range, String> {
    isthmus_federation::translate::vips::Range::parse(s).map_err(|e| e.to_string())
}

/// How long `--gateway-entry HOST:PORT` may take to resolve at start (a
/// Service just created is in DNS within seconds).
const ENTRY_RESOLVE_FOR: Duration = Duration::from_secs(60);

/// `--gateway-entry`: an address as given, or a name resolved (the first
/// address), retried for `ENTRY_RESOLVE_FOR` while the name is unknown.
async fn resolve_entry(entry: &str) -> anyhow::Result<SocketAddr> {
    if let Ok(addr) = entry.parse() {
        return Ok(addr);
    }
    if entry
        .rsplit_once(':')
        .is_none_or(|(_, p)| p.parse::<u16>().is_err())
    {
        anyhow::bail!(
            "--gateway-entry {entry}: give HOST:PORT or IP:PORT (e.g. isthmus-eastwest-local.isthmus-system.svc:15009)"
        );
    }
    let deadline = tokio::time::Instant::now() + ENTRY_RESOLVE_FOR;
    loop {
        let error = match tokio::net::lookup_host(entry).await {
            Ok(mut addrs) => match addrs.next() {
                Some(addr) => {
                    tracing::info!(%entry, %addr, "gateway entry resolved");
                    return Ok(addr);
                }
                None => "no address".to_string(),
            },
            Err(e) => e.to_string(),
        };
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!(
                "--gateway-entry {entry} did not resolve in {}s ({error}): is the east-west gateway's local Service installed (isthmusctl install)?",
                ENTRY_RESOLVE_FOR.as_secs()
            );
        }
        tracing::warn!(%entry, "gateway entry does not resolve yet ({error}); retrying");
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
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
    match cli.command {
        Command::Run(args) => {
            // Before anything says where it listens: a SIGTERM or SIGINT
            // right after is a clean shutdown, not the default action.
            use tokio::signal::unix::{SignalKind, signal};
            let (mut term, mut int) = (
                signal(SignalKind::terminate())?,
                signal(SignalKind::interrupt())?,
            );
            let RunArgs {
                store_dir,
                kube,
                lease_namespace,
                lease_name,
                trust_domain,
                discovery,
                admin,
                registration_grace,
                warm_up,
                replica,
                poll,
                debounce,
                insecure_plaintext,
                ca_cert,
                ca_key,
                ca_root_bundle,
                federation,
                federation_advertise,
                gateway_entry,
                injector,
                proxy_image,
                proxy_pull_policy,
                proxy_control_plane,
                clusterset_ip_range,
                reserved_range,
            } = *args;
            if let Some(dir) = store_dir.as_ref().filter(|d| !d.is_dir()) {
                anyhow::bail!(
                    "store directory {} does not exist: create it or pass --store-dir",
                    dir.display()
                );
            }
            let listener = tokio::net::TcpListener::bind(admin)
                .await
                .map_err(|e| anyhow::anyhow!("cannot listen on {admin} for admin: {e}"))?;
            let discovery_listener = isthmus_federation::server::bind(discovery)
                .map_err(|e| anyhow::anyhow!("cannot listen on {discovery} for discovery: {e}"))?;
            let source = match &store_dir {
                Some(d) => d.display().to_string(),
                None => "kubernetes".into(),
            };
            // Where each port is bound (port 0 is a port the kernel picks):
            // one plain line each, for people and for tests.
            let bound = |what: &str, l: &tokio::net::TcpListener| -> anyhow::Result<SocketAddr> {
                let at = l.local_addr()?;
                eprintln!("{what} on {at}");
                Ok(at)
            };
            let admin = bound("admin", &listener)?;
            let discovery = bound("discovery", &discovery_listener)?;
            tracing::info!(%admin, %discovery, store = %source, "control plane starting");
            let federation_listener =
                match federation {
                    Some(addr) => Some(tokio::net::TcpListener::bind(addr).await.map_err(|e| {
                        anyhow::anyhow!("cannot listen on {addr} for federation: {e}")
                    })?),
                    None => None,
                };
            if let Some(l) = &federation_listener {
                bound("federation", l)?;
            }
            let gateway_entry = match gateway_entry {
                Some(entry) => Some(resolve_entry(&entry).await?),
                None => None,
            };
            let mut opts =
                isthmus_federation::server::Options::new(store_dir.clone().unwrap_or_default());
            opts.namespace = lease_namespace.clone();
            opts.gateway_entry = gateway_entry;
            opts.federation_address = match (&federation_listener, federation_advertise) {
                (_, Some(a)) => Some(a),
                (Some(l), None) => {
                    let a = l.local_addr()?;
                    if a.ip().is_unspecified() && kube {
                        // The Service isthmus-federation (port 15012) is
                        // where the gateway sends peers' channels.
                        None
                    } else if a.ip().is_unspecified() {
                        tracing::warn!(%a, "--federation listens on a wildcard address: give --federation-advertise so the gateway can reach it");
                        None
                    } else {
                        Some(a)
                    }
                }
                (None, None) => None,
            };
            opts.poll = poll;
            opts.debounce = debounce;
            opts.registration_grace = registration_grace;
            opts.warm_up = warm_up;
            opts.injector = injector.is_some();
            opts.clusterset_ips.range = clusterset_ip_range;
            opts.clusterset_ips.reserved = reserved_range;
            if kube {
                // The ServiceImports keep them (the root file system is
                // read-only in a pod).
                opts.vip_state = None;
            }
            if let Some(r) = replica {
                opts.replica = r;
            }
            // One client for the store, the writers and the CA.
            let client = if kube {
                Some(::kube::Client::try_default().await.map_err(|e| {
                    anyhow::anyhow!(
                        "no Kubernetes API to talk to ({e}): run in a pod, or set KUBECONFIG"
                    )
                })?)
            } else {
                None
            };
            let cp = if let Some(client) = client.clone() {
                isthmus_federation::server::ControlPlane::start_kube(
                    client,
                    opts,
                    &lease_namespace,
                    &lease_name,
                )
                .await?
            } else {
                isthmus_federation::server::ControlPlane::start(opts)
            };
            cp.serve_admin(listener);
            let td = trust_domain.unwrap_or_else(|| {
                isthmus_federation::identity::mesh_trust_domain(
                    &cp.published.borrow().store.snapshot,
                )
                .unwrap_or_else(|| "cluster.local".into())
            });
            use isthmus_federation::identity::service::{AUDIENCE, Authenticator};
            let mut plugged = match (&ca_cert, &ca_key) {
                (Some(cert), Some(key)) => {
                    let read = |p: &PathBuf| {
                        std::fs::read_to_string(p)
                            .map_err(|e| anyhow::anyhow!("reading {}: {e}", p.display()))
                    };
                    let bundle = ca_root_bundle.as_ref().map(read).transpose()?;
                    tracing::info!(cert = %cert.display(), "plugged-in CA");
                    Some(isthmus_federation::identity::Ca::from_pem(
                        &td,
                        &read(cert)?,
                        &read(key)?,
                        bundle.as_deref(),
                        cert,
                    )?)
                }
                _ => None,
            };
            let (ca, auth) = match &store_dir {
                // files mode: the CA lives in the store directory, callers
                // prove themselves with bootstrap tokens.
                Some(dir) => {
                    let ca = match plugged.take() {
                        Some(ca) => ca,
                        None => isthmus_federation::identity::Ca::load_or_create(dir, &td)?,
                    };
                    let tokens =
                        isthmus_federation::identity::token::TokenKey::load_or_create(dir, &td)
                            .map_err(|e| {
                                anyhow::anyhow!("token key in {}/ca: {e}", dir.display())
                            })?;
                    (ca, Authenticator::Bootstrap(Box::new(tokens)))
                }
                // kube mode: the root in a Secret beside the Lease, callers
                // authenticated by their ServiceAccount tokens.
                None => {
                    let client = client.clone().expect("kube mode has a client");
                    let ca = match plugged.take() {
                        Some(ca) => ca,
                        None => {
                            isthmus_federation::identity::Ca::load_or_create_secret(
                                client.clone(),
                                &lease_namespace,
                                "isthmus-ca",
                                &td,
                            )
                            .await?
                        }
                    };
                    let auth = Authenticator::TokenReview {
                        client,
                        trust_domain: td.clone(),
                        audiences: vec![AUDIENCE.into()],
                    };
                    (ca, auth)
                }
            };
            let ca = std::sync::Arc::new(ca);
            if let Some(listener) = federation_listener {
                // Join tokens are checked with the same key that signs them:
                // a file in the store directory, or a Secret beside the Lease
                // (`isthmusctl link create --to-context` reads either).
                use isthmus_federation::identity::token::{SECRET_NAME, TokenKey};
                let tokens = match &store_dir {
                    Some(dir) => TokenKey::load_or_create(dir, &td)
                        .map_err(|e| anyhow::anyhow!("token key in {}/ca: {e}", dir.display()))?,
                    None => {
                        let client = client.clone().expect("kube mode has a client");
                        TokenKey::load_or_create_secret(client, &lease_namespace, SECRET_NAME, &td)
                            .await
                            .map_err(|e| {
                                anyhow::anyhow!(
                                    "join token key in Secret {lease_namespace}/{SECRET_NAME}: {e}"
                                )
                            })?
                    }
                };
                let tokens = std::sync::Arc::new(tokens);
                // kube mode: `isthmusctl link create --to-context` asks us
                // for join tokens through a Secret mailbox, and the
                // credentials peers issue us are kept in a Secret beside the
                // Lease (files mode: under the store directory, the default).
                let credentials = match (&store_dir, client.clone()) {
                    (None, Some(client)) => {
                        cp.serve_join_requests(client.clone(), tokens.clone());
                        Some(std::sync::Arc::new(
                            isthmus_federation::sync::credentials::CredentialStore::secret(
                                client,
                                &lease_namespace,
                            ),
                        ))
                    }
                    _ => None,
                };
                let tokens = Some(tokens);
                let at = listener.local_addr()?;
                let settings = isthmus_federation::sync::client::Settings {
                    entry: gateway_entry,
                    namespace: lease_namespace.clone(),
                    credentials,
                    ..Default::default()
                };
                let tls = cp.serve_federation(listener, ca.clone(), tokens, settings)?;
                tracing::info!(%at, identity = %tls.id, gateway_entry = ?gateway_entry, "federation served");
            }
            if let Some(addr) = injector {
                let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
                    anyhow::anyhow!("cannot listen on {addr} for the injector: {e}")
                })?;
                let addr = bound("injector", &listener)?;
                let service = format!("{}.{lease_namespace}", isthmus_federation::sync::SERVICE);
                let dns = vec![
                    service.clone(),
                    format!("{service}.svc"),
                    format!("{service}.svc.cluster.local"),
                ];
                let tls = std::sync::Arc::new(isthmus_federation::identity::tls::ServingTls::new(
                    ca.clone(),
                    &lease_namespace,
                    dns,
                )?);
                tls.spawn_renewal(cp.stop_token());
                let settings = isthmus_federation::inject::webhook::Settings {
                    image: proxy_image,
                    pull_policy: proxy_pull_policy,
                    control_plane: proxy_control_plane
                        .unwrap_or_else(|| format!("{service}.svc:{}", discovery.port())),
                };
                isthmus_federation::inject::webhook::serve(
                    listener,
                    tls,
                    cp.published.clone(),
                    settings,
                    cp.stop_token(),
                );
                tracing::info!(%addr, "sidecar injection webhook served");
            }
            if insecure_plaintext {
                tracing::warn!(trust_domain = %td, "discovery and CA served in PLAINTEXT (--insecure-plaintext): development only");
                cp.set_trust_bundles(vec![isthmus_api::model::TrustBundle {
                    trust_domain: td.clone(),
                    roots_pem: ca.bundle_pem().to_string(),
                    cluster: String::new(),
                }]);
                cp.serve_api(
                    discovery_listener,
                    Some(isthmus_federation::identity::service::CaService::new(
                        ca,
                        auth,
                        isthmus_federation::identity::service::DEFAULT_TTL,
                    )),
                    None,
                );
            } else {
                let tls = cp.serve_secure(discovery_listener, ca, auth, &lease_namespace)?;
                tracing::info!(trust_domain = %td, identity = %tls.id(), "discovery and CA served over TLS");
                if let Some(dir) = &store_dir {
                    eprintln!(
                        "sidecars verify this control plane with --ca-roots {}",
                        dir.join("ca").join("root-cert.pem").display()
                    );
                }
            }
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            tracing::info!("shutting down");
            cp.shutdown().await;
        }
        Command::Token {
            store_dir,
            namespace,
            service_account,
            ttl,
            trust_domain,
        } => {
            let td = match trust_domain {
                Some(td) => td,
                None => {
                    let (loaded, errors) = isthmus_federation::store::files::load_dir(&store_dir);
                    let (snap, _) = isthmus_federation::store::files::merge(
                        &Default::default(),
                        loaded,
                        errors,
                    );
                    isthmus_federation::identity::mesh_trust_domain(&snap)
                        .unwrap_or_else(|| "cluster.local".into())
                }
            };
            isthmus_federation::identity::SpiffeId::workload(&td, &namespace, &service_account)?;
            let key =
                isthmus_federation::identity::token::TokenKey::load_or_create(&store_dir, &td)?;
            println!(
                "{}",
                key.issue(
                    &namespace,
                    &service_account,
                    std::time::SystemTime::now(),
                    ttl
                )
            );
        }
        Command::Crdgen { out, check } => {
            if check {
                isthmus_federation::crdgen::check(&out)?;
                println!("{} is up to date", out.display());
            } else {
                for path in isthmus_federation::crdgen::write(&out)? {
                    println!("wrote {}", path.display());
                }
            }
        }
    }
    Ok(())
}
