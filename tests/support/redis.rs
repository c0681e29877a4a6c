//! A real `redis-server` on a free loopback port of its own (never the system's 6379), with
//! no persistence, stopped when dropped.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running redis-server started by the test.
pub struct TestRedis {
    /// Its port on 127.0.0.1.
    pub port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

/// The redis-server binary, when installed.
fn redis_server() -> Option<&'static str> {
    Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .ok()
        .filter(|s| s.success())
        .map(|_| "redis-server")
}

impl TestRedis {
    /// Starts redis-server, or `None` when it is not installed (a failure when
    /// `TAILSIFT_REQUIRE_REDIS` is set, as scripts/test.sh does).
    pub fn start() -> Option<TestRedis> {
        let Some(bin) = redis_server() else {
            assert!(
                std::env::var("TAILSIFT_REQUIRE_REDIS").is_err(),
                "redis-server is required (apt-get install redis-server) but missing"
            );
            eprintln!("SKIPPED: no redis-server on this machine (scripts/test.sh installs it)");
            return None;
        };
        let port = super::cluster::free_ports(1)[0];
        let dir = tempfile::tempdir().expect("redis dir");
        let child = Command::new(bin)
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        let r = TestRedis {
            port,
            child,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not start on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(r)
    }

    /// `redis://127.0.0.1:<port>/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Sends `sig` (e.g. "STOP", "CONT") to the redis-server this test started.
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{sig} redis-server");
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
