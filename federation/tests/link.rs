//! `isthmusctl link create` on two `files` store directories (the sample
//! mesh's eu-west and eu-central): the manifests it writes carry the
//! linked cluster's name, locality, trust domain and CA, and a join token
//! that cluster's control plane accepts; the ClusterLink becomes the
//! gateway's peer when applied. Mistakes are refused by name.

use std::path::Path;
use std::time::{Duration, SystemTime};

use isthmus_federation::identity::ca::Ca;
use isthmus_federation::identity::token::TokenKey;
use isthmus_federation::link::{LinkError, Options, create, token_subject};
use isthmus_federation::store::files::{merge, parse_file};
use isthmus_federation::store::{Resource, Snapshot};

mod support;
use support::temp_dir;

fn cluster_dir(tag: &str, golden: &str) -> std::path::PathBuf {
    let dir = temp_dir(tag);
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(golden)
        .join("mesh.yaml");
    std::fs::copy(src, dir.join("mesh.yaml")).unwrap();
    dir
}

fn options() -> Options {
    Options {
        gateway: "10.0.3.1:15443".parse().unwrap(),
        gateway_tcp: None,
        ttl: Duration::from_secs(3600),
        partition: Default::default(),
    }
}

#[test]
fn link_create_writes_a_link_and_a_token_the_peer_accepts() {
    let (a, b) = (
        cluster_dir("link-a", "eu-west"),
        cluster_dir("link-b", "eu-central"),
    );
    let ca = Ca::load_or_create(&b, "eu-central.isthmus.local").unwrap();
    let now = SystemTime::now();
    let yaml = create(&a, &b, &options(), now).unwrap();

    // Applied in eu-west (the files store reads the ClusterLink; it does
    // not keep Secrets): a peer gateway and a trusted domain.
    let (loaded, errors) = parse_file(Path::new("link.yaml"), &yaml);
    let (snap, _) = merge(&Snapshot::default(), loaded, errors);
    let mut problems = Vec::new();
    let links = isthmus_federation::translate::links::translate(&snap, &mut problems);
    assert!(problems.is_empty(), "{problems:?}");
    let peer = &links.east_west.peers[0];
    assert_eq!(peer.cluster, "eu-central");
    assert_eq!(peer.udp, "10.0.3.1:15443");
    assert_eq!(
        peer.identity,
        "spiffe://eu-central.isthmus.local/ns/isthmus-system/sa/isthmus-eastwest"
    );
    assert_eq!(links.trust[0].roots_pem, ca.bundle_pem());
    let Some(Resource::ClusterLink(link)) = snap.of_kind("ClusterLink").next().map(|(_, r)| r)
    else {
        panic!("no ClusterLink in {yaml}");
    };
    assert_eq!(link.spec.region, "eu-central");
    assert_eq!(
        link.spec.credentials_secret_ref.name,
        "isthmus-link-eu-central"
    );

    // The Secret's token: eu-central's control plane accepts it for
    // eu-west, until it expires.
    let docs: Vec<serde_json::Value> = yaml
        .split("\n---\n")
        .skip(1)
        .map(|d| serde_saphyr::from_str(d).unwrap())
        .collect();
    let secret = docs
        .iter()
        .find(|d| d["kind"] == "Secret")
        .expect("a Secret");
    let token = secret["stringData"]["token"]
        .as_str()
        .expect("a token in the Secret");
    let key = TokenKey::load_or_create(&b, "eu-central.isthmus.local").unwrap();
    let id = key.verify(token, now).unwrap();
    assert_eq!(
        id.to_string(),
        format!(
            "spiffe://eu-central.isthmus.local/ns/isthmus-system/sa/{}",
            token_subject("eu-west")
        )
    );
    assert!(
        key.verify(token, now + Duration::from_secs(3601)).is_err(),
        "short-lived"
    );
    let _ = std::fs::remove_dir_all(&a);
    let _ = std::fs::remove_dir_all(&b);
}

#[test]
fn mistakes_are_refused_by_name() {
    let (a, b) = (
        cluster_dir("link-ma", "eu-west"),
        cluster_dir("link-mb", "eu-central"),
    );
    let now = SystemTime::now();
    // eu-central's control plane never ran: no CA to trust yet.
    let e = create(&a, &b, &options(), now).unwrap_err();
    assert!(matches!(e, LinkError::NoCa { .. }), "{e}");
    assert!(
        e.to_string()
            .contains("start that cluster's control plane once")
    );
    // A cluster with itself; two clusters sharing a trust domain.
    Ca::load_or_create(&a, "eu-west.isthmus.local").unwrap();
    assert!(matches!(
        create(&a, &a, &options(), now),
        Err(LinkError::SameCluster(_))
    ));
    let twin = cluster_dir("link-twin", "eu-west");
    std::fs::write(
        twin.join("mesh.yaml"),
        std::fs::read_to_string(twin.join("mesh.yaml"))
            .unwrap()
            .replace("clusterName: eu-west", "clusterName: eu-west-2"),
    )
    .unwrap();
    assert!(matches!(
        create(&twin, &a, &options(), now),
        Err(LinkError::SameTrustDomain { .. })
    ));
    // No Mesh; a token lifetime out of bounds.
    let empty = temp_dir("link-empty");
    assert!(matches!(
        create(&empty, &a, &options(), now),
        Err(LinkError::NoMesh { .. })
    ));
    let long = Options {
        ttl: Duration::from_secs(7 * 24 * 3600),
        ..options()
    };
    assert!(matches!(
        create(&twin, &a, &long, now),
        Err(LinkError::Ttl(_))
    ));
    for d in [a, b, twin, empty] {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[test]
fn the_command_line_writes_the_manifests() {
    let (a, b) = (
        cluster_dir("link-cli-a", "eu-west"),
        cluster_dir("link-cli-b", "eu-central"),
    );
    Ca::load_or_create(&b, "eu-central.isthmus.local").unwrap();
    let out = a.join("link-eu-central.yaml");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_isthmusctl"))
        .args([
            "link",
            "create",
            "--gateway",
            "10.0.3.1:15443",
            "--partition",
            "fail-closed",
        ])
        .arg("--from")
        .arg(&a)
        .arg("--to")
        .arg(&b)
        .arg("--out")
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    let yaml = std::fs::read_to_string(&out).unwrap();
    assert!(
        yaml.contains("kind: ClusterLink") && yaml.contains("kind: Secret"),
        "{yaml}"
    );
    assert!(yaml.contains("FailClosed"), "{yaml}");
    // A bad flag is an error, not a panic.
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_isthmusctl"))
        .args([
            "link",
            "create",
            "--gateway",
            "gw:15443",
            "--from",
            "x",
            "--to",
            "y",
        ])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let _ = std::fs::remove_dir_all(&a);
    let _ = std::fs::remove_dir_all(&b);
}
