//! Where provider traffic may go. Provider base URLs are admin input and provider keys are sent
//! to them, so an address a gateway should never call on a provider's behalf — loopback, private
//! networks, link-local (cloud metadata at 169.254.169.254), unique-local, multicast — is refused
//! unless the operator allows its network explicitly (self-hosted Ollama or vLLM on a private
//! network). Both planes check the address they actually connect to with [`EgressPolicy::permits`]
//! (their DNS resolvers keep only permitted addresses, so a name cannot rebind around it) and
//! check a URL's host early with [`EgressPolicy::permits_url_host`]. No IO here.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// Host names of cloud metadata services; refused whatever the allow-list says.
pub const METADATA_HOSTS: &[&str] = &[
    "metadata.google.internal",
    "metadata.goog",
    "metadata",
    "instance-data",
    "instance-data.ec2.internal",
    "metadata.azure.internal",
];

/// The reason a connection is refused, as both planes word it.
pub fn denied_message(host: &str) -> String {
    format!("egress to {host} denied by policy")
}

/// An IPv4 or IPv6 network: an address and a prefix length, host bits cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

/// A CIDR entry that does not parse; it names the entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CidrError(pub String);

impl fmt::Display for CidrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} is not a network like 10.0.0.0/8, fd00::/8 or a single address",
            self.0
        )
    }
}

impl std::error::Error for CidrError {}

impl Cidr {
    pub fn new(addr: IpAddr, prefix: u8) -> Option<Cidr> {
        let bits = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > bits {
            return None;
        }
        let addr = match addr {
            IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask32(prefix))),
            IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask128(prefix))),
        };
        Some(Cidr { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => u32::from(a) & mask32(self.prefix) == u32::from(n),
            (IpAddr::V6(n), IpAddr::V6(a)) => u128::from(a) & mask128(self.prefix) == u128::from(n),
            _ => false,
        }
    }
}

fn mask32(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

fn mask128(prefix: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

impl FromStr for Cidr {
    type Err = CidrError;
    fn from_str(s: &str) -> Result<Cidr, CidrError> {
        let bad = || CidrError(s.to_owned());
        let t = s.trim();
        let (addr, prefix) = match t.split_once('/') {
            Some((a, p)) => {
                let addr: IpAddr = a.parse().map_err(|_| bad())?;
                if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(bad());
                }
                (addr, p.parse::<u8>().map_err(|_| bad())?)
            }
            None => {
                let addr: IpAddr = t.parse().map_err(|_| bad())?;
                (addr, if addr.is_ipv4() { 32 } else { 128 })
            }
        };
        Cidr::new(addr, prefix).ok_or_else(bad)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Which addresses provider traffic may reach: public unicast addresses, plus the networks in
/// `allow`. The default (empty allow-list) refuses every internal address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EgressPolicy {
    pub allow: Vec<Cidr>,
}

impl EgressPolicy {
    /// Parses an allow-list; the error names the first bad entry.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<EgressPolicy, CidrError> {
        let allow = entries
            .iter()
            .map(|e| e.as_ref().parse())
            .collect::<Result<_, _>>()?;
        Ok(EgressPolicy { allow })
    }

    /// Loopback only (`127.0.0.0/8`, `::1/128`): development on one machine.
    pub fn loopback() -> EgressPolicy {
        EgressPolicy::parse(&["127.0.0.0/8", "::1/128"]).unwrap_or_default()
    }

    /// May provider traffic connect to `ip`?
    pub fn permits(&self, ip: IpAddr) -> bool {
        // An IPv4-mapped or -compatible IPv6 address reaches its IPv4 address.
        let ip = match ip {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped().or_else(|| compatible(v6)) {
                Some(v4) => IpAddr::V4(v4),
                None => ip,
            },
            v4 => v4,
        };
        if self.allow.iter().any(|c| c.contains(ip)) {
            return true;
        }
        !internal(ip)
    }

    /// Early check of a URL host (as `url::Url::host_str` gives it: IPv6 in brackets): a refused
    /// IP literal or a metadata host name. Other names are checked when they are resolved.
    pub fn permits_url_host(&self, host: &str) -> bool {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        match bare.parse::<IpAddr>() {
            Ok(ip) => self.permits(ip),
            Err(_) => permits_name(bare),
        }
    }
}

/// Is `host` (a name) other than a cloud metadata service's?
pub fn permits_name(host: &str) -> bool {
    let h = host.trim_end_matches('.');
    !METADATA_HOSTS.iter().any(|m| m.eq_ignore_ascii_case(h))
}

/// `::a.b.c.d` (deprecated IPv4-compatible), but not `::` or `::1`.
fn compatible(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = v6.segments();
    if s[..6].iter().all(|&x| x == 0) && (s[6] != 0 || s[7] > 1) {
        return Some(Ipv4Addr::new(
            (s[6] >> 8) as u8,
            s[6] as u8,
            (s[7] >> 8) as u8,
            s[7] as u8,
        ));
    }
    None
}

/// Addresses a gateway must not reach by default.
fn internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => {
            let o = a.octets();
            a.is_loopback()
                || a.is_unspecified()
                || a.is_private()
                || a.is_link_local()
                || a.is_multicast()
                || a.is_broadcast()
                || a.is_documentation()
                || o[0] == 0 // "this network"
                || (o[0] == 100 && (o[1] & 0xc0) == 64) // shared / CGNAT 100.64/10
                || (o[0] == 192 && o[1] == 0 && o[2] == 0) // IETF protocol assignments
                || (o[0] == 198 && (o[1] & 0xfe) == 18) // benchmarking 198.18/15
                || o[0] >= 240 // reserved
        }
        IpAddr::V6(a) => {
            let s = a.segments();
            a.is_loopback()
                || a.is_unspecified()
                || a.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique-local fc00::/7
                || (s[0] & 0xffc0) == 0xfe80 // link-local fe80::/10
                || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated) fec0::/10
                || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
                || (s[0] == 0x64 && s[1] == 0xff9b) // NAT64 (may reach internal IPv4)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn default_policy_refuses_internal_addresses() {
        let p = EgressPolicy::default();
        for bad in [
            "127.0.0.1",
            "127.1.2.3",
            "0.0.0.0",
            "0.1.2.3",
            "10.0.0.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "100.64.0.1",
            "100.127.255.254",
            "169.254.169.254",
            "169.254.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "192.0.2.1",
            "198.51.100.1",
            "203.0.113.1",
            "198.18.0.1",
            "240.0.0.1",
            "::1",
            "::",
            "fe80::1",
            "fc00::1",
            "fd12:3456::1",
            "ff02::1",
            "2001:db8::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:10.0.0.1",
            "::127.0.0.1",
            "::a9fe:a9fe",
            "64:ff9b::a9fe:a9fe",
        ] {
            assert!(!p.permits(ip(bad)), "{bad} must be refused");
        }
    }

    #[test]
    fn default_policy_permits_public_addresses() {
        let p = EgressPolicy::default();
        for good in [
            "8.8.8.8",
            "1.1.1.1",
            "104.18.0.1",
            "172.15.255.255",
            "172.32.0.1",
            "100.63.255.255",
            "100.128.0.1",
            "169.253.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert!(p.permits(ip(good)), "{good} must be permitted");
        }
    }

    #[test]
    fn allow_list_opens_exactly_its_networks() {
        let p = EgressPolicy::parse(&["10.1.0.0/16", "::1", "192.168.1.7", "fd00::/8"]).unwrap();
        for good in [
            "10.1.2.3",
            "::1",
            "192.168.1.7",
            "fd00::5",
            "::ffff:10.1.0.9",
        ] {
            assert!(p.permits(ip(good)), "{good}");
        }
        for bad in [
            "10.2.0.1",
            "127.0.0.1",
            "192.168.1.8",
            "169.254.169.254",
            "fc00::1",
        ] {
            assert!(!p.permits(ip(bad)), "{bad}");
        }
        let lo = EgressPolicy::loopback();
        assert!(lo.permits(ip("127.0.0.1")) && lo.permits(ip("::1")));
        assert!(!lo.permits(ip("10.0.0.1")) && !lo.permits(ip("169.254.169.254")));
    }

    #[test]
    fn cidrs_parse_and_name_bad_entries() {
        for (s, shown) in [
            ("10.0.0.0/8", "10.0.0.0/8"),
            ("10.9.9.9/8", "10.0.0.0/8"),
            ("::1/128", "::1/128"),
            ("127.0.0.1", "127.0.0.1/32"),
            ("fd00::1", "fd00::1/128"),
            ("0.0.0.0/0", "0.0.0.0/0"),
            (" 192.168.0.0/16 ", "192.168.0.0/16"),
        ] {
            assert_eq!(s.parse::<Cidr>().unwrap().to_string(), shown, "{s}");
        }
        for bad in [
            "",
            "10.0.0.0/33",
            "::/129",
            "10.0.0/8",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "host",
            "/8",
            "10.0.0.0/8/8",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad:?}");
        }
        let e = EgressPolicy::parse(&["10.0.0.0/8", "nope/3"]).unwrap_err();
        assert!(e.to_string().contains("\"nope/3\""), "{e}");
        assert!(Cidr::from_str("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
        assert!(!Cidr::from_str("0.0.0.0/0").unwrap().contains(ip("::1")));
    }

    #[test]
    fn url_hosts_are_checked_early() {
        let p = EgressPolicy::default();
        for bad in [
            "169.254.169.254",
            "127.0.0.1",
            "[::1]",
            "[::ffff:169.254.169.254]",
            "metadata.google.internal",
            "METADATA.google.internal.",
            "metadata",
            "instance-data",
        ] {
            assert!(!p.permits_url_host(bad), "{bad}");
        }
        for good in [
            "api.openai.com",
            "8.8.8.8",
            "[2606:4700::1111]",
            "localhost",
        ] {
            assert!(p.permits_url_host(good), "{good}");
        }
        // The allow-list opens addresses, never metadata names.
        let all = EgressPolicy::parse(&["0.0.0.0/0", "::/0"]).unwrap();
        assert!(all.permits_url_host("127.0.0.1"));
        assert!(!all.permits_url_host("metadata.google.internal"));
    }
}
