//! `REDIS_URL` forms: which are accepted, and how ours map onto fred's.

use crate::config::ConfigError;

/// Whether the URL names a Redis Cluster (sharded pub/sub, scans on every master).
pub fn is_cluster(url: &str) -> bool {
    url.starts_with("redis-cluster://") || url.starts_with("rediss-cluster://")
}

/// Whether the URL names a Sentinel deployment (`redis-sentinel://…/<service>`).
pub fn is_sentinel(url: &str) -> bool {
    url.starts_with("redis-sentinel://") || url.starts_with("rediss-sentinel://")
}

/// Whether the URL asks for TLS.
pub fn is_tls(url: &str) -> bool {
    ["rediss://", "rediss-cluster://", "rediss-sentinel://"]
        .iter()
        .any(|scheme| url.starts_with(scheme))
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
    if is_sentinel(url) {
        return sentinel_parts(url).map(|_| ());
    }
    if url.starts_with("redis://") || is_cluster(url) || is_tls(url) {
        Ok(())
    } else {
        Err(ConfigError::new(
            "REDIS_URL",
            "expected redis:// or rediss:// (TLS), redis-cluster:// or rediss-cluster:// with \
             host:port[,host:port…], or redis-sentinel:// with host:port[,host:port…]/<service>",
        ))
    }
}

/// A Sentinel URL's scheme, credentials (with their `@`), sentinel hosts, service and database.
struct SentinelParts<'a> {
    scheme: &'a str,
    auth: &'a str,
    hosts: Vec<&'a str>,
    service: &'a str,
    db: Option<&'a str>,
}

/// Splits `redis-sentinel://[user:pass@]host:port[,host:port…]/<service>[/<db>]`.
fn sentinel_parts(url: &str) -> Result<SentinelParts<'_>, ConfigError> {
    let bad = |why: &str| {
        ConfigError::new(
            "REDIS_URL",
            format!(
                "{why}: expected redis-sentinel://[user:pass@]host:port[,host:port…]/<service>[/<db>]"
            ),
        )
    };
    let (scheme, rest) = url.split_once("://").ok_or_else(|| bad("no scheme"))?;
    let (auth_len, rest_after_auth) = match rest.rsplit_once('@') {
        Some((auth, after)) => (auth.len() + 1, after),
        None => (0, rest),
    };
    let auth = &rest[..auth_len];
    let (hosts, path) = rest_after_auth
        .split_once('/')
        .ok_or_else(|| bad("no service name"))?;
    let hosts: Vec<&str> = hosts
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .collect();
    if hosts.is_empty() || hosts.iter().any(|h| !h.contains(':')) {
        return Err(bad("every sentinel needs host:port"));
    }
    let mut segments = path.split('/');
    let service = segments
        .next()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| bad("no service name"))?;
    let db = segments.next().filter(|d| !d.is_empty());
    if db.is_some_and(|d| d.parse::<u8>().is_err()) || segments.next().is_some() {
        return Err(bad("the database must be a number"));
    }
    Ok(SentinelParts {
        scheme,
        auth,
        hosts,
        service,
        db,
    })
}

/// Our `redis-cluster://a:1,b:2,…` form as fred's `redis-cluster://a:1?node=b:2&…`, and our
/// `redis-sentinel://a:1,b:2/<service>/<db>` as fred's
/// `redis-sentinel://a:1/<db>?sentinelServiceName=<service>&node=b:2`.
pub fn fred_url(url: &str) -> String {
    if is_sentinel(url)
        && let Ok(parts) = sentinel_parts(url)
    {
        let mut query = vec![format!("sentinelServiceName={}", parts.service)];
        query.extend(parts.hosts[1..].iter().map(|h| format!("node={h}")));
        return format!(
            "{}://{}{}/{}?{}",
            parts.scheme,
            parts.auth,
            parts.hosts[0],
            parts.db.unwrap_or("0"),
            query.join("&")
        );
    }
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

    #[test]
    fn sentinel_urls_become_fred_urls() {
        let ours = "redis-sentinel://u:p@a:26379,b:26380/mymaster/2";
        assert!(check(ours).is_ok() && is_sentinel(ours) && !is_cluster(ours));
        assert_eq!(
            fred_url(ours),
            "redis-sentinel://u:p@a:26379/2?sentinelServiceName=mymaster&node=b:26380"
        );
        assert_eq!(
            fred_url("redis-sentinel://a:1/svc"),
            "redis-sentinel://a:1/0?sentinelServiceName=svc"
        );
        let config = fred::prelude::Config::from_url(&fred_url(ours)).unwrap();
        assert!(matches!(
            config.server,
            fred::types::config::ServerConfig::Sentinel { ref hosts, ref service_name }
                if hosts.len() == 2 && service_name == "mymaster"
        ));
        assert_eq!(config.database, Some(2));
        assert!(is_tls("rediss-sentinel://a:1/svc"));
        for bad in [
            "redis-sentinel://a:1",
            "redis-sentinel://a:1/",
            "redis-sentinel://a/svc",
            "redis-sentinel://a:1/svc/x",
            "redis-sentinel://a:1/svc/1/2",
        ] {
            assert_eq!(check(bad).unwrap_err().var, "REDIS_URL", "{bad}");
        }
    }
}
