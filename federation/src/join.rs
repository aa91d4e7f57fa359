//! Join tokens on request (`kube` mode): `isthmusctl link create
//! --to-context B` asks B's control plane for a join token instead of
//! reading the key that signs them (whoever holds that key can mint tokens
//! forever). The mailbox is one Secret, `isthmus-join-tokens`, in the
//! control plane's namespace: the requester writes `request.<cluster>`
//! (the lifetime in seconds), the control plane answers with
//! `token.<cluster>` (or `error.<cluster>`, why not) and removes the
//! request, and the requester takes its answer away. Whoever may patch that
//! one Secret may ask for join tokens; nobody outside the control plane
//! reads the signing key.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use tokio_util::sync::CancellationToken;

use crate::identity::token::TokenKey;
use crate::translate::links::GATEWAY_NAMESPACE;

/// The mailbox Secret, in the control plane's namespace.
pub const SECRET_NAME: &str = "isthmus-join-tokens";

/// The lifetimes a join token may be asked for.
pub const TTL_RANGE: std::ops::RangeInclusive<u64> = 60..=24 * 3600;

#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error(
        "Secret {namespace}/{SECRET_NAME}: {reason} (asking for a join token needs get and patch on that Secret, and create on Secrets the first time, in the peer cluster's control-plane namespace)"
    )]
    Kube { namespace: String, reason: String },
    #[error("the control plane refused the join token: {0}")]
    Refused(String),
    #[error(
        "no join token from the control plane within {} s (Secret {namespace}/{SECRET_NAME}): is it running, with --federation, in that namespace?",
        waited.as_secs()
    )]
    NoAnswer { namespace: String, waited: Duration },
}

fn field(kind: &str, cluster: &str) -> String {
    format!("{kind}.{cluster}")
}

fn text(data: &BTreeMap<String, ByteString>, key: &str) -> Option<String> {
    data.get(key)
        .map(|b| String::from_utf8_lossy(&b.0).trim().to_string())
}

/// Field edits of the mailbox: a value to set, or `None` to remove.
pub type Edits = BTreeMap<String, Option<String>>;

/// The control plane's answers to the requests in the mailbox's `data`
/// (pure): per request, a token (or why not) written and the request
/// removed; empty when nothing is asked.
pub fn answer(data: &BTreeMap<String, ByteString>, key: &TokenKey, now: SystemTime) -> Edits {
    let mut edits = Edits::new();
    for (name, _) in data.iter().filter(|(k, _)| k.starts_with("request.")) {
        let cluster = &name["request.".len()..];
        edits.insert(name.clone(), None);
        let ttl = text(data, name).and_then(|t| t.parse::<u64>().ok());
        let reply = match ttl {
            _ if !isthmus_api::validate::is_dns_label(cluster) => {
                Err(format!("{cluster:?} is not a cluster name"))
            }
            Some(s) if TTL_RANGE.contains(&s) => Ok(key.issue(
                GATEWAY_NAMESPACE,
                &token_subject(cluster),
                now,
                Duration::from_secs(s),
            )),
            _ => Err(format!(
                "the lifetime asked for {cluster} is not {}..={} seconds",
                TTL_RANGE.start(),
                TTL_RANGE.end()
            )),
        };
        let (token, why) = match reply {
            Ok(t) => (Some(t), None),
            Err(w) => (None, Some(w)),
        };
        edits.insert(field("token", cluster), token);
        edits.insert(field("error", cluster), why);
    }
    edits
}

/// Applies `edits` to the mailbox in `namespace` (made on first use).
async fn edit(client: &kube::Client, namespace: &str, edits: Edits) -> Result<(), JoinError> {
    let fields = edits
        .into_iter()
        .map(|(k, v)| (k, v.map(|v| ByteString(v.into_bytes()))))
        .collect();
    crate::store::kube::patch_secret_fields(client, namespace, SECRET_NAME, fields)
        .await
        .map_err(|e| kube_error(namespace, e))
}

fn kube_error(namespace: &str, e: kube::Error) -> JoinError {
    JoinError::Kube {
        namespace: namespace.into(),
        reason: e.to_string(),
    }
}

/// Answers what the mailbox in `namespace` asks now (one GET, and a PATCH
/// when something is asked): whether it answered anything.
pub async fn serve_once(
    client: &kube::Client,
    namespace: &str,
    key: &TokenKey,
    now: SystemTime,
) -> Result<bool, JoinError> {
    let api: kube::Api<Secret> = kube::Api::namespaced(client.clone(), namespace);
    let Some(secret) = api
        .get_opt(SECRET_NAME)
        .await
        .map_err(|e| kube_error(namespace, e))?
    else {
        return Ok(false);
    };
    let edits = answer(&secret.data.unwrap_or_default(), key, now);
    if edits.is_empty() {
        return Ok(false);
    }
    edit(client, namespace, edits).await?;
    Ok(true)
}

/// Answers the mailbox whenever it changes, until `stop` (a watch of the
/// one Secret, by name: the Role grants nothing wider).
pub async fn serve(
    client: kube::Client,
    namespace: String,
    key: std::sync::Arc<TokenKey>,
    stop: CancellationToken,
) {
    use futures_util::StreamExt;
    use kube::runtime::{WatchStreamExt, watcher};
    let api: kube::Api<Secret> = kube::Api::namespaced(client.clone(), &namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={SECRET_NAME}"));
    // Errors are retried with backoff by the watcher itself.
    let mut events = std::pin::pin!(watcher(api, config).default_backoff());
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => return,
            e = events.next() => e,
        };
        match event {
            None => return,
            Some(Err(e)) => {
                tracing::warn!("join token requests (Secret {namespace}/{SECRET_NAME}): {e}");
            }
            Some(Ok(watcher::Event::Apply(_) | watcher::Event::InitDone)) => {
                match serve_once(&client, &namespace, &key, SystemTime::now()).await {
                    Ok(true) => tracing::info!("join token request answered"),
                    Ok(false) => {}
                    Err(e) => tracing::warn!("answering a join token request: {e}"),
                }
            }
            Some(Ok(_)) => {}
        }
    }
}

/// Asks the control plane behind `client` (its namespace `namespace`) for a
/// join token for cluster `cluster`, good for `ttl`; waits up to `wait`
/// for the answer, polling every `poll`, and takes the answer away.
pub async fn request(
    client: &kube::Client,
    namespace: &str,
    cluster: &str,
    ttl: Duration,
    wait: Duration,
    poll: Duration,
) -> Result<String, JoinError> {
    let api: kube::Api<Secret> = kube::Api::namespaced(client.clone(), namespace);
    let err = |e| kube_error(namespace, e);
    let ask = Edits::from([
        (field("request", cluster), Some(ttl.as_secs().to_string())),
        (field("token", cluster), None),
        (field("error", cluster), None),
    ]);
    edit(client, namespace, ask).await?;
    let until = tokio::time::Instant::now() + wait;
    loop {
        let data = api
            .get_opt(SECRET_NAME)
            .await
            .map_err(err)?
            .and_then(|s| s.data)
            .unwrap_or_default();
        let (token, why) = (
            text(&data, &field("token", cluster)),
            text(&data, &field("error", cluster)),
        );
        if token.is_some() || why.is_some() {
            let take = Edits::from([
                (field("token", cluster), None),
                (field("error", cluster), None),
            ]);
            edit(client, namespace, take).await?;
            return match (token, why) {
                (Some(t), _) => Ok(t),
                (None, why) => Err(JoinError::Refused(why.unwrap_or_default())),
            };
        }
        if tokio::time::Instant::now() >= until {
            return Err(JoinError::NoAnswer {
                namespace: namespace.into(),
                waited: wait,
            });
        }
        tokio::time::sleep(poll).await;
    }
}

/// The service account a join token for cluster `a` names (in the
/// control plane's namespace of the cluster that issued it).
pub fn token_subject(a: &str) -> String {
    format!("link-{a}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(fields: &[(&str, &str)]) -> BTreeMap<String, ByteString> {
        fields
            .iter()
            .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
            .collect()
    }

    /// The value an edit sets.
    fn set<'e>(e: &'e Edits, field: &str) -> Option<&'e str> {
        e.get(field)?.as_deref()
    }

    #[test]
    fn requests_are_answered_with_a_token_or_why_not_and_removed() {
        let key = TokenKey::new(
            b"0123456789abcdef0123456789abcdef",
            "eu-central.isthmus.local",
        );
        let now = SystemTime::now();
        assert_eq!(answer(&data(&[]), &key, now), Edits::new());
        assert_eq!(
            answer(&data(&[("token.eu-west", "v1.x")]), &key, now),
            Edits::new(),
            "answers wait for their requester"
        );
        let p = answer(
            &data(&[
                ("request.eu-west", "3600"),
                ("request.us-east", "5"),
                ("request.Bad_Name", "3600"),
                ("request.ap-south", "soon"),
            ]),
            &key,
            now,
        );
        for r in ["eu-west", "us-east", "Bad_Name", "ap-south"] {
            assert_eq!(p.get(&format!("request.{r}")), Some(&None), "{r} removed");
        }
        let token = set(&p, "token.eu-west").unwrap();
        let id = key.verify(token, now).unwrap();
        assert_eq!(id.service_account(), Some("link-eu-west"));
        assert!(key.verify(token, now + Duration::from_secs(3601)).is_err());
        assert_eq!(p.get("error.eu-west"), Some(&None), "a stale error removed");
        assert!(set(&p, "error.us-east").unwrap().contains("60..=86400"));
        assert_eq!(p.get("token.us-east"), Some(&None), "a stale token removed");
        assert!(
            set(&p, "error.Bad_Name")
                .unwrap()
                .contains("not a cluster name")
        );
        assert!(set(&p, "error.ap-south").is_some());
    }
}
