//! The `files` store watching a real directory: edits apply after the
//! debounce, a burst of writes is one reload, a broken edit keeps the last
//! good version and is reported.

use std::path::Path;
use std::time::Duration;

use isthmus_federation::store::files::{FileWatcher, State};
use isthmus_federation::store::{ObjectKey, Resource};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

fn route(weight_v1: u32, weight_v2: u32) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: reviews, namespace: shop}}\n\
         spec:\n  parentRefs: [{{kind: Service, group: \"\", name: reviews}}]\n  rules:\n\
         \x20   - backendRefs:\n        - {{name: reviews, port: 80, weight: {weight_v1}}}\n        - {{name: reviews-us-east, port: 80, weight: {weight_v2}}}\n"
    )
}

fn weights(state: &State) -> Vec<Option<u32>> {
    let key = ObjectKey {
        namespace: Some("shop".into()),
        name: "reviews".into(),
    };
    match state.snapshot.get("HTTPRoute", &key) {
        Some(Resource::HttpRoute(r)) => r.spec.rules[0]
            .backend_refs
            .iter()
            .map(|b| b.weight)
            .collect(),
        other => panic!("no route: {other:?}"),
    }
}

/// Waits (with a deadline) for a state that satisfies `ok`.
async fn until(rx: &mut watch::Receiver<State>, ok: impl Fn(&State) -> bool) -> State {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            {
                let s = rx.borrow_and_update();
                if ok(&s) {
                    return s.clone();
                }
            }
            rx.changed().await.expect("watcher alive");
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "the store never reached the expected state: {:?}",
            rx.borrow().errors
        )
    })
}

fn write(dir: &Path, name: &str, text: &str) {
    // Write then rename, as editors and ConfigMap updates do.
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(tmp, dir.join(name)).unwrap();
}

#[tokio::test]
async fn edits_apply_bursts_coalesce_and_broken_edits_keep_the_last_good() {
    let dir = std::env::temp_dir().join(format!("isthmus-files-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("shop")).unwrap();
    write(&dir.join("shop"), "reviews.yaml", &route(90, 10));
    let stop = CancellationToken::new();
    let (mut rx, task) = FileWatcher {
        dir: dir.clone(),
        poll: Duration::from_millis(20),
        debounce: Duration::from_millis(100),
    }
    .start(stop.clone());
    let first = rx.borrow().clone();
    assert_eq!(first.generation, 1);
    assert_eq!(weights(&first), [Some(90), Some(10)]);

    // A burst of edits lands as one reload with the last content.
    for (a, b) in [(80, 20), (70, 30), (50, 50)] {
        write(&dir.join("shop"), "reviews.yaml", &route(a, b));
    }
    let s = until(&mut rx, |s| weights(s) == [Some(50), Some(50)]).await;
    assert!(s.errors.is_empty());
    assert_eq!(s.generation, 2, "the burst was one reload");

    // A broken edit: reported with file and line, the last good version stays.
    write(
        &dir.join("shop"),
        "reviews.yaml",
        &route(50, 50).replace("weight: 50}", "weight: lots}"),
    );
    let s = until(&mut rx, |s| !s.errors.is_empty()).await;
    assert_eq!(weights(&s), [Some(50), Some(50)]);
    let e = s.errors[0].to_string();
    assert!(
        e.contains("reviews.yaml:8: HTTPRoute shop/reviews: spec.rules[0].backendRefs[0].weight"),
        "{e}"
    );

    // Fixed again, and a new file appears: both apply.
    write(&dir.join("shop"), "reviews.yaml", &route(0, 100));
    write(
        &dir,
        "mesh.yaml",
        "apiVersion: isthmus.dev/v1alpha1\nkind: Mesh\nmetadata: {name: default}\nspec: {clusterName: eu-west, trustDomain: eu-west.isthmus.local, locality: {region: eu-west}}\n",
    );
    let s = until(&mut rx, |s| {
        s.snapshot.of_kind("Mesh").count() == 1 && s.errors.is_empty()
    })
    .await;
    assert_eq!(weights(&s), [Some(0), Some(100)]);

    stop.cancel();
    task.await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
