//! Tokens the test gateways accept (HS256 with [`SECRET`]), and time helpers for claims and
//! license documents.

use std::sync::Mutex;

use serde_json::{Value, json};

/// Every token this harness signed, so logs can be searched for them.
static SIGNED: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Adds a token to those the leak check looks for.
pub fn remember(token: &str) {
    SIGNED.lock().unwrap().push(token.to_owned());
}

/// Values no process under test may ever write to its logs: the HMAC secret, the admin key and
/// every token the harness signed.
pub fn secrets() -> Vec<String> {
    let mut all = vec![SECRET.to_owned(), ADMIN_KEY.to_owned()];
    all.extend(SIGNED.lock().unwrap().iter().cloned());
    all
}

/// The HMAC secret every test gateway uses (at least 32 bytes, as the gateway requires).
pub const SECRET: &str = "test-secret-do-not-use-0123456789abcdef";
/// The admin key every test gateway accepts (`ADMIN_API_KEYS`).
pub const ADMIN_KEY: &str = "test-admin-key-do-not-use-0123456789abc";

/// A tenant token valid for an hour.
pub fn tenant_token(tenant: &str) -> String {
    let now = now_secs();
    sign_claims(&json!({"tenantId": tenant, "iat": now, "exp": now + 3600}))
}

/// The admin key, as admin routes take it (`Authorization: Bearer <key>`).
pub fn admin_key() -> String {
    ADMIN_KEY.to_owned()
}

/// Signs arbitrary claims with HS256 and the test secret.
pub fn sign_claims(claims: &Value) -> String {
    sign_with(jsonwebtoken::Algorithm::HS256, SECRET.as_bytes(), claims)
}

/// Signs claims with an HMAC algorithm and secret of choice.
pub fn sign_with(alg: jsonwebtoken::Algorithm, secret: &[u8], claims: &Value) -> String {
    let key = jsonwebtoken::EncodingKey::from_secret(secret).unwrap();
    let token = jsonwebtoken::encode(&jsonwebtoken::Header::new(alg), claims, &key).unwrap();
    remember(&token);
    token
}

/// RFC 3339 (whole seconds, UTC) of now plus `secs`.
pub fn rfc3339_in(secs: i64) -> String {
    let t = time::OffsetDateTime::now_utc() + time::Duration::seconds(secs);
    t.replace_nanosecond(0)
        .expect("zero nanoseconds")
        .format(&time::format_description::well_known::Rfc3339)
        .expect("RFC 3339")
}

/// Unix seconds now.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Base64url without padding (JWT segments).
pub fn b64url(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

/// A tenant token naming a user (`sub`), valid for an hour.
pub fn user_token(tenant: &str, user: &str) -> String {
    let now = now_secs();
    sign_claims(&json!({"tenantId": tenant, "sub": user, "iat": now, "exp": now + 3600}))
}
