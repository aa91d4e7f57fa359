//! The importing side: one task per ClusterLink keeps a channel open to the
//! peer's control plane through our east-west gateway, applies what it
//! sends to `Peers`, pings it for the RTT and to notice silence, and
//! reconnects with backoff (every connection starts with a full state).
//! Which links exist, and with which token and partition policy, follows
//! the store (`targets`, pure).

use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use isthmus_api::federation::v1::cluster_sync_client::ClusterSyncClient;
use isthmus_api::federation::v1::{
    Hello, Ping, PolicyStatus, SyncRequest, sync_request, sync_response,
};
use isthmus_mesh::transport::RemoteSession;
use isthmus_mesh::transport::client::{Connector, Expect, TunnelError};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::credentials::CredentialStore;
use super::peers::{Partition, Peers};
use super::server::{Clock, CredentialPolicy};
use super::{Reason, SyncError};
use crate::server::Published;
use crate::store::{ObjectKey, Resource, Snapshot};

/// What one link needs, from the store. Debug output leaves the token out.
#[derive(Clone, PartialEq, Eq)]
pub struct Target {
    pub peer: String,
    pub trust_domain: String,
    /// The join token from the link's Secret (None: missing, and why).
    pub token: Result<String, String>,
    pub partition: Partition,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("peer", &self.peer)
            .field("trust_domain", &self.trust_domain)
            .field("token", &self.token.as_ref().map(|_| "[REDACTED]"))
            .field("partition", &self.partition)
            .finish()
    }
}

/// The links of `snap` that translated cleanly (`valid`: their peer names).
pub fn targets<'a>(
    snap: &Snapshot,
    valid: impl IntoIterator<Item = &'a str>,
) -> BTreeMap<String, Target> {
    let valid: std::collections::BTreeSet<&str> = valid.into_iter().collect();
    let mut out = BTreeMap::new();
    for (_, r) in snap.of_kind("ClusterLink") {
        let Resource::ClusterLink(l) = r else {
            continue;
        };
        if !valid.contains(l.spec.peer.as_str()) {
            continue;
        }
        let secret = &l.spec.credentials_secret_ref;
        let key = ObjectKey {
            namespace: Some(
                secret
                    .namespace
                    .clone()
                    .unwrap_or_else(|| crate::store::LINK_SECRETS_NAMESPACE.to_string()),
            ),
            name: secret.name.clone(),
        };
        let token = match snap.get("Secret", &key) {
            Some(Resource::Secret(s)) => s
                .data
                .as_ref()
                .and_then(|d| d.get("token"))
                .and_then(|b| String::from_utf8(b.0.clone()).ok())
                .or_else(|| s.string_data.as_ref()?.get("token").cloned())
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty())
                .ok_or_else(|| format!("the Secret {key} has no `token`")),
            _ => Err(format!(
                "the Secret {key} is missing (apply the one isthmusctl link create wrote; it must carry the label {})",
                crate::store::LINK_CREDENTIALS_LABEL
            )),
        };
        let ttl = l
            .spec
            .partition
            .staleness_ttl
            .parse()
            .unwrap_or(Partition::DEFAULT.ttl);
        out.insert(
            l.spec.peer.clone(),
            Target {
                peer: l.spec.peer.clone(),
                trust_domain: l.spec.trust_domain.clone(),
                token,
                partition: Partition {
                    mode: l.spec.partition.mode,
                    ttl,
                },
            },
        );
    }
    out
}

/// How the federation channel behaves, both sides.
#[derive(Clone)]
pub struct Settings {
    /// This cluster's east-west gateway entry (15009).
    pub entry: Option<SocketAddr>,
    /// Our namespace (the channel's authority names the peer's, the same).
    pub namespace: String,
    /// How often a link pings; silent for three pings counts as lost.
    pub ping: Duration,
    pub connect_timeout: Duration,
    pub backoff_max: Duration,
    /// Where the credentials peers issue us are kept (None: under the
    /// store directory).
    pub credentials: Option<Arc<CredentialStore>>,
    /// The credentials we issue to our subscribers.
    pub credential_policy: CredentialPolicy,
    /// What tokens and credentials are checked and issued against.
    pub clock: Clock,
    /// How we see the set, sent to each peer with every ping (None: not
    /// sent).
    pub view: Option<ViewSource>,
}

/// Makes our `ClusterView` now.
pub type ViewSource = Arc<dyn Fn() -> isthmus_api::federation::v1::ClusterView + Send + Sync>;

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("entry", &self.entry)
            .field("namespace", &self.namespace)
            .field("ping", &self.ping)
            .field("connect_timeout", &self.connect_timeout)
            .field("backoff_max", &self.backoff_max)
            .field("credentials", &self.credentials)
            .field("credential_policy", &self.credential_policy)
            .finish_non_exhaustive()
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            entry: None,
            namespace: "isthmus-system".into(),
            ping: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(5),
            backoff_max: Duration::from_secs(5),
            credentials: None,
            credential_policy: CredentialPolicy::DEFAULT,
            clock: Arc::new(SystemTime::now),
            view: None,
        }
    }
}

/// Runs a task per link of the published store until `stop`, then waits
/// for the link tasks (each stops with its token, a child of `stop`).
pub fn run(
    mut published: watch::Receiver<Arc<Published>>,
    connector: Arc<Connector>,
    peers: Arc<Peers>,
    credentials: Arc<CredentialStore>,
    settings: Settings,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let links = TaskTracker::new();
        let mut running: BTreeMap<String, (Target, CancellationToken)> = BTreeMap::new();
        loop {
            let (own, wanted) = {
                let p = published.borrow_and_update();
                let snap = &p.store.snapshot;
                let valid = p
                    .catalog
                    .links
                    .east_west
                    .peers
                    .iter()
                    .map(|g| g.cluster.as_str());
                (
                    crate::identity::mesh_cluster_name(snap).unwrap_or_default(),
                    targets(snap, valid),
                )
            };
            running.retain(|peer, (target, token)| {
                let keep = wanted.get(peer) == Some(target);
                if !keep {
                    token.cancel();
                    if !wanted.contains_key(peer) {
                        peers.remove(peer);
                    }
                }
                keep
            });
            for (peer, target) in wanted {
                if running.contains_key(&peer) {
                    continue;
                }
                let token = stop.child_token();
                let link = Link {
                    published: published.clone(),
                    own: own.clone(),
                    target: target.clone(),
                    connector: connector.clone(),
                    peers: peers.clone(),
                    credentials: credentials.clone(),
                    settings: settings.clone(),
                };
                links.spawn(link.run(token.clone()));
                running.insert(peer, (target, token));
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                r = published.changed() => if r.is_err() { break },
            }
        }
        for (_, token) in running.values() {
            token.cancel();
        }
        links.close();
        links.wait().await;
    })
}

struct Link {
    /// For what became of the policies the peer shares with us.
    published: watch::Receiver<Arc<Published>>,
    own: String,
    target: Target,
    connector: Arc<Connector>,
    peers: Arc<Peers>,
    credentials: Arc<CredentialStore>,
    settings: Settings,
}

fn refused(reason: Reason, message: impl Into<String>) -> SyncError {
    SyncError::Refused {
        reason,
        message: message.into(),
    }
}

impl Link {
    async fn run(self, stop: CancellationToken) {
        let peer = self.target.peer.clone();
        // The bundle the peer sent on an earlier stream, kept: trusted
        // before the first connection (its ClusterLink's may be outdated).
        let kept = match self.credentials.load(&bundle_key(&peer)).await {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(peer = %peer, "{e}");
                None
            }
        };
        self.peers.update(&peer, |p| {
            p.partition = Some(self.target.partition);
            if p.trust_domain.is_empty() {
                p.trust_domain = self.target.trust_domain.clone();
            }
            if p.trust_bundle.is_none()
                && let Some(pem) = kept
            {
                p.trust_bundle = Some(super::peers::SyncedBundle {
                    pem,
                    received: None,
                });
            }
        });
        let mut backoff = Duration::from_millis(100);
        loop {
            let started = Instant::now();
            let ended = tokio::select! {
                _ = stop.cancelled() => return,
                e = self.session() => e,
            };
            tracing::info!(peer = %peer, "federation link down: {ended}");
            self.peers
                .update(&peer, |p| p.lost(Some(ended.refusal()), SystemTime::now()));
            // A link that held a while starts over quickly.
            if started.elapsed() > Duration::from_secs(10) {
                backoff = Duration::from_millis(100);
            }
            let wait = backoff.mul_f64(rand::random_range(0.5..1.0));
            backoff = (backoff * 2).min(self.settings.backoff_max);
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// The hello token: the link credential the peer issued us, else the
    /// join token (whether it is the credential).
    async fn token(&self) -> Result<(String, bool), SyncError> {
        let t = &self.target;
        match self.credentials.load(&t.peer).await {
            Ok(Some(credential)) => return Ok((credential, true)),
            Ok(None) => {}
            Err(e) => tracing::warn!(peer = %t.peer, "{e}; trying the join token"),
        }
        match &t.token {
            Ok(token) => Ok((token.clone(), false)),
            Err(why) => Err(refused(Reason::NoCredentials, why.clone())),
        }
    }

    /// One connection, until it fails: why.
    async fn session(&self) -> SyncError {
        let t = &self.target;
        let (token, with_credential) = match self.token().await {
            Ok(t) => t,
            Err(e) => return e,
        };
        let Some(entry) = self.settings.entry else {
            return refused(
                Reason::NoGateway,
                "this control plane does not know its east-west gateway (--gateway-entry)",
            );
        };
        let expect = Expect::Id(
            format!(
                "spiffe://{}/ns/{}/sa/{}",
                t.trust_domain,
                self.settings.namespace,
                crate::identity::tls::SERVICE_ACCOUNT
            )
            .into(),
        );
        let session = match self
            .connector
            .connect_remote(
                entry,
                &t.peer,
                &super::authority(&self.settings.namespace),
                expect,
                self.settings.connect_timeout,
            )
            .await
        {
            Ok(s) => s,
            Err(e) => return connect_error(&t.peer, e),
        };
        let transport = session.transport.clone();
        let channel = match tonic::transport::Endpoint::from_static("http://isthmus-federation")
            .connect_with_connector(Once::new(session))
            .await
        {
            Ok(c) => c,
            Err(e) => return refused(Reason::Unreachable, format!("gRPC to {}: {e}", t.peer)),
        };
        let (tx, rx) = mpsc::channel(4);
        let hello = SyncRequest {
            kind: Some(sync_request::Kind::Hello(Hello {
                cluster: self.own.clone(),
                token,
            })),
        };
        if tx.send(hello).await.is_err() {
            return refused(Reason::Unreachable, "the channel closed");
        }
        let mut client = ClusterSyncClient::new(channel).max_decoding_message_size(64 << 20);
        let mut stream = match tokio::time::timeout(
            self.settings.connect_timeout,
            client.sync(tokio_stream::wrappers::ReceiverStream::new(rx)),
        )
        .await
        {
            Ok(Ok(r)) => r.into_inner(),
            Ok(Err(status)) => {
                let e = status_error(&t.peer, &status);
                // A credential the peer no longer takes (its token key
                // changed, or it expired) is dropped: the next attempt
                // says hello with the join token.
                if with_credential
                    && let SyncError::Refused {
                        reason: Reason::TokenExpired | Reason::TokenInvalid,
                        ..
                    } = &e
                {
                    tracing::info!(peer = %t.peer, "the peer refused our link credential ({e}); trying the join token");
                    if let Err(e) = self.credentials.forget(&t.peer).await {
                        tracing::warn!(peer = %t.peer, "{e}");
                    }
                }
                return e;
            }
            Err(_) => return refused(Reason::Unreachable, format!("{} did not answer", t.peer)),
        };
        let mut ping = tokio::time::interval(self.settings.ping);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut nonce = 0u64;
        let mut pinged: Option<(u64, Instant)> = None;
        let mut heard = Instant::now();
        // What the peer was last told of its policies (None: nothing on
        // this stream yet); checked once its full state is applied.
        let mut published = self.published.clone();
        published.mark_changed();
        let mut told: Option<Vec<isthmus_api::federation::v1::PolicyResult>> = None;
        let mut synced = false;
        loop {
            tokio::select! {
                r = published.changed(), if synced => {
                    if r.is_err() {
                        return refused(Reason::Unreachable, "the control plane is stopping");
                    }
                    let results = published.borrow_and_update().received.for_cluster(&t.peer);
                    if told.as_ref() != Some(&results) {
                        let req = SyncRequest {
                            kind: Some(sync_request::Kind::PolicyStatus(PolicyStatus { results: results.clone() })),
                        };
                        if tx.send(req).await.is_err() {
                            return refused(Reason::Unreachable, "the channel closed");
                        }
                        told = Some(results);
                    }
                }
                m = stream.message() => {
                    let m = match m {
                        Ok(Some(m)) => m,
                        Ok(None) => return refused(Reason::Unreachable, format!("{} closed the channel", t.peer)),
                        Err(status) => return status_error(&t.peer, &status),
                    };
                    heard = Instant::now();
                    match m.kind {
                        Some(sync_response::Kind::Exports(e)) => {
                            if !e.trust_bundle.is_empty()
                                && let Err(e) = self.credentials.save(&bundle_key(&t.peer), &e.trust_bundle).await
                            {
                                tracing::warn!(peer = %t.peer, "keeping its trust bundle: {e}");
                            }
                            let transport = transport.clone();
                            let applied = self.peers.update(&t.peer, |p| {
                                p.transport = transport;
                                p.apply(&e, SystemTime::now())
                            });
                            if let Err(gap) = applied {
                                return refused(Reason::Resync, gap.to_string());
                            }
                            synced = true;
                            tracing::debug!(peer = %t.peer, version = e.version, full = e.full,
                                services = e.services.len(), removed = e.removed.len(), "exports received");
                        }
                        Some(sync_response::Kind::Credential(c)) => {
                            // Kept before it is relied on; a store that
                            // cannot write is said in the log and status
                            // (the link works until a restart).
                            let kept = self.credentials.save(&t.peer, &c.token).await;
                            if let Err(e) = &kept {
                                tracing::warn!(peer = %t.peer, "{e}");
                            }
                            let expires = SystemTime::UNIX_EPOCH + Duration::from_secs(c.expires_unix);
                            self.peers.update(&t.peer, |p| {
                                p.credential = Some(super::peers::Credential {
                                    expires,
                                    not_kept: kept.as_ref().err().map(ToString::to_string),
                                });
                            });
                        }
                        Some(sync_response::Kind::Pong(p)) => {
                            if let Some((n, at)) = pinged.take_if(|(n, _)| *n == p.nonce) {
                                let _ = n;
                                let rtt = at.elapsed();
                                self.peers.update(&t.peer, |x| {
                                    x.rtt = Some(rtt);
                                    if x.connected {
                                        x.last_sync = Some(SystemTime::now());
                                    }
                                });
                            }
                        }
                        None => {}
                    }
                }
                _ = ping.tick() => {
                    if heard.elapsed() > self.settings.ping * 3 {
                        return refused(Reason::Unreachable, format!(
                            "{} did not answer for {} ms", t.peer, heard.elapsed().as_millis()));
                    }
                    if let Some(view) = &self.settings.view {
                        let req = SyncRequest { kind: Some(sync_request::Kind::View(view())) };
                        if tx.send(req).await.is_err() {
                            return refused(Reason::Unreachable, "the channel closed");
                        }
                    }
                    if pinged.is_none() {
                        nonce += 1;
                        pinged = Some((nonce, Instant::now()));
                        let req = SyncRequest { kind: Some(sync_request::Kind::Ping(Ping { nonce })) };
                        if tx.send(req).await.is_err() {
                            return refused(Reason::Unreachable, "the channel closed");
                        }
                    }
                }
            }
        }
    }
}

/// Where a peer's trust bundle is kept beside its credential.
fn bundle_key(peer: &str) -> String {
    format!("{peer}.bundle")
}

/// A failed CONNECT or handshake, as the link's condition says it.
fn connect_error(peer: &str, e: TunnelError) -> SyncError {
    let text = e.to_string();
    let reason = match &e {
        TunnelError::WrongIdentity { .. } | TunnelError::PeerUntrusted { .. } => {
            Reason::TrustMismatch
        }
        TunnelError::Handshake { reason, .. }
            if reason.contains("UnknownIssuer")
                || reason.contains("BadSignature")
                || reason.contains("certificate") =>
        {
            Reason::TrustMismatch
        }
        TunnelError::GatewayRefused { .. } => Reason::GatewayRefused,
        _ => Reason::Unreachable,
    };
    refused(reason, format!("reaching {peer}'s control plane: {text}"))
}

fn status_error(peer: &str, status: &tonic::Status) -> SyncError {
    match Reason::of_message(status.message()) {
        Some(reason) => {
            let message = status
                .message()
                .split_once(':')
                .map_or(status.message(), |(_, m)| m.trim());
            refused(reason, format!("{peer} refused the link: {message}"))
        }
        None => refused(
            Reason::Unreachable,
            format!("{peer}: {} ({:?})", status.message(), status.code()),
        ),
    }
}

/// A connector handing tonic the one session already made.
#[derive(Clone)]
struct Once(Arc<Mutex<Option<RemoteSession>>>);

impl Once {
    fn new(s: RemoteSession) -> Self {
        Self(Arc::new(Mutex::new(Some(s))))
    }
}

impl tower_service::Service<http::Uri> for Once {
    type Response = hyper_util::rt::TokioIo<RemoteSession>;
    type Error = std::io::Error;
    type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Uri) -> Self::Future {
        let s = self.0.lock().take();
        std::future::ready(
            s.map(hyper_util::rt::TokioIo::new)
                .ok_or_else(|| std::io::Error::other("the federation session was used")),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_targets_debug_output_leaves_its_join_token_out() {
        let t = Target {
            peer: "eu-central".into(),
            trust_domain: "eu-central.isthmus.local".into(),
            token: Ok("v1.secret-join-token".into()),
            partition: Partition::DEFAULT,
        };
        let shown = format!("{t:?}");
        assert!(!shown.contains("secret-join-token"), "{shown}");
        assert!(shown.contains("eu-central"), "{shown}");
    }
}
