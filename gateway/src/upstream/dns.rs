//! DNS service discovery: an upstream's targets are the A/AAAA records of a name (with a
//! fixed port), or the SRV records of a name (each with its own port and weight), asked
//! again every `refresh_secs`. A small stub resolver over UDP: one query per record type
//! to the configured resolver, no cache, so every refresh sees the records as they are.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::time::Duration;

const A: u16 = 1;
const AAAA: u16 = 28;
const SRV: u16 = 33;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A and AAAA records of the name, each on `port`.
    Address { port: u16 },
    /// SRV records: target, port and weight each (lowest priority group only).
    Srv,
}

#[derive(Debug, Clone)]
pub struct DnsDiscovery {
    pub name: String,
    pub kind: Kind,
    pub resolver: SocketAddr,
    pub timeout: Duration,
}

/// One discovered target.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Found {
    pub addr: SocketAddr,
    pub weight: usize,
}

/// The first `nameserver` of /etc/resolv.conf, on port 53.
pub fn system_resolver() -> Option<SocketAddr> {
    let text = std::fs::read_to_string("/etc/resolv.conf").ok()?;
    text.lines().find_map(|l| {
        let mut words = l.split_whitespace();
        (words.next() == Some("nameserver"))
            .then(|| words.next()?.parse::<IpAddr>().ok())
            .flatten()
            .map(|ip| SocketAddr::new(ip, 53))
    })
}

impl DnsDiscovery {
    /// Look the name up now. An empty answer is an error: an upstream never silently
    /// loses every target because of a bad lookup.
    pub fn resolve(&self) -> Result<BTreeSet<Found>, String> {
        let mut out = BTreeSet::new();
        match self.kind {
            Kind::Address { port } => {
                for ip in self.addresses(&self.name)? {
                    out.insert(Found {
                        addr: SocketAddr::new(ip, port),
                        weight: 1,
                    });
                }
            }
            Kind::Srv => {
                let answer = self.query(&self.name, SRV)?;
                let srv: Vec<_> = answer.srv;
                let Some(best) = srv.iter().map(|s| s.priority).min() else {
                    return Err(format!("{}: no SRV records", self.name));
                };
                for s in srv.iter().filter(|s| s.priority == best) {
                    let ips = match answer.extra.get(&s.target.to_ascii_lowercase()) {
                        Some(ips) if !ips.is_empty() => ips.clone(),
                        _ => self.addresses(&s.target)?,
                    };
                    for ip in ips {
                        out.insert(Found {
                            addr: SocketAddr::new(ip, s.port),
                            weight: usize::from(s.weight.max(1)),
                        });
                    }
                }
            }
        }
        if out.is_empty() {
            return Err(format!("{}: no addresses", self.name));
        }
        Ok(out)
    }

    fn addresses(&self, name: &str) -> Result<Vec<IpAddr>, String> {
        let mut ips = Vec::new();
        let mut errors = Vec::new();
        for qtype in [A, AAAA] {
            match self.query(name, qtype) {
                Ok(a) => ips.extend(a.ips),
                Err(e) => errors.push(e),
            }
        }
        if ips.is_empty() && errors.len() == 2 {
            return Err(errors.join("; "));
        }
        Ok(ips)
    }

    fn query(&self, name: &str, qtype: u16) -> Result<Answer, String> {
        let id = fastrand::u16(..);
        let packet = build_query(id, name, qtype)?;
        let bind: SocketAddr = if self.resolver.is_ipv4() {
            "0.0.0.0:0".parse().map_err(|_| "bind")?
        } else {
            "[::]:0".parse().map_err(|_| "bind")?
        };
        let sock = UdpSocket::bind(bind).map_err(|e| format!("dns socket: {e}"))?;
        sock.set_read_timeout(Some(self.timeout))
            .map_err(|e| format!("dns socket: {e}"))?;
        sock.connect(self.resolver)
            .map_err(|e| format!("dns {}: {e}", self.resolver))?;
        sock.send(&packet)
            .map_err(|e| format!("dns {}: {e}", self.resolver))?;
        let mut buf = [0u8; 4096];
        loop {
            let n = sock
                .recv(&mut buf)
                .map_err(|e| format!("dns {} did not answer for {name}: {e}", self.resolver))?;
            match parse_answer(&buf[..n], id) {
                Ok(Some(a)) => return Ok(a),
                // Not our answer (a late reply to an earlier query): wait for ours.
                Ok(None) => continue,
                Err(e) => return Err(format!("{name}: {e}")),
            }
        }
    }
}

fn build_query(id: u16, name: &str, qtype: u16) -> Result<Vec<u8>, String> {
    let mut p = Vec::with_capacity(32 + name.len());
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]); // RD; one question
    for label in name.trim_end_matches('.').split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(format!("{name:?} is not a DNS name"));
        }
        p.push(label.len() as u8);
        p.extend_from_slice(label.as_bytes());
    }
    p.push(0);
    p.extend_from_slice(&qtype.to_be_bytes());
    p.extend_from_slice(&1u16.to_be_bytes()); // IN
    Ok(p)
}

#[derive(Debug, Default)]
struct Answer {
    ips: Vec<IpAddr>,
    srv: Vec<Srv>,
    /// Addresses from the additional section, by lowercase name.
    extra: std::collections::HashMap<String, Vec<IpAddr>>,
}

#[derive(Debug)]
struct Srv {
    priority: u16,
    weight: u16,
    port: u16,
    target: String,
}

fn u16_at(b: &[u8], i: usize) -> Result<u16, String> {
    b.get(i..i + 2)
        .map(|s| u16::from_be_bytes([s[0], s[1]]))
        .ok_or_else(|| "truncated DNS answer".to_string())
}

/// Read a (possibly compressed) name at `pos`; returns it and the position after it.
fn read_name(b: &[u8], mut pos: usize) -> Result<(String, usize), String> {
    let mut name = String::new();
    let mut end = None;
    for _ in 0..128 {
        let len = *b.get(pos).ok_or("truncated DNS name")? as usize;
        if len == 0 {
            return Ok((name, end.unwrap_or(pos + 1)));
        }
        if len & 0xc0 == 0xc0 {
            let ptr = (u16_at(b, pos)? & 0x3fff) as usize;
            end.get_or_insert(pos + 2);
            pos = ptr;
            continue;
        }
        let label = b.get(pos + 1..pos + 1 + len).ok_or("truncated DNS label")?;
        if !name.is_empty() {
            name.push('.');
        }
        name.push_str(&String::from_utf8_lossy(label));
        pos += 1 + len;
    }
    Err("DNS name loops".into())
}

/// `Ok(None)` when the packet answers another query.
fn parse_answer(b: &[u8], id: u16) -> Result<Option<Answer>, String> {
    if b.len() < 12 || u16_at(b, 0)? != id || b[2] & 0x80 == 0 {
        return Ok(None);
    }
    let rcode = b[3] & 0x0f;
    // NXDOMAIN answers "no such name": no records, not a failure of the resolver.
    if rcode == 3 {
        return Ok(Some(Answer::default()));
    }
    if rcode != 0 {
        return Err(format!("resolver answered rcode {rcode}"));
    }
    let (qd, an, ns, ar) = (u16_at(b, 4)?, u16_at(b, 6)?, u16_at(b, 8)?, u16_at(b, 10)?);
    let mut pos = 12;
    for _ in 0..qd {
        pos = read_name(b, pos)?.1 + 4;
    }
    let mut answer = Answer::default();
    for i in 0..(an as usize + ns as usize + ar as usize) {
        let (owner, p) = read_name(b, pos)?;
        let rtype = u16_at(b, p)?;
        let rdlen = u16_at(b, p + 8)? as usize;
        let rd = p + 10;
        let data = b.get(rd..rd + rdlen).ok_or("truncated DNS record")?;
        let ip = match (rtype, rdlen) {
            (A, 4) => Some(IpAddr::V4(Ipv4Addr::new(
                data[0], data[1], data[2], data[3],
            ))),
            (AAAA, 16) => {
                let mut o = [0u8; 16];
                o.copy_from_slice(data);
                Some(IpAddr::V6(Ipv6Addr::from(o)))
            }
            _ => None,
        };
        let in_answer = i < an as usize;
        if let Some(ip) = ip {
            if in_answer {
                answer.ips.push(ip);
            } else {
                answer
                    .extra
                    .entry(owner.to_ascii_lowercase())
                    .or_default()
                    .push(ip);
            }
        } else if rtype == SRV && in_answer && rdlen >= 7 {
            answer.srv.push(Srv {
                priority: u16_at(b, rd)?,
                weight: u16_at(b, rd + 2)?,
                port: u16_at(b, rd + 4)?,
                target: read_name(b, rd + 6)?.0,
            });
        }
        pos = rd + rdlen;
    }
    Ok(Some(answer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_and_compressed_answer() {
        let q = build_query(0x1234, "api.svc.test", A).unwrap();
        assert_eq!(&q[12..17], b"\x03api\x03");
        // A response: the question, then an A record whose owner points back at it.
        let mut r = q.clone();
        r[2] = 0x81;
        r[3] = 0x80;
        r[7] = 1; // one answer
        r.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 0, 0, 4, 127, 0, 0, 2]);
        let a = parse_answer(&r, 0x1234).unwrap().unwrap();
        assert_eq!(a.ips, vec!["127.0.0.2".parse::<IpAddr>().unwrap()]);
        assert!(
            parse_answer(&r, 0x9999).unwrap().is_none(),
            "another query's answer"
        );
        r[3] = 0x82; // SERVFAIL
        assert!(parse_answer(&r, 0x1234).is_err());
    }

    #[test]
    fn bad_names_are_refused() {
        assert!(build_query(1, "a..b", A).is_err());
        assert!(build_query(1, &"x".repeat(64), A).is_err());
    }
}
