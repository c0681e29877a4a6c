//! Runs the real `tailsift` binary for integration tests.
//!
//! The proxy is started as `tailsift run --config <file>` with every listener on `127.0.0.1:0`.
//! Once bound it prints (possibly inside a `tracing` line with prefixes and ANSI colours) a line
//! holding `grpc=<ip:port> http=<ip:port> admin=<ip:port>` (with `--log-format json`, inside the
//! line's `message`); we parse that from stderr. Both
//! output pipes are drained by threads into buffers for the child's whole life, so it never
//! blocks on a full pipe, and the captured log is printed if a test panics while it runs.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Rules that keep every trace (rule name `all`, sample rate 1).
pub const KEEP_ALL_RULES: &str = "[[rule]]\nname = \"all\"\nsample_rate = 1\n";

/// How long [`TailsiftProcess::start`] waits for the listener line.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);

/// Path of the `tailsift` binary under test (Cargo's `CARGO_BIN_EXE_tailsift`, else `target/debug/tailsift`).
pub fn tailsift_bin() -> PathBuf {
    match option_env!("CARGO_BIN_EXE_tailsift") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/target/debug/tailsift"
        )),
    }
}

/// The standard test config: ephemeral loopback listeners, short grace/timeout, rules from `rules_path`, export to `backend_grpc`.
pub fn test_config(backend_grpc: SocketAddr, rules_path: &Path) -> String {
    format!(
        r#"[receive]
grpc_listen = "127.0.0.1:0"
http_listen = "127.0.0.1:0"
max_request_bytes = "4MiB"
[tenant]
resource_attribute = "tenant.id"
header = "x-tenant-id"
default = "default"
[buffer]
root_grace = "300ms"
trace_timeout = "3s"
max_spans_per_trace = 10000
max_memory = "256MiB"
[rules]
file = "{rules}"
[export]
kind = "otlp_grpc"
endpoint = "http://{backend_grpc}"
sample_rate_attribute = "SampleRate"
[admin]
listen = "127.0.0.1:0"
"#,
        rules = rules_path.display(),
    )
}

/// Writes `contents` to `dir/name` and returns the path.
pub fn write_file(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    path
}

/// Listener addresses parsed from one stderr line, if it has all of `grpc=`, `http=`, `admin=`.
pub fn parse_listen_line(line: &str) -> Option<(SocketAddr, SocketAddr, SocketAddr)> {
    let clean = strip_ansi(line);
    let (mut grpc, mut http, mut admin) = (None, None, None);
    for token in clean.split(|c: char| c.is_whitespace() || c == ',' || c == '{' || c == '}') {
        let Some((key, value)) = token.split_once('=') else {
            continue;
        };
        let value = value.trim_matches(|c| c == '"' || c == '\'' || c == ';');
        let Ok(addr) = value.parse::<SocketAddr>() else {
            continue;
        };
        if addr.port() == 0 {
            continue;
        }
        match key {
            "grpc" => grpc = Some(addr),
            "http" => http = Some(addr),
            "admin" => admin = Some(addr),
            _ => {}
        }
    }
    Some((grpc?, http?, admin?))
}

/// `s` without ANSI escape sequences (`ESC [ ... final-byte`).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

type Addrs = (SocketAddr, SocketAddr, SocketAddr);

/// A running `tailsift run` child process; killed on drop.
pub struct TailsiftProcess {
    child: Child,
    /// OTLP/gRPC listener of the proxy.
    pub grpc: SocketAddr,
    /// OTLP/HTTP listener of the proxy.
    pub http: SocketAddr,
    /// Admin HTTP listener of the proxy.
    pub admin: SocketAddr,
    stderr: Arc<Mutex<String>>,
    stdout: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
    exit: Option<ExitStatus>,
    config_path: PathBuf,
    dir: tempfile::TempDir,
}

impl TailsiftProcess {
    /// Writes `config` into a fresh tempdir and runs `tailsift run --config <it>`, waiting until its listeners are bound.
    pub async fn start(config: &str) -> TailsiftProcess {
        Self::start_with(&tailsift_bin(), config, &[]).await
    }

    /// Writes `rules` to `<tempdir>/rules.toml` and starts the proxy with [`test_config`] exporting to `backend_grpc`.
    pub async fn start_with_rules(backend_grpc: SocketAddr, rules: &str) -> TailsiftProcess {
        Self::start_with_rules_and(backend_grpc, rules, |c| c).await
    }

    /// Like [`start_with_rules`](Self::start_with_rules), letting `tweak` edit the config text first (e.g. `str::replace`).
    pub async fn start_with_rules_and(
        backend_grpc: SocketAddr,
        rules: &str,
        tweak: impl FnOnce(String) -> String,
    ) -> TailsiftProcess {
        let dir = tempfile::tempdir().expect("create tempdir for tailsift config");
        let rules_path = write_file(dir.path(), "rules.toml", rules);
        let config = tweak(test_config(backend_grpc, &rules_path));
        Self::start_in(dir, &tailsift_bin(), &config, &[], &[]).await
    }

    /// Like [`start`](Self::start) with an explicit binary and extra environment variables.
    /// `RUST_LOG` is inherited: it must leave `tailsift` at `info` or finer for the listener line.
    pub async fn start_with(bin: &Path, config: &str, env: &[(&str, &str)]) -> TailsiftProcess {
        let dir = tempfile::tempdir().expect("create tempdir for tailsift config");
        Self::start_in(dir, bin, config, &[], env).await
    }

    /// Like [`start_with`](Self::start_with) with extra `tailsift run` arguments (e.g.
    /// `--log-format json`), in the tempdir `dir` (so a test can put files there first).
    pub async fn start_in_dir(
        dir: tempfile::TempDir,
        config: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> TailsiftProcess {
        Self::start_in(dir, &tailsift_bin(), config, args, env).await
    }

    async fn start_in(
        dir: tempfile::TempDir,
        bin: &Path,
        config: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> TailsiftProcess {
        let config_path = write_file(dir.path(), "tailsift.toml", config);
        let mut cmd = Command::new(bin);
        cmd.arg("run")
            .arg("--config")
            .arg(&config_path)
            .args(args)
            .current_dir(dir.path())
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e} (was the binary built?)", bin.display()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let stdout = Arc::new(Mutex::new(String::new()));
        let addrs: Arc<Mutex<Option<Addrs>>> = Arc::new(Mutex::new(None));
        let readers = vec![
            spawn_reader(
                child.stderr.take().expect("piped stderr"),
                stderr.clone(),
                Some(addrs.clone()),
            ),
            spawn_reader(
                child.stdout.take().expect("piped stdout"),
                stdout.clone(),
                None,
            ),
        ];
        let mut proc = TailsiftProcess {
            child,
            grpc: unspecified(),
            http: unspecified(),
            admin: unspecified(),
            stderr,
            stdout,
            readers,
            exit: None,
            config_path,
            dir,
        };
        let deadline = tokio::time::Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Some((g, h, a)) = *addrs.lock().unwrap() {
                proc.grpc = g;
                proc.http = h;
                proc.admin = a;
                return proc;
            }
            if let Ok(Some(status)) = proc.child.try_wait() {
                proc.exit = Some(status);
                proc.join_readers();
                panic!(
                    "tailsift exited during start-up with {status}; stderr:\n{}",
                    proc.log()
                );
            }
            if tokio::time::Instant::now() >= deadline {
                panic!("tailsift printed no `grpc=… http=… admin=…` line within {STARTUP_TIMEOUT:?}; stderr so far:\n{}", proc.log());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the process wrote to stderr so far.
    pub fn log(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Everything the process wrote to stdout so far.
    pub fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    /// Path of the config file the process was started with.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// Path of the rules file written by [`start_with_rules`](Self::start_with_rules) (`<dir>/rules.toml`).
    pub fn rules_path(&self) -> PathBuf {
        self.dir.path().join("rules.toml")
    }

    /// The tempdir holding the config (lives as long as this value).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Waits (polling) until stderr contains `needle`; panics with the log after `timeout`.
    pub async fn wait_for_log(&self, needle: &str, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        while !self.log().contains(needle) {
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "tailsift stderr did not contain {needle:?} within {timeout:?}; stderr:\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Sends a signal by name (`TERM`, `HUP`, `INT`, `KILL`) with `kill(1)`.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap_or_else(|e| panic!("running kill -{name}: {e}"));
        assert!(
            status.success(),
            "kill -{name} {} failed: {status}",
            self.pid()
        );
    }

    /// Sends SIGTERM (graceful shutdown).
    pub fn sigterm(&self) {
        self.signal("TERM");
    }

    /// Sends SIGHUP (rules reload).
    pub fn sighup(&self) {
        self.signal("HUP");
    }

    /// Whether the process has exited (without waiting).
    pub fn has_exited(&mut self) -> bool {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().ok().flatten();
        }
        self.exit.is_some()
    }

    /// Waits (polling) for the process to exit; panics with the log after `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.exit {
                return status;
            }
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    self.exit = Some(status);
                    self.join_readers();
                    return status;
                }
                Ok(None) => {}
                Err(e) => panic!("waiting for tailsift: {e}"),
            }
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "tailsift did not exit within {timeout:?}; stderr:\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Kills the process (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        if self.exit.is_none() {
            let _ = self.child.kill();
            self.exit = self.child.wait().ok();
            self.join_readers();
        }
    }

    /// Collects the reader threads once the child is gone (its pipes are at EOF), bounded to 2 s.
    fn join_readers(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(2);
        while self.readers.iter().any(|r| !r.is_finished()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        for r in std::mem::take(&mut self.readers) {
            if r.is_finished() {
                let _ = r.join();
            }
        }
    }
}

impl Drop for TailsiftProcess {
    fn drop(&mut self) {
        let running = !self.has_exited();
        if running {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "----- tailsift (pid {}) stderr -----\n{}\n----- end of tailsift stderr -----",
                self.child.id(),
                self.log()
            );
        }
    }
}

fn unspecified() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 0))
}

/// Drains `pipe` line by line into `buf`; with `addrs`, records the first listener line seen.
fn spawn_reader<R: Read + Send + 'static>(
    pipe: R,
    buf: Arc<Mutex<String>>,
    addrs: Option<Arc<Mutex<Option<Addrs>>>>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    let text = String::from_utf8_lossy(&line);
                    if let Some(addrs) = &addrs {
                        let mut found = addrs.lock().unwrap();
                        if found.is_none() {
                            *found = parse_listen_line(&text);
                        }
                    }
                    buf.lock().unwrap().push_str(&text);
                }
            }
        }
    })
}

/// Output of a finished `tailsift` command (e.g. `check`).
#[derive(Debug)]
pub struct CommandOutput {
    /// Exit status.
    pub status: ExitStatus,
    /// Captured stdout.
    pub stdout: String,
    /// Captured stderr.
    pub stderr: String,
}

/// Runs `tailsift <args>` to completion (e.g. `["check", "--config", path]`); killed and panics after `timeout`.
pub async fn run_tailsift(args: &[&str], timeout: Duration) -> CommandOutput {
    run_tailsift_with_env(args, &[], timeout).await
}

/// Like [`run_tailsift`] with extra environment variables (e.g. `TAILSIFT_ADMIN_TOKEN`).
pub async fn run_tailsift_with_env(
    args: &[&str],
    env: &[(&str, &str)],
    timeout: Duration,
) -> CommandOutput {
    let bin = tailsift_bin();
    let mut child = tokio::process::Command::new(&bin)
        .args(args)
        .envs(env.iter().copied())
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {}: {e}", bin.display()));
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let run = async {
        use tokio::io::AsyncReadExt;
        let (mut so, mut se) = (Vec::new(), Vec::new());
        let (a, b, status) = tokio::join!(
            out.read_to_end(&mut so),
            err.read_to_end(&mut se),
            child.wait()
        );
        let _ = (a, b);
        (status, so, se)
    };
    match tokio::time::timeout(timeout, run).await {
        Ok((status, so, se)) => CommandOutput {
            status: status.unwrap_or_else(|e| panic!("waiting for tailsift {args:?}: {e}")),
            stdout: String::from_utf8_lossy(&so).into_owned(),
            stderr: String::from_utf8_lossy(&se).into_owned(),
        },
        Err(_) => panic!("tailsift {args:?} did not finish within {timeout:?}"),
    }
}
