//! Bootstrap tokens (`files` mode, where there is no ServiceAccount token
//! to review): a token proves one workload identity until it expires. It
//! is `v1.<namespace>.<service-account>.<expiry>.<mac>`, the MAC an
//! HMAC-SHA256 under the control plane's token key (kept beside the CA,
//! mode 0600) over the trust domain, identity and expiry. The control
//! plane stores no tokens: it can check any it issued, and a new key
//! revokes them all.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::hmac;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::SpiffeId;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error(
        "the bootstrap token is malformed: expected v1.<namespace>.<service-account>.<expiry>.<mac>"
    )]
    Malformed,
    #[error("the bootstrap token expired {0} s ago: issue a new one (isthmus-federation token)")]
    Expired(u64),
    #[error("the bootstrap token was not issued by this control plane (or its key changed)")]
    BadMac,
    #[error("the bootstrap token names an invalid identity: {0}")]
    Identity(String),
}

/// The purpose of the key that signs link credentials (`for_purpose`).
pub const LINK_CREDENTIAL: &str = "isthmus link credential v1";

/// `kube` mode: the Secret (in the control plane's namespace) holding the
/// key that signs join tokens, and its field.
pub const SECRET_NAME: &str = "isthmus-join-token-key";
pub const SECRET_FIELD: &str = "token-key";

pub struct TokenKey {
    key: hmac::Key,
    trust_domain: String,
}

impl TokenKey {
    pub fn new(secret: &[u8], trust_domain: &str) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
            trust_domain: trust_domain.into(),
        }
    }

    /// The key in `dir/ca/token-key`, created (32 random bytes, 0600) on
    /// first use.
    pub fn load_or_create(dir: &Path, trust_domain: &str) -> std::io::Result<Self> {
        let path = dir.join("ca").join("token-key");
        match std::fs::read(&path) {
            Ok(secret) => Ok(Self::new(&secret, trust_domain)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                use std::io::Write;
                use std::os::unix::fs::OpenOptionsExt;
                std::fs::create_dir_all(dir.join("ca"))?;
                let secret: [u8; 32] = rand::random();
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)?;
                f.write_all(&secret)?;
                Ok(Self::new(&secret, trust_domain))
            }
            Err(e) => Err(e),
        }
    }

    /// `kube` mode: the key in the Secret `namespace/name` (field
    /// `token-key`), created (32 random bytes) by the first control plane
    /// replica to start; `link create` reads it from there.
    pub async fn load_or_create_secret(
        client: kube::Client,
        namespace: &str,
        name: &str,
        trust_domain: &str,
    ) -> Result<Self, kube::Error> {
        use k8s_openapi::ByteString;
        use k8s_openapi::api::core::v1::Secret;
        if let Some(key) = Self::load_secret(client.clone(), namespace, name, trust_domain).await? {
            return Ok(key);
        }
        let secret: [u8; 32] = rand::random();
        let object = crate::store::kube::opaque_secret(
            namespace,
            name,
            [(SECRET_FIELD.to_string(), ByteString(secret.to_vec()))],
        );
        let api: kube::Api<Secret> = kube::Api::namespaced(client.clone(), namespace);
        match api.create(&kube::api::PostParams::default(), &object).await {
            Ok(_) => Ok(Self::new(&secret, trust_domain)),
            // Another replica made it first (load theirs), or it is there
            // without a key (say what to do).
            Err(kube::Error::Api(e)) if e.code == 409 => {
                Self::load_secret(client, namespace, name, trust_domain)
                    .await?
                    .ok_or_else(|| {
                        kube::Error::Service(
                            format!(
                                "Secret {namespace}/{name} has no {SECRET_FIELD}: delete it and restart the control plane, which makes a new one (links then need new join tokens)"
                            )
                            .into(),
                        )
                    })
            }
            Err(e) => Err(e),
        }
    }

    /// The key in the Secret `namespace/name`, if it is there.
    pub async fn load_secret(
        client: kube::Client,
        namespace: &str,
        name: &str,
        trust_domain: &str,
    ) -> Result<Option<Self>, kube::Error> {
        use k8s_openapi::api::core::v1::Secret;
        let api: kube::Api<Secret> = kube::Api::namespaced(client, namespace);
        Ok(api.get_opt(name).await?.and_then(|s| {
            let data = s.data.unwrap_or_default();
            let key = data.get(SECRET_FIELD)?;
            (!key.0.is_empty()).then(|| Self::new(&key.0, trust_domain))
        }))
    }

    /// A key for another purpose (HMAC of `purpose` under this key): what
    /// one signs, the other does not accept, and a new token key changes
    /// both. Link credentials are signed with `for_purpose(LINK_CREDENTIAL)`
    /// so none is a join token or a workload's bootstrap token.
    pub fn for_purpose(&self, purpose: &str) -> Self {
        let derived = hmac::sign(&self.key, purpose.as_bytes());
        Self::new(derived.as_ref(), &self.trust_domain)
    }

    /// What the MAC covers.
    fn message(&self, ns: &str, sa: &str, expiry: u64) -> String {
        format!("v1\n{}\n{ns}\n{sa}\n{expiry}", self.trust_domain)
    }

    fn mac(&self, ns: &str, sa: &str, expiry: u64) -> String {
        let msg = self.message(ns, sa, expiry);
        URL_SAFE_NO_PAD.encode(hmac::sign(&self.key, msg.as_bytes()).as_ref())
    }

    /// A token for `ns`/`sa`, valid until `now + ttl`.
    pub fn issue(&self, ns: &str, sa: &str, now: SystemTime, ttl: Duration) -> String {
        let expiry = (now + ttl)
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        format!("v1.{ns}.{sa}.{expiry}.{}", self.mac(ns, sa, expiry))
    }

    /// The identity a token proves at `now`.
    pub fn verify(&self, token: &str, now: SystemTime) -> Result<SpiffeId, TokenError> {
        let parts: Vec<&str> = token.trim().split('.').collect();
        let [v, ns, sa, expiry, mac] = parts[..] else {
            return Err(TokenError::Malformed);
        };
        if v != "v1" {
            return Err(TokenError::Malformed);
        }
        let expiry: u64 = expiry.parse().map_err(|_| TokenError::Malformed)?;
        // hmac::verify compares in constant time.
        let given = URL_SAFE_NO_PAD
            .decode(mac)
            .map_err(|_| TokenError::Malformed)?;
        let msg = self.message(ns, sa, expiry);
        if hmac::verify(&self.key, msg.as_bytes(), &given).is_err() {
            return Err(TokenError::BadMac);
        }
        let now = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if now >= expiry {
            return Err(TokenError::Expired(now - expiry));
        }
        SpiffeId::workload(&self.trust_domain, ns, sa)
            .map_err(|e| TokenError::Identity(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_purpose_key_and_its_parent_accept_none_of_each_others_tokens() {
        let k = TokenKey::new(b"0123456789abcdef0123456789abcdef", "eu-west.isthmus.local");
        let c = k.for_purpose(LINK_CREDENTIAL);
        let now = SystemTime::now();
        let ttl = Duration::from_secs(60);
        let join = k.issue("isthmus-system", "link-eu-central", now, ttl);
        let credential = c.issue("isthmus-system", "link-eu-central", now, ttl);
        assert!(k.verify(&join, now).is_ok());
        assert!(c.verify(&credential, now).is_ok());
        assert_eq!(c.verify(&join, now), Err(TokenError::BadMac));
        assert_eq!(k.verify(&credential, now), Err(TokenError::BadMac));
        // Derived the same way from the same key: the same key (a
        // restarted control plane accepts what it issued before).
        let again = k.for_purpose(LINK_CREDENTIAL);
        assert!(again.verify(&credential, now).is_ok());
        let other = TokenKey::new(b"another key, another control pl.", "eu-west.isthmus.local");
        assert_eq!(
            other.for_purpose(LINK_CREDENTIAL).verify(&credential, now),
            Err(TokenError::BadMac),
            "a new token key revokes the credentials"
        );
    }

    #[test]
    fn tokens_prove_one_identity_until_they_expire() {
        let k = TokenKey::new(b"0123456789abcdef0123456789abcdef", "eu-west.isthmus.local");
        let now = SystemTime::now();
        let t = k.issue("shop", "catalog", now, Duration::from_secs(3600));
        let id = k.verify(&t, now).unwrap();
        assert_eq!(
            id.to_string(),
            "spiffe://eu-west.isthmus.local/ns/shop/sa/catalog"
        );
        assert!(matches!(
            k.verify(&t, now + Duration::from_secs(3601)),
            Err(TokenError::Expired(_))
        ));
        // Another identity with the same MAC, a later expiry, another key
        // or another trust domain: refused.
        let forged = t.replacen(".catalog.", ".admin.", 1);
        assert_eq!(k.verify(&forged, now), Err(TokenError::BadMac));
        let parts: Vec<&str> = t.split('.').collect();
        let later = format!("v1.shop.catalog.{}.{}", u64::MAX, parts[4]);
        assert_eq!(k.verify(&later, now), Err(TokenError::BadMac));
        let other = TokenKey::new(b"another key, another control pl.", "eu-west.isthmus.local");
        assert_eq!(other.verify(&t, now), Err(TokenError::BadMac));
        let other_td = TokenKey::new(b"0123456789abcdef0123456789abcdef", "us-east.isthmus.local");
        assert_eq!(other_td.verify(&t, now), Err(TokenError::BadMac));
        for bad in [
            "",
            "v1.a.b",
            "v2.shop.catalog.1.x",
            "v1.shop.catalog.soon.x",
            "v1.shop.catalog.1.!!",
        ] {
            assert_eq!(k.verify(bad, now), Err(TokenError::Malformed), "{bad:?}");
        }
    }
}
