//! JWT cases: valid, expired, not yet valid, wrong issuer, wrong audience,
//! missing, malformed, tampered, unknown key, excluded paths, key roll.

use super::*;
use isthmus_testkit::jwt::Issuer;

const ISS: &str = "https://issuer.example";

fn policy(jwks: &str, excluded: &[&str]) -> model::JwtPolicy {
    model::JwtPolicy {
        name: "shop/jwt".into(),
        selector: Default::default(),
        rules: vec![model::JwtRule {
            issuer: ISS.into(),
            audiences: vec!["catalog".into()],
            jwks: jwks.into(),
            jwks_file: String::new(),
        }],
        excluded_paths: excluded.iter().map(|s| s.to_string()).collect(),
    }
}

fn auth(a: &Authenticator, path: &str, token: Option<&str>) -> Outcome {
    let mut h = HeaderMap::new();
    if let Some(t) = token {
        h.insert(
            http::header::AUTHORIZATION,
            format!("Bearer {t}").parse().unwrap(),
        );
    }
    a.authenticate(path, &h, SystemTime::now())
}

fn rejected(o: Outcome) -> JwtError {
    match o {
        Outcome::Rejected { error, .. } => error,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

const HOUR: Duration = Duration::from_secs(3600);

#[test]
fn the_jwt_matrix() {
    for issuer in [Issuer::es256(ISS, "k1"), Issuer::rs256(ISS, "k1")] {
        let a = Authenticator::compile(
            &[policy(&issuer.jwks(), &["/healthz"])],
            &Default::default(),
        )
        .unwrap();
        let valid = issuer.token(
            "alice",
            "catalog",
            HOUR,
            serde_json::json!({"groups": ["admins"]}),
        );
        match auth(&a, "/items", Some(&valid)) {
            Outcome::Verified(c) => {
                assert_eq!(c.principal, format!("{ISS}/alice"));
                assert_eq!(c.claims["groups"][0], "admins");
            }
            other => panic!("valid token refused: {other:?}"),
        }
        assert_eq!(
            rejected(auth(
                &a,
                "/items",
                Some(&issuer.expired("alice", "catalog", HOUR))
            )),
            JwtError::Expired
        );
        // Within the leeway an expired token still passes.
        let just = issuer.expired("alice", "catalog", Duration::from_secs(5));
        assert!(matches!(
            auth(&a, "/items", Some(&just)),
            Outcome::Verified(_)
        ));
        let other = Issuer::es256("https://evil.example", "k1");
        assert_eq!(
            rejected(auth(
                &a,
                "/items",
                Some(&other.token("alice", "catalog", HOUR, serde_json::json!({})))
            )),
            JwtError::Issuer("https://evil.example".into())
        );
        assert_eq!(
            rejected(auth(
                &a,
                "/items",
                Some(&issuer.token("alice", "billing", HOUR, serde_json::json!({})))
            )),
            JwtError::Audience(vec!["catalog".into()])
        );
        assert_eq!(rejected(auth(&a, "/items", None)), JwtError::Missing);
        assert_eq!(
            rejected(auth(&a, "/items", Some("not.a-jwt"))),
            JwtError::Malformed
        );
        // Same issuer name, another key: the signature does not verify.
        let impostor = Issuer::es256(ISS, "k1");
        let forged = impostor.token("alice", "catalog", HOUR, serde_json::json!({}));
        assert!(matches!(
            rejected(auth(&a, "/items", Some(&forged))),
            JwtError::Signature | JwtError::UnknownKey { .. }
        ));
        // Tampered claims.
        let mut parts: Vec<&str> = valid.split('.').collect();
        let evil = URL_SAFE_NO_PAD.encode(
            serde_json::json!({"iss": ISS, "sub": "root", "aud": "catalog", "exp": 9999999999u64})
                .to_string(),
        );
        parts[1] = &evil;
        assert_eq!(
            rejected(auth(&a, "/items", Some(&parts.join(".")))),
            JwtError::Signature
        );
        // Excluded path: no token needed; a bad token there is ignored.
        assert_eq!(auth(&a, "/healthz", None), Outcome::NotRequired);
        assert_eq!(auth(&a, "/healthz", Some("garbage")), Outcome::NotRequired);
        assert!(matches!(
            auth(&a, "/healthz", Some(&valid)),
            Outcome::Verified(_)
        ));
    }
}

#[test]
fn not_yet_valid_and_unsupported_algorithms() {
    let issuer = Issuer::es256(ISS, "k1");
    let a = Authenticator::compile(&[policy(&issuer.jwks(), &[])], &Default::default()).unwrap();
    let t = issuer.token(
        "a",
        "catalog",
        HOUR,
        serde_json::json!({"nbf": 9999999999u64}),
    );
    assert_eq!(rejected(auth(&a, "/", Some(&t))), JwtError::NotYetValid);
    let none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#),
        URL_SAFE_NO_PAD.encode(format!(r#"{{"iss":"{ISS}"}}"#))
    );
    assert_eq!(
        rejected(auth(&a, "/", Some(&none))),
        JwtError::Algorithm("none".into())
    );
    let hs = format!(
        "{}.{}.c2ln",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256"}"#),
        URL_SAFE_NO_PAD.encode(format!(r#"{{"iss":"{ISS}"}}"#))
    );
    assert_eq!(
        rejected(auth(&a, "/", Some(&hs))),
        JwtError::Algorithm("HS256".into())
    );
}

#[test]
fn no_policy_requires_nothing_and_bad_jwks_is_named() {
    let a = Authenticator::compile(&[], &Default::default()).unwrap();
    assert_eq!(auth(&a, "/", None), Outcome::NotRequired);
    let e =
        Authenticator::compile(&[policy("{\"nokeys\": 1}", &[])], &Default::default()).unwrap_err();
    assert!(e.to_string().contains("no \"keys\" array"), "{e}");
}

#[test]
fn a_jwks_file_is_reread_for_an_unknown_key_id() {
    let path = std::env::temp_dir().join(format!("isthmus-jwks-{}.json", std::process::id()));
    let old = Issuer::es256(ISS, "old");
    std::fs::write(&path, old.jwks()).unwrap();
    let mut p = policy("", &[]);
    p.rules[0].jwks = String::new();
    p.rules[0].jwks_file = path.display().to_string();
    let a = Authenticator::compile(&[p], &Default::default()).unwrap();
    let new = Issuer::es256(ISS, "new");
    std::fs::write(&path, new.jwks()).unwrap();
    let t = new.token("a", "catalog", HOUR, serde_json::json!({}));
    // Read within the last 5 s: not yet re-read.
    assert!(matches!(
        rejected(auth(&a, "/", Some(&t))),
        JwtError::UnknownKey { .. }
    ));
    // Make the last read old enough.
    for pol in &a.policies {
        for r in &pol.rules {
            r.keys.lock().read_at = Instant::now() - FILE_REREAD - Duration::from_millis(1);
        }
    }
    assert!(matches!(auth(&a, "/", Some(&t)), Outcome::Verified(_)));
    let _ = std::fs::remove_file(&path);
}
