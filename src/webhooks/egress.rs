//! The egress guard: webhook targets must not reach loopback, private, link-local
//! (cloud metadata), shared or other special addresses unless the operator allows it.
//! Checked when a webhook is saved and again at every send, against the address the
//! request then connects to, so DNS rebinding cannot slip past.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::domain::webhook::WebhookUrl;

#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    #[error("the URL has no host")]
    NoHost,
    #[error("the host does not resolve")]
    Unresolvable,
    /// The address is kept for logs; the message shown to callers omits it, so the
    /// guard cannot be used to map internal DNS. It names the setting that lifts the
    /// guard, because a refused target is often a deliberate one (a receiver on the
    /// same host or network) and the caller then needs to know what to ask for.
    #[error(
        "the host resolves to a private, loopback, link-local or otherwise reserved address; \
         such targets are allowed only when the operator sets `webhooks.allow_private_targets` to `true`"
    )]
    Forbidden(IpAddr),
}

fn forbidden_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    ip.is_private()
        || ip.is_loopback()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b))
        || (a == 198 && (b == 18 || b == 19))
        || (a == 192 && b == 0 && ip.octets()[2] == 0)
        || a >= 240
}

fn forbidden_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return forbidden_v4(v4);
    }
    let segments = ip.segments();
    let first = segments[0];
    // Addresses that embed an IPv4 address the network may route to: NAT64
    // (64:ff9b::/96), 6to4 (2002::/16) and IPv4-compatible (::/96).
    let embedded = |hi: u16, lo: u16| Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8);
    if (segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] || segments[..6] == [0; 6])
        && !ip.is_loopback()
        && !ip.is_unspecified()
    {
        return forbidden_v4(embedded(segments[6], segments[7]));
    }
    if first == 0x2002 {
        return forbidden_v4(embedded(segments[1], segments[2]));
    }
    ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00
        || (first & 0xffc0) == 0xfe80
        || (first & 0xffc0) == 0xfec0
        || (first == 0x2001 && segments[1] == 0x0000)
        || (first == 0x2001 && segments[1] == 0x0db8)
        || first == 0x0100
}

pub fn is_forbidden(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => forbidden_v6(v6),
    }
}

/// A target to connect to: the URL's host name and one checked address.
#[derive(Debug, Clone)]
pub struct Target {
    pub host: String,
    pub address: SocketAddr,
}

/// Resolves `url` and picks an address the guard allows (every address must pass:
/// a name that resolves to one public and one private address is refused).
pub async fn resolve(url: &WebhookUrl, allow_private: bool) -> Result<Target, EgressError> {
    let parsed = reqwest::Url::parse(url.as_str()).map_err(|_| EgressError::NoHost)?;
    let host = parsed.host_str().ok_or(EgressError::NoHost)?.to_owned();
    let port = parsed.port_or_known_default().unwrap_or(443);
    let bare = host.trim_start_matches('[').trim_end_matches(']').to_owned();
    let addresses: Vec<SocketAddr> = tokio::net::lookup_host((bare.as_str(), port))
        .await
        .map_err(|_| EgressError::Unresolvable)?
        .collect();
    let first = *addresses.first().ok_or(EgressError::Unresolvable)?;
    if !allow_private {
        if let Some(bad) = addresses.iter().find(|a| is_forbidden(a.ip())) {
            return Err(EgressError::Forbidden(bad.ip()));
        }
    }
    Ok(Target {
        host: bare,
        address: first,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_ranges_are_forbidden_and_public_ones_allowed() {
        for bad in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fd00::2",
            "::ffff:10.0.0.1",
        ] {
            assert!(is_forbidden(bad.parse().unwrap()), "{bad}");
        }
        for good in [
            "93.184.216.34",
            "2606:2800:220:1:248:1893:25c8:1946",
            "64:ff9b::5db8:d822",
        ] {
            assert!(!is_forbidden(good.parse().unwrap()), "{good}");
        }
    }

    #[tokio::test]
    async fn loopback_targets_are_refused_unless_allowed() {
        let url = WebhookUrl::parse("http://127.0.0.1:9/hook").unwrap();
        assert!(matches!(resolve(&url, false).await, Err(EgressError::Forbidden(_))));
        assert!(resolve(&url, true).await.is_ok());
        let localhost = WebhookUrl::parse("http://localhost:9/hook").unwrap();
        assert!(resolve(&localhost, false).await.is_err());
    }
}
