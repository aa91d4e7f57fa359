//! `isthmusctl`: the operator's command line: `link create`, and `demo`
//! (three local clusters, linked, with traffic and scenarios).
#![forbid(unsafe_code)]

mod demo;
mod explain;
mod install_cmd;
mod status;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use isthmus_ctl::link::{Options, create};
use isthmus_federation::resources::link::{PartitionMode, PartitionPolicy};

fn current_thread() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

#[derive(Parser)]
#[command(name = "isthmusctl", version, about = "Isthmus operator commands")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Three local clusters (eu-west, eu-central, us-east) as real
    /// processes, linked, with the sample mesh, traffic and a live table.
    Demo(demo::Args),
    /// One routing decision end to end, from live state: the service the
    /// name resolves to, where it comes from (exporting clusters, their
    /// links), which route matched and why others did not, backends and
    /// weights, endpoints with locality priority, health, outlier state and
    /// in-flight requests, the destination's policies for this caller, and
    /// what would be chosen now.
    ///
    /// isthmusctl explain --admin 127.0.1.1:15030 --from shop/frontend \
    ///   http://reviews.shop.svc.clusterset.local/api -H 'x-canary: always'
    Explain {
        #[command(flatten)]
        at: AdminArgs,
        /// The calling workload, `<namespace>/<name>` (as proxy-status
        /// lists it).
        #[arg(long)]
        from: String,
        /// The request's URL, as the app would send it.
        url: String,
        /// A request header, `name: value` (repeat).
        #[arg(short = 'H', long = "header")]
        headers: Vec<String>,
        #[arg(short = 'X', long, default_value = "GET")]
        method: String,
        /// Output: text or json.
        #[arg(short, long, default_value = "text", value_parser = ["text", "json"])]
        output: String,
    },
    /// Every proxy of a control plane (its cluster): the generation it
    /// holds, and whether it is in sync, stale or refused a resource (with
    /// the proxy's message), as `istioctl proxy-status`.
    ProxyStatus {
        #[command(flatten)]
        at: AdminArgs,
        /// Print the statuses as JSON.
        #[arg(long)]
        json: bool,
    },
    /// A control plane's links: connected, transport, RTT, last sync,
    /// imported services, and why a link is not connected; the policies it
    /// shares with the cluster set and receives, each cluster's verdict.
    Status {
        /// The control plane's admin address (its --admin).
        #[arg(long, default_value = "127.0.0.1:15020")]
        admin: SocketAddr,
        /// Print the statuses as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Everything a cluster runs (control plane, east-west gateway, RBAC,
    /// Mesh), printed for `kubectl apply -f -` or applied with --context.
    /// CRDs first: `isthmusctl install --crds | kubectl apply -f -`.
    Install(Box<install_cmd::InstallArgs>),
    /// Whether clusters are ready for Isthmus (--pre) or run it well:
    /// each check with a fix; exit status 1 when one fails. Several
    /// --context values are checked together (their clocks compared).
    Check {
        /// kubeconfig contexts (repeat for linked clusters).
        #[arg(long, required = true)]
        context: Vec<String>,
        /// Before installing: version, permissions, CRDs, LoadBalancer.
        #[arg(long)]
        pre: bool,
        /// Output: table or json.
        #[arg(short, long, default_value = "table", value_parser = ["table", "json"])]
        output: String,
    },
    /// Removes what `install` made (`--crds`: the CRDs, and with them
    /// every object of those kinds).
    Uninstall(install_cmd::UninstallArgs),
    /// The demo's sample mesh for a Kubernetes cluster (namespace shop,
    /// labelled for injection; the apps of that cluster in the demo, each
    /// exported; a frontend proxy for traffic): `isthmusctl sample
    /// --cluster eu-west | kubectl apply -f -`. With --canary W, the
    /// canary scenario's HTTPRoute at weight W instead.
    Sample {
        /// eu-west, eu-central or us-east.
        #[arg(long)]
        cluster: String,
        #[command(flatten)]
        images: install_cmd::ImageArgs,
        #[arg(long)]
        canary: Option<u32>,
    },
    /// Writes deploy/ (kustomize bases) from what `install` renders
    /// (`--check`: fail if it is out of date).
    #[command(hide = true)]
    GenDeploy {
        /// The repository root.
        #[arg(long, default_value = ".")]
        root: PathBuf,
        #[arg(long)]
        check: bool,
    },
    /// Links between clusters.
    Link {
        #[command(subcommand)]
        command: LinkCommand,
    },
}

/// Where the admin ports are: a control plane's address, or a cluster
/// whose API server reaches them (pods/proxy).
#[derive(clap::Args)]
struct AdminArgs {
    /// The control plane's admin address (its --admin).
    #[arg(long, default_value = "127.0.0.1:15020", conflicts_with = "context")]
    admin: SocketAddr,
    /// In a cluster: this kubeconfig context; admin ports are reached
    /// through its API server (pods/proxy), every control plane replica.
    #[arg(long)]
    context: Option<String>,
    /// With --context: the control plane's namespace.
    #[arg(long, default_value = "isthmus-system")]
    namespace: String,
    /// With --context: the control plane's admin port.
    #[arg(long, default_value_t = 15020)]
    admin_port: u16,
}

impl AdminArgs {
    async fn reach(self) -> anyhow::Result<explain::Reach> {
        Ok(match self.context {
            Some(ctx) => explain::Reach::kube(
                install_cmd::client(&ctx).await?,
                &self.namespace,
                self.admin_port,
            ),
            None => explain::Reach::Direct {
                control_plane: self.admin,
            },
        })
    }
}

#[derive(clap::Args)]
struct CreateArgs {
    /// The linking cluster's `files` store directory.
    #[arg(
        long,
        required_unless_present = "from_context",
        conflicts_with = "from_context"
    )]
    from: Option<PathBuf>,
    /// The linked cluster's `files` store directory (its Mesh and CA).
    #[arg(
        long,
        required_unless_present = "to_context",
        conflicts_with = "to_context"
    )]
    to: Option<PathBuf>,
    /// The linking cluster's kubeconfig context (instead of --from).
    #[arg(long, requires = "to_context")]
    from_context: Option<String>,
    /// The linked cluster's kubeconfig context (instead of --to): its
    /// Mesh, CA root and join token key are read from its API server.
    #[arg(long, requires = "from_context")]
    to_context: Option<String>,
    /// The control planes' namespace (with contexts).
    #[arg(long, default_value = "isthmus-system")]
    namespace: String,
    /// TO's east-west gateway, QUIC (UDP): `ip:port` or `host:port`.
    /// With contexts, default: the address of TO's LoadBalancer
    /// Service isthmus-eastwest.
    #[arg(long)]
    gateway: Option<String>,
    /// TO's TCP fallback, when not on the same address.
    #[arg(long)]
    gateway_tcp: Option<String>,
    /// How long the join token is good for (1m to 24h).
    #[arg(long, default_value = "1h", value_parser = isthmus_federation::resources::duration::parse_arg)]
    ttl: Duration,
    /// When TO is unreachable: keep its imports until the TTL
    /// (fail-static) or drop them at once (fail-closed).
    #[arg(long, default_value = "fail-static", value_parser = ["fail-static", "fail-closed"])]
    partition: String,
    #[arg(long, default_value = "5m")]
    staleness_ttl: String,
    /// Write here (e.g. into FROM's store directory) instead of stdout.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Subcommand)]
enum LinkCommand {
    /// Writes the manifests that link cluster FROM with cluster TO (a
    /// ClusterLink and the Secret with TO's join token), to apply in FROM.
    Create(Box<CreateArgs>),
    /// The links of a cluster: peer, gateway, connected, transport, RTT,
    /// imports, and what is wrong.
    List {
        /// The cluster's kubeconfig context.
        #[arg(long)]
        context: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Unlinks a cluster from PEER: deletes its ClusterLink and the Secret
    /// with the join token (run it in both clusters to unlink both ways).
    Delete {
        /// The cluster's kubeconfig context.
        #[arg(long)]
        context: String,
        /// The linked cluster's name.
        peer: String,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Explain {
            at,
            from,
            url,
            headers,
            method,
            output,
        } => {
            let q = explain::Question {
                from,
                url,
                method,
                headers,
            };
            let e = current_thread()?
                .block_on(async { explain::explain(&at.reach().await?, &q).await })?;
            if output == "json" {
                println!("{}", serde_json::to_string_pretty(&e)?);
            } else {
                print!("{}", explain::render(&e));
            }
            Ok(())
        }
        Command::ProxyStatus { at, json } => {
            let v = current_thread()?.block_on(async { at.reach().await?.proxies(None).await })?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{}", status::render_proxies(&v));
            }
            Ok(())
        }
        Command::Status { admin, json } => {
            let within = std::time::Duration::from_secs(5);
            let (links, policies) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(async {
                    anyhow::Ok((
                        status::fetch(admin, within).await?,
                        status::fetch_policies(admin, within).await?,
                    ))
                })?;
            if json {
                let both = serde_json::json!({"links": links, "policies": policies});
                println!("{}", serde_json::to_string_pretty(&both)?);
            } else {
                print!(
                    "{}{}",
                    status::render(&admin.to_string(), &links, status::now()),
                    status::render_policies(&policies)
                );
            }
            Ok(())
        }
        Command::Demo(args) => {
            tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(
                    std::env::var("ISTHMUS_LOG").unwrap_or_else(|_| "warn".into()),
                ))
                .with_writer(std::io::stderr)
                .init();
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(demo::run(args))
        }
        Command::Install(a) => current_thread()?.block_on(install_cmd::install(*a)),
        Command::Uninstall(a) => current_thread()?.block_on(install_cmd::uninstall(a)),
        Command::Check {
            context,
            pre,
            output,
        } => {
            let checks = current_thread()?.block_on(async {
                use isthmus_ctl::check;
                let mut all = Vec::new();
                let mut facts = Vec::new();
                for ctx in &context {
                    let f = match install_cmd::client(ctx).await {
                        Ok(client) => check::gather::gather(&client, ctx, pre).await,
                        Err(e) => check::Facts {
                            context: ctx.clone(),
                            version: Some(Err(e.to_string())),
                            ..Default::default()
                        },
                    };
                    all.extend(if pre {
                        check::pre(&f)
                    } else {
                        check::installed(&f)
                    });
                    facts.push(f);
                }
                all.extend(check::across(&facts));
                anyhow::Ok(all)
            })?;
            if output == "json" {
                println!("{}", serde_json::to_string_pretty(&checks)?);
            } else {
                print!("{}", isthmus_ctl::check::table(&checks));
            }
            if isthmus_ctl::check::failed(&checks) {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::GenDeploy { root, check } => install_cmd::gen_deploy(&root, check),
        Command::Sample {
            cluster,
            images,
            canary,
        } => {
            if let Some(w) = canary {
                anyhow::ensure!(w <= 100, "--canary is a percentage (0 to 100)");
                print!("{}", demo::mesh::canary_route(w));
                return Ok(());
            }
            let c = demo::mesh::Cluster::by_name(&cluster).ok_or_else(|| {
                anyhow::anyhow!(
                    "--cluster {cluster}: the sample mesh has eu-west, eu-central and us-east"
                )
            })?;
            let mut o = isthmus_ctl::install::Options::new(c.name);
            images.apply(&mut o);
            print!(
                "{}",
                isthmus_ctl::install::to_yaml(&demo::kube::objects(&c, &o))?
            );
            Ok(())
        }
        Command::Link {
            command: LinkCommand::List { context, json },
        } => current_thread()?.block_on(async {
            let client = install_cmd::client(&context).await?;
            let rows = isthmus_ctl::link::list(&client, &context).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                print!("{}", isthmus_ctl::link::table(&rows));
            }
            Ok(())
        }),
        Command::Link {
            command: LinkCommand::Delete { context, peer },
        } => current_thread()?.block_on(async {
            let client = install_cmd::client(&context).await?;
            for d in isthmus_ctl::link::delete(&client, &context, &peer).await? {
                eprintln!("deleted {d}");
            }
            Ok(())
        }),
        Command::Link {
            command: LinkCommand::Create(args),
        } => {
            let CreateArgs {
                from,
                to,
                from_context,
                to_context,
                namespace,
                gateway,
                gateway_tcp,
                ttl,
                partition,
                staleness_ttl,
                out,
            } = *args;
            isthmus_federation::resources::duration::parse_arg(&staleness_ttl)
                .map_err(|e| anyhow::anyhow!("--staleness-ttl: {e}"))?;
            let options = Options {
                gateway,
                gateway_tcp,
                ttl,
                join_wait: Duration::from_secs(30),
                partition: PartitionPolicy {
                    mode: match partition.as_str() {
                        "fail-closed" => PartitionMode::FailClosed,
                        _ => PartitionMode::FailStatic,
                    },
                    staleness_ttl: staleness_ttl.as_str().into(),
                },
            };
            let now = std::time::SystemTime::now();
            let yaml = match (from, to, from_context, to_context) {
                (Some(from), Some(to), _, _) => create(&from, &to, &options, now)?,
                (_, _, Some(a), Some(b)) => tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?
                    .block_on(async {
                        let client = |ctx: String| async move {
                            let config =
                                kube::Config::from_kubeconfig(&kube::config::KubeConfigOptions {
                                    context: Some(ctx.clone()),
                                    ..Default::default()
                                })
                                .await
                                .map_err(|e| anyhow::anyhow!("kubeconfig context {ctx}: {e}"))?;
                            anyhow::Ok(kube::Client::try_from(config)?)
                        };
                        let (ca, cb) = (client(a.clone()).await?, client(b.clone()).await?);
                        anyhow::Ok(
                            isthmus_ctl::link::create_kube(
                                (&ca, &a),
                                (&cb, &b),
                                &namespace,
                                &options,
                                now,
                            )
                            .await?,
                        )
                    })?,
                _ => anyhow::bail!(
                    "give --from and --to (store directories) or --from-context and --to-context"
                ),
            };
            match out {
                Some(path) => {
                    std::fs::write(&path, yaml)?;
                    eprintln!("wrote {}", path.display());
                }
                None => print!("{yaml}"),
            }
            Ok(())
        }
    }
}
