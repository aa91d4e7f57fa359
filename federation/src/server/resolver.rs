//! ClusterLink gateways given by name (cloud load balancers hand out host
//! names, not addresses): each name is looked up as soon as a ClusterLink
//! gives it and again every 30 s, so a load balancer that moves is
//! followed; the translation reads the latest answers
//! (`translate::links::Resolved`). A name that stops resolving keeps its
//! last address (a DNS outage does not cut a working link); one that never
//! resolved is a `GatewayUnresolved` condition on its ClusterLink.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::store::files::State;
use crate::translate::links::{Resolved, names};

/// How often every name is looked up again.
pub const EVERY: Duration = Duration::from_secs(30);
/// How long one lookup may take.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// The first address of `name` in sorted order (IPv4 first; stable across
/// lookups that return the same set in another order), or why not.
pub async fn lookup(name: &str) -> Result<std::net::SocketAddr, String> {
    match tokio::time::timeout(LOOKUP_TIMEOUT, tokio::net::lookup_host(name)).await {
        Err(_) => Err(format!(
            "the lookup took over {}s",
            LOOKUP_TIMEOUT.as_secs()
        )),
        Ok(Err(e)) => Err(format!("does not resolve ({e})")),
        Ok(Ok(addrs)) => {
            let mut all: Vec<_> = addrs.collect();
            all.sort();
            all.into_iter()
                .next()
                .ok_or_else(|| "resolves to no address".to_string())
        }
    }
}

/// The next answers: each name looked up, a failure keeping the last
/// address it had.
async fn resolve_all(names: &BTreeSet<String>, last: &Resolved) -> Resolved {
    // All at once: one slow name does not hold the others up.
    let answers = futures_util::future::join_all(names.iter().map(|n| lookup(n))).await;
    let mut out = Resolved::new();
    for (name, now) in names.iter().zip(answers) {
        let kept = match (&now, last.get(name)) {
            (Err(why), Some(Ok(addr))) => {
                tracing::warn!(%name, %addr, "gateway name {why}; keeping its last address");
                Ok(*addr)
            }
            _ => now,
        };
        out.insert(name.clone(), kept);
    }
    out
}

/// Keeps the names of `states`' ClusterLinks resolved until `stop`.
pub fn spawn(
    mut states: watch::Receiver<State>,
    stop: CancellationToken,
) -> (watch::Receiver<Arc<Resolved>>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = watch::channel(Arc::new(Resolved::new()));
    let task = tokio::spawn(async move {
        let mut wanted = names(&states.borrow_and_update().snapshot);
        loop {
            if !wanted.is_empty() {
                let last = tx.borrow().clone();
                let next = resolve_all(&wanted, &last).await;
                tx.send_if_modified(|cur| {
                    let changed = **cur != next;
                    if changed {
                        *cur = Arc::new(next);
                    }
                    changed
                });
            }
            // Until a ClusterLink gives another name, or it is time again.
            let deadline = tokio::time::Instant::now() + EVERY;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep_until(deadline) => break,
                    r = states.changed() => {
                        if r.is_err() {
                            return;
                        }
                        let now = names(&states.borrow_and_update().snapshot);
                        if now != wanted {
                            wanted = now;
                            break;
                        }
                    }
                }
            }
        }
    });
    (rx, task)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn names_resolve_and_a_failed_lookup_keeps_the_last_address() {
        assert_eq!(
            lookup("localhost:15443").await.unwrap().port(),
            15443,
            "localhost resolves everywhere"
        );
        let gone = "no-such-gateway.invalid:15443".to_string();
        let names = BTreeSet::from([gone.clone()]);
        let fresh = resolve_all(&names, &Resolved::new()).await;
        assert!(
            fresh[&gone]
                .as_ref()
                .unwrap_err()
                .contains("does not resolve")
        );
        let before = Resolved::from([(gone.clone(), Ok("10.0.0.9:15443".parse().unwrap()))]);
        let kept = resolve_all(&names, &before).await;
        assert_eq!(kept[&gone], Ok("10.0.0.9:15443".parse().unwrap()));
    }
}
