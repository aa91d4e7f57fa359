//! A token issuer with a generated key that publishes its JWKS, for tests
//! of request authentication (production tokens come from an identity
//! provider).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, EcdsaKeyPair, KeyPair, RsaKeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

enum Signer {
    Es256(EcdsaKeyPair),
    Rs256(RsaKeyPair),
}

pub struct Issuer {
    pub issuer: String,
    pub kid: String,
    signer: Signer,
}

impl Issuer {
    /// An ES256 issuer.
    pub fn es256(issuer: &str, kid: &str) -> Self {
        let key = EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_FIXED_SIGNING)
            .expect("P-256 key generation");
        Self {
            issuer: issuer.into(),
            kid: kid.into(),
            signer: Signer::Es256(key),
        }
    }

    /// An RS256 issuer (2048-bit key).
    pub fn rs256(issuer: &str, kid: &str) -> Self {
        let key =
            RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).expect("RSA key generation");
        Self {
            issuer: issuer.into(),
            kid: kid.into(),
            signer: Signer::Rs256(key),
        }
    }

    /// The JWKS document with this issuer's public key.
    pub fn jwks(&self) -> String {
        let b = |v: &[u8]| URL_SAFE_NO_PAD.encode(v);
        let jwk = match &self.signer {
            Signer::Es256(k) => {
                let p = k.public_key().as_ref();
                serde_json::json!({"kty": "EC", "crv": "P-256", "alg": "ES256", "kid": self.kid,
                    "x": b(&p[1..33]), "y": b(&p[33..65])})
            }
            Signer::Rs256(k) => {
                let p = k.public_key();
                serde_json::json!({"kty": "RSA", "alg": "RS256", "kid": self.kid,
                    "n": b(p.modulus().big_endian_without_leading_zero()),
                    "e": b(p.exponent().big_endian_without_leading_zero())})
            }
        };
        serde_json::json!({ "keys": [jwk] }).to_string()
    }

    /// A token for `sub` and `aud`, valid for `ttl` from now (negative
    /// lifetimes via `expired`), with extra claims.
    pub fn token(&self, sub: &str, aud: &str, ttl: Duration, extra: serde_json::Value) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        self.sign(sub, aud, now, now + ttl.as_secs(), extra)
    }

    /// A token that expired `ago`.
    pub fn expired(&self, sub: &str, aud: &str, ago: Duration) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let exp = now.saturating_sub(ago.as_secs());
        self.sign(
            sub,
            aud,
            exp.saturating_sub(3600),
            exp,
            serde_json::json!({}),
        )
    }

    fn sign(&self, sub: &str, aud: &str, iat: u64, exp: u64, extra: serde_json::Value) -> String {
        let alg = match self.signer {
            Signer::Es256(_) => "ES256",
            Signer::Rs256(_) => "RS256",
        };
        let header = serde_json::json!({"alg": alg, "typ": "JWT", "kid": self.kid});
        let mut claims = serde_json::json!({"iss": self.issuer, "sub": sub, "aud": aud,
            "iat": iat, "exp": exp});
        if let (Some(c), Some(e)) = (claims.as_object_mut(), extra.as_object()) {
            c.extend(e.clone());
        }
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let rng = SystemRandom::new();
        let sig = match &self.signer {
            Signer::Es256(k) => k
                .sign(&rng, input.as_bytes())
                .expect("signing")
                .as_ref()
                .to_vec(),
            Signer::Rs256(k) => {
                let mut sig = vec![0; k.public_modulus_len()];
                k.sign(
                    &signature::RSA_PKCS1_SHA256,
                    &rng,
                    input.as_bytes(),
                    &mut sig,
                )
                .expect("signing");
                sig
            }
        };
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
    }
}
