//! A DNS server on loopback whose answers the test sets: SRV records for one service name,
//! and A records (127.0.0.1) for every target under `tailsift.test`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::UdpSocket;

/// The SRV name the server answers for.
pub const SRV_NAME: &str = "_peer._tcp.tailsift.test";

/// A running test DNS server; stops when dropped.
pub struct TestDns {
    /// Where it listens (UDP).
    pub addr: SocketAddr,
    ports: Arc<Mutex<Vec<u16>>>,
    queries: Arc<Mutex<u64>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestDns {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestDns {
    /// Starts answering `SRV_NAME` with one record per port in `ports` (target `n<port>`).
    pub async fn start(ports: &[u16]) -> TestDns {
        let sock = UdpSocket::bind("127.0.0.1:0").await.expect("bind test dns");
        let addr = sock.local_addr().expect("dns addr");
        let ports = Arc::new(Mutex::new(ports.to_vec()));
        let queries = Arc::new(Mutex::new(0u64));
        let task = {
            let ports = ports.clone();
            let queries = queries.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 1500];
                loop {
                    let Ok((n, from)) = sock.recv_from(&mut buf).await else {
                        return;
                    };
                    *queries.lock().unwrap() += 1;
                    let current = ports.lock().unwrap().clone();
                    if let Some(reply) = answer(&buf[..n], &current) {
                        let _ = sock.send_to(&reply, from).await;
                    }
                }
            })
        };
        TestDns {
            addr,
            ports,
            queries,
            task,
        }
    }

    /// Changes the members the SRV name lists.
    pub fn set_ports(&self, ports: &[u16]) {
        *self.ports.lock().unwrap() = ports.to_vec();
    }

    /// Queries answered so far.
    pub fn queries(&self) -> u64 {
        *self.queries.lock().unwrap()
    }
}

/// The question's name (lower case, dotted), type, and where the question ends.
fn question(q: &[u8]) -> Option<(String, u16, usize)> {
    let mut pos = 12;
    let mut labels = Vec::new();
    loop {
        let len = *q.get(pos)? as usize;
        if len == 0 {
            pos += 1;
            break;
        }
        labels.push(String::from_utf8_lossy(q.get(pos + 1..pos + 1 + len)?).to_ascii_lowercase());
        pos += 1 + len;
    }
    let qtype = u16::from_be_bytes([*q.get(pos)?, *q.get(pos + 1)?]);
    Some((labels.join("."), qtype, pos + 4))
}

fn encode_name(name: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for l in name.split('.') {
        out.push(l.len() as u8);
        out.extend_from_slice(l.as_bytes());
    }
    out.push(0);
    out
}

fn answer(q: &[u8], ports: &[u16]) -> Option<Vec<u8>> {
    let (name, qtype, end) = question(q)?;
    let mut records: Vec<(u16, Vec<u8>)> = Vec::new();
    let mut rcode = 0u16;
    if name == SRV_NAME && qtype == 33 {
        for p in ports {
            let mut rdata = vec![0, 10, 0, 10];
            rdata.extend_from_slice(&p.to_be_bytes());
            rdata.extend_from_slice(&encode_name(&format!("n{p}.tailsift.test")));
            records.push((33, rdata));
        }
    } else if name.ends_with(".tailsift.test") && qtype == 1 {
        records.push((1, vec![127, 0, 0, 1]));
    } else if !name.ends_with(".tailsift.test") && name != "tailsift.test" {
        rcode = 3;
    }
    let mut m = Vec::new();
    m.extend_from_slice(&q[0..2]);
    m.extend_from_slice(&(0x8180u16 | rcode).to_be_bytes());
    m.extend_from_slice(&1u16.to_be_bytes());
    m.extend_from_slice(&(records.len() as u16).to_be_bytes());
    m.extend_from_slice(&[0, 0, 0, 0]);
    m.extend_from_slice(&q[12..end]);
    for (rtype, rdata) in records {
        m.extend_from_slice(&0xC00Cu16.to_be_bytes());
        m.extend_from_slice(&rtype.to_be_bytes());
        m.extend_from_slice(&1u16.to_be_bytes());
        m.extend_from_slice(&1u32.to_be_bytes());
        m.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        m.extend_from_slice(&rdata);
    }
    Some(m)
}
