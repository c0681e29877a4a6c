//! DNS membership: the members are what `dns_name` resolves to, re-resolved every
//! `dns_interval`.
//!
//! A name that starts with `_` is looked up as SRV records (`_peer._tcp.tailsift.obs.svc…`):
//! every record names a target and a port, and the target's A/AAAA records (from the answer's
//! additional section, else asked for) give the addresses. Any other name is looked up as A and
//! AAAA records (a Kubernetes headless Service), each address with `dns_port`. Members are
//! written `ip:port` (`[ip]:port` for IPv6), so `advertise` must be written the same way.
//!
//! With `dns_server` set, the queries go over UDP (TCP when the answer is truncated) to that
//! server; otherwise A/AAAA names go to the system resolver and SRV names to the first
//! `nameserver` of `/etc/resolv.conf`. A failed or empty resolution keeps the last known
//! members (a cluster never shrinks because DNS hiccupped).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::watch;

use super::membership::MembershipHandle;

/// Record type A.
const TYPE_A: u16 = 1;
/// Record type AAAA.
const TYPE_AAAA: u16 = 28;
/// Record type SRV.
const TYPE_SRV: u16 = 33;
/// The EDNS0 OPT pseudo-record, which lets a server answer with more than 512 bytes over UDP.
const TYPE_OPT: u16 = 41;
/// How long one query may take before it counts as failed.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a DNS lookup gave no members.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// The answer could not be parsed.
    #[error("malformed DNS answer: {0}")]
    Malformed(&'static str),
    /// The server answered with an error code (3 = no such name).
    #[error("DNS server answered rcode {0}")]
    Rcode(u8),
    /// No answer in time.
    #[error("DNS query timed out after {0:?}")]
    Timeout(Duration),
    /// The socket failed.
    #[error("DNS query failed: {0}")]
    Io(#[from] std::io::Error),
    /// No server to ask.
    #[error("no nameserver in /etc/resolv.conf; set cluster.dns_server")]
    NoServer,
    /// The name resolved to nothing.
    #[error("{0} resolved to no members")]
    Empty(String),
}

/// One resource record of an answer that membership cares about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// An address of `name`.
    Addr { name: String, ip: IpAddr },
    /// A service instance: `target` serves on `port`.
    Srv { target: String, port: u16 },
}

/// A query for `name` of type `qtype`, with id `id`, recursion desired and an EDNS0 OPT
/// record advertising 4096-byte UDP answers.
pub fn encode_query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut q = Vec::with_capacity(32 + name.len());
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&0x0100u16.to_be_bytes()); // RD
    q.extend_from_slice(&1u16.to_be_bytes()); // QDCOUNT
    q.extend_from_slice(&0u16.to_be_bytes()); // ANCOUNT
    q.extend_from_slice(&0u16.to_be_bytes()); // NSCOUNT
    q.extend_from_slice(&1u16.to_be_bytes()); // ARCOUNT (OPT)
    for label in name
        .trim_end_matches('.')
        .split('.')
        .filter(|l| !l.is_empty())
    {
        let label = &label.as_bytes()[..label.len().min(63)];
        q.push(label.len() as u8);
        q.extend_from_slice(label);
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&1u16.to_be_bytes()); // IN
                                              // OPT: root name, type 41, class = UDP payload size, ttl 0, no data.
    q.push(0);
    q.extend_from_slice(&TYPE_OPT.to_be_bytes());
    q.extend_from_slice(&4096u16.to_be_bytes());
    q.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    q
}

/// A parsed answer: the records of the answer and additional sections, and whether the
/// server truncated it.
#[derive(Debug, Default)]
pub struct Answer {
    /// Records of the answer and additional sections, in order.
    pub records: Vec<Record>,
    /// The TC bit: the full answer needs TCP.
    pub truncated: bool,
}

fn u16_at(msg: &[u8], pos: usize) -> Result<u16, DnsError> {
    msg.get(pos..pos + 2)
        .map(|b| u16::from_be_bytes([b[0], b[1]]))
        .ok_or(DnsError::Malformed("short message"))
}

/// Reads the (possibly compressed) name at `pos`: the name, lower-cased without the final
/// dot, and the position after it in the record.
fn read_name(msg: &[u8], mut pos: usize) -> Result<(String, usize), DnsError> {
    let mut name = String::new();
    let mut end = None;
    for _ in 0..128 {
        let len = *msg
            .get(pos)
            .ok_or(DnsError::Malformed("name runs past the end"))?;
        match len & 0xC0 {
            0x00 if len == 0 => {
                return Ok((name, end.unwrap_or(pos + 1)));
            }
            0x00 => {
                let label = msg
                    .get(pos + 1..pos + 1 + len as usize)
                    .ok_or(DnsError::Malformed("label runs past the end"))?;
                if !name.is_empty() {
                    name.push('.');
                }
                name.push_str(&String::from_utf8_lossy(label).to_ascii_lowercase());
                pos += 1 + len as usize;
            }
            0xC0 => {
                let target = (u16_at(msg, pos)? & 0x3FFF) as usize;
                end.get_or_insert(pos + 2);
                pos = target;
            }
            _ => return Err(DnsError::Malformed("unknown label type")),
        }
    }
    Err(DnsError::Malformed("name compression loop"))
}

/// Parses an answer to the query with id `id`.
pub fn parse_answer(msg: &[u8], id: u16) -> Result<Answer, DnsError> {
    if msg.len() < 12 {
        return Err(DnsError::Malformed("shorter than a header"));
    }
    if u16_at(msg, 0)? != id {
        return Err(DnsError::Malformed("answer to another query"));
    }
    let flags = u16_at(msg, 2)?;
    if flags & 0x8000 == 0 {
        return Err(DnsError::Malformed("not an answer"));
    }
    let rcode = (flags & 0x000F) as u8;
    if rcode != 0 {
        return Err(DnsError::Rcode(rcode));
    }
    let mut answer = Answer {
        truncated: flags & 0x0200 != 0,
        records: Vec::new(),
    };
    let qd = u16_at(msg, 4)?;
    let an = u16_at(msg, 6)?;
    let ns = u16_at(msg, 8)?;
    let ar = u16_at(msg, 10)?;
    let mut pos = 12;
    for _ in 0..qd {
        pos = read_name(msg, pos)?.1 + 4;
    }
    for i in 0..(u32::from(an) + u32::from(ns) + u32::from(ar)) {
        let (name, after) = read_name(msg, pos)?;
        let rtype = u16_at(msg, after)?;
        let rdlen = u16_at(msg, after + 8)? as usize;
        let data = after + 10;
        let rdata = msg
            .get(data..data + rdlen)
            .ok_or(DnsError::Malformed("record data runs past the end"))?;
        pos = data + rdlen;
        // Authority records (SOA and such) say nothing about members.
        let in_authority = i >= u32::from(an) && i < u32::from(an) + u32::from(ns);
        if in_authority {
            continue;
        }
        match rtype {
            TYPE_A if rdlen == 4 => answer.records.push(Record::Addr {
                name,
                ip: IpAddr::V4(Ipv4Addr::new(rdata[0], rdata[1], rdata[2], rdata[3])),
            }),
            TYPE_AAAA if rdlen == 16 => {
                let mut b = [0u8; 16];
                b.copy_from_slice(rdata);
                answer.records.push(Record::Addr {
                    name,
                    ip: IpAddr::V6(Ipv6Addr::from(b)),
                });
            }
            TYPE_SRV if rdlen >= 7 => {
                let port = u16_at(msg, data + 4)?;
                let (target, _) = read_name(msg, data + 6)?;
                answer.records.push(Record::Srv { target, port });
            }
            _ => {}
        }
    }
    Ok(answer)
}

/// A member address as peers write it: `ip:port`, `[ip]:port` for IPv6.
pub fn member_addr(ip: IpAddr, port: u16) -> String {
    SocketAddr::new(ip, port).to_string()
}

/// Asks `server` for `name`/`qtype` over UDP, again over TCP when the answer is truncated.
async fn query(server: SocketAddr, name: &str, qtype: u16) -> Result<Answer, DnsError> {
    let id: u16 = rand::random();
    let msg = encode_query(id, name, qtype);
    let udp = async {
        let bind: SocketAddr = if server.is_ipv4() {
            SocketAddr::from(([0, 0, 0, 0], 0))
        } else {
            SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0))
        };
        let sock = UdpSocket::bind(bind).await?;
        sock.connect(server).await?;
        sock.send(&msg).await?;
        let mut buf = vec![0u8; 4096];
        loop {
            let n = sock.recv(&mut buf).await?;
            match parse_answer(&buf[..n], id) {
                // A stray datagram for another query: wait for ours.
                Err(DnsError::Malformed("answer to another query")) => continue,
                other => return other,
            }
        }
    };
    let answer = tokio::time::timeout(QUERY_TIMEOUT, udp)
        .await
        .map_err(|_| DnsError::Timeout(QUERY_TIMEOUT))??;
    if !answer.truncated {
        return Ok(answer);
    }
    let tcp = async {
        let mut stream = TcpStream::connect(server).await?;
        let len = u16::try_from(msg.len()).map_err(|_| DnsError::Malformed("query too long"))?;
        stream.write_all(&len.to_be_bytes()).await?;
        stream.write_all(&msg).await?;
        let mut len = [0u8; 2];
        stream.read_exact(&mut len).await?;
        let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
        stream.read_exact(&mut buf).await?;
        parse_answer(&buf, id)
    };
    tokio::time::timeout(QUERY_TIMEOUT, tcp)
        .await
        .map_err(|_| DnsError::Timeout(QUERY_TIMEOUT))?
}

/// The first `nameserver` of `/etc/resolv.conf`.
fn system_nameserver() -> Result<SocketAddr, DnsError> {
    let conf = std::fs::read_to_string("/etc/resolv.conf").map_err(|_| DnsError::NoServer)?;
    conf.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|ip| ip.trim().parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .next()
        .ok_or(DnsError::NoServer)
}

/// What `dns_name` resolves to, and how.
#[derive(Clone, Debug)]
pub struct DnsSource {
    /// The name to resolve.
    pub name: String,
    /// The port of A/AAAA members.
    pub port: u16,
    /// The server to ask; `None`: the system's.
    pub server: Option<SocketAddr>,
}

impl DnsSource {
    /// True for SRV names (`_service._proto.…`).
    fn is_srv(&self) -> bool {
        self.name.starts_with('_')
    }

    /// The member addresses the name resolves to now, sorted and deduplicated.
    pub async fn resolve(&self) -> Result<Vec<String>, DnsError> {
        let mut out = if self.is_srv() {
            self.resolve_srv().await?
        } else {
            self.resolve_addrs(&self.name, self.port).await?
        };
        out.sort();
        out.dedup();
        if out.is_empty() {
            return Err(DnsError::Empty(self.name.clone()));
        }
        Ok(out)
    }

    async fn resolve_addrs(&self, name: &str, port: u16) -> Result<Vec<String>, DnsError> {
        match self.server {
            None => {
                let found = tokio::time::timeout(
                    QUERY_TIMEOUT,
                    tokio::net::lookup_host((name.to_string(), port)),
                )
                .await
                .map_err(|_| DnsError::Timeout(QUERY_TIMEOUT))??;
                Ok(found.map(|a| member_addr(a.ip(), a.port())).collect())
            }
            Some(server) => {
                let (v4, v6) =
                    tokio::join!(query(server, name, TYPE_A), query(server, name, TYPE_AAAA));
                let mut out = Vec::new();
                // One family failing (a server without AAAA support) is fine if the other
                // answered.
                let mut failure = None;
                for answer in [v4, v6] {
                    match answer {
                        Ok(a) => out.extend(a.records.into_iter().filter_map(|r| match r {
                            Record::Addr { ip, .. } => Some(member_addr(ip, port)),
                            Record::Srv { .. } => None,
                        })),
                        Err(e) => failure = Some(e),
                    }
                }
                match failure {
                    Some(e) if out.is_empty() => Err(e),
                    _ => Ok(out),
                }
            }
        }
    }

    async fn resolve_srv(&self) -> Result<Vec<String>, DnsError> {
        let server = match self.server {
            Some(s) => s,
            None => system_nameserver()?,
        };
        let answer = query(server, &self.name, TYPE_SRV).await?;
        let mut out = Vec::new();
        for r in &answer.records {
            let Record::Srv { target, port } = r else {
                continue;
            };
            let known: Vec<String> = answer
                .records
                .iter()
                .filter_map(|a| match a {
                    Record::Addr { name, ip } if name == target => Some(member_addr(*ip, *port)),
                    _ => None,
                })
                .collect();
            if known.is_empty() {
                out.extend(
                    DnsSource {
                        server: Some(server),
                        ..self.clone()
                    }
                    .resolve_addrs(target, *port)
                    .await?,
                );
            } else {
                out.extend(known);
            }
        }
        Ok(out)
    }
}

/// Resolves `source` now and then every `interval`, publishing what it finds, until `stop`.
pub async fn run(
    source: DnsSource,
    interval: Duration,
    membership: Arc<MembershipHandle>,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stopped(&mut stop) => return,
        }
        match source.resolve().await {
            Ok(members) => membership.publish(members),
            Err(e) => membership.report_error(&format!("dns {}: {e}", source.name)),
        }
    }
}

/// Resolves once `stop` turns true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server's answer to `query`: the question echoed, then `answers` as (name offset
    /// pointer or literal name, type, rdata).
    fn answer_to(query: &[u8], answers: &[(u16, Vec<u8>)], flags: u16) -> Vec<u8> {
        // Question ends before the OPT record (11 bytes) the query carries.
        let question = &query[12..query.len() - 11];
        let mut m = Vec::new();
        m.extend_from_slice(&query[0..2]);
        m.extend_from_slice(&flags.to_be_bytes());
        m.extend_from_slice(&1u16.to_be_bytes());
        m.extend_from_slice(&(answers.len() as u16).to_be_bytes());
        m.extend_from_slice(&0u16.to_be_bytes());
        m.extend_from_slice(&0u16.to_be_bytes());
        m.extend_from_slice(question);
        for (rtype, rdata) in answers {
            m.extend_from_slice(&0xC00Cu16.to_be_bytes()); // the question's name
            m.extend_from_slice(&rtype.to_be_bytes());
            m.extend_from_slice(&1u16.to_be_bytes());
            m.extend_from_slice(&30u32.to_be_bytes());
            m.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
            m.extend_from_slice(rdata);
        }
        m
    }

    #[test]
    fn a_and_aaaa_answers_become_member_addresses() {
        let q = encode_query(7, "tailsift.obs.svc.cluster.local", TYPE_A);
        let msg = answer_to(
            &q,
            &[
                (TYPE_A, vec![10, 1, 2, 3]),
                (TYPE_AAAA, Ipv6Addr::LOCALHOST.octets().to_vec()),
            ],
            0x8180,
        );
        let a = parse_answer(&msg, 7).unwrap();
        let addrs: Vec<String> = a
            .records
            .iter()
            .map(|r| match r {
                Record::Addr { name, ip } => {
                    assert_eq!(name, "tailsift.obs.svc.cluster.local");
                    member_addr(*ip, 4319)
                }
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(addrs, ["10.1.2.3:4319", "[::1]:4319"]);
    }

    #[test]
    fn srv_answers_carry_target_and_port_through_name_compression() {
        let q = encode_query(9, "_peer._tcp.tailsift.test", TYPE_SRV);
        // priority 0, weight 0, port 4400, target "n1" + pointer to "_peer._tcp..." at 12.
        let mut rdata = vec![0, 0, 0, 0, 0x11, 0x30, 2, b'n', b'1'];
        rdata.extend_from_slice(&0xC00Cu16.to_be_bytes());
        let msg = answer_to(&q, &[(TYPE_SRV, rdata)], 0x8180);
        let a = parse_answer(&msg, 9).unwrap();
        assert_eq!(
            a.records,
            [Record::Srv {
                target: "n1._peer._tcp.tailsift.test".into(),
                port: 4400
            }]
        );
    }

    #[test]
    fn errors_truncation_and_garbage_are_reported_not_panicked_on() {
        let q = encode_query(1, "x.test", TYPE_A);
        assert!(matches!(
            parse_answer(&answer_to(&q, &[], 0x8183), 1),
            Err(DnsError::Rcode(3))
        ));
        assert!(
            parse_answer(&answer_to(&q, &[], 0x8380), 1)
                .unwrap()
                .truncated
        );
        assert!(parse_answer(&answer_to(&q, &[], 0x8180), 2).is_err());
        let mut looped = answer_to(&q, &[(TYPE_A, vec![1, 2, 3, 4])], 0x8180);
        // Point the question's name at itself.
        looped[12] = 0xC0;
        looped[13] = 12;
        assert!(parse_answer(&looped, 1).is_err());
        for cut in 0..looped.len() {
            let _ = parse_answer(&looped[..cut], 1);
        }
    }
}
