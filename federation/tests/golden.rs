//! Golden files: the sample mesh's resources (tests/golden/<cluster>/)
//! translate to exactly tests/golden/<cluster>.catalog.json. After an
//! intended change, regenerate with ISTHMUS_UPDATE_GOLDEN=1 and review the
//! diff.

use std::path::PathBuf;

use isthmus_federation::store::Snapshot;
use isthmus_federation::store::files::{load_dir, merge};

#[test]
fn the_sample_mesh_translates_to_its_golden_catalog() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut clusters: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    clusters.sort();
    assert!(!clusters.is_empty());
    for cluster in clusters {
        let (loaded, errors) = load_dir(&root.join(&cluster));
        assert!(errors.is_empty(), "{errors:?}");
        let (snap, _) = merge(&Snapshot::default(), loaded, errors);
        let catalog = isthmus_federation::translate::translate(
            &isthmus_federation::translate::Inputs::new(&snap),
        )
        .filled();
        let problems: Vec<String> = catalog
            .problems
            .iter()
            .map(|p| format!("{} {}: {}: {}", p.kind, p.key, p.reason, p.message))
            .collect();
        let got = serde_json::to_string_pretty(&serde_json::json!({
            "services": catalog.services,
            "problems": problems,
        }))
        .unwrap()
            + "\n";
        let golden = root.join(format!("{cluster}.catalog.json"));
        if std::env::var_os("ISTHMUS_UPDATE_GOLDEN").is_some() {
            std::fs::write(&golden, &got).unwrap();
        }
        let want = std::fs::read_to_string(&golden).unwrap_or_default();
        assert!(
            got == want,
            "{cluster}: translation differs from {} (ISTHMUS_UPDATE_GOLDEN=1 to accept):\n{got}",
            golden.display()
        );
        // And the sidecar would take it.
        let cfg = isthmus_api::model::ProxyConfig {
            services: catalog.services.into_values().collect(),
            ..Default::default()
        };
        let issues = isthmus_api::validate(&cfg);
        assert!(issues.is_empty(), "{issues:?}");
    }
}
