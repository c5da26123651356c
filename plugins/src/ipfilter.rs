//! IP allow and deny lists (IPv4 and IPv6 CIDRs), and finding the client's address behind
//! trusted proxies.

use ipnet::IpNet;
use std::net::IpAddr;

/// Deny wins over allow; with an allow list, an address on neither list is denied.
#[derive(Debug, Clone, Default)]
pub struct IpFilter {
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
}

/// Parse `10.0.0.0/8`, `2001:db8::/32`, or a plain address (a /32 or /128).
pub fn parse_net(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{s:?} is not an IP address or CIDR"))
}

/// The networks of a deny file: one address or CIDR a line; `#` starts a comment.
pub fn parse_list(text: &str) -> Result<Vec<IpNet>, String> {
    text.lines()
        .enumerate()
        .filter_map(|(i, l)| {
            let l = l.split('#').next().unwrap_or("").trim();
            (!l.is_empty()).then(|| parse_net(l).map_err(|e| format!("line {}: {e}", i + 1)))
        })
        .collect()
}

impl IpFilter {
    pub fn new(allow: Vec<IpNet>, deny: Vec<IpNet>) -> Self {
        Self { allow, deny }
    }

    /// `Err` with the reason when the address may not pass.
    pub fn check(&self, ip: IpAddr) -> Result<(), &'static str> {
        let ip = canonical(ip);
        if self.deny.iter().any(|n| n.contains(&ip)) {
            return Err("address denied");
        }
        if !self.allow.is_empty() && !self.allow.iter().any(|n| n.contains(&ip)) {
            return Err("address not allowed");
        }
        Ok(())
    }
}

impl crate::policy::Policy for IpFilter {
    /// 403 with the reason for an address that may not pass; a request whose address is
    /// unknown (a Unix socket) passes.
    fn request(
        &self,
        req: &crate::policy::Request<'_>,
        _: &mut crate::policy::Facts,
    ) -> impl std::future::Future<Output = crate::policy::Flow> + Send {
        let flow = match req.client_ip.map(|ip| self.check(ip)) {
            Some(Err(reason)) => {
                crate::policy::Flow::Respond(crate::GatewayError::forbidden(reason))
            }
            _ => crate::policy::Flow::Continue,
        };
        std::future::ready(flow)
    }
}

/// An IPv4 address seen through an IPv6 socket (`::ffff:a.b.c.d`) is matched as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The client's address: the peer's, unless the peer is a trusted proxy; then the
/// right-most address of `X-Forwarded-For` that is not itself a trusted proxy.
pub fn client_ip(peer: IpAddr, forwarded_for: Option<&str>, trusted: &[IpNet]) -> IpAddr {
    let peer = canonical(peer);
    if !trusted.iter().any(|n| n.contains(&peer)) {
        return peer;
    }
    let Some(xff) = forwarded_for else {
        return peer;
    };
    let mut client = peer;
    for hop in xff.rsplit(',') {
        match hop.trim().parse::<IpAddr>() {
            Ok(ip) => {
                client = canonical(ip);
                if !trusted.iter().any(|n| n.contains(&client)) {
                    break;
                }
            }
            // A garbled entry: stop at the last address we could trust.
            Err(_) => break,
        }
    }
    client
}

/// An address in its usual text form, written without allocating. IPv4 goes digit by
/// digit: the formatting machinery costs about a thousand instructions per address, and
/// forwarding headers and rate-limit keys write one on every request.
pub struct IpText {
    buf: [u8; 45],
    len: usize,
}

impl IpText {
    pub fn new(ip: IpAddr) -> Self {
        let mut t = IpText {
            buf: [0; 45],
            len: 0,
        };
        match ip {
            IpAddr::V4(v4) => {
                for (i, o) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        t.push(b'.');
                    }
                    if o >= 100 {
                        t.push(b'0' + o / 100);
                    }
                    if o >= 10 {
                        t.push(b'0' + o / 10 % 10);
                    }
                    t.push(b'0' + o % 10);
                }
            }
            IpAddr::V6(v6) => {
                use std::fmt::Write;
                let _ = write!(t, "{v6}");
            }
        }
        t
    }

    fn push(&mut self, b: u8) {
        self.buf[self.len] = b;
        self.len += 1;
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII digits, dots, colons and hex letters are ever written.
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }
}

impl std::fmt::Write for IpText {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        if end > self.buf.len() {
            return Err(std::fmt::Error);
        }
        self.buf[self.len..end].copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_text_is_what_display_writes() {
        for s in [
            "0.0.0.0",
            "255.255.255.255",
            "10.0.100.9",
            "192.168.1.10",
            "1.20.199.250",
            "::1",
            "2001:db8::8a2e:370:7334",
            "::ffff:10.1.2.3",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        ] {
            assert_eq!(IpText::new(ip(s)).as_str(), s);
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn deny_wins_and_allow_limits() {
        let f = IpFilter::new(
            vec![
                parse_net("10.0.0.0/8").unwrap(),
                parse_net("2001:db8::/32").unwrap(),
            ],
            vec![parse_net("10.1.2.3").unwrap()],
        );
        assert!(f.check(ip("10.9.9.9")).is_ok());
        assert_eq!(f.check(ip("10.1.2.3")), Err("address denied"));
        assert_eq!(f.check(ip("192.168.1.1")), Err("address not allowed"));
        assert!(f.check(ip("2001:db8::1")).is_ok());
        assert!(f.check(ip("::ffff:10.0.0.1")).is_ok(), "mapped IPv4");
        assert!(IpFilter::default().check(ip("1.2.3.4")).is_ok());
    }

    #[test]
    fn client_behind_trusted_proxies() {
        let trusted = vec![parse_net("10.0.0.0/8").unwrap()];
        let xff = Some("203.0.113.7, 198.51.100.2, 10.0.0.5");
        assert_eq!(client_ip(ip("10.0.0.1"), xff, &trusted), ip("198.51.100.2"));
        // An untrusted peer's header is ignored: it could say anything.
        assert_eq!(client_ip(ip("192.0.2.1"), xff, &trusted), ip("192.0.2.1"));
        assert_eq!(client_ip(ip("10.0.0.1"), None, &trusted), ip("10.0.0.1"));
        assert_eq!(
            client_ip(ip("10.0.0.1"), Some("junk"), &trusted),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn deny_file_lines() {
        let nets = parse_list("# bad actors\n192.0.2.1\n198.51.100.0/24 # a range\n\n").unwrap();
        assert_eq!(nets.len(), 2);
        assert!(parse_list("1.2.3.4\nnope")
            .unwrap_err()
            .starts_with("line 2"));
    }
}
