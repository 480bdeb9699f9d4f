//! A JWKS endpoint the test controls: an axum server on a free loopback port serving the key
//! set the test sets, or failing as the test says (down, slow, garbage). Keys are made with
//! openssl and published through jsonwebtoken's JWK conversion.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::IntoResponse;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::Value;

use crate::server::BackgroundServer;

/// How the endpoint answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JwksMode {
    /// 200 with the current key set.
    Serve,
    /// 503.
    Down,
    /// The key set after 10 s.
    Slow,
    /// 200 with a body that is not a key set.
    Garbage,
}

/// A signing key pair of the test's identity provider.
pub struct SigningKey {
    /// The `kid`.
    pub kid: String,
    alg: Algorithm,
    key: EncodingKey,
    /// Its public half as a JWK.
    pub jwk: Jwk,
}

impl SigningKey {
    /// A fresh key made with openssl in `dir`: `"ec"` (P-256, ES256) or `"rsa"` (2048, RS256).
    pub fn generate(dir: &Path, kind: &str, kid: &str) -> Self {
        let private = dir.join(format!("{kid}.key"));
        let args: &[&str] = match kind {
            "rsa" => &[
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
            ],
            _ => &[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
            ],
        };
        let ok = Command::new("openssl")
            .args(args)
            .arg("-out")
            .arg(&private)
            .stderr(Stdio::null())
            .status()
            .expect("openssl")
            .success();
        assert!(ok, "openssl genpkey");
        let pem = std::fs::read(&private).unwrap();
        let (alg, key) = match kind {
            "rsa" => (Algorithm::RS256, EncodingKey::from_rsa_pem(&pem).unwrap()),
            _ => (Algorithm::ES256, EncodingKey::from_ec_pem(&pem).unwrap()),
        };
        let mut jwk = Jwk::from_encoding_key(&key, alg).expect("public JWK");
        jwk.common.key_id = Some(kid.to_owned());
        Self {
            kid: kid.to_owned(),
            alg,
            key,
            jwk,
        }
    }

    /// A token with these claims, signed with this key and naming its `kid`.
    pub fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        let token = jsonwebtoken::encode(&header, claims, &self.key).unwrap();
        crate::tokens::remember(&token);
        token
    }
}

type Shared = Arc<Mutex<(JwksMode, JwkSet)>>;

/// The endpoint; stops on drop.
pub struct JwksServer {
    pub port: u16,
    state: Shared,
    server: BackgroundServer,
}

impl JwksServer {
    /// Serves an empty key set until told otherwise.
    pub fn start(mode: JwksMode) -> Self {
        let state: Shared = Arc::new(Mutex::new((mode, JwkSet { keys: Vec::new() })));
        let served = state.clone();
        let app = axum::Router::new().fallback(move || {
            let served = served.clone();
            async move {
                let (mode, set) = served.lock().unwrap().clone();
                let body = serde_json::to_string(&set).unwrap();
                match mode {
                    JwksMode::Serve => body.into_response(),
                    JwksMode::Down => StatusCode::SERVICE_UNAVAILABLE.into_response(),
                    JwksMode::Slow => {
                        tokio::time::sleep(Duration::from_secs(10)).await;
                        body.into_response()
                    }
                    JwksMode::Garbage => "<html>not a key set</html>".into_response(),
                }
            }
        });
        let server = BackgroundServer::start(app);
        Self {
            port: server.port,
            state,
            server,
        }
    }

    /// `JWT_JWKS_URL` for gateways that use this endpoint.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/.well-known/jwks.json", self.port)
    }

    /// Publishes exactly these keys.
    pub fn set_keys(&self, keys: &[&SigningKey]) {
        self.state.lock().unwrap().1 = JwkSet {
            keys: keys.iter().map(|k| k.jwk.clone()).collect(),
        };
    }

    /// Changes how the endpoint answers.
    pub fn set_mode(&self, mode: JwksMode) {
        self.state.lock().unwrap().0 = mode;
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        // A slow answer may still be sleeping: do not wait for the server thread.
        self.server.stop(false);
    }
}
