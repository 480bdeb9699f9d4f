//! `REDIS_URL` forms: which are accepted, and how ours map onto fred's.

use crate::config::ConfigError;

/// Whether the URL names a Redis Cluster (sharded pub/sub, scans on every master).
pub fn is_cluster(url: &str) -> bool {
    url.starts_with("redis-cluster://") || url.starts_with("rediss-cluster://")
}

/// Whether the URL asks for TLS.
pub fn is_tls(url: &str) -> bool {
    url.starts_with("rediss://") || url.starts_with("rediss-cluster://")
}

/// A checked `REDIS_URL` with the TLS settings it asks for.
#[derive(Clone)]
pub struct RedisTarget {
    /// The URL as configured.
    pub url: String,
    /// For `rediss` URLs.
    pub tls: Option<fred::types::config::TlsConfig>,
}

impl RedisTarget {
    /// Checks `url` and, for `rediss`, loads the roots (`REDIS_TLS_CA_FILE` or the system's).
    pub fn new(url: &str, ca_file: Option<&std::path::Path>) -> Result<Self, ConfigError> {
        check(url)?;
        let tls = if is_tls(url) {
            Some(tls_config(ca_file)?)
        } else {
            None
        };
        Ok(Self {
            url: url.to_owned(),
            tls,
        })
    }
}

/// The TLS settings for a `rediss` URL: the system's roots, or only the CA in
/// `REDIS_TLS_CA_FILE`. The server's certificate must match its host name either way.
pub fn tls_config(
    ca_file: Option<&std::path::Path>,
) -> Result<fred::types::config::TlsConfig, ConfigError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let Some(path) = ca_file else {
        let connector = fred::types::config::TlsConnector::default_rustls()
            .map_err(|e| ConfigError::new("REDIS_URL", format!("system roots: {e}")))?;
        return Ok(connector.into());
    };
    let var = "REDIS_TLS_CA_FILE";
    let pem = std::fs::read(path)
        .map_err(|e| ConfigError::new(var, format!("{}: {e}", path.display())))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| ConfigError::new(var, format!("{}: {e}", path.display())))?;
        roots
            .add(cert)
            .map_err(|e| ConfigError::new(var, format!("{}: {e}", path.display())))?;
    }
    if roots.is_empty() {
        return Err(ConfigError::new(
            var,
            format!("{} holds no certificate", path.display()),
        ));
    }
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError::new(var, e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(fred::types::config::TlsConnector::from(config).into())
}

/// Checks the URL scheme before any connection attempt, so a typo fails at start-up (exit 2).
pub fn check(url: &str) -> Result<(), ConfigError> {
    if url.starts_with("redis://") || is_cluster(url) || is_tls(url) {
        Ok(())
    } else {
        Err(ConfigError::new(
            "REDIS_URL",
            "expected redis:// or rediss:// (TLS), or redis-cluster:// or rediss-cluster:// \
             with host:port[,host:port…]",
        ))
    }
}

/// Our `redis-cluster://a:1,b:2,…` form as fred's `redis-cluster://a:1?node=b:2&…`.
pub fn fred_url(url: &str) -> String {
    let (scheme, rest) = if let Some(rest) = url.strip_prefix("redis-cluster://") {
        ("redis-cluster://", rest)
    } else if let Some(rest) = url.strip_prefix("rediss-cluster://") {
        ("rediss-cluster://", rest)
    } else {
        return url.to_owned();
    };
    let (auth, hosts) = match rest.rsplit_once('@') {
        Some((auth, hosts)) => (format!("{auth}@"), hosts),
        None => (String::new(), rest),
    };
    let (hosts, query) = hosts.split_once('?').unwrap_or((hosts, ""));
    let mut nodes = hosts.split(',').map(str::trim).filter(|h| !h.is_empty());
    let first = nodes.next().unwrap_or_default();
    let mut params: Vec<String> = nodes.map(|n| format!("node={n}")).collect();
    if !query.is_empty() {
        params.push(query.to_owned());
    }
    if params.is_empty() {
        format!("{scheme}{auth}{first}")
    } else {
        format!("{scheme}{auth}{first}?{}", params.join("&"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_urls_become_fred_urls() {
        assert_eq!(fred_url("redis://a:1"), "redis://a:1");
        assert_eq!(fred_url("redis-cluster://a:1"), "redis-cluster://a:1");
        assert_eq!(
            fred_url("redis-cluster://u:p@a:1,b:2, c:3"),
            "redis-cluster://u:p@a:1?node=b:2&node=c:3"
        );
        assert!(
            fred::prelude::Config::from_url(&fred_url(
                "redis-cluster://127.0.0.1:7000,127.0.0.1:7001"
            ))
            .is_ok()
        );
    }

    #[test]
    fn schemes_are_checked_before_connecting() {
        assert!(check("redis://h:1").is_ok());
        assert!(check("redis-cluster://h:1,h:2").is_ok());
        assert!(check("rediss://h:1").is_ok() && check("rediss-cluster://h:1,h:2").is_ok());
        assert_eq!(
            fred_url("rediss-cluster://a:1,b:2"),
            "rediss-cluster://a:1?node=b:2"
        );
        assert_eq!(check("http://h:1").unwrap_err().var, "REDIS_URL");
    }
}
