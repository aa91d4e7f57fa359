//! Leader election on a `coordination.k8s.io/v1` Lease, as client-go's
//! leaderelection does it: the holder renews `renewTime` every third of
//! the lease duration; another replica takes the lease over only once the
//! holder has not renewed for a whole duration. Every write carries the
//! Lease's resourceVersion, so two replicas racing for it cannot both win
//! (the API server refuses the second with 409 Conflict).
//!
//! `decide` is the pure rule; `Elector` does the I/O around it.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// What to do with the Lease as it is now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// No Lease yet: create it, held by us.
    Create,
    /// We hold it: renew.
    Renew,
    /// Its holder let it expire (or it has none): take it over.
    TakeOver,
    /// Someone else holds it and renews it: follow.
    Follow { holder: String },
}

/// The rule, given the Lease's spec (None: no Lease), who we are and now.
pub fn decide(spec: Option<&LeaseSpec>, me: &str, now: Timestamp) -> Step {
    let Some(spec) = spec else {
        return Step::Create;
    };
    let holder = spec.holder_identity.as_deref().unwrap_or("");
    if holder == me {
        return Step::Renew;
    }
    if holder.is_empty() {
        return Step::TakeOver;
    }
    let duration = spec.lease_duration_seconds.unwrap_or(15).max(1);
    let renewed = spec
        .renew_time
        .as_ref()
        .or(spec.acquire_time.as_ref())
        .map(|t| t.0);
    match renewed {
        Some(t) if now.duration_since(t).as_secs() < i64::from(duration) => Step::Follow {
            holder: holder.to_string(),
        },
        _ => Step::TakeOver,
    }
}

pub struct Elector {
    pub api: Api<Lease>,
    /// The Lease's name (e.g. `isthmus-federation`).
    pub lease: String,
    /// This replica (e.g. its pod name).
    pub identity: String,
    pub duration: Duration,
}

impl Elector {
    /// One round: read the Lease and act. Ok(true) while we lead.
    pub async fn step(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let current = self.api.get_opt(&self.lease).await?;
        let step = decide(
            current.as_ref().and_then(|l| l.spec.as_ref()),
            &self.identity,
            now,
        );
        let secs = i32::try_from(self.duration.as_secs())
            .unwrap_or(i32::MAX)
            .max(1);
        let result = match (&step, current) {
            (Step::Create, _) => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.lease.clone()),
                        ..Default::default()
                    },
                    spec: Some(LeaseSpec {
                        holder_identity: Some(self.identity.clone()),
                        lease_duration_seconds: Some(secs),
                        acquire_time: Some(MicroTime(now)),
                        renew_time: Some(MicroTime(now)),
                        lease_transitions: Some(0),
                        ..Default::default()
                    }),
                };
                self.api
                    .create(&PostParams::default(), &lease)
                    .await
                    .map(|_| ())
            }
            (Step::Renew | Step::TakeOver, Some(mut lease)) => {
                let spec = lease.spec.get_or_insert_with(Default::default);
                if step == Step::TakeOver {
                    spec.holder_identity = Some(self.identity.clone());
                    spec.acquire_time = Some(MicroTime(now));
                    spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
                }
                spec.lease_duration_seconds = Some(secs);
                spec.renew_time = Some(MicroTime(now));
                // resourceVersion stays in metadata: a concurrent writer
                // makes this a 409.
                self.api
                    .replace(&self.lease, &PostParams::default(), &lease)
                    .await
                    .map(|_| ())
            }
            (Step::Follow { .. }, _) | (_, None) => return Ok(false),
        };
        match result {
            Ok(()) => {
                if step != Step::Renew {
                    tracing::info!(lease = %self.lease, identity = %self.identity, "became the leader");
                }
                Ok(true)
            }
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Runs rounds every third of the lease duration until `stop`; the
    /// receiver says whether we lead. A failed round while leading ends
    /// the leadership at once (better no writer than two).
    pub fn run(
        self,
        stop: CancellationToken,
    ) -> (watch::Receiver<bool>, tokio::task::JoinHandle<()>) {
        let (tx, rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            loop {
                let leading = match self.step().await {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::warn!(lease = %self.lease, "leader election round failed: {e}");
                        false
                    }
                };
                tx.send_if_modified(|v| std::mem::replace(v, leading) != leading);
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(self.duration / 3) => {}
                }
            }
            tx.send_replace(false);
        });
        (rx, task)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: Option<&str>, renewed_secs_ago: Option<i64>, now: Timestamp) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(str::to_string),
            lease_duration_seconds: Some(15),
            renew_time: renewed_secs_ago
                .map(|s| MicroTime(now - k8s_openapi::jiff::SignedDuration::from_secs(s))),
            ..Default::default()
        }
    }

    #[test]
    fn the_rule() {
        let now = Timestamp::now();
        let me = "cp-0";
        assert_eq!(decide(None, me, now), Step::Create);
        assert_eq!(
            decide(Some(&lease(Some(me), Some(100), now)), me, now),
            Step::Renew,
            "ours, even if late: renew"
        );
        assert_eq!(
            decide(Some(&lease(Some("cp-1"), Some(3), now)), me, now),
            Step::Follow {
                holder: "cp-1".into()
            }
        );
        assert_eq!(
            decide(Some(&lease(Some("cp-1"), Some(14), now)), me, now),
            Step::Follow {
                holder: "cp-1".into()
            },
            "just inside the duration"
        );
        assert_eq!(
            decide(Some(&lease(Some("cp-1"), Some(15), now)), me, now),
            Step::TakeOver,
            "a whole duration without renewal"
        );
        assert_eq!(
            decide(Some(&lease(Some("cp-1"), None, now)), me, now),
            Step::TakeOver,
            "never renewed"
        );
        assert_eq!(
            decide(Some(&lease(None, Some(1), now)), me, now),
            Step::TakeOver
        );
        assert_eq!(
            decide(Some(&lease(Some(""), Some(1), now)), me, now),
            Step::TakeOver,
            "released"
        );
    }
}
