//! The workload's identity, as the sidecar holds it: a private key made
//! here and never sent anywhere, an X.509 SVID for it obtained from the
//! control plane's CA with a CSR (authenticated by a bootstrap or
//! ServiceAccount token), and the trust bundles. The certificate is renewed
//! at half its lifetime (configurable), with a fresh key each time; a
//! failed renewal is retried with backoff while the current certificate is
//! still valid. Holders read `current()` per handshake, so a rotation never
//! touches live connections.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use isthmus_api::ca::v1::SignRequest;
use isthmus_api::ca::v1::certificates_client::CertificatesClient;
use rand::Rng;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// One issued identity. Its Debug output leaves the private key out.
#[derive(Clone)]
pub struct Credentials {
    pub spiffe_id: String,
    pub cert_pem: String,
    pub chain_pem: String,
    /// PKCS#8, PEM. Never leaves the process.
    pub key_pem: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// Roots by trust domain (PEM).
    pub trust_bundles: BTreeMap<String, String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("spiffe_id", &self.spiffe_id)
            .field("key_pem", &"[REDACTED]")
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .field("trust_domains", &self.trust_bundles.keys())
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    /// The control plane's CA (`host:port`, the discovery port).
    pub address: String,
    /// `Bearer` credential: a bootstrap token or a ServiceAccount token
    /// (redacted in Debug output).
    pub token: Bearer,
    pub ttl: Duration,
    /// Renew after this fraction of the lifetime (0.5: at half life).
    pub renew_at: f64,
    /// TLS to the CA; None: plaintext (development only).
    pub tls: Option<crate::tls::control::ControlPlaneConnector>,
}

/// The CA credential: given once, or a file read again for every request
/// (a projected ServiceAccount token, which the kubelet replaces before it
/// expires: a token read once would be refused a day later).
#[derive(Debug, Clone)]
pub enum Bearer {
    Value(secrecy::SecretString),
    File(std::path::PathBuf),
}

impl From<&str> for Bearer {
    fn from(s: &str) -> Self {
        Bearer::Value(s.into())
    }
}

impl From<String> for Bearer {
    fn from(s: String) -> Self {
        Bearer::Value(s.into())
    }
}

impl Bearer {
    fn read(&self) -> Result<secrecy::SecretString, IdentityError> {
        match self {
            Bearer::Value(v) => Ok(v.clone()),
            Bearer::File(path) => std::fs::read_to_string(path)
                .map(|t| t.trim().into())
                .map_err(|e| IdentityError::Token {
                    path: path.clone(),
                    reason: e.to_string(),
                }),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error(
        "cannot read the CA token {path}: {reason} (is the projected ServiceAccount token mounted?)"
    )]
    Token {
        path: std::path::PathBuf,
        reason: String,
    },
    #[error("cannot reach the CA at {address}: {reason}")]
    Connect { address: String, reason: String },
    #[error("the CA at {address} refused: {status}")]
    Refused {
        address: String,
        status: tonic::Status,
    },
    #[error("cannot make a key or CSR: {0}")]
    Key(String),
}

/// Makes a key and a CSR and asks the CA for a certificate.
pub async fn fetch(opts: &Options) -> Result<Credentials, IdentityError> {
    let key = rcgen::KeyPair::generate().map_err(|e| IdentityError::Key(e.to_string()))?;
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .and_then(|c| c.pem())
        .map_err(|e| IdentityError::Key(e.to_string()))?;
    let channel =
        crate::tls::control::channel(&opts.address, opts.tls.as_ref(), Duration::from_secs(5))
            .await
            .map_err(|reason| IdentityError::Connect {
                address: opts.address.clone(),
                reason,
            })?;
    let mut req = tonic::Request::new(SignRequest {
        csr_pem: csr,
        ttl: Some(pbjson_types::Duration {
            seconds: opts.ttl.as_secs() as i64,
            nanos: opts.ttl.subsec_nanos() as i32,
        }),
    });
    let token = opts.token.read()?;
    let bearer = format!("Bearer {}", secrecy::ExposeSecret::expose_secret(&token))
        .parse()
        .map_err(|_| IdentityError::Key("the token is not a valid header value".into()))?;
    req.metadata_mut().insert("authorization", bearer);
    let started = SystemTime::now();
    let resp = CertificatesClient::new(channel)
        .sign(req)
        .await
        .map_err(|status| IdentityError::Refused {
            address: opts.address.clone(),
            status,
        })?
        .into_inner();
    Ok(Credentials {
        spiffe_id: resp.spiffe_id,
        cert_pem: resp.cert_pem,
        chain_pem: resp.chain_pem,
        key_pem: key.serialize_pem(),
        not_before: started,
        not_after: UNIX_EPOCH + Duration::from_secs(u64::try_from(resp.not_after).unwrap_or(0)),
        trust_bundles: resp.trust_bundles,
    })
}

/// Credentials from PEM files written by something outside the mesh (a
/// SPIRE agent, cert-manager, a test): the certificate (leaf first, then
/// any intermediates), its key, and the trust roots (each naming its trust
/// domain with a `spiffe://<td>` URI SAN, as Isthmus CAs do).
pub fn from_files(
    cert: &std::path::Path,
    key: &std::path::Path,
    roots: &std::path::Path,
) -> Result<Credentials, IdentityError> {
    let read = |p: &std::path::Path| {
        std::fs::read_to_string(p)
            .map_err(|e| IdentityError::Key(format!("cannot read {}: {e}", p.display())))
    };
    let (cert_pem, key_pem, roots_pem) = (read(cert)?, read(key)?, read(roots)?);
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let leaf = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .next()
        .ok_or_else(|| IdentityError::Key(format!("{}: no certificate", cert.display())))?
        .map_err(|e| IdentityError::Key(format!("{}: {e}", cert.display())))?;
    let id = crate::spiffe::SpiffeId::from_cert(&leaf)
        .map_err(|e| IdentityError::Key(format!("{}: {e}", cert.display())))?;
    let (_, parsed) = x509_parser::parse_x509_certificate(&leaf)
        .map_err(|e| IdentityError::Key(format!("{}: {e}", cert.display())))?;
    let at = |t: i64| UNIX_EPOCH + Duration::from_secs(u64::try_from(t).unwrap_or(0));
    // Each domain's own roots only: a root must not vouch for another
    // domain's identities.
    let trust_bundles = crate::tls::split_by_domain(&roots_pem, None)
        .map_err(|e| IdentityError::Key(format!("{}: {e}", roots.display())))?;
    Ok(Credentials {
        spiffe_id: id.to_string(),
        cert_pem,
        chain_pem: String::new(),
        key_pem,
        not_before: at(parsed.validity().not_before.timestamp()),
        not_after: at(parsed.validity().not_after.timestamp()),
        trust_bundles,
    })
}

/// When to renew credentials obtained at `from` that expire at `until`.
pub fn renew_time(from: SystemTime, until: SystemTime, fraction: f64) -> SystemTime {
    let life = until.duration_since(from).unwrap_or_default();
    from + life.mul_f64(fraction.clamp(0.0, 1.0))
}

/// The identity a sidecar holds, kept fresh.
pub struct Identity {
    current: ArcSwapOption<Credentials>,
    rotations: watch::Sender<u64>,
    /// True once credentials are held.
    held: watch::Sender<bool>,
    /// Wakes the renewal loop before its time (`renew_now`).
    nudge: tokio::sync::Notify,
}

impl Identity {
    /// Fetches the first credentials, then renews them until `stop`.
    pub async fn start(
        opts: Options,
        stop: CancellationToken,
    ) -> Result<(Arc<Self>, tokio::task::JoinHandle<()>), IdentityError> {
        let first = fetch(&opts).await?;
        tracing::info!(id = %first.spiffe_id, "certificate obtained");
        let me = Arc::new(Self {
            current: ArcSwapOption::from_pointee(first),
            rotations: watch::Sender::new(0),
            held: watch::Sender::new(true),
            nudge: tokio::sync::Notify::new(),
        });
        let this = me.clone();
        let task = tokio::spawn(async move { this.renew(opts, stop).await });
        Ok((me, task))
    }

    /// Starts without credentials and fetches them in the background (with
    /// backoff while the CA is unreachable), then renews them until `stop`.
    /// Readiness of the mesh transport waits for the first certificate.
    pub fn spawn(
        opts: Options,
        stop: CancellationToken,
    ) -> (Arc<Self>, tokio::task::JoinHandle<()>) {
        let me = Self::empty();
        let task = tokio::spawn(me.clone().run(opts, stop));
        (me, task)
    }

    /// Credentials from files (`from_files`), re-read when a file changes
    /// (checked every `poll`) until `stop`: rotation by whoever writes them.
    /// The task re-reading them is returned with the identity.
    pub fn watch_files(
        cert: std::path::PathBuf,
        key: std::path::PathBuf,
        roots: std::path::PathBuf,
        poll: Duration,
        stop: CancellationToken,
    ) -> Result<(Arc<Self>, tokio::task::JoinHandle<()>), IdentityError> {
        let me = Self::fixed(from_files(&cert, &key, &roots)?);
        let this = me.clone();
        let stamp = |paths: &[&std::path::Path; 3]| {
            paths
                .iter()
                .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
                .collect::<Vec<_>>()
        };
        let mut seen = stamp(&[&cert, &key, &roots]);
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(poll) => {}
                }
                let now = stamp(&[&cert, &key, &roots]);
                if now == seen {
                    continue;
                }
                seen = now;
                match from_files(&cert, &key, &roots) {
                    Ok(c) => {
                        this.install(c);
                        tracing::info!("certificate files changed: new certificate in force")
                    }
                    Err(e) => tracing::warn!(
                        "certificate files changed but are unusable, keeping the current ones: {e}"
                    ),
                }
            }
        });
        Ok((me, task))
    }

    /// An identity without credentials yet (see `run`).
    pub fn empty() -> Arc<Self> {
        Arc::new(Self {
            current: ArcSwapOption::empty(),
            rotations: watch::Sender::new(0),
            held: watch::Sender::new(false),
            nudge: tokio::sync::Notify::new(),
        })
    }

    /// Fetches the first credentials (retrying with backoff while the CA
    /// is unreachable or refuses), then renews them until `stop`.
    pub async fn run(self: Arc<Self>, opts: Options, stop: CancellationToken) {
        let mut backoff = Duration::from_millis(200);
        loop {
            match fetch(&opts).await {
                Ok(first) => {
                    tracing::info!(id = %first.spiffe_id, "certificate obtained");
                    self.current.store(Some(Arc::new(first)));
                    self.held.send_replace(true);
                    break;
                }
                Err(e) => {
                    tracing::warn!("no certificate yet, retrying: {e}");
                    let jittered = backoff.mul_f64(rand::rng().random_range(0.5..1.0));
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(jittered) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
        self.renew(opts, stop).await
    }

    /// An identity with fixed credentials, not renewed (tests, or a
    /// certificate managed outside the mesh); `install` replaces them.
    pub fn fixed(creds: Credentials) -> Arc<Self> {
        Arc::new(Self {
            current: ArcSwapOption::from_pointee(creds),
            rotations: watch::Sender::new(0),
            held: watch::Sender::new(true),
            nudge: tokio::sync::Notify::new(),
        })
    }

    /// Puts new credentials in force for the next handshakes; live
    /// connections keep the ones they were made with.
    pub fn install(&self, creds: Credentials) {
        self.current.store(Some(Arc::new(creds)));
        self.rotations.send_modify(|n| *n += 1);
        self.held
            .send_if_modified(|held| !std::mem::replace(held, true));
    }

    /// The credentials in force (read per handshake).
    pub fn current(&self) -> Option<Arc<Credentials>> {
        self.current.load_full()
    }

    /// Waits until credentials are held (at once if they are).
    pub async fn wait_held(&self) {
        let mut rx = self.held.subscribe();
        let _ = rx.wait_for(|h| *h).await;
    }

    /// Renews the certificate now instead of at its time (the CA's signing
    /// root changed, say); no effect on fixed or file credentials.
    pub fn renew_now(&self) {
        self.nudge.notify_one();
    }

    /// Counts rotations.
    pub fn rotations(&self) -> watch::Receiver<u64> {
        self.rotations.subscribe()
    }

    async fn renew(&self, opts: Options, stop: CancellationToken) {
        let mut backoff = Duration::from_millis(200);
        loop {
            let Some(c) = self.current() else { return };
            let at = renew_time(c.not_before, c.not_after, opts.renew_at);
            let wait = at.duration_since(SystemTime::now()).unwrap_or_default();
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
                _ = self.nudge.notified() => {}
            }
            match fetch(&opts).await {
                Ok(next) => {
                    tracing::info!(id = %next.spiffe_id, "certificate rotated");
                    self.install(next);
                    backoff = Duration::from_millis(200);
                }
                Err(e) => {
                    let left = c
                        .not_after
                        .duration_since(SystemTime::now())
                        .unwrap_or_default();
                    tracing::warn!(?left, "certificate renewal failed, retrying: {e}");
                    let jittered = backoff.mul_f64(rand::rng().random_range(0.5..1.0));
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(jittered) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_file_is_read_again_for_every_request() {
        use secrecy::ExposeSecret;
        let path = std::env::temp_dir().join(format!("isthmus-bearer-{}", std::process::id()));
        std::fs::write(&path, "first\n").unwrap();
        let b = Bearer::File(path.clone());
        assert_eq!(b.read().unwrap().expose_secret(), "first");
        // The kubelet replaced the projected token.
        std::fs::write(&path, "second").unwrap();
        assert_eq!(b.read().unwrap().expose_secret(), "second");
        std::fs::remove_file(&path).unwrap();
        let e = b.read().unwrap_err().to_string();
        assert!(e.contains("cannot read the CA token"), "{e}");
        assert!(!format!("{b:?}").contains("second"));
    }

    #[test]
    fn renewal_is_at_the_fraction_of_the_lifetime() {
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let t1 = t0 + Duration::from_secs(24 * 3600);
        assert_eq!(renew_time(t0, t1, 0.5), t0 + Duration::from_secs(12 * 3600));
        assert_eq!(renew_time(t0, t1, 2.0), t1, "never after expiry");
        assert_eq!(renew_time(t1, t0, 0.5), t1, "already expired: now");
    }

    #[test]
    fn debug_output_leaves_secrets_out() {
        let c = Credentials {
            spiffe_id: "spiffe://td/ns/shop/sa/frontend".into(),
            cert_pem: String::new(),
            chain_pem: String::new(),
            key_pem: "-----BEGIN PRIVATE KEY-----\nsecret-key-material".into(),
            not_before: UNIX_EPOCH,
            not_after: UNIX_EPOCH,
            trust_bundles: Default::default(),
        };
        let shown = format!("{c:?}");
        assert!(!shown.contains("secret-key-material"), "{shown}");
        let o = Options {
            address: "cp:15010".into(),
            token: "secret-bootstrap-token".into(),
            ttl: Duration::from_secs(60),
            renew_at: 0.5,
            tls: None,
        };
        let shown = format!("{o:?}");
        assert!(!shown.contains("secret-bootstrap-token"), "{shown}");
    }
}
