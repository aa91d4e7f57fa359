//! The exporting side of the federation channel: linked clusters' control
//! planes subscribe here (reached through our east-west gateway as
//! `isthmus-federation.isthmus-system:15012`, inside their own mTLS session
//! with us). A subscriber is admitted when its certificate names a
//! control plane of the trust domain our ClusterLink to its cluster says,
//! and its join token (issued by us for `link-<cluster>`) is valid. It then
//! gets our exports: the full state, then a delta per change.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use isthmus_api::federation::v1::cluster_sync_server::{ClusterSync, ClusterSyncServer};
use isthmus_api::federation::v1::{
    Exports, LinkCredential, Pong, SyncRequest, SyncResponse, sync_request, sync_response,
};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status, Streaming};

use super::exports::{ExportMap, delta, exports};
use super::{Reason, SyncError};
use crate::identity::SpiffeId;
use crate::identity::token::{LINK_CREDENTIAL, TokenError, TokenKey};
use crate::server::Published;
use crate::store::{Resource, Snapshot};

/// How long a subscriber has to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Our exports as of one generation, computed once for every subscriber.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Exported {
    pub cluster: String,
    pub trust_domain: String,
    pub services: ExportMap,
    /// Our trust bundle now (PEM roots of our trust domain).
    pub trust_bundle: String,
    /// The policies we share with the cluster set (`policies`).
    pub policies: Arc<super::policies::PolicyMap>,
    /// The control plane's warm-up is over: until then subscribers get
    /// nothing and keep what they had (`Options::warm_up`).
    pub warm: bool,
}

/// Keeps `Exported` current with the published generations until `stop`
/// (a task of `tasks`).
pub fn follow_exports(
    mut published: watch::Receiver<Arc<Published>>,
    stop: CancellationToken,
    tasks: &TaskTracker,
) -> watch::Receiver<Arc<Exported>> {
    // The shared policies change only with the store: kept while the
    // snapshot is the same (a registration or an import makes a new
    // generation, not a new snapshot).
    let mut policies: Option<(Arc<crate::store::Snapshot>, Arc<super::policies::PolicyMap>)> = None;
    let mut compute = move |p: &Published| {
        let snap = &p.store.snapshot;
        let shared = match &policies {
            Some((at, map)) if Arc::ptr_eq(at, snap) => map.clone(),
            _ => {
                let map = Arc::new(super::policies::shared(snap));
                policies = Some((snap.clone(), map.clone()));
                map
            }
        };
        Arc::new(Exported {
            cluster: crate::identity::mesh_cluster_name(snap).unwrap_or_default(),
            trust_domain: crate::identity::mesh_trust_domain(snap).unwrap_or_default(),
            services: exports(snap, |n| p.offer.service(n)),
            trust_bundle: p
                .own_trust
                .iter()
                .map(|t| t.roots_pem.as_str())
                .collect::<Vec<_>>()
                .concat(),
            policies: shared,
            warm: p.warm,
        })
    };
    let first = compute(&published.borrow_and_update());
    let (tx, rx) = watch::channel(first);
    tasks.spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                r = published.changed() => if r.is_err() { return },
            }
            let next = compute(&published.borrow_and_update());
            tx.send_if_modified(|cur| {
                let changed = **cur != *next;
                if changed {
                    *cur = next;
                }
                changed
            });
        }
    });
    rx
}

/// How a subscriber proved itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admitted {
    /// With the join token `isthmusctl link create` wrote (its first time,
    /// or after losing its link credential).
    JoinToken,
    /// With a link credential we sent it on an earlier stream.
    Credential,
}

/// How long a link credential lasts, and how often a connected subscriber
/// gets a fresh one: a link may be down for `ttl - renew` and come back
/// without a new join token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CredentialPolicy {
    pub ttl: Duration,
    pub renew: Duration,
}

impl CredentialPolicy {
    /// 30 days, renewed daily (and on every connection).
    pub const DEFAULT: CredentialPolicy = CredentialPolicy {
        ttl: Duration::from_secs(30 * 24 * 3600),
        renew: Duration::from_secs(24 * 3600),
    };
}

/// The clock admission and credentials are read against (tests move it).
pub type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// Whether the subscriber `peer` (its certificate's identity), saying it is
/// cluster `cluster` with `token` (a join token or a link credential), may
/// import from us.
pub fn admit(
    snap: &Snapshot,
    tokens: Option<&TokenKey>,
    peer: &SpiffeId,
    cluster: &str,
    token: &str,
    now: SystemTime,
) -> Result<Admitted, SyncError> {
    let refuse = |reason, message: String| Err(SyncError::Refused { reason, message });
    let link = snap.of_kind("ClusterLink").find_map(|(_, r)| match r {
        Resource::ClusterLink(l) if l.spec.peer == cluster => Some(l),
        _ => None,
    });
    let Some(link) = link else {
        return refuse(
            Reason::UnknownPeer,
            format!(
                "this cluster has no ClusterLink to {cluster}: links go both ways (isthmusctl link create --from <this cluster> --to {cluster})"
            ),
        );
    };
    if peer.trust_domain() != link.spec.trust_domain
        || peer.service_account() != Some(crate::identity::tls::SERVICE_ACCOUNT)
    {
        return refuse(
            Reason::TrustMismatch,
            format!(
                "{peer} is not {cluster}'s control plane: the ClusterLink to {cluster} names trust domain {}",
                link.spec.trust_domain
            ),
        );
    }
    let Some(tokens) = tokens else {
        return refuse(
            Reason::TokenInvalid,
            "this control plane issues no join tokens (it runs without a token key)".into(),
        );
    };
    let subject = crate::join::token_subject(cluster);
    // A link credential first: it is what a linked peer presents.
    let (admitted, verified) = match tokens.for_purpose(LINK_CREDENTIAL).verify(token, now) {
        Err(TokenError::BadMac) => (Admitted::JoinToken, tokens.verify(token, now)),
        r => (Admitted::Credential, r),
    };
    let what = match admitted {
        Admitted::JoinToken => "join token",
        Admitted::Credential => "link credential",
    };
    match verified {
        Ok(id) if id.service_account() == Some(subject.as_str()) => Ok(admitted),
        Ok(id) => refuse(
            Reason::TokenInvalid,
            format!(
                "the {what} is for {}, not {subject}: issue a join token for this link (isthmusctl link create --from {cluster})",
                id.service_account().unwrap_or_default(),
            ),
        ),
        Err(TokenError::Expired(s)) => refuse(
            Reason::TokenExpired,
            match admitted {
                Admitted::JoinToken => format!(
                    "the join token expired {s} s ago: issue a new one (isthmusctl link create --from {cluster}) and apply its Secret"
                ),
                Admitted::Credential => format!(
                    "the link credential expired {s} s ago (the link was down longer than a credential lasts): issue a new join token (isthmusctl link create --from {cluster}) and apply its Secret"
                ),
            },
        ),
        Err(e) => refuse(Reason::TokenInvalid, format!("the {what}: {e}")),
    }
}

/// A fresh link credential for `cluster` at `now`.
pub fn issue_credential(
    tokens: &TokenKey,
    cluster: &str,
    now: SystemTime,
    policy: CredentialPolicy,
) -> LinkCredential {
    let token = tokens.for_purpose(LINK_CREDENTIAL).issue(
        crate::translate::links::GATEWAY_NAMESPACE,
        &crate::join::token_subject(cluster),
        now,
        policy.ttl,
    );
    LinkCredential {
        token,
        expires_unix: (now + policy.ttl)
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    }
}

/// The gRPC service.
#[derive(Clone)]
pub struct SyncService {
    published: watch::Receiver<Arc<Published>>,
    exported: watch::Receiver<Arc<Exported>>,
    tokens: Option<Arc<TokenKey>>,
    credentials: CredentialPolicy,
    clock: Clock,
    stop: CancellationToken,
    /// Its tasks: following the exports, and one per subscribed peer.
    tasks: TaskTracker,
    /// What subscribers say of the policies we share.
    reports: Arc<super::policies::Reports>,
    /// How subscribers see the set (the topology page), and our traffic
    /// reading (a subscriber's page open turns it on).
    views: Arc<crate::server::topology::Views>,
    traffic: Arc<crate::server::topology::Traffic>,
}

impl SyncService {
    pub fn new(
        published: watch::Receiver<Arc<Published>>,
        tokens: Option<Arc<TokenKey>>,
        stop: CancellationToken,
    ) -> Self {
        let tasks = TaskTracker::new();
        let exported = follow_exports(published.clone(), stop.clone(), &tasks);
        Self {
            published,
            exported,
            tokens,
            credentials: CredentialPolicy::DEFAULT,
            clock: Arc::new(SystemTime::now),
            stop,
            tasks,
            reports: Default::default(),
            views: Default::default(),
            traffic: Default::default(),
        }
    }

    /// Subscribers' views go to `views`; their open pages turn `traffic`
    /// reading on.
    pub fn with_views(
        mut self,
        views: Arc<crate::server::topology::Views>,
        traffic: Arc<crate::server::topology::Traffic>,
    ) -> Self {
        self.views = views;
        self.traffic = traffic;
        self
    }

    /// Subscribers' policy reports go to `reports`.
    pub fn with_reports(mut self, reports: Arc<super::policies::Reports>) -> Self {
        self.reports = reports;
        self
    }

    /// Credentials that last and renew as `policy` says, read against
    /// `clock`.
    pub fn with_credentials(mut self, policy: CredentialPolicy, clock: Clock) -> Self {
        self.credentials = policy;
        self.clock = clock;
        self
    }
}

/// What a subscriber was last sent.
#[derive(Debug, Clone, Default, PartialEq)]
struct Sent {
    services: ExportMap,
    bundle: String,
    policies: std::collections::BTreeMap<String, isthmus_api::federation::v1::SharedPolicy>,
}

/// The `exports` message taking the subscriber `peer` from what it was
/// `sent` to `e` (None when nothing changed), and what it has then.
fn message(
    e: &Exported,
    peer: &str,
    version: u64,
    full: bool,
    sent: &Sent,
) -> (Option<SyncResponse>, Sent) {
    let now = Sent {
        services: e.services.clone(),
        bundle: e.trust_bundle.clone(),
        policies: super::policies::for_peer(&e.policies, peer),
    };
    let ((services, removed), (policies, removed_policies)) = if full {
        (
            (e.services.values().cloned().collect(), Vec::new()),
            (now.policies.values().cloned().collect(), Vec::new()),
        )
    } else {
        (
            delta(&sent.services, &e.services),
            delta(&sent.policies, &now.policies),
        )
    };
    let trust_bundle = if full || e.trust_bundle != sent.bundle {
        e.trust_bundle.clone()
    } else {
        String::new()
    };
    let nothing = services.is_empty()
        && removed.is_empty()
        && trust_bundle.is_empty()
        && policies.is_empty()
        && removed_policies.is_empty();
    if !full && nothing {
        return (None, now);
    }
    let m = SyncResponse {
        kind: Some(sync_response::Kind::Exports(Exports {
            version,
            full,
            cluster: e.cluster.clone(),
            trust_domain: e.trust_domain.clone(),
            services,
            removed,
            trust_bundle,
            policies,
            removed_policies,
        })),
    };
    (Some(m), now)
}

#[tonic::async_trait]
impl ClusterSync for SyncService {
    type SyncStream = ReceiverStream<Result<SyncResponse, Status>>;

    async fn sync(
        &self,
        request: Request<Streaming<SyncRequest>>,
    ) -> Result<Response<Self::SyncStream>, Status> {
        let peer = match crate::identity::tls::peer_of(&request) {
            Some(Some(id)) => id.clone(),
            _ => {
                return Err(Status::unauthenticated(format!(
                    "{}: present the control plane's certificate",
                    Reason::UnknownPeer.as_str()
                )));
            }
        };
        let mut incoming = request.into_inner();
        let hello = match tokio::time::timeout(HELLO_TIMEOUT, incoming.message()).await {
            Ok(Ok(Some(SyncRequest {
                kind: Some(sync_request::Kind::Hello(h)),
            }))) => h,
            _ => return Err(Status::invalid_argument("say hello first")),
        };
        let snap = self.published.borrow().store.snapshot.clone();
        let admitted = match admit(
            &snap,
            self.tokens.as_deref(),
            &peer,
            &hello.cluster,
            &hello.token,
            (self.clock)(),
        ) {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(%peer, cluster = %hello.cluster, "federation subscriber refused: {e}");
                return Err(Status::permission_denied(e.to_string()));
            }
        };
        tracing::info!(%peer, cluster = %hello.cluster, ?admitted, "linked cluster subscribed to our exports");
        let (tx, rx) = mpsc::channel(16);
        let mut exported = self.exported.clone();
        let stop = self.stop.clone();
        // admit() checked there is a key.
        let tokens = self.tokens.clone().expect("admitted with a token key");
        let (policy, clock) = (self.credentials, self.clock.clone());
        let subscriber = hello.cluster.clone();
        let reports = self.reports.clone();
        let (views, traffic) = (self.views.clone(), self.traffic.clone());
        let credential = move || SyncResponse {
            kind: Some(sync_response::Kind::Credential(issue_credential(
                &tokens,
                &hello.cluster,
                clock(),
                policy,
            ))),
        };
        self.tasks.spawn(async move {
            let mut version = 1;
            // Warming up: the subscriber keeps its imports of us meanwhile.
            let first = tokio::select! {
                _ = stop.cancelled() => return,
                w = exported.wait_for(|e| e.warm) => match w {
                    Ok(e) => e.clone(),
                    Err(_) => return,
                },
            };
            exported.borrow_and_update();
            let (Some(m), mut sent) = message(&first, &subscriber, version, true, &Sent::default())
            else {
                return;
            };
            if tx.send(Ok(m)).await.is_err() {
                return;
            }
            // A fresh credential on every stream, then one per `renew`.
            let mut renew = tokio::time::interval(policy.renew);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = renew.tick() => {
                        if tx.send(Ok(credential())).await.is_err() { return }
                    }
                    r = exported.changed() => {
                        if r.is_err() { return }
                        let now = exported.borrow_and_update().clone();
                        let (m, next) = message(&now, &subscriber, version + 1, false, &sent);
                        sent = next;
                        if let Some(m) = m {
                            version += 1;
                            if tx.send(Ok(m)).await.is_err() { return }
                        }
                    }
                    m = incoming.message() => match m {
                        Ok(Some(SyncRequest { kind: Some(sync_request::Kind::Ping(p)) })) => {
                            let pong = SyncResponse {
                                kind: Some(sync_response::Kind::Pong(Pong { nonce: p.nonce })),
                            };
                            if tx.send(Ok(pong)).await.is_err() { return }
                        }
                        Ok(Some(SyncRequest { kind: Some(sync_request::Kind::View(v)) })) => {
                            if v.watching {
                                traffic.peer_watched();
                            }
                            views.set(&subscriber, v);
                        }
                        Ok(Some(SyncRequest { kind: Some(sync_request::Kind::PolicyStatus(s)) })) => {
                            tracing::debug!(cluster = %subscriber, results = s.results.len(), "policy status received");
                            reports.set(&subscriber, s.results);
                        }
                        Ok(Some(_)) => {}
                        Ok(None) | Err(_) => {
                            tracing::info!(%peer, "linked cluster unsubscribed");
                            views.remove(&subscriber);
                            return;
                        }
                    },
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Serves the channel on `listener` (TLS with `config`: the federation
/// identity, client certificates required and verified) until `stop`,
/// then waits for the service's tasks (each ends on `stop`).
pub async fn serve(
    svc: SyncService,
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    stop: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    let tasks = svc.tasks.clone();
    let incoming = crate::identity::tls::incoming(config, listener, stop.clone());
    let served = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .serve_with_incoming_shutdown(
            ClusterSyncServer::new(svc),
            incoming,
            stop.cancelled_owned(),
        )
        .await;
    tasks.close();
    tasks.wait().await;
    served
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::files::{merge, parse_file};

    #[test]
    fn the_bundle_goes_in_the_full_state_and_in_a_delta_when_it_changed() {
        let bundle = |m: &Option<SyncResponse>| match m.as_ref().and_then(|m| m.kind.as_ref()) {
            Some(sync_response::Kind::Exports(e)) => Some(e.trust_bundle.clone()),
            _ => None,
        };
        let e = Exported {
            cluster: "eu-central".into(),
            trust_domain: "eu-central.isthmus.local".into(),
            trust_bundle: "OLD".into(),
            warm: true,
            ..Default::default()
        };
        let (m, sent) = message(&e, "eu-west", 1, true, &Sent::default());
        assert_eq!(bundle(&m).as_deref(), Some("OLD"));
        assert!(
            message(&e, "eu-west", 2, false, &sent).0.is_none(),
            "nothing changed: no message"
        );
        let rotated = Exported {
            trust_bundle: "OLDNEW".into(),
            ..e.clone()
        };
        assert_eq!(
            bundle(&message(&rotated, "eu-west", 2, false, &sent).0).as_deref(),
            Some("OLDNEW"),
            "a rotation alone is a delta"
        );
    }

    #[test]
    fn shared_policies_go_to_the_clusters_they_name_full_then_deltas() {
        let policies = |m: &Option<SyncResponse>| match m.as_ref().and_then(|m| m.kind.as_ref()) {
            Some(sync_response::Kind::Exports(e)) => {
                let names: Vec<String> = e.policies.iter().map(|p| p.name.clone()).collect();
                (names, e.removed_policies.clone())
            }
            _ => panic!("no exports: {m:?}"),
        };
        let shared = |name: &str, clusters: Option<&[&str]>, generation: i64| {
            let policy = isthmus_api::federation::v1::SharedPolicy {
                kind: "HTTPRoute".into(),
                namespace: "shop".into(),
                name: name.into(),
                generation,
                ..Default::default()
            };
            let clusters = clusters.map(|c| c.iter().map(|c| c.to_string()).collect());
            (
                super::super::policies::wire_key("HTTPRoute", "shop", name),
                super::super::policies::Shared { policy, clusters },
            )
        };
        let mut e = Exported {
            policies: Arc::new(
                [
                    shared("everywhere", None, 1),
                    shared("us-only", Some(&["us-east"]), 1),
                ]
                .into(),
            ),
            ..Default::default()
        };
        let (m, sent) = message(&e, "eu-west", 1, true, &Sent::default());
        assert_eq!(policies(&m), (vec!["everywhere".to_string()], vec![]));
        e.policies = Arc::new([shared("everywhere", None, 2)].into());
        let (m, sent) = message(&e, "eu-west", 2, false, &sent);
        assert_eq!(
            policies(&m),
            (vec!["everywhere".to_string()], vec![]),
            "changed"
        );
        e.policies = Default::default();
        let (m, _) = message(&e, "eu-west", 3, false, &sent);
        assert_eq!(
            policies(&m),
            (vec![], vec!["HTTPRoute/shop/everywhere".to_string()]),
            "withdrawn"
        );
        // us-east gets both; a change to what it does not get is no message
        // for eu-west.
        let e = Exported {
            policies: Arc::new([shared("us-only", Some(&["us-east"]), 1)].into()),
            ..Default::default()
        };
        let (m, _) = message(&e, "us-east", 1, true, &Sent::default());
        assert_eq!(policies(&m).0, ["us-only"]);
        let (_, sent) = message(&e, "eu-west", 1, true, &Sent::default());
        let later = Exported {
            policies: Arc::new([shared("us-only", Some(&["us-east"]), 2)].into()),
            ..Default::default()
        };
        assert!(message(&later, "eu-west", 2, false, &sent).0.is_none());
    }

    const STORE: &str = r#"
apiVersion: isthmus.dev/v1alpha1
kind: ClusterLink
metadata: {name: eu-west}
spec:
  peer: eu-west
  region: eu-west
  gateway: {quic: "127.0.0.1:15443"}
  trustDomain: eu-west.isthmus.local
  trustBundle: ""
  credentialsSecretRef: {name: isthmus-link-eu-west}
"#;

    fn check(peer: &str, cluster: &str, token: &str) -> Result<Admitted, Reason> {
        let (loaded, errors) = parse_file("s.yaml".as_ref(), STORE);
        assert!(errors.is_empty(), "{errors:?}");
        let snap = merge(&Snapshot::default(), loaded, Vec::new()).0;
        let key = TokenKey::new(
            b"0123456789abcdef0123456789abcdef",
            "eu-central.isthmus.local",
        );
        let now = SystemTime::now();
        let token = match token {
            "good" => key.issue(
                "isthmus-system",
                "link-eu-west",
                now,
                Duration::from_secs(60),
            ),
            "expired" => key.issue(
                "isthmus-system",
                "link-eu-west",
                now - Duration::from_secs(120),
                Duration::from_secs(60),
            ),
            "other" => key.issue(
                "isthmus-system",
                "link-us-east",
                now,
                Duration::from_secs(60),
            ),
            "credential" => issue_credential(&key, "eu-west", now, CredentialPolicy::DEFAULT).token,
            "old credential" => {
                issue_credential(
                    &key,
                    "eu-west",
                    now - CredentialPolicy::DEFAULT.ttl,
                    CredentialPolicy::DEFAULT,
                )
                .token
            }
            "other's credential" => {
                issue_credential(&key, "us-east", now, CredentialPolicy::DEFAULT).token
            }
            "foreign credential" => {
                let other = TokenKey::new(
                    b"another key, another control pl.",
                    "eu-central.isthmus.local",
                );
                issue_credential(&other, "eu-west", now, CredentialPolicy::DEFAULT).token
            }
            t => t.to_string(),
        };
        let peer: SpiffeId = peer.parse().unwrap();
        admit(&snap, Some(&key), &peer, cluster, &token, now)
            .map_err(|SyncError::Refused { reason, .. }| reason)
    }

    const CP: &str = "spiffe://eu-west.isthmus.local/ns/isthmus-system/sa/isthmus-federation";

    #[test]
    fn subscribers_need_a_link_the_right_identity_and_a_valid_token() {
        assert_eq!(check(CP, "eu-west", "good"), Ok(Admitted::JoinToken));
        assert_eq!(check(CP, "eu-west", "credential"), Ok(Admitted::Credential));
        assert_eq!(
            check(CP, "eu-west", "old credential"),
            Err(Reason::TokenExpired)
        );
        assert_eq!(
            check(CP, "eu-west", "other's credential"),
            Err(Reason::TokenInvalid)
        );
        assert_eq!(
            check(CP, "eu-west", "foreign credential"),
            Err(Reason::TokenInvalid),
            "a credential signed with another (or a replaced) token key"
        );
        assert_eq!(
            check(CP, "us-east", "credential"),
            Err(Reason::UnknownPeer),
            "a credential does not outlive the ClusterLink"
        );
        assert_eq!(check(CP, "eu-west", "expired"), Err(Reason::TokenExpired));
        assert_eq!(check(CP, "eu-west", "other"), Err(Reason::TokenInvalid));
        assert_eq!(
            check(CP, "eu-west", "v1.garbage"),
            Err(Reason::TokenInvalid)
        );
        assert_eq!(check(CP, "us-east", "good"), Err(Reason::UnknownPeer));
        assert_eq!(
            check(
                "spiffe://us-east.isthmus.local/ns/isthmus-system/sa/isthmus-federation",
                "eu-west",
                "good"
            ),
            Err(Reason::TrustMismatch),
            "a certificate of another domain than the link's"
        );
        assert_eq!(
            check(
                "spiffe://eu-west.isthmus.local/ns/shop/sa/frontend",
                "eu-west",
                "good"
            ),
            Err(Reason::TrustMismatch),
            "a workload is not the control plane"
        );
    }
}
