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
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::identity::token::TokenKey;
use crate::translate::links::GATEWAY_NAMESPACE;

/// The mailbox Secret, in the control plane's namespace.
pub const SECRET_NAME: &str = "isthmus-join-tokens";

/// The lifetimes a join token may be asked for.
pub const TTL_RANGE: std::ops::RangeInclusive<u64> = 60..=24 * 3600;

#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("Secret {namespace}/{SECRET_NAME}: {reason}")]
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

fn b64(s: &str) -> Value {
    use base64::Engine;
    Value::String(base64::engine::general_purpose::STANDARD.encode(s))
}

/// The control plane's answers to the requests in the mailbox's `data`
/// (pure): a JSON merge patch writing a token (or why not) per request and
/// removing it; None when nothing is asked.
pub fn answer(
    data: &BTreeMap<String, ByteString>,
    key: &TokenKey,
    now: SystemTime,
) -> Option<Value> {
    let mut patch = serde_json::Map::new();
    for (name, _) in data.iter().filter(|(k, _)| k.starts_with("request.")) {
        let cluster = &name["request.".len()..];
        patch.insert(name.clone(), Value::Null);
        let ttl = text(data, name).and_then(|t| t.parse::<u64>().ok());
        let reply = if !is_cluster_name(cluster) {
            Err(format!("{cluster:?} is not a cluster name"))
        } else {
            match ttl {
                Some(s) if TTL_RANGE.contains(&s) => Ok(key.issue(
                    GATEWAY_NAMESPACE,
                    &crate::link::token_subject(cluster),
                    now,
                    Duration::from_secs(s),
                )),
                _ => Err(format!(
                    "the lifetime asked for {cluster} is not {}..={} seconds",
                    TTL_RANGE.start(),
                    TTL_RANGE.end()
                )),
            }
        };
        let (ok, err) = (field("token", cluster), field("error", cluster));
        match reply {
            Ok(token) => {
                patch.insert(ok, b64(&token));
                patch.insert(err, Value::Null);
            }
            Err(why) => {
                patch.insert(err, b64(&why));
                patch.insert(ok, Value::Null);
            }
        }
    }
    (!patch.is_empty()).then(|| json!({ "data": patch }))
}

/// A Mesh clusterName: a DNS label (what the ClusterLink's `peer` allows).
fn is_cluster_name(s: &str) -> bool {
    let ok = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    (1..=63).contains(&s.len())
        && s.bytes().all(|c| ok(c) || c == b'-')
        && s.bytes().next().is_some_and(ok)
        && s.bytes().last().is_some_and(ok)
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
    let Some(patch) = answer(&secret.data.unwrap_or_default(), key, now) else {
        return Ok(false);
    };
    api.patch(SECRET_NAME, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|e| kube_error(namespace, e))?;
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
    use kube::runtime::watcher;
    let api: kube::Api<Secret> = kube::Api::namespaced(client.clone(), &namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={SECRET_NAME}"));
    let mut events = std::pin::pin!(watcher(api, config));
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => return,
            e = events.next() => e,
        };
        match event {
            None => return,
            Some(Err(e)) => {
                tracing::warn!("join token requests (Secret {namespace}/{SECRET_NAME}): {e}");
                // The watcher retries; do not spin on a failing API.
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
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
    let ask = json!({"data": {
        field("request", cluster): b64(&ttl.as_secs().to_string()),
        field("token", cluster): null,
        field("error", cluster): null,
    }});
    match api
        .patch(SECRET_NAME, &PatchParams::default(), &Patch::Merge(&ask))
        .await
    {
        Err(kube::Error::Api(e)) if e.code == 404 => {
            let secret = crate::store::kube::opaque_secret(
                namespace,
                SECRET_NAME,
                [(
                    field("request", cluster),
                    ByteString(ttl.as_secs().to_string().into_bytes()),
                )],
            );
            api.create(&PostParams::default(), &secret)
                .await
                .map_err(err)?;
        }
        r => {
            r.map_err(err)?;
        }
    }
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
            let take = json!({"data": {
                field("token", cluster): null,
                field("error", cluster): null,
            }});
            api.patch(SECRET_NAME, &PatchParams::default(), &Patch::Merge(&take))
                .await
                .map_err(err)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn data(fields: &[(&str, &str)]) -> BTreeMap<String, ByteString> {
        fields
            .iter()
            .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
            .collect()
    }

    fn decoded(patch: &Value, field: &str) -> Option<String> {
        use base64::Engine;
        let v = patch["data"][field].as_str()?;
        let bytes = base64::engine::general_purpose::STANDARD.decode(v).unwrap();
        Some(String::from_utf8(bytes).unwrap())
    }

    #[test]
    fn requests_are_answered_with_a_token_or_why_not_and_removed() {
        let key = TokenKey::new(
            b"0123456789abcdef0123456789abcdef",
            "eu-central.isthmus.local",
        );
        let now = SystemTime::now();
        assert_eq!(answer(&data(&[]), &key, now), None);
        assert_eq!(
            answer(&data(&[("token.eu-west", "v1.x")]), &key, now),
            None,
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
        )
        .unwrap();
        for r in ["eu-west", "us-east", "Bad_Name", "ap-south"] {
            assert_eq!(
                p["data"][format!("request.{r}")],
                Value::Null,
                "{r} removed"
            );
        }
        let token = decoded(&p, "token.eu-west").unwrap();
        let id = key.verify(&token, now).unwrap();
        assert_eq!(id.service_account, "link-eu-west");
        assert!(key.verify(&token, now + Duration::from_secs(3601)).is_err());
        assert_eq!(p["data"]["error.eu-west"], Value::Null);
        assert!(decoded(&p, "error.us-east").unwrap().contains("60..=86400"));
        assert_eq!(p["data"]["token.us-east"], Value::Null);
        assert!(
            decoded(&p, "error.Bad_Name")
                .unwrap()
                .contains("not a cluster name")
        );
        assert!(decoded(&p, "error.ap-south").is_some());
    }
}
