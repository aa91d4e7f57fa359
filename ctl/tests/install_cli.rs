//! `isthmusctl install` on the command line, printing: the two steps of
//! the README (`--crds`, then the rest for a cluster), and mistakes named.

use std::process::Command;

fn isthmusctl(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_isthmusctl"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn crds_first_then_the_cluster() {
    let out = isthmusctl(&["install", "--crds"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let yaml = String::from_utf8(out.stdout).unwrap();
    assert_eq!(yaml.matches("kind: CustomResourceDefinition").count(), 12);
    assert!(!yaml.contains("kind: Deployment"));
    let out = isthmusctl(&[
        "install",
        "--crds",
        "--gateway-api-crds=false",
        "--mcs-crds=false",
    ]);
    let yaml = String::from_utf8(out.stdout).unwrap();
    assert_eq!(yaml.matches("kind: CustomResourceDefinition").count(), 7);
    let out = isthmusctl(&["install", "--cluster", "eu-west", "--tag", "dev"]);
    assert!(out.status.success());
    let yaml = String::from_utf8(out.stdout).unwrap();
    assert!(!yaml.contains("kind: CustomResourceDefinition"));
    assert!(yaml.contains("image: ghcr.io/isthmus-mesh/isthmus-federation:dev"));
    assert!(yaml.contains("trustDomain: eu-west.isthmus.local"));
}

#[test]
fn mistakes_are_named() {
    let out = isthmusctl(&["install"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--cluster"));
    for (args, says) in [
        (
            &["install", "--cluster", "EU_West"][..],
            "--cluster \"EU_West\"",
        ),
        (
            &[
                "install",
                "--cluster",
                "a",
                "--gateway-service-type",
                "ClusterIP",
            ],
            "NodePort",
        ),
        (
            &[
                "install",
                "--cluster",
                "a",
                "--injector-failure-policy",
                "Maybe",
            ],
            "Fail or Ignore",
        ),
        (
            &["install", "--cluster", "a", "--replicas", "0"],
            "at least 1",
        ),
    ] {
        let out = isthmusctl(args);
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{args:?}: {err}");
    }
}
