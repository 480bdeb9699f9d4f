//! JWT verification and minting, and the extractors that put verified claims on API handlers.
//! Keys live in the application state (not a static) so tests and embedders can inject their own.

use std::sync::Arc;

use axum::extract::FromRef;
use axum::http::request::Parts;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Map, Value};

use crate::config::{AuthArgs, ConfigError};
use crate::protocol::CloseReason;

/// Verified claims of a token.
#[derive(Debug, Clone)]
pub struct Claims {
    /// The tenant named by the tenant claim, when present and well-formed.
    pub tenant: Option<String>,
    /// Whether the token carries `"role": "admin"`.
    pub admin: bool,
    /// `exp`, Unix seconds.
    pub expires_at: u64,
}

/// Why a token was refused. Displays as the close reason text of the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No token was presented.
    #[error("missing token")]
    Missing,
    /// Signature, algorithm, format or claims are wrong.
    #[error("invalid token")]
    Invalid,
    /// `exp` has passed (beyond the leeway).
    #[error("token expired")]
    Expired,
}

impl AuthError {
    /// The WebSocket close this refusal maps to.
    pub fn close_reason(self) -> CloseReason {
        match self {
            Self::Missing => CloseReason::MissingToken,
            Self::Invalid => CloseReason::InvalidToken,
            Self::Expired => CloseReason::TokenExpired,
        }
    }

    /// Label for logs and metrics.
    pub fn label(self) -> &'static str {
        self.close_reason().label()
    }
}

/// Verifies tokens with the configured key and claim rules.
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
    tenant_claim: String,
    leeway_secs: u64,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("Verifier")
            .field("algorithms", &self.validation.algorithms)
            .field("tenant_claim", &self.tenant_claim)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// Builds the verifier from configuration: HS256 with `JWT_SECRET`, or RS256/ES256 with the
    /// public key in `JWT_PUBLIC_KEY`.
    pub fn from_args(args: &AuthArgs) -> Result<Self, ConfigError> {
        let (key, algorithms) = match (&args.jwt_public_key, &args.jwt_secret) {
            (Some(path), _) => {
                let pem = std::fs::read(path).map_err(|e| {
                    ConfigError::new("JWT_PUBLIC_KEY", format!("{}: {e}", path.display()))
                })?;
                if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
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
                }
            }
            (None, Some(secret)) => {
                let key = DecodingKey::from_secret(secret.as_bytes())
                    .map_err(|e| ConfigError::new("JWT_SECRET", e.to_string()))?;
                (key, vec![Algorithm::HS256])
            }
            (None, None) => {
                return Err(ConfigError::new(
                    "JWT_SECRET",
                    "required (or set JWT_PUBLIC_KEY for RS256/ES256)",
                ));
            }
        };
        if args.jwt_tenant_claim.is_empty() {
            return Err(ConfigError::new("JWT_TENANT_CLAIM", "empty"));
        }
        let mut validation = Validation::new(algorithms[0]);
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
            key,
            validation,
            tenant_claim: args.jwt_tenant_claim.clone(),
            leeway_secs: args.jwt_leeway_secs,
        })
    }

    /// Verifies a token. `alg: none` and algorithms other than the configured ones are refused.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &self.key, &self.validation)
            .map_err(|e| match e.kind() {
            ErrorKind::ExpiredSignature => AuthError::Expired,
            _ => AuthError::Invalid,
        })?;
        let claims = data.claims;
        let expires_at = claims
            .get("exp")
            .and_then(Value::as_u64)
            .ok_or(AuthError::Invalid)?;
        let tenant = match claims.get(&self.tenant_claim) {
            None | Some(Value::Null) => None,
            Some(Value::String(t)) if valid_tenant_id(t) => Some(t.clone()),
            Some(_) => return Err(AuthError::Invalid),
        };
        let admin = claims.get("role").and_then(Value::as_str) == Some("admin");
        Ok(Claims {
            tenant,
            admin,
            expires_at,
        })
    }

    /// Verifies a token that must name a tenant (WebSocket and tenant API routes).
    pub fn verify_tenant(&self, token: &str) -> Result<(String, Claims), AuthError> {
        let claims = self.verify(token)?;
        let tenant = claims.tenant.clone().ok_or(AuthError::Invalid)?;
        Ok((tenant, claims))
    }

    /// Clock-skew allowance applied to `exp`, in seconds.
    pub fn leeway_secs(&self) -> u64 {
        self.leeway_secs
    }
}

/// Whether `id` can name a tenant: 1–128 visible ASCII characters without braces, so it fits in
/// a Redis hash tag `{T}` unambiguously.
pub fn valid_tenant_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'{' && b != b'}')
}

/// Mints HS256 tokens with the configured secret and claims (`token` command, demo, tests).
pub struct Signer {
    key: EncodingKey,
    tenant_claim: String,
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
        let key = EncodingKey::from_secret(secret.as_bytes())
            .map_err(|e| ConfigError::new("JWT_SECRET", e.to_string()))?;
        Ok(Self {
            key,
            tenant_claim: args.jwt_tenant_claim.clone(),
            issuer: args.jwt_issuer.clone(),
            audience: args.jwt_audience.clone(),
        })
    }

    /// A token for `tenant` (and/or admin) valid for `ttl_secs`.
    pub fn mint(&self, tenant: Option<&str>, admin: bool, ttl_secs: u64) -> String {
        let now = crate::protocol::now_ms() / 1000;
        let mut claims = Map::new();
        if let Some(t) = tenant {
            claims.insert(self.tenant_claim.clone(), t.into());
        }
        if admin {
            claims.insert("role".into(), "admin".into());
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

/// The bearer token of an `Authorization` header, if any.
pub fn bearer_token(headers: &axum::http::HeaderMap) -> Option<&str> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// A request authenticated with a tenant token.
#[derive(Debug, Clone)]
pub struct TenantAuth {
    /// The tenant.
    pub tenant: String,
}

/// Proof that a request was authenticated with an admin token; handlers take it to require one.
#[derive(Debug, Clone, Copy)]
pub struct AdminAuth;

/// Refusal of an API request: 401 for a missing or bad token, 403 for the wrong kind of token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiAuthError {
    /// 401.
    Unauthenticated(AuthError),
    /// 403.
    Forbidden,
}

fn claims_from_parts(parts: &Parts, verifier: &Verifier) -> Result<Claims, ApiAuthError> {
    let token =
        bearer_token(&parts.headers).ok_or(ApiAuthError::Unauthenticated(AuthError::Missing))?;
    verifier
        .verify(token)
        .map_err(ApiAuthError::Unauthenticated)
}

impl<S> axum::extract::FromRequestParts<S> for AdminAuth
where
    Arc<Verifier>: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiAuthError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let verifier = Arc::<Verifier>::from_ref(state);
        let claims = claims_from_parts(parts, &verifier)?;
        if !claims.admin {
            return Err(ApiAuthError::Forbidden);
        }
        Ok(AdminAuth)
    }
}

impl<S> axum::extract::FromRequestParts<S> for TenantAuth
where
    Arc<Verifier>: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiAuthError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let verifier = Arc::<Verifier>::from_ref(state);
        let claims = claims_from_parts(parts, &verifier)?;
        match claims.tenant.clone() {
            Some(tenant) => Ok(TenantAuth { tenant }),
            None if claims.admin => Err(ApiAuthError::Forbidden),
            None => Err(ApiAuthError::Unauthenticated(AuthError::Invalid)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(secret: &str) -> AuthArgs {
        AuthArgs::hs256(secret)
    }

    #[test]
    fn minted_tokens_verify_and_other_secrets_do_not() {
        let signer = Signer::from_args(&args("s1")).unwrap();
        let verifier = Verifier::from_args(&args("s1")).unwrap();
        let token = signer.mint(Some("acme"), false, 60);
        let (tenant, claims) = verifier.verify_tenant(&token).unwrap();
        assert_eq!(tenant, "acme");
        assert!(!claims.admin);
        let other = Verifier::from_args(&args("s2")).unwrap();
        assert_eq!(other.verify(&token).unwrap_err(), AuthError::Invalid);
        assert_eq!(verifier.verify("").unwrap_err(), AuthError::Missing);
        assert_eq!(verifier.verify("a.b.c").unwrap_err(), AuthError::Invalid);
    }

    #[test]
    fn admin_tokens_need_no_tenant() {
        let signer = Signer::from_args(&args("s")).unwrap();
        let verifier = Verifier::from_args(&args("s")).unwrap();
        let claims = verifier.verify(&signer.mint(None, true, 60)).unwrap();
        assert!(claims.admin && claims.tenant.is_none());
    }

    #[test]
    fn tenant_ids_are_restricted() {
        assert!(valid_tenant_id("acme-01_x.y:z@corp"));
        for bad in ["", "a b", "a{b", "b}", "é", &"x".repeat(129)] {
            assert!(!valid_tenant_id(bad), "{bad:?}");
        }
    }
}
