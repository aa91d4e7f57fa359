//! `isthmusctl install`, `uninstall` and `gen-deploy`: the command line
//! over `isthmus_ctl::install`.

use std::time::Duration;

use isthmus_ctl::install::{self, Options, apply, crds, kustomize};

#[derive(clap::Args)]
pub struct InstallArgs {
    /// This cluster's name among linked clusters (e.g. eu-west); not
    /// needed with --crds.
    #[arg(long, required_unless_present = "crds")]
    cluster: Option<String>,
    /// Its region (default: the cluster's name).
    #[arg(long)]
    region: Option<String>,
    #[arg(long)]
    zone: Option<String>,
    /// The SPIFFE trust domain of its workloads (default:
    /// <cluster>.isthmus.local; each cluster needs its own).
    #[arg(long)]
    trust_domain: Option<String>,
    #[command(flatten)]
    images: ImageArgs,
    /// Control plane replicas.
    #[arg(long, default_value_t = 2)]
    replicas: u16,
    /// East-west gateway replicas.
    #[arg(long, default_value_t = 2)]
    gateway_replicas: u16,
    /// How linked clusters reach the gateway: LoadBalancer or NodePort.
    #[arg(long, default_value = "LoadBalancer")]
    gateway_service_type: String,
    /// When the injection webhook cannot be reached: Fail (pods in
    /// injected namespaces wait for it) or Ignore (they start without a
    /// sidecar).
    #[arg(long, default_value = "Fail")]
    injector_failure_policy: String,
    #[command(flatten)]
    common: Common,
}

/// Which images: `<registry>/isthmus-<name>:<tag>`.
#[derive(clap::Args)]
pub struct ImageArgs {
    #[arg(long, default_value = "ghcr.io/isthmus-mesh")]
    registry: String,
    /// Default: this isthmusctl's version.
    #[arg(long)]
    tag: Option<String>,
    #[arg(long, default_value = "IfNotPresent")]
    pull_policy: String,
}

impl ImageArgs {
    /// Sets the images of `o`.
    pub fn apply(self, o: &mut Options) {
        o.registry = self.registry;
        if let Some(t) = self.tag {
            o.tag = t;
        }
        o.pull_policy = self.pull_policy;
    }
}

#[derive(clap::Args)]
pub struct Common {
    /// Only the CRDs (ours, and the pinned Gateway API and MCS ones):
    /// apply them first, `isthmusctl install --crds | kubectl apply -f -`.
    #[arg(long)]
    crds: bool,
    /// Render the pinned Gateway API CRDs (false: the cluster has its own).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    gateway_api_crds: bool,
    /// Render the pinned MCS CRDs (false: the cluster has its own).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    mcs_crds: bool,
    /// Apply through this kubeconfig context (CRDs first, waited for)
    /// instead of printing.
    #[arg(long)]
    context: Option<String>,
}

#[derive(clap::Args)]
pub struct UninstallArgs {
    #[command(flatten)]
    common: Common,
}

impl Common {
    fn which(&self) -> crds::Which {
        crds::Which {
            gateway_api: self.gateway_api_crds,
            mcs: self.mcs_crds,
        }
    }
}

pub async fn client(context: &str) -> anyhow::Result<kube::Client> {
    let config = kube::Config::from_kubeconfig(&kube::config::KubeConfigOptions {
        context: Some(context.to_string()),
        ..Default::default()
    })
    .await
    .map_err(|e| anyhow::anyhow!("kubeconfig context {context}: {e}"))?;
    Ok(kube::Client::try_from(config)?)
}

pub async fn install(a: InstallArgs) -> anyhow::Result<()> {
    let cluster = a.cluster.unwrap_or_else(|| kustomize::BASE_CLUSTER.into());
    let mut o = Options::new(&cluster);
    if let Some(r) = a.region {
        o.region = r;
    }
    o.zone = a.zone;
    if let Some(td) = a.trust_domain {
        o.trust_domain = td;
    }
    a.images.apply(&mut o);
    o.replicas = a.replicas;
    o.gateway_replicas = a.gateway_replicas;
    o.gateway_service_type = a.gateway_service_type;
    o.injector_failure_policy = a.injector_failure_policy;
    let crds = crds::objects(a.common.which())?;
    let rest = install::render(&o)?;
    match a.common.context {
        None if a.common.crds => print!("{}", install::to_yaml(&crds)?),
        None => print!("{}", install::to_yaml(&rest)?),
        Some(ctx) => {
            let client = client(&ctx).await?;
            for d in apply::apply(&client, &crds).await? {
                eprintln!("applied {d}");
            }
            apply::wait_established(
                &client,
                &crds,
                Duration::from_secs(60),
                Duration::from_millis(500),
            )
            .await?;
            if !a.common.crds {
                for d in apply::apply(&client, &rest).await? {
                    eprintln!("applied {d}");
                }
                eprintln!(
                    "installed cluster {} (trust domain {}) in {ctx}: `kubectl --context {ctx} -n {} rollout status deploy` waits for it",
                    o.cluster,
                    o.trust_domain,
                    install::NAMESPACE
                );
            }
        }
    }
    Ok(())
}

pub async fn uninstall(a: UninstallArgs) -> anyhow::Result<()> {
    // Names do not depend on the cluster: any cluster's objects will do.
    let objects = if a.common.crds {
        crds::objects(a.common.which())?
    } else {
        install::render(&Options::new(kustomize::BASE_CLUSTER))?
    };
    match a.common.context {
        None => {
            print!("{}", install::to_yaml(&objects)?);
            if !a.common.crds {
                eprintln!(
                    "pipe this to `kubectl delete --ignore-not-found -f -`, then delete what the control plane made: \
                     `kubectl delete configmaps,serviceimports -A -l isthmus.dev/managed-by=isthmus-federation`"
                );
            }
        }
        Some(ctx) => {
            let client = client(&ctx).await?;
            let mut deleted = apply::delete(&client, &objects).await?;
            if !a.common.crds {
                deleted.extend(apply::delete_made_at_run_time(&client).await?);
            }
            for d in &deleted {
                eprintln!("deleted {d}");
            }
            eprintln!("{} objects deleted from {ctx}", deleted.len());
        }
    }
    Ok(())
}

/// `gen-deploy`: writes `deploy/` (and the third-party CRDs'
/// kustomization) under the repository root, or checks them.
pub fn gen_deploy(root: &std::path::Path, check: bool) -> anyhow::Result<()> {
    if check {
        kustomize::check(root)?;
        println!("deploy/ is up to date");
    } else {
        for p in kustomize::write(root)? {
            println!("wrote {}", p.display());
        }
    }
    Ok(())
}
