//! Credentials. Clients present JWTs ([`jwt`]): a token names a tenant and, optionally, a
//! user. Operators and backends present admin keys ([`admin_keys`]) on admin routes. The two
//! never stand in for each other: a JWT grants no admin rights, whatever its claims. Keys live
//! in the application state (not a static) so tests can inject their own.

pub mod admin_keys;
pub mod jwks;
pub mod jwt;

use std::sync::Arc;

use axum::extract::FromRef;
use axum::http::request::Parts;

pub use admin_keys::AdminKeys;
pub use jwt::{Claims, Signer, Verifier};

use crate::protocol::CloseReason;

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

/// Whether `id` can name a tenant: 1–128 visible ASCII characters without braces, so it fits in
/// a Redis hash tag `{T}` unambiguously.
pub fn valid_tenant_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'{' && b != b'}')
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

/// The admin key of a request: `Authorization: Bearer <key>` or `X-API-Key: <key>`.
fn presented_key(headers: &axum::http::HeaderMap) -> Option<&str> {
    bearer_token(headers).or_else(|| {
        headers
            .get("x-api-key")?
            .to_str()
            .ok()
            .map(str::trim)
            .filter(|k| !k.is_empty())
    })
}

/// A request authenticated with a tenant token.
#[derive(Debug, Clone)]
pub struct TenantAuth {
    /// The tenant.
    pub tenant: String,
    /// The token's claims (user, `exp`).
    pub claims: Claims,
}

/// A request authenticated with a tenant token that names a user (`JWT_USER_CLAIM`): the
/// notification routes, whose read state and preferences are per user.
#[derive(Debug, Clone)]
pub struct UserAuth {
    /// The tenant.
    pub tenant: String,
    /// The user.
    pub user: String,
}

/// Proof that a request presented an admin key; handlers take it to require one.
#[derive(Debug, Clone, Copy)]
pub struct AdminAuth;

/// Refusal of an API request: 401 for a missing or bad credential, 403 for a valid client
/// token on an admin route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiAuthError {
    /// 401.
    Unauthenticated(AuthError),
    /// 403.
    Forbidden,
    /// 403 `no_user`: a valid tenant token that names no user, on a per-user route.
    NoUser,
}

impl<S> axum::extract::FromRequestParts<S> for AdminAuth
where
    Arc<Verifier>: FromRef<S>,
    Arc<AdminKeys>: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiAuthError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let presented = presented_key(&parts.headers)
            .ok_or(ApiAuthError::Unauthenticated(AuthError::Missing))?;
        if Arc::<AdminKeys>::from_ref(state).matches(presented) {
            return Ok(AdminAuth);
        }
        // A valid client token is the wrong kind of credential here: 403, so the caller learns
        // that its token works but never grants admin rights.
        match Arc::<Verifier>::from_ref(state).verify(presented).await {
            Ok(_) => Err(ApiAuthError::Forbidden),
            Err(_) => Err(ApiAuthError::Unauthenticated(AuthError::Invalid)),
        }
    }
}

impl<S> axum::extract::FromRequestParts<S> for TenantAuth
where
    Arc<Verifier>: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiAuthError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let token = bearer_token(&parts.headers)
            .ok_or(ApiAuthError::Unauthenticated(AuthError::Missing))?;
        let verifier = Arc::<Verifier>::from_ref(state);
        let (tenant, claims) = verifier
            .verify_tenant(token)
            .await
            .map_err(ApiAuthError::Unauthenticated)?;
        Ok(TenantAuth { tenant, claims })
    }
}

impl<S> axum::extract::FromRequestParts<S> for UserAuth
where
    Arc<Verifier>: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiAuthError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let TenantAuth { tenant, claims } = TenantAuth::from_request_parts(parts, state).await?;
        let user = claims.user.ok_or(ApiAuthError::NoUser)?;
        Ok(UserAuth { tenant, user })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_ids_are_restricted() {
        assert!(valid_tenant_id("acme-01_x.y:z@corp"));
        for bad in ["", "a b", "a{b", "b}", "é", &"x".repeat(129)] {
            assert!(!valid_tenant_id(bad), "{bad:?}");
        }
    }
}
