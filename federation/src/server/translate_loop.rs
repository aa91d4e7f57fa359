//! The translate loop: every new store state, workload registration, peer
//! export or trust change is translated (debounced) into the next
//! `Published` generation, which discovery and the admin port read.

use super::*;

impl ControlPlane {
    pub(super) fn run(
        mut states: watch::Receiver<State>,
        watcher: tokio::task::JoinHandle<()>,
        opts: Options,
        stop: CancellationToken,
    ) -> Self {
        let tasks = TaskTracker::new();
        let (mut resolved, resolver) = super::resolver::spawn(states.clone(), stop.clone());
        let registry = Arc::new(registry::Shared::new(opts.registration_grace));
        let peers = Arc::new(crate::sync::peers::Peers::default());
        let mut generation = 1;
        let (trust_tx, mut trust) = watch::channel(opts.trust_bundles.clone());
        let mut vips = opts.clusterset_ips.clone();
        if let Some(path) = &opts.vip_state {
            match crate::store::vip_state::load(path) {
                Ok(kept) => vips.kept = kept,
                Err(e) => tracing::warn!("{e}"),
            }
        }
        let inputs = Inputs {
            registry: &registry,
            peers: &peers,
            opts: &opts,
            resolved: &resolved.borrow_and_update().clone(),
            vips: &vips,
        };
        let warm_at = tokio::time::Instant::now() + opts.warm_up;
        let mut warm = opts.warm_up.is_zero();
        let first = publish(
            generation,
            &states.borrow_and_update(),
            &inputs,
            &trust.borrow_and_update(),
            warm,
        );
        keep_vips(
            &mut vips,
            &first.store.snapshot,
            &first.catalog,
            opts.vip_state.as_deref(),
        );
        let (tx, published) = watch::channel(first);
        let (reg, stop2, debounce) = (registry.clone(), stop.clone(), opts.debounce);
        let (imports, loop_opts) = (peers.clone(), opts.clone());
        let mut imported = imports.watch_imports();
        tasks.spawn(async move {
            let (_watcher, _resolver) = (watcher, resolver);
            loop {
                let expiry = reg.next_expiry();
                let withdrawal = imports.next_expiry();
                tokio::select! {
                    _ = stop2.cancelled() => return,
                    r = states.changed() => if r.is_err() { return },
                    r = trust.changed() => if r.is_err() { return },
                    r = imported.changed() => if r.is_err() { return },
                    r = resolved.changed() => if r.is_err() { return },
                    _ = sleep_until_wall(withdrawal) => {
                        if !imports.expire(std::time::SystemTime::now()) { continue; }
                    }
                    _ = reg.changed() => {
                        if !reg.take_dirty() {
                            continue; // a disconnect: only the expiry timer moves
                        }
                        // Registrations come in bursts (a deployment
                        // scaling up): let the burst finish.
                        tokio::select! {
                            _ = stop2.cancelled() => return,
                            _ = tokio::time::sleep(debounce) => {}
                        }
                        reg.take_dirty();
                    }
                    _ = sleep_until(expiry) => {
                        if !reg.expire() { continue; }
                    }
                    _ = tokio::time::sleep_until(warm_at), if !warm => {
                        tracing::info!(
                            workloads = reg.workloads().len(),
                            "warm-up over: pushing to proxies and linked clusters"
                        );
                        warm = true;
                    }
                }
                generation += 1;
                imported.borrow_and_update();
                let names = resolved.borrow_and_update().clone();
                let inputs = Inputs {
                    registry: &reg,
                    peers: &imports,
                    opts: &loop_opts,
                    resolved: &names,
                    vips: &vips,
                };
                let next = publish(
                    generation,
                    &states.borrow_and_update(),
                    &inputs,
                    &trust.borrow_and_update(),
                    warm,
                );
                keep_vips(
                    &mut vips,
                    &next.store.snapshot,
                    &next.catalog,
                    loop_opts.vip_state.as_deref(),
                );
                tx.send_replace(next);
            }
        });
        Self {
            published,
            subscribers: Arc::new(Subscribers::default()),
            registry,
            replica: opts.replica.clone(),
            tasks,
            stop,
            trust: trust_tx,
            peers,
            reports: Default::default(),
            metrics: Default::default(),
            traffic: Default::default(),
            views: Default::default(),
            opts,
        }
    }
}

/// Remembers the ClusterSet IPs `catalog` was given, for the next
/// translation, and writes them to the state file when they changed.
fn keep_vips(
    vips: &mut crate::translate::vips::Settings,
    snapshot: &crate::store::Snapshot,
    catalog: &Catalog,
    state: Option<&std::path::Path>,
) {
    let mut before = vips.kept.clone();
    before.extend(crate::translate::vips::persisted(snapshot));
    let now = crate::translate::vips::remember(&before, &crate::translate::vips::assigned(catalog));
    if now == vips.kept {
        return;
    }
    if let Some(path) = state
        && let Err(e) = crate::store::vip_state::save(path, &now)
    {
        tracing::warn!("{e}");
    }
    vips.kept = now;
}

/// Sleeps until the wall-clock time `at`, or forever.
async fn sleep_until_wall(at: Option<std::time::SystemTime>) {
    match at {
        Some(at) => {
            let wait = at
                .duration_since(std::time::SystemTime::now())
                .unwrap_or_default();
            tokio::time::sleep(wait).await
        }
        None => std::future::pending().await,
    }
}

/// Sleeps until `at`, or forever.
async fn sleep_until(at: Option<std::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// What a publication reads besides the store.
struct Inputs<'a> {
    registry: &'a registry::Shared,
    peers: &'a crate::sync::peers::Peers,
    opts: &'a Options,
    resolved: &'a crate::translate::links::Resolved,
    vips: &'a crate::translate::vips::Settings,
}

fn publish(
    generation: u64,
    state: &State,
    inputs: &Inputs<'_>,
    trust: &[model::TrustBundle],
    warm: bool,
) -> Arc<Published> {
    let workloads = inputs.registry.workloads();
    let refs: Vec<&registry::Workload> = workloads.iter().collect();
    let entry = inputs
        .opts
        .gateway_entry
        .map(|a| crate::translate::imports::Entry {
            ip: a.ip(),
            port: a.port(),
        });
    let summaries = inputs.peers.summaries();
    let synced = inputs.peers.trust_bundles();
    // Policies linked clusters share: translated with ours, never kept in
    // the store (status writers see only this cluster's resources).
    let shared = inputs.peers.received();
    let (overlaid, mut received) = crate::translate::received::overlay(&state.snapshot, &shared);
    let crate::translate::Output {
        mut catalog,
        endpoints,
    } = crate::translate::translate(&crate::translate::Inputs {
        snapshot: overlaid.as_ref().unwrap_or(&state.snapshot),
        workloads: &refs,
        imports: &summaries,
        gateway_entry: entry,
        synced_trust: Some(&synced),
        federation: inputs
            .opts
            .federation_address
            .map(|addr| (inputs.opts.namespace.as_str(), addr)),
        resolved: Some(inputs.resolved),
        clusterset_ips: Some(inputs.vips),
    });
    crate::translate::received::settle(&mut received, &mut catalog.problems);
    for p in &catalog.problems {
        tracing::warn!(kind = p.kind, object = %p.key, reason = p.reason, "{}", p.message);
    }
    tracing::info!(
        generation,
        store_generation = state.generation,
        services = catalog.services.len(),
        workloads = workloads.len(),
        problems = catalog.problems.len(),
        "configuration translated"
    );
    let offer = Offer::build(generation, &mut catalog, trust, |s| endpoints.fill(s));
    drop(endpoints);
    Arc::new(Published {
        generation,
        offer,
        catalog,
        store: state.clone(),
        workloads: workloads.len(),
        warm,
        own_trust: trust.to_vec(),
        received,
    })
}
