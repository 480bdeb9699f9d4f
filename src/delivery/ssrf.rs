//! The SSRF guard: webhook URLs must be `https://` and resolve only to public addresses, unless
//! `WEBHOOK_ALLOW_PRIVATE=true`. Checked at registration and again on the resolved addresses of
//! every attempt (a name may point elsewhere by then): the HTTP client resolves through
//! [`GuardedResolver`], which hands it only the addresses that pass.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Whether an address is one a webhook must never reach without the flag: loopback, private,
/// link-local (cloud metadata at 169.254.169.254), unspecified, shared, multicast,
/// documentation, unique-local IPv6, and IPv4 mapped into IPv6 of any of those.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => internal_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return internal_v4(v4);
            }
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00 // unique local
                || (first & 0xffc0) == 0xfe80 // link local
                || (first == 0x2001 && v6.segments()[1] == 0x0db8) // documentation
                || v6 == Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0)
        }
    }
}

fn internal_v4(v4: Ipv4Addr) -> bool {
    let [a, b, ..] = v4.octets();
    v4.is_loopback()
        || v4.is_private()
        || v4.is_link_local()
        || v4.is_unspecified()
        || v4.is_broadcast()
        || v4.is_multicast()
        || v4.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // shared address space
        || (a == 192 && b == 0 && v4.octets()[2] == 0) // IETF protocol assignments
        || a >= 240
}

/// Why a URL or address was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Not an absolute `https://` (or, with the flag, `http://`) URL with a host.
    #[error("{0}")]
    Url(String),
    /// The host is, or resolves to, an internal address.
    #[error("{host} resolves to an internal address ({ip})")]
    Internal {
        /// The URL's host.
        host: String,
        /// The first internal address found.
        ip: IpAddr,
    },
    /// The host does not resolve.
    #[error("{0} does not resolve")]
    Unresolved(String),
}

/// Checks a webhook URL: scheme, host, and (unless `allow_private`) every address its host
/// resolves to now.
pub async fn check_url(url: &str, allow_private: bool) -> Result<reqwest::Url, Refused> {
    let parsed = reqwest::Url::parse(url).map_err(|e| Refused::Url(format!("not a URL: {e}")))?;
    match parsed.scheme() {
        "https" => {}
        "http" if allow_private => {}
        "http" => {
            return Err(Refused::Url(
                "must be https:// (http:// only with WEBHOOK_ALLOW_PRIVATE=true)".into(),
            ));
        }
        other => return Err(Refused::Url(format!("scheme {other} is not https"))),
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(Refused::Url("must not carry credentials".into()));
    }
    let host = parsed
        .host_str()
        .ok_or_else(|| Refused::Url("has no host".into()))?
        .to_owned();
    if allow_private {
        return Ok(parsed);
    }
    let port = parsed.port_or_known_default().unwrap_or(443);
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<SocketAddr> = match bare.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => tokio::net::lookup_host((bare, port))
            .await
            .map_err(|_| Refused::Unresolved(host.clone()))?
            .collect(),
    };
    if addrs.is_empty() {
        return Err(Refused::Unresolved(host));
    }
    if let Some(bad) = addrs.iter().find(|a| is_internal(a.ip())) {
        return Err(Refused::Internal { host, ip: bad.ip() });
    }
    Ok(parsed)
}

/// The HTTP client's resolver: the system's, keeping only public addresses (all of them with
/// the flag). A name with none left fails to connect, and the attempt fails.
#[derive(Debug, Clone, Copy)]
pub struct GuardedResolver {
    /// `WEBHOOK_ALLOW_PRIVATE`.
    pub allow_private: bool,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow_private = self.allow_private;
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| allow_private || !is_internal(a.ip()))
                .collect();
            if found.is_empty() {
                return Err(format!("{host} resolves to no public address").into());
            }
            let addrs: reqwest::dns::Addrs = Box::new(found.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses_are_recognised() {
        for ip in [
            "127.0.0.1",
            "10.0.0.1",
            "172.16.5.4",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.1.2.3",
        ] {
            assert!(is_internal(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["93.184.216.34", "8.8.8.8", "2606:4700::1111"] {
            assert!(!is_internal(ip.parse().unwrap()), "{ip}");
        }
    }

    #[tokio::test]
    async fn urls_are_refused_without_the_flag() {
        for url in [
            "https://127.0.0.1/hook",
            "https://10.0.0.1/hook",
            "https://169.254.169.254/latest/meta-data",
            "https://[::1]/hook",
            "https://localhost/hook",
            "http://example.com/hook",
            "ftp://example.com/hook",
            "https://user:pw@example.com/hook",
            "not a url",
        ] {
            assert!(check_url(url, false).await.is_err(), "{url}");
        }
        assert!(check_url("http://127.0.0.1:9/hook", true).await.is_ok());
        assert!(check_url("ftp://127.0.0.1/hook", true).await.is_err());
    }
}
