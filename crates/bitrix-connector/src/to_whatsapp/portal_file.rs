//! Downloading the files operators attach to replies (protocol §5.2). The link arrives in an
//! event, so it is whatever the sender of that event chose, and the bridge re-hosts what it
//! gets: a link that reached an internal service would publish its answer. So a link must be
//! on the configured portal (`bitrix.portal_url`, trusted as the operator wrote it, loopback
//! included), redirects are followed here rather than by reqwest so each hop is checked, a hop
//! off the portal must be https to a public address — checked after DNS resolution and pinned
//! for the connection, so a second lookup can't swap in another address — and the body is
//! capped while it streams.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use reqwest::{Url, header, redirect};

/// A portal's short link → `/pub/im.file.php` → perhaps its storage, with room to spare.
pub const MAX_REDIRECTS: usize = 5;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A whole download, body included: 100 MB at about 7 Mbit/s.
const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(120);

/// The most WhatsApp accepts for one kind of media, and how to name it to an operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub bytes: u64,
    pub what: &'static str,
}

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The link, or a redirect, leads somewhere a file may not come from. Final.
    #[error("{0}")]
    Refused(String),
    /// Final: the same file will be as large next time.
    #[error("it is larger than WhatsApp accepts for {} ({} MB)", .0.what, .0.bytes / (1024 * 1024))]
    TooLarge(Limit),
    /// Network trouble or an error status: worth another try.
    #[error("{0}")]
    Unavailable(String),
}

impl FileError {
    pub fn is_final(&self) -> bool {
        !matches!(self, FileError::Unavailable(_))
    }
}

/// `scheme://host[:port]` of `url`: enough to say where a link leads without repeating the
/// signed query a portal file URL carries.
fn place(url: &Url) -> String {
    let origin = url.origin();
    if origin.is_tuple() {
        origin.ascii_serialization()
    } else {
        format!("a {}: address", url.scheme())
    }
}

/// The link as an absolute URL on the portal. A relative link (newer portals'
/// `downloadLink`) is taken relative to the portal; the `#img.jpg` marker is no part of the
/// address.
pub fn resolve(portal: &Url, link: &str) -> Result<Url, FileError> {
    let mut url = portal
        .join(link.trim())
        .map_err(|_| FileError::Refused("its link is not a URL".into()))?;
    url.set_fragment(None);
    if url.origin() != portal.origin() {
        return Err(FileError::Refused(format!(
            "its link points to {}, not to the portal ({})",
            place(&url),
            place(portal)
        )));
    }
    Ok(url)
}

/// GETs `url` (from [`resolve`]) and follows up to [`MAX_REDIRECTS`] redirects, checking each
/// hop before connecting; the final answer, with a success status.
pub async fn open(portal: &Url, mut url: Url) -> Result<reqwest::Response, FileError> {
    for _ in 0..=MAX_REDIRECTS {
        let client = client_for(portal, &url).await?;
        let resp = client.get(url.clone()).send().await.map_err(|e| {
            FileError::Unavailable(format!(
                "fetching it from {} failed: {}",
                place(&url),
                e.without_url()
            ))
        })?;
        let status = resp.status();
        if let (true, Some(location)) = (
            status.is_redirection(),
            resp.headers().get(header::LOCATION),
        ) {
            let location = location
                .to_str()
                .map_err(|_| FileError::Refused("a redirect's Location is not text".into()))?;
            url = url
                .join(location)
                .map_err(|_| FileError::Refused("a redirect's Location is not a URL".into()))?;
            url.set_fragment(None);
            continue;
        }
        if !status.is_success() {
            return Err(FileError::Unavailable(format!(
                "{} answered HTTP {status}",
                place(&url)
            )));
        }
        return Ok(resp);
    }
    Err(FileError::Refused(format!(
        "its link redirected more than {MAX_REDIRECTS} times"
    )))
}

/// The body, refused as soon as it passes `limit` (an announced length beyond it is refused
/// before reading anything).
pub async fn read_capped(mut resp: reqwest::Response, limit: Limit) -> Result<Vec<u8>, FileError> {
    let announced = resp.content_length().unwrap_or(0);
    if announced > limit.bytes {
        return Err(FileError::TooLarge(limit));
    }
    // An announced length is the sender's word: reserve up to 1 MiB on it, grow past it as bytes
    // actually arrive.
    let mut body = Vec::with_capacity(announced.min(1024 * 1024) as usize);
    while let Some(chunk) = resp.chunk().await.map_err(|e| {
        FileError::Unavailable(format!("reading the file failed: {}", e.without_url()))
    })? {
        if (body.len() + chunk.len()) as u64 > limit.bytes {
            return Err(FileError::TooLarge(limit));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A client for one hop that never follows redirects by itself. The portal is reached as
/// configured; anywhere else only over https, to addresses checked here and pinned, with no
/// proxy (a proxy would resolve the name again, past this check).
async fn client_for(portal: &Url, url: &Url) -> Result<reqwest::Client, FileError> {
    let builder = reqwest::Client::builder()
        .user_agent(concat!("switchboard/", env!("CARGO_PKG_VERSION")))
        .redirect(redirect::Policy::none())
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(DOWNLOAD_TIMEOUT);
    let builder = if url.origin() == portal.origin() {
        builder
    } else {
        let builder = builder.no_proxy();
        match public_addresses(url).await? {
            Some((name, addrs)) => builder.resolve_to_addrs(&name, &addrs),
            None => builder,
        }
    };
    builder
        .build()
        .map_err(|e| FileError::Unavailable(format!("HTTP client: {e}")))
}

/// Checks a hop off the portal: https, and every address of its host public. For a host
/// name, the name and the addresses to pin it to; `None` for an address literal.
async fn public_addresses(url: &Url) -> Result<Option<(String, Vec<SocketAddr>)>, FileError> {
    let to = place(url);
    if url.scheme() != "https" {
        return Err(FileError::Refused(format!(
            "it was redirected to {to}, which is neither the portal nor https"
        )));
    }
    let inside = |ip: IpAddr| {
        FileError::Refused(format!(
            "it was redirected to {to}, which is {ip}: an address of this host or of a private network"
        ))
    };
    let port = url.port_or_known_default().unwrap_or(443);
    let Some(host) = url.host_str() else {
        return Err(FileError::Refused(format!(
            "it was redirected to {to}, which has no host"
        )));
    };
    // An address literal (IPv6 in brackets) is checked as it is: nothing to resolve or pin.
    if let Ok(ip) = host.trim_start_matches('[').trim_end_matches(']').parse() {
        return if is_public(ip) {
            Ok(None)
        } else {
            Err(inside(ip))
        };
    }
    let lookup = tokio::net::lookup_host((host, port));
    let addrs: Vec<SocketAddr> = tokio::time::timeout(CONNECT_TIMEOUT, lookup)
        .await
        .map_err(|_| FileError::Unavailable(format!("looking up {host} timed out")))?
        .map_err(|e| FileError::Unavailable(format!("looking up {host} failed: {e}")))?
        .collect();
    if addrs.is_empty() {
        return Err(FileError::Unavailable(format!("{host} has no address")));
    }
    // One internal address is enough to refuse: which one a connection would take is not
    // ours to predict.
    if let Some(bad) = addrs.iter().map(SocketAddr::ip).find(|ip| !is_public(*ip)) {
        return Err(inside(bad));
    }
    Ok(Some((host.to_string(), addrs)))
}

/// Whether `ip` is an address on the public internet. Not: loopback, private, link-local
/// (where cloud metadata services answer), CGNAT, unspecified, multicast, broadcast, reserved,
/// benchmarking and documentation ranges, IPv6 unique-local and anything outside global
/// unicast, and the IPv6 forms that carry such an IPv4 address (mapped, NAT64, 6to4).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    let internal = a == 0 // "this network", 0.0.0.0 included
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || (a == 100 && (64..128).contains(&b)) // CGNAT 100.64.0.0/10
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || ip.is_documentation()
        || (a == 198 && (b == 18 || b == 19)) // benchmarking 198.18.0.0/15
        || a >= 224; // multicast, reserved 240/4, broadcast
    !internal
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    let s = ip.segments();
    let embedded = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    match s {
        // NAT64 well-known prefix: reaches the IPv4 address it carries.
        [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] => is_public_v4(embedded(hi, lo)),
        // 6to4.
        [0x2002, hi, lo, ..] => is_public_v4(embedded(hi, lo)),
        // Teredo, benchmarking, ORCHID, documentation.
        [0x2001, 0, ..] | [0x2001, 2, 0, ..] | [0x2001, 0x10..=0x2f, ..] | [0x2001, 0xdb8, ..] => {
            false
        }
        // Global unicast is 2000::/3; everything else (loopback, unspecified, IPv4-compatible,
        // unique-local, link-local, site-local, multicast, local NAT64) stays inside.
        [first, ..] => first & 0xe000 == 0x2000,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn portal() -> Url {
        Url::parse("https://acme.bitrix24.com").unwrap()
    }

    #[test]
    fn only_links_on_the_portal_resolve() {
        let ok = |l: &str| resolve(&portal(), l).map(|u| u.to_string());
        assert_eq!(
            ok("https://acme.bitrix24.com/~Xy9Zq#img.jpg").unwrap(),
            "https://acme.bitrix24.com/~Xy9Zq"
        );
        assert_eq!(
            ok("/rest/download.json?token=abc").unwrap(),
            "https://acme.bitrix24.com/rest/download.json?token=abc"
        );
        assert_eq!(
            ok("HTTPS://ACME.bitrix24.com:443/~a").unwrap(),
            "https://acme.bitrix24.com/~a"
        );
        for bad in [
            "http://acme.bitrix24.com/~a",
            "https://acme.bitrix24.com:8443/~a",
            "https://acme.bitrix24.com.evil.example/~a",
            "https://evil.example/~a",
            "https://acme.bitrix24.com@evil.example/~a",
            "//127.0.0.1:6379/",
            "http://169.254.169.254/latest/meta-data/",
            "file:///etc/passwd",
            "javascript:alert(1)",
            "http://[::1]/",
        ] {
            let e = ok(bad).unwrap_err();
            assert!(
                matches!(e, FileError::Refused(_)) && e.is_final(),
                "{bad}: {e}"
            );
        }
        // A loopback portal (a test fake, an on-premises install) is trusted as configured,
        // but not other ports of the same address.
        let local = Url::parse("http://127.0.0.1:8080/").unwrap();
        assert!(resolve(&local, "http://127.0.0.1:8080/~a").is_ok());
        assert!(resolve(&local, "http://127.0.0.1:8081/~a").is_err());
    }

    #[test]
    fn internal_addresses_are_not_public() {
        for ip in [
            "0.0.0.0",
            "0.1.2.3",
            "127.0.0.1",
            "127.255.255.254",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.255",
            "192.0.0.170",
            "192.0.2.1",
            "198.18.0.1",
            "198.51.100.1",
            "203.0.113.1",
            "224.0.0.1",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::127.0.0.1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:10.0.0.1",
            "64:ff9b::7f00:1",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b:1::1",
            "2002:7f00:1::",
            "2002:a00:1::1",
            "2001::1",
            "2001:db8::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "fec0::1",
            "ff02::1",
            "100::1",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(!is_public(ip), "{ip} counted as public");
        }
        for ip in [
            "1.1.1.1",
            "8.8.8.8",
            "100.63.255.255",
            "100.128.0.0",
            "172.32.0.1",
            "192.169.0.1",
            "2a00:1450:4001:80b::200e",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(is_public(ip), "{ip} counted as internal");
        }
    }

    #[tokio::test]
    async fn hops_off_the_portal_need_https_and_a_public_address() {
        let hop = |u: &str| Url::parse(u).unwrap();
        for bad in [
            "http://93.184.215.14/",
            "https://127.0.0.1/",
            "https://[::ffff:127.0.0.1]/",
            "https://169.254.169.254/latest/meta-data/",
            "https://localhost/",
        ] {
            let e = public_addresses(&hop(bad)).await.unwrap_err();
            assert!(matches!(e, FileError::Refused(_)), "{bad}: {e}");
        }
        assert!(
            public_addresses(&hop("https://93.184.215.14/"))
                .await
                .unwrap()
                .is_none(),
            "a public address literal needs no pin"
        );
    }
}
