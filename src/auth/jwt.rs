//! Client tokens: verification under the token policy, and minting (`token` command, demo,
//! load generator). A JWT names a tenant and, optionally, a user; it never grants admin rights.

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Map, Value};

use std::sync::Arc;
use std::time::Duration;

use super::jwks::Jwks;
use super::{AuthError, valid_tenant_id};
use crate::config::{AuthArgs, ConfigError};

/// Shortest accepted HMAC secret, in bytes.
pub const MIN_SECRET_BYTES: usize = 32;
/// Largest accepted clock-skew allowance.
pub const MAX_LEEWAY_SECS: u64 = 300;

/// Verified claims of a token.
#[derive(Debug, Clone)]
pub struct Claims {
    /// The tenant named by the tenant claim, when present and well-formed.
    pub tenant: Option<String>,
    /// The user named by the user claim (`JWT_USER_CLAIM`), when present.
    pub user: Option<String>,
    /// `exp`, Unix seconds.
    pub expires_at: u64,
}

/// Where verification keys come from.
enum Keys {
    /// HMAC secrets (current first, then the previous one during a rotation), or one public
    /// key from a PEM file; the algorithms they may verify are in the verifier's validation.
    Static(Vec<DecodingKey>),
    /// Keys by `kid` from the identity provider's JWKS endpoint.
    Jwks(Arc<Jwks>),
}

/// Verifies tokens with the configured keys, claim rules and token policy.
pub struct Verifier {
    keys: Keys,
    /// Claim rules, with the static keys' algorithms (with JWKS, the algorithm is set per
    /// token).
    validation: Validation,
    tenant_claim: String,
    user_claim: String,
    leeway_secs: u64,
    max_ttl_secs: u64,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("Verifier")
            .field("tenant_claim", &self.tenant_claim)
            .field("max_ttl_secs", &self.max_ttl_secs)
            .finish_non_exhaustive()
    }
}

/// An HMAC secret from `var`, refused when shorter than [`MIN_SECRET_BYTES`].
fn hmac_secret(var: &'static str, secret: &str) -> Result<DecodingKey, ConfigError> {
    if secret.len() < MIN_SECRET_BYTES {
        return Err(ConfigError::new(
            var,
            format!("shorter than {MIN_SECRET_BYTES} bytes; use a random secret of at least 32"),
        ));
    }
    DecodingKey::from_secret(secret.as_bytes()).map_err(|e| ConfigError::new(var, e.to_string()))
}

/// The static keys and the algorithms they may verify.
fn static_keys(args: &AuthArgs) -> Result<(Vec<DecodingKey>, Vec<Algorithm>), ConfigError> {
    if let Some(path) = &args.jwt_public_key {
        let pem = std::fs::read(path)
            .map_err(|e| ConfigError::new("JWT_PUBLIC_KEY", format!("{}: {e}", path.display())))?;
        let (key, algorithms) = if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
            (
                key,
                vec![Algorithm::RS256, Algorithm::RS384, Algorithm::RS512],
            )
        } else if let Ok(key) = DecodingKey::from_ec_pem(&pem) {
            (key, vec![Algorithm::ES256, Algorithm::ES384])
        } else {
            return Err(ConfigError::new(
                "JWT_PUBLIC_KEY",
                format!("{} is not an RSA or EC public key in PEM", path.display()),
            ));
        };
        return Ok((vec![key], algorithms));
    }
    let Some(secret) = &args.jwt_secret else {
        return Err(ConfigError::new(
            "JWT_SECRET",
            "required (or set JWT_PUBLIC_KEY for RS256/ES256)",
        ));
    };
    let mut keys = vec![hmac_secret("JWT_SECRET", secret)?];
    if let Some(previous) = &args.jwt_secret_previous {
        keys.push(hmac_secret("JWT_SECRET_PREVIOUS", previous)?);
    }
    Ok((keys, vec![Algorithm::HS256]))
}

impl Verifier {
    /// Builds the verifier from configuration: keys from `JWT_JWKS_URL` by `kid`; else
    /// RS256/ES256 with the public key in `JWT_PUBLIC_KEY`; else HS256 with `JWT_SECRET` (and
    /// `JWT_SECRET_PREVIOUS`).
    pub fn from_args(args: &AuthArgs) -> Result<Self, ConfigError> {
        if args.jwt_tenant_claim.is_empty() {
            return Err(ConfigError::new("JWT_TENANT_CLAIM", "empty"));
        }
        if args.jwt_user_claim.is_empty() {
            return Err(ConfigError::new("JWT_USER_CLAIM", "empty"));
        }
        if args.jwt_leeway_secs > MAX_LEEWAY_SECS {
            return Err(ConfigError::new(
                "JWT_LEEWAY_SECS",
                format!("at most {MAX_LEEWAY_SECS}"),
            ));
        }
        let (keys, algorithms) = match &args.jwt_jwks_url {
            Some(url) => {
                let refresh = Duration::from_secs(args.jwt_jwks_refresh_secs);
                // Set per token from the key its `kid` names.
                (Keys::Jwks(Arc::new(Jwks::new(url, refresh)?)), Vec::new())
            }
            None => {
                let (keys, algorithms) = static_keys(args)?;
                (Keys::Static(keys), algorithms)
            }
        };
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = algorithms;
        validation.set_required_spec_claims(&["exp"]);
        validation.leeway = args.jwt_leeway_secs;
        validation.validate_nbf = true;
        match &args.jwt_audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                validation.set_required_spec_claims(&["exp", "aud"]);
            }
            // Without a configured audience, a token's `aud` is not ours to judge.
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &args.jwt_issuer {
            validation.set_issuer(&[iss]);
            let mut required: Vec<&str> = vec!["exp", "iss"];
            if args.jwt_audience.is_some() {
                required.push("aud");
            }
            validation.set_required_spec_claims(&required);
        }
        Ok(Self {
            keys,
            validation,
            tenant_claim: args.jwt_tenant_claim.clone(),
            user_claim: args.jwt_user_claim.clone(),
            leeway_secs: args.jwt_leeway_secs,
            max_ttl_secs: args.jwt_max_ttl_secs,
        })
    }

    /// Verifies a token. `alg: none`, algorithms other than the configured ones, and tokens
    /// whose `exp` lies further ahead than `JWT_MAX_TTL_SECS` are refused.
    pub async fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        let claims = match &self.keys {
            // Complete since construction: nothing to build per token.
            Keys::Static(keys) => decode_with_any(token, keys, &self.validation)?,
            Keys::Jwks(jwks) => {
                // The key is the one the token's `kid` names, for the algorithm it claims,
                // provided that key may verify that algorithm.
                let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Invalid)?;
                let kid = header.kid.as_deref().ok_or(AuthError::Invalid)?;
                let key = jwks.key(kid).await.ok_or(AuthError::Invalid)?;
                if !key.algorithms.contains(&header.alg) {
                    return Err(AuthError::Invalid);
                }
                let mut validation = self.validation.clone();
                validation.algorithms = vec![header.alg];
                decode_with_any(token, std::slice::from_ref(&key.key), &validation)?
            }
        };
        self.claims(claims)
    }

    /// Checks the policy on decoded claims and reads tenant and user.
    fn claims(&self, claims: Map<String, Value>) -> Result<Claims, AuthError> {
        let expires_at = claims
            .get("exp")
            .and_then(Value::as_u64)
            .ok_or(AuthError::Invalid)?;
        let now = crate::protocol::now_ms() / 1000;
        if expires_at.saturating_sub(now) > self.max_ttl_secs {
            return Err(AuthError::Invalid);
        }
        let tenant = match claims.get(&self.tenant_claim) {
            None | Some(Value::Null) => None,
            Some(Value::String(t)) if valid_tenant_id(t) => Some(t.clone()),
            Some(_) => return Err(AuthError::Invalid),
        };
        let user = match claims.get(&self.user_claim) {
            Some(Value::String(u)) if !u.is_empty() && u.len() <= 256 => Some(u.clone()),
            _ => None,
        };
        Ok(Claims {
            tenant,
            user,
            expires_at,
        })
    }

    /// Verifies a token that must name a tenant (WebSocket and tenant API routes).
    pub async fn verify_tenant(&self, token: &str) -> Result<(String, Claims), AuthError> {
        let claims = self.verify(token).await?;
        let tenant = claims.tenant.clone().ok_or(AuthError::Invalid)?;
        Ok((tenant, claims))
    }

    /// Clock-skew allowance applied to `exp`, in seconds.
    pub fn leeway_secs(&self) -> u64 {
        self.leeway_secs
    }

    /// The JWKS key source, whose refresh loop the node runs.
    pub fn jwks(&self) -> Option<Arc<Jwks>> {
        match &self.keys {
            Keys::Jwks(jwks) => Some(jwks.clone()),
            Keys::Static(_) => None,
        }
    }

    /// Whether tokens can be verified: keys configured, or a JWKS key set loaded.
    pub fn is_ready(&self) -> bool {
        match &self.keys {
            Keys::Static(_) => true,
            Keys::Jwks(jwks) => jwks.is_loaded(),
        }
    }
}

/// Decodes with the first key whose signature matches (a rotation keeps two secrets valid).
fn decode_with_any(
    token: &str,
    keys: &[DecodingKey],
    validation: &Validation,
) -> Result<Map<String, Value>, AuthError> {
    for (i, key) in keys.iter().enumerate() {
        match jsonwebtoken::decode::<Map<String, Value>>(token, key, validation) {
            Ok(data) => return Ok(data.claims),
            // The signature is checked before the claims: try the next key on a mismatch only.
            Err(e) if matches!(e.kind(), ErrorKind::InvalidSignature) && i + 1 < keys.len() => {}
            Err(e) if matches!(e.kind(), ErrorKind::ExpiredSignature) => {
                return Err(AuthError::Expired);
            }
            Err(_) => return Err(AuthError::Invalid),
        }
    }
    Err(AuthError::Invalid)
}

/// Mints HS256 tokens with the configured secret and claims (`token` command, demo, load
/// generator).
pub struct Signer {
    key: EncodingKey,
    tenant_claim: String,
    user_claim: String,
    issuer: Option<String>,
    audience: Option<String>,
}

impl Signer {
    /// Builds a signer from configuration; needs `JWT_SECRET`.
    pub fn from_args(args: &AuthArgs) -> Result<Self, ConfigError> {
        let secret = args
            .jwt_secret
            .as_deref()
            .ok_or_else(|| ConfigError::new("JWT_SECRET", "required to mint tokens (HS256)"))?;
        hmac_secret("JWT_SECRET", secret)?;
        let key = EncodingKey::from_secret(secret.as_bytes())
            .map_err(|e| ConfigError::new("JWT_SECRET", e.to_string()))?;
        Ok(Self {
            key,
            tenant_claim: args.jwt_tenant_claim.clone(),
            user_claim: args.jwt_user_claim.clone(),
            issuer: args.jwt_issuer.clone(),
            audience: args.jwt_audience.clone(),
        })
    }

    /// A token for `tenant` (and `user`, when given) valid for `ttl_secs`.
    pub fn mint(&self, tenant: &str, user: Option<&str>, ttl_secs: u64) -> String {
        let now = crate::protocol::now_ms() / 1000;
        let mut claims = Map::new();
        claims.insert(self.tenant_claim.clone(), tenant.into());
        if let Some(user) = user {
            claims.insert(self.user_claim.clone(), user.into());
        }
        claims.insert("iat".into(), now.into());
        claims.insert("exp".into(), (now + ttl_secs).into());
        if let Some(iss) = &self.issuer {
            claims.insert("iss".into(), iss.clone().into());
        }
        if let Some(aud) = &self.audience {
            claims.insert("aud".into(), aud.clone().into());
        }
        // HS256 signing of a JSON map cannot fail.
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.key).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const S1: &str = "first-secret-0123456789-abcdefghijkl";
    const S2: &str = "second-secret-0123456789-abcdefghijk";

    fn sign(secret: &str, claims: Value) -> String {
        let key = EncodingKey::from_secret(secret.as_bytes()).unwrap();
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key).unwrap()
    }

    fn now() -> u64 {
        crate::protocol::now_ms() / 1000
    }

    #[tokio::test]
    async fn minted_tokens_verify_and_other_secrets_do_not() {
        let signer = Signer::from_args(&AuthArgs::hs256(S1)).unwrap();
        let verifier = Verifier::from_args(&AuthArgs::hs256(S1)).unwrap();
        let token = signer.mint("acme", Some("u1"), 60);
        let (tenant, claims) = verifier.verify_tenant(&token).await.unwrap();
        assert_eq!(
            (tenant.as_str(), claims.user.as_deref()),
            ("acme", Some("u1"))
        );
        let other = Verifier::from_args(&AuthArgs::hs256(S2)).unwrap();
        assert_eq!(other.verify(&token).await.unwrap_err(), AuthError::Invalid);
        assert_eq!(verifier.verify("").await.unwrap_err(), AuthError::Missing);
        assert_eq!(
            verifier.verify("a.b.c").await.unwrap_err(),
            AuthError::Invalid
        );
    }

    /// Invariant: `exp` further ahead than `JWT_MAX_TTL_SECS` is refused; `exp` is required.
    #[tokio::test]
    async fn tokens_living_too_long_or_without_exp_are_refused() {
        let mut args = AuthArgs::hs256(S1);
        args.jwt_max_ttl_secs = 3600;
        let verifier = Verifier::from_args(&args).unwrap();
        let ok = sign(S1, json!({"tenantId": "acme", "exp": now() + 3500}));
        assert!(verifier.verify(&ok).await.is_ok());
        let long = sign(S1, json!({"tenantId": "acme", "exp": now() + 3700}));
        assert_eq!(
            verifier.verify(&long).await.unwrap_err(),
            AuthError::Invalid
        );
        let forever = sign(S1, json!({"tenantId": "acme", "exp": 32503680000u64}));
        assert_eq!(
            verifier.verify(&forever).await.unwrap_err(),
            AuthError::Invalid
        );
        let no_exp = sign(S1, json!({"tenantId": "acme"}));
        assert_eq!(
            verifier.verify(&no_exp).await.unwrap_err(),
            AuthError::Invalid
        );
    }

    /// Invariant: during an HMAC rotation the previous secret still verifies (expiry included),
    /// and nothing else does.
    #[tokio::test]
    async fn the_previous_secret_verifies_during_a_rotation() {
        let mut args = AuthArgs::hs256(S2);
        args.jwt_secret_previous = Some(S1.into());
        let verifier = Verifier::from_args(&args).unwrap();
        let old = sign(S1, json!({"tenantId": "acme", "exp": now() + 60}));
        let new = sign(S2, json!({"tenantId": "acme", "exp": now() + 60}));
        assert!(verifier.verify(&old).await.is_ok());
        assert!(verifier.verify(&new).await.is_ok());
        let expired = sign(S1, json!({"tenantId": "acme", "exp": now() - 60}));
        assert_eq!(
            verifier.verify(&expired).await.unwrap_err(),
            AuthError::Expired
        );
        let stranger = sign(
            "third-secret-0123456789-abcdefghijkl",
            json!({"tenantId": "acme", "exp": now() + 60}),
        );
        assert_eq!(
            verifier.verify(&stranger).await.unwrap_err(),
            AuthError::Invalid
        );
        // The previous secret never signs.
        let signed = Signer::from_args(&args).unwrap().mint("acme", None, 60);
        let only_new = Verifier::from_args(&AuthArgs::hs256(S2)).unwrap();
        assert!(only_new.verify(&signed).await.is_ok());
    }

    /// Invariant: weak settings stop start-up, naming the variable.
    #[test]
    fn weak_settings_are_configuration_errors() {
        let short =
            Verifier::from_args(&AuthArgs::hs256("only-31-bytes-long-secret-xxxxx")).unwrap_err();
        assert_eq!(short.var, "JWT_SECRET");
        let mut args = AuthArgs::hs256(S1);
        args.jwt_secret_previous = Some("short".into());
        assert_eq!(
            Verifier::from_args(&args).unwrap_err().var,
            "JWT_SECRET_PREVIOUS"
        );
        let mut args = AuthArgs::hs256(S1);
        args.jwt_leeway_secs = 301;
        assert_eq!(
            Verifier::from_args(&args).unwrap_err().var,
            "JWT_LEEWAY_SECS"
        );
        args.jwt_leeway_secs = 300;
        assert!(Verifier::from_args(&args).is_ok());
        assert_eq!(
            Signer::from_args(&AuthArgs::hs256("short"))
                .err()
                .map(|e| e.var),
            Some("JWT_SECRET")
        );
    }

    /// A role claim means nothing: a token is a tenant's, whatever else it says.
    #[tokio::test]
    async fn claims_name_tenant_and_user_only() {
        let verifier = Verifier::from_args(&AuthArgs::hs256(S1)).unwrap();
        let token = sign(
            S1,
            json!({"tenantId": "acme", "sub": 7, "role": "admin", "exp": now() + 60}),
        );
        let claims = verifier.verify(&token).await.unwrap();
        assert_eq!(claims.tenant.as_deref(), Some("acme"));
        assert_eq!(claims.user, None, "a non-string sub names no user");
    }
}
