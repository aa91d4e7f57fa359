//! Request authentication with JWT (origin authentication): the
//! workload's JwtPolicies compiled once per configuration, applied to each
//! inbound HTTP request before authorization. A request on a covered path
//! must carry `Authorization: Bearer <jwt>` signed by a key of one of the
//! rules' JWKS, from that rule's issuer, for one of its audiences, and
//! neither expired nor not yet valid; its `iss/sub` and claims are then
//! usable in AuthorizationPolicy. Excluded paths need no token (one that is
//! sent and valid is still read).
//!
//! Signatures: RS256/384/512 and ES256/384 (aws-lc-rs). A JWKS file is read
//! when the configuration is applied and again, at most every 5 s, when a
//! token names a key id the file did not have (the usual key roll).

use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_lc_rs::signature::{self, UnparsedPublicKey};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::HeaderMap;
use isthmus_api::model;

use crate::authz::{Claims, Pattern, selects};

/// Clock skew tolerated on `exp` and `nbf`.
pub const LEEWAY: Duration = Duration::from_secs(30);
const FILE_REREAD: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("no bearer token (send Authorization: Bearer <jwt>)")]
    Missing,
    #[error("the token is not a JWT (three base64url parts with JSON header and claims)")]
    Malformed,
    #[error("algorithm {0:?} is not accepted (RS256/384/512, ES256/384)")]
    Algorithm(String),
    #[error("issuer {0:?} is not trusted here")]
    Issuer(String),
    #[error("no key of issuer {issuer:?} matches the token (kid {kid:?})")]
    UnknownKey { issuer: String, kid: String },
    #[error("the signature does not verify")]
    Signature,
    #[error("the token expired")]
    Expired,
    #[error("the token is not valid yet (nbf)")]
    NotYetValid,
    #[error("the token's audience is not one of {0:?}")]
    Audience(Vec<String>),
}

#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("cannot read JWKS file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("JWKS of {issuer:?} is not a JWKS document: {reason}")]
    Parse { issuer: String, reason: String },
}

#[derive(Debug, Clone)]
enum Key {
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// Uncompressed SEC1 point (04 || x || y).
    Ec {
        crv: &'static str,
        point: Vec<u8>,
    },
}

#[derive(Debug, Clone)]
struct Jwk {
    kid: Option<String>,
    alg: Option<String>,
    key: Key,
}

fn parse_jwks(issuer: &str, text: &str) -> Result<Vec<Jwk>, JwksError> {
    let bad = |reason: String| JwksError::Parse {
        issuer: issuer.to_string(),
        reason,
    };
    let doc: serde_json::Value = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
    let keys = doc
        .get("keys")
        .and_then(|k| k.as_array())
        .ok_or_else(|| bad("no \"keys\" array".into()))?;
    let field = |k: &serde_json::Value, name: &str| -> Result<Vec<u8>, JwksError> {
        let s = k
            .get(name)
            .and_then(|v| v.as_str())
            .ok_or_else(|| bad(format!("a key lacks {name:?}")))?;
        URL_SAFE_NO_PAD
            .decode(s.trim_end_matches('='))
            .map_err(|e| bad(format!("{name}: {e}")))
    };
    let mut out = Vec::new();
    for k in keys {
        let key = match k.get("kty").and_then(|v| v.as_str()) {
            Some("RSA") => {
                let strip = |mut v: Vec<u8>| {
                    let z = v.iter().take_while(|b| **b == 0).count();
                    v.drain(..z);
                    v
                };
                Key::Rsa {
                    n: strip(field(k, "n")?),
                    e: strip(field(k, "e")?),
                }
            }
            Some("EC") => {
                let crv = match k.get("crv").and_then(|v| v.as_str()) {
                    Some("P-256") => "P-256",
                    Some("P-384") => "P-384",
                    other => return Err(bad(format!("curve {other:?} is not supported"))),
                };
                let mut point = vec![4u8];
                point.extend(field(k, "x")?);
                point.extend(field(k, "y")?);
                Key::Ec { crv, point }
            }
            // Other key types (oct, OKP) are skipped, as verifiers do.
            _ => continue,
        };
        out.push(Jwk {
            kid: k.get("kid").and_then(|v| v.as_str()).map(str::to_string),
            alg: k.get("alg").and_then(|v| v.as_str()).map(str::to_string),
            key,
        });
    }
    Ok(out)
}

#[derive(Debug)]
struct Keys {
    keys: Vec<Jwk>,
    read_at: Instant,
}

#[derive(Debug)]
struct RuleSpec {
    issuer: String,
    audiences: Vec<String>,
    file: Option<PathBuf>,
    keys: Mutex<Keys>,
}

impl RuleSpec {
    fn key_for(&self, kid: Option<&str>, alg: &str) -> Option<Jwk> {
        let find = |keys: &Keys| {
            keys.keys
                .iter()
                .find(|k| {
                    kid.is_none_or(|kid| k.kid.as_deref() == Some(kid))
                        && k.alg.as_deref().is_none_or(|a| a == alg)
                        && key_fits(&k.key, alg)
                })
                .cloned()
        };
        let mut keys = self.keys.lock();
        if let Some(k) = find(&keys) {
            return Some(k);
        }
        // A key roll: re-read the file, not more often than FILE_REREAD.
        let path = self.file.as_ref()?;
        if keys.read_at.elapsed() < FILE_REREAD {
            return None;
        }
        keys.read_at = Instant::now();
        match std::fs::read_to_string(path)
            .map_err(|source| JwksError::Read {
                path: path.clone(),
                source,
            })
            .and_then(|t| parse_jwks(&self.issuer, &t))
        {
            Ok(k) => keys.keys = k,
            Err(e) => tracing::warn!("{e}; keeping the keys read before"),
        }
        find(&keys)
    }
}

fn key_fits(key: &Key, alg: &str) -> bool {
    matches!(
        (key, alg),
        (Key::Rsa { .. }, "RS256" | "RS384" | "RS512")
            | (Key::Ec { crv: "P-256", .. }, "ES256")
            | (Key::Ec { crv: "P-384", .. }, "ES384")
    )
}

fn verify_signature(key: &Key, alg: &str, message: &[u8], sig: &[u8]) -> bool {
    match key {
        Key::Rsa { n, e } => {
            let params = match alg {
                "RS256" => &signature::RSA_PKCS1_2048_8192_SHA256,
                "RS384" => &signature::RSA_PKCS1_2048_8192_SHA384,
                "RS512" => &signature::RSA_PKCS1_2048_8192_SHA512,
                _ => return false,
            };
            signature::RsaPublicKeyComponents { n, e }
                .verify(params, message, sig)
                .is_ok()
        }
        Key::Ec { point, .. } => {
            let params = match alg {
                "ES256" => &signature::ECDSA_P256_SHA256_FIXED,
                "ES384" => &signature::ECDSA_P384_SHA384_FIXED,
                _ => return false,
            };
            UnparsedPublicKey::new(params, point)
                .verify(message, sig)
                .is_ok()
        }
    }
}

#[derive(Debug)]
struct PolicySpec {
    name: String,
    rules: Vec<Arc<RuleSpec>>,
    excluded: Vec<Pattern>,
}

/// The JWT policies selecting one workload.
#[derive(Debug, Default)]
pub struct Authenticator {
    policies: Vec<PolicySpec>,
}

/// What authentication concluded for one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// No policy covers the request and no valid token was sent.
    NotRequired,
    Verified(Claims),
    /// A covered request without a valid token (answer 401), and the
    /// policy that required it.
    Rejected {
        policy: String,
        error: JwtError,
    },
}

impl Authenticator {
    /// Compiles the policies among `all` selecting a workload with
    /// `labels`, reading JWKS files.
    pub fn compile(
        all: &[model::JwtPolicy],
        labels: &BTreeMap<String, String>,
    ) -> Result<Self, JwksError> {
        let mut policies = Vec::new();
        for p in all.iter().filter(|p| selects(&p.selector, labels)) {
            let mut rules = Vec::new();
            for r in &p.rules {
                let (text, file) = if r.jwks_file.is_empty() {
                    (r.jwks.clone(), None)
                } else {
                    let path = PathBuf::from(&r.jwks_file);
                    let text =
                        std::fs::read_to_string(&path).map_err(|source| JwksError::Read {
                            path: path.clone(),
                            source,
                        })?;
                    (text, Some(path))
                };
                rules.push(Arc::new(RuleSpec {
                    keys: Mutex::new(Keys {
                        keys: parse_jwks(&r.issuer, &text)?,
                        read_at: Instant::now(),
                    }),
                    issuer: r.issuer.clone(),
                    audiences: r.audiences.clone(),
                    file,
                }));
            }
            policies.push(PolicySpec {
                name: p.name.clone(),
                rules,
                excluded: p.excluded_paths.iter().map(|x| Pattern::new(x)).collect(),
            });
        }
        Ok(Self { policies })
    }

    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    /// Authenticates one request (`path` without the query).
    pub fn authenticate(&self, path: &str, headers: &HeaderMap, now: SystemTime) -> Outcome {
        if self.policies.is_empty() {
            return Outcome::NotRequired;
        }
        let covering = self
            .policies
            .iter()
            .find(|p| !p.excluded.iter().any(|x| x.matches(path)));
        let token = bearer(headers);
        let all_rules = || self.policies.iter().flat_map(|p| p.rules.iter());
        match (covering, token) {
            (None, None) => Outcome::NotRequired,
            (None, Some(t)) => match verify(t, all_rules(), now) {
                Ok(c) => Outcome::Verified(c),
                Err(_) => Outcome::NotRequired,
            },
            (Some(p), None) => Outcome::Rejected {
                policy: p.name.clone(),
                error: JwtError::Missing,
            },
            (Some(p), Some(t)) => match verify(t, all_rules(), now) {
                Ok(c) => Outcome::Verified(c),
                Err(error) => Outcome::Rejected {
                    policy: p.name.clone(),
                    error,
                },
            },
        }
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

fn b64json(part: &str) -> Result<serde_json::Map<String, serde_json::Value>, JwtError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| JwtError::Malformed)?;
    match serde_json::from_slice(&bytes) {
        Ok(serde_json::Value::Object(m)) => Ok(m),
        _ => Err(JwtError::Malformed),
    }
}

fn verify<'a>(
    token: &str,
    rules: impl Iterator<Item = &'a Arc<RuleSpec>>,
    now: SystemTime,
) -> Result<Claims, JwtError> {
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed);
    };
    let header = b64json(h)?;
    let claims = b64json(p)?;
    let sig = URL_SAFE_NO_PAD.decode(s).map_err(|_| JwtError::Malformed)?;
    let alg = header
        .get("alg")
        .and_then(|v| v.as_str())
        .ok_or(JwtError::Malformed)?;
    if !matches!(alg, "RS256" | "RS384" | "RS512" | "ES256" | "ES384") {
        return Err(JwtError::Algorithm(alg.to_string()));
    }
    let iss = claims
        .get("iss")
        .and_then(|v| v.as_str())
        .unwrap_or_default();
    let mut rules = rules.filter(|r| r.issuer == iss).peekable();
    if rules.peek().is_none() {
        return Err(JwtError::Issuer(iss.to_string()));
    }
    let kid = header.get("kid").and_then(|v| v.as_str());
    let message = &token.as_bytes()[..h.len() + 1 + p.len()];
    let mut last = JwtError::UnknownKey {
        issuer: iss.to_string(),
        kid: kid.unwrap_or_default().to_string(),
    };
    for rule in rules {
        let Some(key) = rule.key_for(kid, alg) else {
            continue;
        };
        if !verify_signature(&key.key, alg, message, &sig) {
            last = JwtError::Signature;
            continue;
        }
        check_times(&claims, now)?;
        if !rule.audiences.is_empty() {
            let aud: Vec<&str> = match claims.get("aud") {
                Some(serde_json::Value::String(s)) => vec![s.as_str()],
                Some(serde_json::Value::Array(a)) => a.iter().filter_map(|v| v.as_str()).collect(),
                _ => vec![],
            };
            if !aud.iter().any(|a| rule.audiences.iter().any(|w| w == a)) {
                return Err(JwtError::Audience(rule.audiences.clone()));
            }
        }
        let sub = claims
            .get("sub")
            .and_then(|v| v.as_str())
            .unwrap_or_default();
        return Ok(Claims {
            principal: format!("{iss}/{sub}"),
            claims,
        });
    }
    Err(last)
}

fn check_times(
    claims: &serde_json::Map<String, serde_json::Value>,
    now: SystemTime,
) -> Result<(), JwtError> {
    let now = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() as i64;
    let leeway = LEEWAY.as_secs() as i64;
    let num = |k: &str| claims.get(k).and_then(|v| v.as_i64());
    if let Some(exp) = num("exp")
        && now > exp + leeway
    {
        return Err(JwtError::Expired);
    }
    if let Some(nbf) = num("nbf")
        && now + leeway < nbf
    {
        return Err(JwtError::NotYetValid);
    }
    Ok(())
}

#[cfg(test)]
mod tests;
