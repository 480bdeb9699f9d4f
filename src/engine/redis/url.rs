//! `REDIS_URL` forms: which are accepted, and how ours map onto fred's.

use crate::config::ConfigError;

/// Whether the URL names a Redis Cluster (sharded pub/sub, scans on every master).
pub fn is_cluster(url: &str) -> bool {
    url.starts_with("redis-cluster://")
}

/// Checks the URL scheme before any connection attempt, so a typo fails at start-up (exit 2).
pub fn check(url: &str) -> Result<(), ConfigError> {
    if url.starts_with("redis://") || is_cluster(url) {
        Ok(())
    } else if url.starts_with("rediss://") || url.starts_with("rediss-cluster://") {
        Err(ConfigError::new(
            "REDIS_URL",
            "TLS to Redis (rediss://) is not supported by this build yet",
        ))
    } else {
        Err(ConfigError::new(
            "REDIS_URL",
            "expected redis://host:port or redis-cluster://host:port[,host:port…]",
        ))
    }
}

/// Our `redis-cluster://a:1,b:2,…` form as fred's `redis-cluster://a:1?node=b:2&…`.
pub fn fred_url(url: &str) -> String {
    let Some(rest) = url.strip_prefix("redis-cluster://") else {
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
        format!("redis-cluster://{auth}{first}")
    } else {
        format!("redis-cluster://{auth}{first}?{}", params.join("&"))
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
        assert_eq!(check("rediss://h:1").unwrap_err().var, "REDIS_URL");
        assert_eq!(check("http://h:1").unwrap_err().var, "REDIS_URL");
    }
}
