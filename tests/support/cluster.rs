//! Several real `tailsift` nodes on loopback forming one cluster, and a load that spreads the
//! spans of every trace over all of them.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;

use super::process::{test_config, TailsiftProcess};

/// `n` distinct free loopback ports (held open together while chosen, then released).
pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral loopback port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("local addr").port())
        .collect()
}

/// The advertise address of a node on `port`.
pub fn peer_addr(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

/// A `[cluster]` section with static membership over `ports`, this node on `me`.
pub fn static_section(me: u16, ports: &[u16]) -> String {
    let peers: Vec<String> = ports
        .iter()
        .map(|p| format!("\"{}\"", peer_addr(*p)))
        .collect();
    format!(
        "[cluster]\nmembership = \"static\"\npeer_listen = \"127.0.0.1:{me}\"\nadvertise = \"{}\"\npeers = [{}]\nforward_retry_max = \"500ms\"\n",
        peer_addr(me),
        peers.join(", ")
    )
}

/// The standard test config plus a `[cluster]` section, with a root grace that leaves room
/// for the forwarding hop on a loaded CI machine.
pub fn node_config(backend_grpc: SocketAddr, rules: &Path, cluster: &str) -> String {
    let base =
        test_config(backend_grpc, rules).replace("root_grace = \"300ms\"", "root_grace = \"1s\"");
    format!("{base}{cluster}")
}

/// Starts one node per section.
pub async fn start_nodes(
    backend_grpc: SocketAddr,
    rules: &Path,
    sections: &[String],
) -> Vec<TailsiftProcess> {
    let mut nodes = Vec::new();
    for s in sections {
        nodes.push(TailsiftProcess::start(&node_config(backend_grpc, rules, s)).await);
    }
    nodes
}

/// A small deterministic generator (xorshift64*), so every run spreads spans the same way.
pub struct Lcg(pub u64);

impl Lcg {
    /// The next pseudo-random number.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number below `n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}
