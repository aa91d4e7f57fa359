//! The CA: SVIDs for CSRs, verified the way a sidecar will verify them
//! (rustls-webpki with aws-lc-rs), the root kept across restarts, a
//! plugged-in intermediate, and refusals by name.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use isthmus_federation::identity::{Ca, CaError, SpiffeId};
use rcgen::{CertificateParams, KeyPair};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, UnixTime};

fn csr(requested_names: &[&str]) -> String {
    let key = KeyPair::generate().unwrap();
    let params = CertificateParams::new(
        requested_names
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>(),
    )
    .unwrap();
    params.serialize_request(&key).unwrap().pem().unwrap()
}

fn der(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
}

fn ders(pem: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap()
}

/// Verifies `leaf` (with `chain`) against the roots in `bundle` at `at`,
/// for client auth; the URI SANs on success.
fn verify(bundle: &str, leaf: &str, chain: &str, at: SystemTime) -> Result<Vec<String>, String> {
    let roots = ders(bundle);
    let anchors: Vec<_> = roots
        .iter()
        .map(|r| webpki::anchor_from_trusted_cert(r).unwrap())
        .collect();
    let leaf_der = der(leaf);
    let ee = webpki::EndEntityCert::try_from(&leaf_der).map_err(|e| e.to_string())?;
    let intermediates = ders(chain);
    let t = UnixTime::since_unix_epoch(at.duration_since(UNIX_EPOCH).unwrap());
    ee.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &anchors,
        &intermediates,
        t,
        webpki::KeyUsage::client_auth(),
        None,
        None,
    )
    .map_err(|e| format!("{e:?}"))?;
    let (_, pem) = x509_parser::pem::parse_x509_pem(leaf.as_bytes()).unwrap();
    let cert = pem.parse_x509().unwrap();
    let san = cert.subject_alternative_name().unwrap().unwrap();
    Ok(san
        .value
        .general_names
        .iter()
        .map(|n| format!("{n:?}"))
        .collect())
}

fn id(td: &str) -> SpiffeId {
    SpiffeId::workload(td, "shop", "catalog").unwrap()
}

#[test]
fn svids_name_exactly_the_identity_and_verify_against_the_bundle() {
    let (ca, _) = Ca::generate("eu-west.isthmus.local").unwrap();
    let ttl = Duration::from_secs(3600);
    // The CSR asks for more than it may have: ignored.
    let svid = ca
        .sign(
            &csr(&[
                "evil.example",
                "spiffe://eu-west.isthmus.local/ns/kube-system/sa/admin",
            ]),
            &id("eu-west.isthmus.local"),
            ttl,
        )
        .unwrap();
    let now = SystemTime::now();
    let sans = verify(ca.bundle_pem(), &svid.cert_pem, &svid.chain_pem, now).unwrap();
    assert_eq!(
        sans,
        [r#"URI("spiffe://eu-west.isthmus.local/ns/shop/sa/catalog")"#],
        "only the authenticated identity"
    );
    let left = svid.not_after.duration_since(now).unwrap();
    assert!(
        left <= ttl && left > ttl - Duration::from_secs(60),
        "{left:?}"
    );
    // Expired: refused by the verifier a second after not_after.
    let e = verify(
        ca.bundle_pem(),
        &svid.cert_pem,
        "",
        svid.not_after + Duration::from_secs(1),
    )
    .unwrap_err();
    assert!(e.contains("Expired"), "{e}");
    // Another CA's certificate: unknown issuer.
    let (other, _) = Ca::generate("eu-west.isthmus.local").unwrap();
    let foreign = other
        .sign(&csr(&[]), &id("eu-west.isthmus.local"), ttl)
        .unwrap();
    // (Same issuer name, other key: the signature does not verify.)
    let e = verify(ca.bundle_pem(), &foreign.cert_pem, "", now).unwrap_err();
    assert!(
        e.contains("UnknownIssuer") || e.contains("InvalidSignatureForPublicKey"),
        "{e}"
    );
}

#[test]
fn bad_requests_are_refused_by_name() {
    let (ca, _) = Ca::generate("eu-west.isthmus.local").unwrap();
    let ok = Duration::from_secs(3600);
    let e = ca
        .sign("not a csr", &id("eu-west.isthmus.local"), ok)
        .unwrap_err();
    assert!(matches!(e, CaError::Csr(_)), "{e}");
    // A CSR whose signature does not match its key (proof of possession).
    let good = csr(&[]);
    let mut der = rustls_pki_types::CertificateSigningRequestDer::from_pem_slice(good.as_bytes())
        .unwrap()
        .as_ref()
        .to_vec();
    let last = der.len() - 1;
    der[last] ^= 0xff;
    let tampered = pem_encode("CERTIFICATE REQUEST", &der);
    let e = ca
        .sign(&tampered, &id("eu-west.isthmus.local"), ok)
        .unwrap_err();
    assert!(matches!(e, CaError::Csr(_)), "{e}");
    let e = ca
        .sign(&good, &id("eu-west.isthmus.local"), Duration::from_secs(10))
        .unwrap_err();
    assert!(e.to_string().contains("outside"), "{e}");
    let e = ca
        .sign(&good, &id("us-east.isthmus.local"), ok)
        .unwrap_err();
    assert!(
        e.to_string().contains("not in this CA's trust domain"),
        "{e}"
    );
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    pem::encode(&pem::Pem::new(label, der.to_vec()))
}

#[test]
fn the_root_is_kept_in_the_store_directory() {
    let dir = std::env::temp_dir().join(format!("isthmus-ca-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let first = Ca::load_or_create(&dir, "eu-west.isthmus.local").unwrap();
    let key = dir.join("ca/root-key.pem");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let again = Ca::load_or_create(&dir, "eu-west.isthmus.local").unwrap();
    assert_eq!(
        first.bundle_pem(),
        again.bundle_pem(),
        "same root after restart"
    );
    // Certificates issued after the restart verify against the old bundle.
    let svid = again
        .sign(
            &csr(&[]),
            &id("eu-west.isthmus.local"),
            Duration::from_secs(600),
        )
        .unwrap();
    verify(first.bundle_pem(), &svid.cert_pem, "", SystemTime::now()).unwrap();
    let e = Ca::load_or_create(&dir, "us-east.isthmus.local")
        .err()
        .unwrap();
    assert!(matches!(e, CaError::TrustDomain { .. }), "{e}");
    assert!(e.to_string().contains("\"eu-west.isthmus.local\""), "{e}");
    std::fs::write(&key, "garbage").unwrap();
    let e = Ca::load_or_create(&dir, "eu-west.isthmus.local")
        .err()
        .unwrap();
    assert!(matches!(e, CaError::Invalid { .. }), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_plugged_in_intermediate_issues_svids_that_chain_to_the_operators_root() {
    // The operator's root, and an intermediate it signed for the mesh.
    let (root, root_key_pem) = Ca::generate("eu-west.isthmus.local").unwrap();
    let root_key = KeyPair::from_pem(&root_key_pem).unwrap();
    let root_issuer = rcgen::Issuer::from_ca_cert_pem(root.bundle_pem(), root_key).unwrap();
    let int_key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::default();
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    p.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
    p.distinguished_name
        .push(rcgen::DnType::CommonName, "mesh intermediate");
    let int_cert = p.signed_by(&int_key, &root_issuer).unwrap();
    let ca = Ca::from_pem(
        "eu-west.isthmus.local",
        &int_cert.pem(),
        &int_key.serialize_pem(),
        Some(root.bundle_pem()),
        std::path::Path::new("plugged"),
    )
    .unwrap();
    assert_eq!(
        ca.bundle_pem(),
        root.bundle_pem(),
        "relying parties trust the root"
    );
    let svid = ca
        .sign(
            &csr(&[]),
            &id("eu-west.isthmus.local"),
            Duration::from_secs(600),
        )
        .unwrap();
    assert!(
        !svid.chain_pem.is_empty(),
        "the intermediate travels with the SVID"
    );
    verify(
        ca.bundle_pem(),
        &svid.cert_pem,
        &svid.chain_pem,
        SystemTime::now(),
    )
    .unwrap();
    let e = verify(ca.bundle_pem(), &svid.cert_pem, "", SystemTime::now()).unwrap_err();
    assert!(e.contains("UnknownIssuer"), "without the chain: {e}");
}

/// A control plane on a fresh store directory (the sample mesh's Mesh:
/// trust domain eu-west.isthmus.local) serving its CA with bootstrap
/// tokens: the control plane, the API address, and a token for
/// shop/catalog.
async fn control_plane_with_ca(
    tag: &str,
) -> (
    isthmus_federation::server::ControlPlane,
    std::net::SocketAddr,
    String,
    std::path::PathBuf,
) {
    use isthmus_federation::identity::service::{Authenticator, CaService, DEFAULT_TTL};
    use isthmus_federation::identity::token::TokenKey;
    use isthmus_federation::server::{ControlPlane, Options};
    let dir = std::env::temp_dir().join(format!("isthmus-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/eu-west/mesh.yaml"),
        dir.join("mesh.yaml"),
    )
    .unwrap();
    let cp = ControlPlane::start(Options::new(dir.clone()));
    let td = isthmus_federation::identity::mesh_trust_domain(&cp.published.borrow().store.snapshot)
        .expect("the Mesh names the trust domain");
    assert_eq!(td, "eu-west.isthmus.local");
    let ca = std::sync::Arc::new(Ca::load_or_create(&dir, &td).unwrap());
    let tokens = TokenKey::load_or_create(&dir, &td).unwrap();
    let token = tokens.issue(
        "shop",
        "catalog",
        SystemTime::now(),
        Duration::from_secs(600),
    );
    let l = isthmus_federation::server::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = l.local_addr().unwrap();
    cp.serve_api(
        l,
        Some(CaService::new(
            ca,
            Authenticator::Bootstrap(Box::new(tokens)),
            DEFAULT_TTL,
        )),
        None,
    );
    (cp, addr, token, dir)
}

/// The CA over gRPC, next to discovery on the control plane's port: the
/// identity comes from the bootstrap token, never from the CSR.
#[tokio::test]
async fn the_ca_service_signs_for_the_token_identity_and_refuses_by_name() {
    use isthmus_api::ca::v1::SignRequest;
    use isthmus_api::ca::v1::certificates_client::CertificatesClient;

    let (cp, addr, token, dir) = control_plane_with_ca("ca-svc").await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = CertificatesClient::new(channel);
    let request = |csr_pem: String, token: Option<&str>, ttl: Option<i64>| {
        let mut r = tonic::Request::new(SignRequest {
            csr_pem,
            ttl: ttl.map(|s| pbjson_types::Duration {
                seconds: s,
                nanos: 0,
            }),
        });
        if let Some(t) = token {
            r.metadata_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        r
    };
    let resp = client
        .sign(request(
            csr(&["spiffe://eu-west.isthmus.local/ns/kube-system/sa/admin"]),
            Some(&token),
            Some(3600),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        resp.spiffe_id,
        "spiffe://eu-west.isthmus.local/ns/shop/sa/catalog"
    );
    let bundle = &resp.trust_bundles["eu-west.isthmus.local"];
    let sans = verify(bundle, &resp.cert_pem, &resp.chain_pem, SystemTime::now()).unwrap();
    assert_eq!(sans, [format!("URI({:?})", resp.spiffe_id)]);
    let left = resp.not_after
        - SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
    assert!((3500..=3600).contains(&left), "{left}");

    let e = client
        .sign(request(csr(&[]), None, None))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    assert!(e.message().contains("Bearer"), "{e}");
    let forged = token.replacen(".catalog.", ".admin.", 1);
    let e = client
        .sign(request(csr(&[]), Some(&forged), None))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    assert!(
        e.message().contains("not issued by this control plane"),
        "{e}"
    );
    let e = client
        .sign(request("garbage".into(), Some(&token), None))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    let e = client
        .sign(request(csr(&[]), Some(&token), Some(5)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("outside"), "{e}");
    // Discovery still answers on the same port (routing by service).
    let mut d = isthmus_api::discovery::v1::discovery_client::DiscoveryClient::new(
        tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(isthmus_api::discovery::v1::DiscoveryRequest::default())
        .await
        .unwrap();
    let e = d
        .subscribe(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap_err();
    assert!(e.message().contains("subscribe"), "discovery answered: {e}");
    cp.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// The sidecar side: a key made locally, a CSR to the CA with a bootstrap
/// token, the SVID held and renewed (new key, new certificate) at the
/// configured fraction of its lifetime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_obtains_and_rotates_its_certificate() {
    use isthmus_mesh::identity::{Identity, IdentityError, Options as IdOptions};

    let td = "eu-west.isthmus.local";
    let (cp, addr, token, dir) = control_plane_with_ca("ca-rot").await;
    let stop = tokio_util::sync::CancellationToken::new();
    let opts = IdOptions {
        tls: None,
        address: addr.to_string(),
        token: "v1.shop.catalog.1.bad".into(),
        ttl: Duration::from_secs(60),
        renew_at: 0.02, // ~1.2 s, so the test sees a rotation
    };
    let e = Identity::start(opts.clone(), stop.clone())
        .await
        .err()
        .unwrap();
    assert!(matches!(e, IdentityError::Refused { .. }), "{e}");

    let (identity, task) = Identity::start(
        IdOptions {
            token: token.into(),
            ..opts
        },
        stop.clone(),
    )
    .await
    .unwrap();
    let first = identity.current().unwrap();
    assert_eq!(
        first.spiffe_id,
        "spiffe://eu-west.isthmus.local/ns/shop/sa/catalog"
    );
    verify(
        &first.trust_bundles[td],
        &first.cert_pem,
        &first.chain_pem,
        SystemTime::now(),
    )
    .unwrap();
    let mut rotations = identity.rotations();
    tokio::time::timeout(Duration::from_secs(20), rotations.changed())
        .await
        .expect("rotated at the renewal time")
        .unwrap();
    let second = identity.current().unwrap();
    assert_ne!(second.cert_pem, first.cert_pem);
    assert_ne!(second.key_pem, first.key_pem, "a fresh key each rotation");
    verify(
        &second.trust_bundles[td],
        &second.cert_pem,
        "",
        SystemTime::now(),
    )
    .unwrap();
    stop.cancel();
    task.await.unwrap();
    cp.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
