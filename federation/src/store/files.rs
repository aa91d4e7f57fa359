//! The `files` store's reading: a directory of multi-document YAML in
//! exactly the Kubernetes form (what `kubectl apply -f` takes). A bad
//! document is reported with file, line, kind and name and skipped; the
//! rest applies; an object whose new version is bad keeps its last good
//! version (`merge`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use isthmus_api::yaml;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::{KINDS, ObjectKey, Resource, Snapshot};

/// A document that could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocError {
    pub file: PathBuf,
    pub line: usize,
    pub kind: Option<String>,
    pub name: Option<String>,
    pub message: String,
}

impl std::fmt::Display for DocError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Objects from the API server have no file (`kube` store).
        if !self.file.as_os_str().is_empty() {
            write!(f, "{}:{}: ", self.file.display(), self.line)?;
        }
        match (&self.kind, &self.name) {
            (Some(k), Some(n)) => write!(f, "{k} {n}: ")?,
            (Some(k), None) => write!(f, "{k}: ")?,
            _ => {}
        }
        f.write_str(&self.message)
    }
}

/// A document that parsed: the object and where it came from.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub kind: &'static str,
    pub key: ObjectKey,
    /// Shared: a file that did not change is not parsed again, its objects
    /// are reused.
    pub resource: Arc<Resource>,
    pub file: PathBuf,
    pub line: usize,
}

/// The documents of a YAML stream: the 1-based line where each one's text
/// begins, the line of its first content (past comments), the text.
fn documents(text: &str) -> Vec<(usize, usize, String)> {
    let mut docs = Vec::new();
    let mut start = 1;
    let mut cur = String::new();
    for (i, line) in text.lines().enumerate() {
        let marker = line == "---" || line.starts_with("--- ") || line.starts_with("---\t");
        if marker || line == "..." {
            docs.push((start, std::mem::take(&mut cur)));
            start = i + 2;
            continue;
        }
        cur.push_str(line);
        cur.push('\n');
    }
    docs.push((start, cur));
    // Report a document at its first line of content (past leading
    // comments); drop documents without any.
    docs.into_iter()
        .filter_map(|(start, d)| {
            let skip = d
                .lines()
                .position(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))?;
            Some((start, start + skip, d))
        })
        .collect()
}

/// Parses one file's documents.
pub fn parse_file(file: &Path, text: &str) -> (Vec<Loaded>, Vec<DocError>) {
    let mut loaded = Vec::new();
    let mut errors = Vec::new();
    for (offset, start, doc) in documents(text) {
        match parse_doc(file, offset, start, &doc) {
            Ok(l) => loaded.push(l),
            Err(e) => errors.push(e),
        }
    }
    (loaded, errors)
}

/// `offset`: the file line of the document's first line; `start`: the line
/// reported for the document as a whole.
fn parse_doc(file: &Path, offset: usize, start: usize, doc: &str) -> Result<Loaded, DocError> {
    let err = |line: usize, kind: Option<&str>, name: Option<&str>, message: String| DocError {
        file: file.into(),
        line,
        kind: kind.map(str::to_string),
        name: name.map(str::to_string),
        message,
    };
    let at = |pos: Option<(usize, usize)>| pos.map_or(start, |(l, _)| offset + l.saturating_sub(1));
    let raw: Value = yaml::to_value(doc).map_err(|e| {
        err(
            at(e.position.map(|p| (p.line, p.column))),
            None,
            None,
            format!("not valid YAML: {}", e.message),
        )
    })?;
    let text = |v: &Value, path: &[&str]| {
        path.iter()
            .try_fold(v, |v, k| v.get(k))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let api_version = text(&raw, &["apiVersion"]);
    let kind_name = text(&raw, &["kind"]);
    let name = text(&raw, &["metadata", "name"]);
    let (Some(api_version), Some(kind_name)) = (api_version, kind_name) else {
        return Err(err(
            start,
            None,
            name.as_deref(),
            "apiVersion and kind are required".into(),
        ));
    };
    let also = super::ALSO_READ
        .iter()
        .any(|(v, k)| *v == api_version && *k == kind_name);
    let Some(&(_, kind, namespaced)) = KINDS
        .iter()
        .find(|(v, k, _)| (*v == api_version || also) && *k == kind_name)
    else {
        let known: Vec<String> = KINDS.iter().map(|(v, k, _)| format!("{k} ({v})")).collect();
        return Err(err(
            start,
            Some(&kind_name),
            name.as_deref(),
            format!(
                "unsupported apiVersion/kind {api_version}/{kind_name}; this store reads {}",
                known.join(", ")
            ),
        ));
    };
    let Some(name) = name.filter(|n| !n.is_empty()) else {
        return Err(err(
            start,
            Some(kind),
            None,
            "metadata.name is required".into(),
        ));
    };
    let key = ObjectKey {
        namespace: namespaced
            .then(|| text(&raw, &["metadata", "namespace"]).unwrap_or_else(|| "default".into())),
        name: name.clone(),
    };
    let id = key.to_string();
    let fail =
        |pos: Option<(usize, usize)>, message: String| err(at(pos), Some(kind), Some(&id), message);
    // Type errors name the field path as well as the line.
    type Refusal = (Option<(usize, usize)>, String);
    fn located(e: yaml::YamlError) -> Refusal {
        let pos = e.position.map(|p| (p.line, p.column));
        match e.path.as_str() {
            "" => (pos, e.message),
            p => (pos, format!("{p}: {}", e.message)),
        }
    }
    fn typed<T: DeserializeOwned>(raw: &Value, doc: &str) -> Result<T, Refusal> {
        yaml::from_value(raw, doc).map_err(located)
    }
    // Our own kinds: a field we do not know is refused by name, never
    // ignored (the API server prunes them in `kube` mode; a file has no
    // such check). `metadata` and `status` are not ours to judge.
    fn strict<T: DeserializeOwned>(raw: &Value, doc: &str) -> Result<T, Refusal> {
        let (value, unknown) = yaml::from_value_with_unknown(raw, doc).map_err(located)?;
        let unknown: Vec<String> = unknown
            .into_iter()
            .filter(|path| {
                let top = path.split(['.', '[']).next().unwrap_or("");
                !["apiVersion", "kind", "metadata", "status"].contains(&top)
            })
            .collect();
        let Some(first) = unknown.first() else {
            return Ok(value);
        };
        let index = isthmus_api::locate::PathIndex::build(doc);
        let pos = index.position(first).map(|p| (p.line, p.column));
        Err((
            pos,
            format!(
                "{}: unknown field{}: correct or remove it (the object is refused rather than read without it)",
                unknown.join(", "),
                if unknown.len() > 1 { "s" } else { "" }
            ),
        ))
    }
    let resource = match kind {
        "Namespace" => typed(&raw, doc).map(|x| Resource::Namespace(Box::new(x))),
        "Service" => typed(&raw, doc).map(|x| Resource::Service(Box::new(x))),
        "EndpointSlice" => typed::<k8s_openapi::api::discovery::v1::EndpointSlice>(&raw, doc)
            .map(|s| Resource::EndpointSlice(Box::new(super::slice::Slice::from(&s)))),
        "Pod" => typed(&raw, doc).map(|p| Resource::Pod(Box::new(p))),
        "ServiceAccount" => typed(&raw, doc).map(|x| Resource::ServiceAccount(Box::new(x))),
        "Mesh" => strict(&raw, doc).map(|x| Resource::Mesh(Box::new(x))),
        "ClusterLink" => strict(&raw, doc).map(|x| Resource::ClusterLink(Box::new(x))),
        "DestinationPolicy" => strict(&raw, doc).map(|x| Resource::DestinationPolicy(Box::new(x))),
        "AuthorizationPolicy" => strict(&raw, doc).map(|x| Resource::AuthorizationPolicy(Box::new(x))),
        "PeerAuthentication" => strict(&raw, doc).map(|x| Resource::PeerAuthentication(Box::new(x))),
        "RequestAuthentication" => strict(&raw, doc).map(|x| Resource::RequestAuthentication(Box::new(x))),
        "FaultInjection" => strict(&raw, doc).map(|x| Resource::FaultInjection(Box::new(x))),
        "ServiceExport" => typed::<crate::resources::mcs::ServiceExportDoc>(&raw, doc)
            .map(|x| Resource::ServiceExport(Box::new(x.into()))),
        "ServiceImport" => typed(&raw, doc).map(|x| Resource::ServiceImport(Box::new(x))),
        "HTTPRoute" => typed(&raw, doc).map(|x| Resource::HttpRoute(Box::new(x))),
        "GRPCRoute" => typed(&raw, doc).map(|x| Resource::GrpcRoute(Box::new(x))),
        "ReferenceGrant" => typed(&raw, doc).map(|x| Resource::ReferenceGrant(Box::new(x))),
        // A Secret's values never reach a log: a type error names the field,
        // not what it holds.
        "Secret" => typed::<k8s_openapi::api::core::v1::Secret>(&raw, doc)
            .map_err(|(pos, msg)| (pos, without_quoted(&msg)))
            .and_then(|x| {
            let labelled = x
                .metadata
                .labels
                .as_ref()
                .is_some_and(|l| l.contains_key(super::LINK_CREDENTIALS_LABEL));
            if labelled {
                Ok(Resource::Secret(Box::new(x)))
            } else {
                Err((
                    None,
                    format!(
                        "only link credentials are read (Secrets labelled {}); keep other Secrets out of the store directory",
                        super::LINK_CREDENTIALS_LABEL
                    ),
                ))
                }
            }),
        _ => unreachable!("every entry of KINDS is matched"),
    }
    .map_err(|(pos, msg)| fail(pos, msg))?;
    Ok(Loaded {
        kind,
        key,
        resource: Arc::new(resource),
        file: file.into(),
        line: start,
    })
}

/// Reads every `*.yaml` / `*.yml` file under `dir` (sorted, recursively).
pub fn load_dir(dir: &Path) -> (Vec<Loaded>, Vec<DocError>) {
    let mut files = Vec::new();
    collect(dir, &mut files);
    files.sort();
    let mut loaded = Vec::new();
    let mut errors = Vec::new();
    for file in files {
        match std::fs::read_to_string(&file) {
            Ok(text) => {
                let (l, e) = parse_file(&file, &text);
                loaded.extend(l);
                errors.extend(e);
            }
            Err(e) => errors.push(DocError {
                file: file.clone(),
                line: 0,
                kind: None,
                name: None,
                message: format!("cannot read: {e}"),
            }),
        }
    }
    (loaded, errors)
}

/// Parsed files by path, reused while a file's content is unchanged: a
/// change to one file of a large store re-parses that file only.
#[derive(Debug, Default)]
pub struct ParseCache {
    files: std::collections::HashMap<PathBuf, (u64, Vec<Loaded>, Vec<DocError>)>,
}

/// `load_dir`, parsing only the files whose content changed since `cache`
/// saw them.
pub fn load_dir_cached(dir: &Path, cache: &mut ParseCache) -> (Vec<Loaded>, Vec<DocError>) {
    let mut files = Vec::new();
    collect(dir, &mut files);
    files.sort();
    let mut loaded = Vec::new();
    let mut errors = Vec::new();
    let mut next = std::collections::HashMap::with_capacity(files.len());
    for file in files {
        let text = match std::fs::read_to_string(&file) {
            Ok(t) => t,
            Err(e) => {
                errors.push(DocError {
                    file: file.clone(),
                    line: 0,
                    kind: None,
                    name: None,
                    message: format!("cannot read: {e}"),
                });
                continue;
            }
        };
        let hash = content_hash(text.as_bytes());
        let entry = match cache.files.remove(&file) {
            Some(e) if e.0 == hash => e,
            _ => {
                let (l, e) = parse_file(&file, &text);
                (hash, l, e)
            }
        };
        loaded.extend(entry.1.iter().cloned());
        errors.extend(entry.2.iter().cloned());
        next.insert(file, entry);
    }
    cache.files = next;
    (loaded, errors)
}

fn content_hash(bytes: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        let hidden = path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'));
        if hidden {
            continue; // editors' swap files, ConfigMap ..data links
        }
        if path.is_dir() {
            collect(&path, out);
        } else if path.extension().is_some_and(|x| x == "yaml" || x == "yml") {
            out.push(path);
        }
    }
}

/// The next snapshot from a load: every good object; for a document that
/// failed but names its kind and object, that object's version from
/// `prev` stays in force. A second definition of an object is an error and
/// the first one wins. Returns the snapshot and the errors (with the
/// duplicate ones added).
/// The snapshot of one YAML text that must parse cleanly (unit tests).
#[cfg(test)]
pub(crate) fn snapshot_of(text: &str) -> Snapshot {
    let (loaded, errors) = parse_file(Path::new("test.yaml"), text);
    assert!(errors.is_empty(), "{errors:?}");
    merge(&Snapshot::default(), loaded, Vec::new()).0
}

pub fn merge(
    prev: &Snapshot,
    loaded: Vec<Loaded>,
    mut errors: Vec<DocError>,
) -> (Snapshot, Vec<DocError>) {
    let mut objects: BTreeMap<(&'static str, ObjectKey), (Arc<Resource>, PathBuf, usize)> =
        BTreeMap::new();
    for l in loaded {
        let k = (l.kind, l.key.clone());
        if let Some((_, file, line)) = objects.get(&k) {
            errors.push(DocError {
                file: l.file.clone(),
                line: l.line,
                kind: Some(l.kind.into()),
                name: Some(l.key.to_string()),
                message: format!(
                    "defined again (first at {}:{line}); this one is ignored",
                    file.display()
                ),
            });
            continue;
        }
        objects.insert(k, (l.resource, l.file, l.line));
    }
    let mut snap = Snapshot::default();
    for (k, (r, file, _)) in objects {
        snap.origins.insert(k.clone(), file);
        snap.objects.insert(k, r);
    }
    let keep = |snap: &mut Snapshot, k: &(&'static str, ObjectKey), r: &Arc<Resource>| {
        if !snap.objects.contains_key(k) {
            snap.objects.insert(k.clone(), r.clone());
            if let Some(origin) = prev.origins.get(k) {
                snap.origins.insert(k.clone(), origin.clone());
            }
        }
    };
    for e in &errors {
        match (&e.kind, &e.name) {
            // The object is known: its last good version stays.
            (Some(kind), Some(name)) => {
                for (k, r) in &prev.objects {
                    if k.0 == kind.as_str() && k.1.to_string() == *name {
                        keep(&mut snap, k, r);
                    }
                }
            }
            // Unidentifiable (broken YAML, unreadable file): every object
            // its file had that did not load again stays, rather than
            // being deleted by a typo.
            _ => {
                for (k, r) in &prev.objects {
                    if prev.origins.get(k) == Some(&e.file) {
                        keep(&mut snap, k, r);
                    }
                }
            }
        }
    }
    (snap, errors)
}

/// `msg` with every double-quoted part (serde quotes the values it
/// refuses, escaping inner quotes) replaced by `"…"`.
fn without_quoted(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut chars = msg.chars();
    while let Some(c) = chars.next() {
        out.push(c);
        if c != '"' {
            continue;
        }
        out.push_str("…\"");
        let mut escaped = false;
        for c in chars.by_ref() {
            match c {
                '\\' if !escaped => escaped = true,
                '"' if !escaped => break,
                _ => escaped = false,
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_that_does_not_parse_keeps_its_values_out_of_the_error() {
        let text = "apiVersion: v1\nkind: Secret\nmetadata: {name: link, namespace: isthmus-system}\n\
                    stringData: \"hunter2 \\\" and more\"\n";
        let (loaded, errors) = parse_file(Path::new("s.yaml"), text);
        assert!(loaded.is_empty());
        let shown = errors[0].to_string();
        assert!(
            shown.contains("stringData: invalid type: string \"…\", expected a map"),
            "{shown}"
        );
        assert!(
            !shown.contains("hunter2") && !shown.contains("more"),
            "{shown}"
        );
        assert_eq!(without_quoted(r#"a "b \" c" d "e""#), r#"a "…" d "…""#);
    }

    #[test]
    fn a_field_our_kinds_do_not_know_is_refused_by_name_and_line() {
        let text = "apiVersion: isthmus.dev/v1alpha1\nkind: DestinationPolicy\n\
                    metadata: {name: catalog, namespace: shop}\nspec:\n  targetRef: {name: catalog}\n\
                    \x20 timeout: 5s\n  retyr: {attempts: 3}\n";
        let (loaded, errors) = parse_file(Path::new("p.yaml"), text);
        assert!(loaded.is_empty(), "refused, not half-applied");
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].line, 7, "{errors:?}");
        assert!(
            errors[0].message.starts_with("spec.retyr: unknown field"),
            "{errors:?}"
        );
        let fine = text.replace("retyr", "retry");
        let (loaded, errors) = parse_file(Path::new("p.yaml"), &fine);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(loaded.len(), 1);
    }

    #[test]
    fn fingerprints_reread_changed_or_recent_files_only() {
        let dir = std::env::temp_dir().join(format!("isthmus-fp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("a.yaml");
        let set_mtime = |secs_ago: u64| {
            let t = std::time::SystemTime::now() - std::time::Duration::from_secs(secs_ago);
            std::fs::File::options()
                .write(true)
                .open(&f)
                .unwrap()
                .set_modified(t)
                .unwrap();
            t
        };
        let mut fp = Fingerprinter::default();
        std::fs::write(&f, "one").unwrap();
        let recent = fp.fingerprint(&dir);
        std::fs::write(&f, "two").unwrap();
        assert_ne!(
            fp.fingerprint(&dir),
            recent,
            "a same-size edit of a recent file is seen"
        );
        let old = set_mtime(3600);
        let h = fp.fingerprint(&dir);
        // Same size, same (old) mtime, same inode: trusted without reading.
        std::fs::write(&f, "six").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&f)
            .unwrap()
            .set_modified(old)
            .unwrap();
        assert_eq!(fp.fingerprint(&dir), h, "metadata unchanged: not re-read");
        set_mtime(1800);
        assert_ne!(fp.fingerprint(&dir), h, "mtime moved: re-read");
        assert_eq!(
            fp.fingerprint(&dir),
            Fingerprinter::default().fingerprint(&dir),
            "the cache never changes the answer"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn only_changed_files_are_parsed_again() {
        let dir = std::env::temp_dir().join(format!("isthmus-cache-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let svc = |name: &str, port: u16| {
            format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: shop}}\nspec: {{ports: [{{port: {port}}}]}}\n"
            )
        };
        std::fs::write(dir.join("a.yaml"), svc("a", 80)).unwrap();
        std::fs::write(dir.join("b.yaml"), svc("b", 80)).unwrap();
        let mut cache = ParseCache::default();
        let (first, errors) = load_dir_cached(&dir, &mut cache);
        assert!(errors.is_empty());
        std::fs::write(dir.join("b.yaml"), svc("b", 81)).unwrap();
        std::fs::remove_file(dir.join("a.yaml")).unwrap();
        std::fs::write(dir.join("c.yaml"), svc("c", 80)).unwrap();
        let (second, _) = load_dir_cached(&dir, &mut cache);
        let names: Vec<&str> = second.iter().map(|l| l.key.name.as_str()).collect();
        assert_eq!(names, ["b", "c"], "a is gone, c is new");
        let Resource::Service(b) = second[0].resource.as_ref() else {
            panic!("a Service")
        };
        assert_eq!(b.spec.as_ref().unwrap().ports.as_ref().unwrap()[0].port, 81);
        // Unchanged content: the same parsed object, not a new parse.
        let (third, _) = load_dir_cached(&dir, &mut cache);
        assert!(Arc::ptr_eq(&second[1].resource, &third[1].resource));
        assert!(!Arc::ptr_eq(&first[1].resource, &second[0].resource));
        let _ = std::fs::remove_dir_all(&dir);
    }

    const GOOD: &str = r#"# the sample mesh, eu-west
apiVersion: isthmus.dev/v1alpha1
kind: Mesh
metadata:
  name: default
spec:
  clusterName: eu-west
  trustDomain: eu-west.isthmus.local
  locality: {region: eu-west, zone: eu-west-a}
---
apiVersion: v1
kind: Service
metadata:
  name: catalog
  namespace: shop
spec:
  ports: [{name: http, port: 80, targetPort: 8080}]
--- # a canary
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: reviews, namespace: shop}
spec:
  parentRefs: [{kind: Service, group: "", name: reviews}]
  rules:
    - matches: [{headers: [{name: x-canary, value: always}]}]
      backendRefs: [{name: reviews-us-east, port: 80}]
    - backendRefs:
        - {name: reviews, port: 80, weight: 90}
        - {name: reviews-us-east, port: 80, weight: 10}
      timeouts: {request: 2s}
---
apiVersion: isthmus.dev/v1alpha1
kind: DestinationPolicy
metadata: {name: catalog}
spec:
  targetRef: {name: catalog}
  locality: {failover: [eu-central, us-east]}
  retry: {attempts: 2, perTryTimeout: 500ms, retryOn: [connect-failure]}
"#;

    fn file() -> PathBuf {
        PathBuf::from("mesh/eu-west.yaml")
    }

    #[test]
    fn documents_keep_their_starting_lines() {
        let docs = documents("a: 1\n---\nb: 2\n--- # c\n\nc: 3\n---\n# only a comment\n");
        let starts: Vec<(usize, usize)> = docs.iter().map(|(o, l, _)| (*o, *l)).collect();
        assert_eq!(starts, [(1, 1), (3, 3), (5, 6)]);
    }

    #[test]
    fn a_kubernetes_yaml_stream_loads_typed() {
        let (loaded, errors) = parse_file(&file(), GOOD);
        assert!(errors.is_empty(), "{errors:?}");
        let ids: Vec<String> = loaded
            .iter()
            .map(|l| format!("{} {} @{}", l.kind, l.key, l.line))
            .collect();
        assert_eq!(
            ids,
            [
                "Mesh default @2",
                "Service shop/catalog @11",
                "HTTPRoute shop/reviews @19",
                "DestinationPolicy default/catalog @32",
            ]
        );
        let Resource::HttpRoute(route) = loaded[2].resource.as_ref() else {
            panic!("not a route")
        };
        assert_eq!(route.spec.rules[1].backend_refs[1].weight, Some(10));
    }

    #[test]
    fn mcs_v1beta1_reads_as_v1alpha1() {
        let text = "apiVersion: multicluster.x-k8s.io/v1beta1\nkind: ServiceExport\n\
                    metadata: {name: catalog, namespace: shop}\n---\n\
                    apiVersion: multicluster.x-k8s.io/v1beta1\nkind: ServiceImport\n\
                    metadata: {name: catalog, namespace: shop}\n\
                    spec: {type: ClusterSetIP, ips: [240.240.0.9], ports: [{port: 80}]}\n---\n\
                    apiVersion: multicluster.x-k8s.io/v2\nkind: ServiceImport\n\
                    metadata: {name: other, namespace: shop}\n";
        let (loaded, errors) = parse_file(&file(), text);
        let kinds: Vec<&str> = loaded.iter().map(|l| l.kind).collect();
        assert_eq!(kinds, ["ServiceExport", "ServiceImport"]);
        let Resource::ServiceImport(si) = loaded[1].resource.as_ref() else {
            panic!("not an import")
        };
        assert_eq!(si.spec.ips, ["240.240.0.9"]);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0]
                .message
                .contains("unsupported apiVersion/kind multicluster.x-k8s.io/v2/ServiceImport")
        );
    }

    #[test]
    fn bad_documents_are_named_and_skipped() {
        let text = format!(
            "{GOOD}---\n\
             apiVersion: v1\nkind: Service\nmetadata: {{name: broken, namespace: shop}}\nspec:\n  ports: [{{port: eighty}}]\n---\n\
             apiVersion: example.com/v1\nkind: Widget\nmetadata: {{name: w}}\n---\n\
             apiVersion: v1\nkind: Service\nmetadata: {{namespace: shop}}\n---\n\
             apiVersion: isthmus.dev/v1alpha1\nkind: FaultInjection\nmetadata: {{name: slow, namespace: shop}}\nspec:\n  delay: {{fixedDelay: 1.5s, percentage: 10}}\n---\n\
             key: [unclosed\n"
        );
        let (loaded, errors) = parse_file(&file(), &text);
        assert_eq!(loaded.len(), 4, "the good documents still load");
        let shown: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(shown.len(), 5, "{shown:#?}");
        assert_eq!(
            shown[0],
            "mesh/eu-west.yaml:44: Service shop/broken: spec.ports[0].port: invalid type: string \"eighty\", expected i32"
        );
        assert!(
            shown[1].contains(":46: Widget w: unsupported apiVersion/kind example.com/v1/Widget"),
            "{}",
            shown[1]
        );
        assert!(
            shown[2].contains(":50: Service: metadata.name is required"),
            "{}",
            shown[2]
        );
        assert!(
            shown[3].starts_with(
                "mesh/eu-west.yaml:58: FaultInjection shop/slow: spec.delay.fixedDelay: invalid duration \"1.5s\""
            ),
            "{}",
            shown[3]
        );
        assert!(shown[4].contains(":60: not valid YAML"), "{}", shown[4]);
    }

    fn snapshot_of(text: &str, prev: &Snapshot) -> (Snapshot, Vec<DocError>) {
        let (loaded, errors) = parse_file(&file(), text);
        merge(prev, loaded, errors)
    }

    #[test]
    fn a_broken_edit_keeps_the_last_good_version_and_deletions_apply() {
        let (v1, errors) = snapshot_of(GOOD, &Snapshot::default());
        assert!(errors.is_empty());
        assert_eq!(v1.objects.len(), 4);
        // The route gets a bad timeout, the Mesh is removed.
        let edited = GOOD
            .replace("timeouts: {request: 2s}", "timeouts: {request: soon}")
            .replacen("apiVersion: isthmus.dev/v1alpha1\nkind: Mesh", "apiVersion: v1\nkind: Namespace", 1)
            .replace("spec:\n  clusterName: eu-west\n  trustDomain: eu-west.isthmus.local\n  locality: {region: eu-west, zone: eu-west-a}\n", "");
        let (v2, errors) = snapshot_of(&edited, &v1);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].to_string().contains(
                "HTTPRoute shop/reviews: spec.rules[1].timeouts.request: invalid duration"
            )
        );
        let key = ObjectKey {
            namespace: Some("shop".into()),
            name: "reviews".into(),
        };
        let Some(Resource::HttpRoute(kept)) = v2.get("HTTPRoute", &key) else {
            panic!("the last good route is gone")
        };
        assert_eq!(
            kept.spec.rules[1].timeouts.as_ref().unwrap().request,
            Some("2s".into())
        );
        assert!(v2.of_kind("Mesh").next().is_none(), "a removed object goes");
        assert!(v2.of_kind("Namespace").next().is_some());
    }

    #[test]
    fn a_second_definition_is_an_error_and_the_first_wins() {
        let twice = format!(
            "{GOOD}---\napiVersion: v1\nkind: Service\nmetadata: {{name: catalog, namespace: shop}}\nspec: {{}}\n"
        );
        let (snap, errors) = snapshot_of(&twice, &Snapshot::default());
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0]
                .message
                .contains("defined again (first at mesh/eu-west.yaml:11)"),
            "{}",
            errors[0]
        );
        let key = ObjectKey {
            namespace: Some("shop".into()),
            name: "catalog".into(),
        };
        let Some(Resource::Service(svc)) = snap.get("Service", &key) else {
            panic!()
        };
        assert!(
            svc.spec.as_ref().unwrap().ports.is_some(),
            "the first definition wins"
        );
    }
    #[test]
    fn a_document_broken_beyond_recognition_keeps_its_files_objects() {
        let (v1, _) = snapshot_of(GOOD, &Snapshot::default());
        // The Service document loses its closing bracket: not even its kind
        // can be read.
        let broken = GOOD.replace(
            "  ports: [{name: http, port: 80, targetPort: 8080}]",
            "  ports: [{name: http, port: 80, targetPort: 8080}",
        );
        let (v2, errors) = snapshot_of(&broken, &v1);
        assert_eq!(errors.len(), 1);
        assert!(errors[0].kind.is_none(), "{}", errors[0]);
        let key = ObjectKey {
            namespace: Some("shop".into()),
            name: "catalog".into(),
        };
        assert!(
            v2.get("Service", &key).is_some(),
            "the typo did not delete the Service"
        );
        assert_eq!(v2.objects.len(), 4);
        // Another file's error does not hold this file's deletions back.
        let (loaded, _) = parse_file(&file(), &GOOD.replacen("kind: Mesh", "kind: Namespace", 1));
        let other = DocError {
            file: PathBuf::from("elsewhere.yaml"),
            line: 1,
            kind: None,
            name: None,
            message: "broken".into(),
        };
        let (v3, _) = merge(&v1, loaded, vec![other]);
        assert!(v3.of_kind("Mesh").next().is_none());
    }
}

/// What the `files` store publishes: a snapshot, the problems of the last
/// load, and a generation that grows with every change.
#[derive(Debug, Clone, Default)]
pub struct State {
    pub generation: u64,
    pub snapshot: Arc<Snapshot>,
    pub errors: Vec<DocError>,
}

/// Names and a hash of each file's content: what changes when a file does.
/// Content, not modification times: those are only as fine as the kernel's
/// coarse clock, and a same-size edit within one tick would go unseen.
/// Reading a large store every poll is not free either, so a file is read
/// again only when its size, mtime or inode changed, or when its mtime is
/// recent enough for such an edit to hide (git's "racily clean" rule).
#[derive(Debug, Default)]
pub struct Fingerprinter {
    known: std::collections::HashMap<PathBuf, (FileMeta, u64)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct FileMeta {
    len: u64,
    mtime: Option<std::time::SystemTime>,
    ino: u64,
}

/// A file modified this recently is hashed whatever its metadata says.
const RACY: std::time::Duration = std::time::Duration::from_secs(2);

impl Fingerprinter {
    pub fn fingerprint(&mut self, dir: &Path) -> Vec<(PathBuf, u64)> {
        use std::os::unix::fs::MetadataExt;
        let mut files = Vec::new();
        collect(dir, &mut files);
        files.sort();
        let now = std::time::SystemTime::now();
        let mut next = std::collections::HashMap::with_capacity(files.len());
        let out = files
            .into_iter()
            .map(|f| {
                let meta = std::fs::metadata(&f).ok().map(|m| FileMeta {
                    len: m.len(),
                    mtime: m.modified().ok(),
                    ino: m.ino(),
                });
                let racy = meta
                    .as_ref()
                    .and_then(|m| m.mtime)
                    .is_none_or(|t| now.duration_since(t).map_or(true, |age| age < RACY));
                let hash = match (self.known.remove(&f), &meta) {
                    (Some((old, h)), Some(m)) if old == *m && !racy => h,
                    _ => std::fs::read(&f).map_or(0, |b| content_hash(&b)),
                };
                if let Some(m) = meta {
                    next.insert(f.clone(), (m, hash));
                }
                (f, hash)
            })
            .collect();
        self.known = next;
        out
    }
}

/// Watches a directory and publishes a new `State` when its YAML changes.
/// Changes are debounced: a burst of writes (an editor, `kubectl
/// apply`-style tools, a ConfigMap swap) becomes one reload once the
/// directory has been quiet for `debounce`.
pub struct FileWatcher {
    pub dir: PathBuf,
    /// How often the directory is looked at.
    pub poll: std::time::Duration,
    pub debounce: std::time::Duration,
}

impl FileWatcher {
    /// Loads the directory once and starts watching it until `stop`.
    pub fn start(
        self,
        stop: tokio_util::sync::CancellationToken,
    ) -> (
        tokio::sync::watch::Receiver<State>,
        tokio::task::JoinHandle<()>,
    ) {
        // Fingerprint before loading, so a write during the load is seen.
        let mut printer = Fingerprinter::default();
        let mut seen = printer.fingerprint(&self.dir);
        let mut cache = ParseCache::default();
        let first = self.reload(&Snapshot::default(), 1, &mut cache);
        let (tx, rx) = tokio::sync::watch::channel(first);
        let this = Arc::new(self);
        // The first look above seeds it: the first poll does not re-read
        // every file.
        let printer = Arc::new(parking_lot::Mutex::new(printer));
        let task = tokio::spawn(async move {
            // Reading and parsing are blocking work: off the runtime's
            // threads, so discovery streams never wait behind a reload.
            let look = |this: &Arc<Self>| {
                let (this, printer) = (this.clone(), printer.clone());
                tokio::task::spawn_blocking(move || printer.lock().fingerprint(&this.dir))
            };
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(this.poll) => {}
                }
                let Ok(now) = look(&this).await else { return };
                if now == seen {
                    continue;
                }
                // Wait for the writes to settle.
                seen = now;
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(this.debounce) => {}
                    }
                    let Ok(again) = look(&this).await else { return };
                    if again == seen {
                        break;
                    }
                    seen = again;
                }
                let prev = tx.borrow().clone();
                let worker = this.clone();
                let mut c = std::mem::take(&mut cache);
                let Ok((next, c)) = tokio::task::spawn_blocking(move || {
                    let next = worker.reload(&prev.snapshot, prev.generation + 1, &mut c);
                    (next, c)
                })
                .await
                else {
                    return;
                };
                cache = c;
                tx.send_replace(next);
            }
        });
        (rx, task)
    }

    fn reload(&self, prev: &Snapshot, generation: u64, cache: &mut ParseCache) -> State {
        let (loaded, errors) = load_dir_cached(&self.dir, cache);
        let (snapshot, errors) = merge(prev, loaded, errors);
        for e in &errors {
            tracing::error!("resource skipped, its last good version (if any) stays: {e}");
        }
        tracing::info!(
            dir = %self.dir.display(),
            generation,
            objects = snapshot.objects.len(),
            errors = errors.len(),
            "resources loaded"
        );
        State {
            generation,
            snapshot: Arc::new(snapshot),
            errors,
        }
    }
}
