//! Verification keys from an identity provider's JWKS endpoint (`JWT_JWKS_URL`), chosen by a
//! token's `kid`. The set is refreshed every `JWT_JWKS_REFRESH_SECS`, and at once when a token
//! names an unknown `kid` (at most once per [`UNKNOWN_KID_INTERVAL`]), so a rotation needs no
//! restart. A failed fetch keeps the last good set. Connects with known keys never wait for the
//! endpoint; one with an unknown `kid` waits for at most one bounded fetch.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, DecodingKey};
use tokio_util::sync::CancellationToken;

use crate::config::ConfigError;

/// Least time between two fetches caused by unknown `kid`s.
pub const UNKNOWN_KID_INTERVAL: Duration = Duration::from_secs(10);
/// Longest a fetch may take (and so the longest a connect with an unknown `kid` waits).
const FETCH_TIMEOUT: Duration = Duration::from_secs(3);
/// Largest key set accepted.
const MAX_BODY_BYTES: usize = 1024 * 1024;
/// How soon a failed fetch is retried while no set has been loaded yet.
const FIRST_LOAD_RETRY: Duration = Duration::from_secs(2);

/// A verification key and the algorithms it may verify.
#[derive(Clone)]
pub struct JwksKey {
    /// The key.
    pub key: DecodingKey,
    /// RS256/384/512, ES256 or ES384 (by curve), or EdDSA.
    pub algorithms: Vec<Algorithm>,
}

/// Why a key set could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    /// The endpoint could not be reached or answered an error.
    #[error("JWKS endpoint: {0}")]
    Fetch(String),
    /// The answer is not a usable key set.
    #[error("JWKS: {0}")]
    Invalid(String),
}

/// The key set of one JWKS endpoint.
pub struct Jwks {
    url: String,
    client: reqwest::Client,
    refresh_every: Duration,
    // std locks: held for a lookup or a swap, never across an await.
    keys: RwLock<Option<Arc<HashMap<String, JwksKey>>>>,
    /// When the last fetch started (waiters on a fetch that just finished reuse its result).
    last_fetch: Mutex<Option<Instant>>,
    /// When an unknown `kid` last caused a fetch (at most one per [`UNKNOWN_KID_INTERVAL`]).
    last_unknown_kid: Mutex<Option<Instant>>,
    /// One fetch at a time; others wait for its result.
    fetching: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Jwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwks")
            .field("loaded", &self.is_loaded())
            .finish_non_exhaustive()
    }
}

impl Jwks {
    /// A key source for `url` (`https://`, or `http://` for a local endpoint), refreshed every
    /// `refresh_every`. Nothing is fetched until [`Jwks::run`] or the first unknown `kid`.
    pub fn new(url: &str, refresh_every: Duration) -> Result<Self, ConfigError> {
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            return Err(ConfigError::new("JWT_JWKS_URL", "expected an https:// URL"));
        }
        let client = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .redirect(reqwest::redirect::Policy::limited(3))
            .build()
            .map_err(|e| ConfigError::new("JWT_JWKS_URL", e.to_string()))?;
        Ok(Self {
            url: url.to_owned(),
            client,
            refresh_every,
            keys: RwLock::new(None),
            last_fetch: Mutex::new(None),
            last_unknown_kid: Mutex::new(None),
            fetching: tokio::sync::Mutex::new(()),
        })
    }

    /// Whether a key set has been loaded (readiness waits for it).
    pub fn is_loaded(&self) -> bool {
        self.keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    fn lookup(&self, kid: &str) -> Option<JwksKey> {
        let keys = self.keys.read().unwrap_or_else(|e| e.into_inner());
        keys.as_ref()?.get(kid).cloned()
    }

    /// The key named `kid`. An unknown `kid` triggers a fetch when none was made in the last
    /// [`UNKNOWN_KID_INTERVAL`] (a rotation published a new key), and is looked up again after.
    pub async fn key(&self, kid: &str) -> Option<JwksKey> {
        if let Some(key) = self.lookup(kid) {
            return Some(key);
        }
        let due = {
            let mut last = self
                .last_unknown_kid
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let due = last.is_none_or(|at| at.elapsed() >= UNKNOWN_KID_INTERVAL);
            if due {
                *last = Some(Instant::now());
            }
            due
        };
        if due {
            if let Err(error) = self.refresh().await {
                tracing::warn!(%error, "JWKS refresh for an unknown kid failed");
            }
            return self.lookup(kid);
        }
        None
    }

    /// Fetches the key set and replaces the current one; a failure leaves it as it was.
    /// Returns the number of usable keys.
    pub async fn refresh(&self) -> Result<usize, JwksError> {
        let _one = self.fetching.lock().await;
        // Whoever waited for a fetch that just finished uses its result.
        let fresh = {
            let last = self.last_fetch.lock().unwrap_or_else(|e| e.into_inner());
            last.is_some_and(|at| at.elapsed() < Duration::from_millis(200))
        };
        if fresh && self.is_loaded() {
            return Ok(self
                .keys
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
                .map_or(0, |k| k.len()));
        }
        *self.last_fetch.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        let body = tokio::time::timeout(FETCH_TIMEOUT, self.fetch())
            .await
            .map_err(|_| JwksError::Fetch("timed out".into()))??;
        let keys = parse(&body)?;
        let count = keys.len();
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(keys));
        tracing::info!(keys = count, "JWKS key set loaded");
        Ok(count)
    }

    async fn fetch(&self) -> Result<Vec<u8>, JwksError> {
        let mut response = self
            .client
            .get(&self.url)
            .send()
            .await
            .map_err(|e| JwksError::Fetch(e.without_url().to_string()))?;
        if !response.status().is_success() {
            return Err(JwksError::Fetch(format!("answered {}", response.status())));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| JwksError::Fetch(e.without_url().to_string()))?
        {
            if body.len() + chunk.len() > MAX_BODY_BYTES {
                return Err(JwksError::Invalid(format!(
                    "larger than {MAX_BODY_BYTES} bytes"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    /// Loads the set at once, then refreshes it every `JWT_JWKS_REFRESH_SECS` until `stop`;
    /// while nothing is loaded, a failed fetch is retried every few seconds.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        loop {
            let wait = match self.refresh().await {
                Ok(_) => self.refresh_every,
                Err(error) => {
                    tracing::warn!(%error, "JWKS refresh failed; keeping the last key set");
                    if self.is_loaded() {
                        self.refresh_every
                    } else {
                        FIRST_LOAD_RETRY
                    }
                }
            };
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}

/// The usable signing keys of a JWKS document, by `kid`: RSA, EC P-256/P-384 and Ed25519 keys
/// with a `kid`, not marked for encryption. Symmetric keys are never taken. An empty result is
/// an error, so a broken answer cannot replace a good set.
fn parse(body: &[u8]) -> Result<HashMap<String, JwksKey>, JwksError> {
    let set: JwkSet =
        serde_json::from_slice(body).map_err(|e| JwksError::Invalid(e.to_string()))?;
    let keys: HashMap<String, JwksKey> = set.keys.iter().filter_map(usable).collect();
    if keys.is_empty() {
        return Err(JwksError::Invalid("no usable signing key".into()));
    }
    Ok(keys)
}

fn usable(jwk: &Jwk) -> Option<(String, JwksKey)> {
    let kid = jwk.common.key_id.clone()?;
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return None;
    }
    let by_type = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => vec![Algorithm::RS256, Algorithm::RS384, Algorithm::RS512],
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => vec![Algorithm::ES256],
            EllipticCurve::P384 => vec![Algorithm::ES384],
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            vec![Algorithm::EdDSA]
        }
        _ => return None,
    };
    // A key that names its algorithm verifies that one only.
    let algorithms = match jwk.common.key_algorithm {
        None => by_type,
        Some(named) => {
            let named = match named {
                KeyAlgorithm::RS256 => Algorithm::RS256,
                KeyAlgorithm::RS384 => Algorithm::RS384,
                KeyAlgorithm::RS512 => Algorithm::RS512,
                KeyAlgorithm::ES256 => Algorithm::ES256,
                KeyAlgorithm::ES384 => Algorithm::ES384,
                KeyAlgorithm::EdDSA => Algorithm::EdDSA,
                _ => return None,
            };
            by_type.into_iter().filter(|a| *a == named).collect()
        }
    };
    if algorithms.is_empty() {
        return None;
    }
    let key = DecodingKey::from_jwk(jwk).ok()?;
    Some((kid, JwksKey { key, algorithms }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const RSA: &str = r#"{"kty":"RSA","kid":"r1","use":"sig","alg":"RS256","e":"AQAB","n":"sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw"}"#;
    const EC: &str = r#"{"kty":"EC","kid":"e1","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}"#;
    const OCT: &str = r#"{"kty":"oct","kid":"s1","k":"c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0"}"#;

    /// Invariant: only signing keys with a `kid` count, symmetric keys never; a named `alg`
    /// narrows what a key verifies; a document without a usable key is refused.
    #[test]
    fn key_sets_take_only_usable_signing_keys() {
        let doc = format!(r#"{{"keys":[{RSA},{EC},{OCT}]}}"#);
        let keys = parse(doc.as_bytes()).unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys["r1"].algorithms, [Algorithm::RS256]);
        assert_eq!(keys["e1"].algorithms, [Algorithm::ES256]);
        assert!(parse(format!(r#"{{"keys":[{OCT}]}}"#).as_bytes()).is_err());
        assert!(parse(b"<html>").is_err());
        let no_kid = RSA.replace(r#""kid":"r1","#, "");
        assert!(parse(format!(r#"{{"keys":[{no_kid}]}}"#).as_bytes()).is_err());
        let enc = RSA.replace(r#""use":"sig""#, r#""use":"enc""#);
        assert!(parse(format!(r#"{{"keys":[{enc}]}}"#).as_bytes()).is_err());
    }

    #[test]
    fn the_url_must_be_http() {
        assert!(Jwks::new("file:///etc/passwd", Duration::from_secs(60)).is_err());
        assert!(
            Jwks::new(
                "https://idp.example.com/.well-known/jwks.json",
                Duration::from_secs(60)
            )
            .is_ok()
        );
    }
}
