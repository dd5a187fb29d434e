//! Harness for multi-process tests: runs the real `meshreg` binary on
//! port 0 with a temporary data directory, and talks to it over HTTP
//! (ureq) and gRPC (tonic).
//!
//! The binary is `$MESHREG_BIN`, or `target/<profile>/meshreg` next to the
//! running test executable (built by `cargo test --workspace`);
//! `meshreg-bridge` is `$MESHREG_BRIDGE_BIN` or next to it.
//!
//! # Layout
//!
//! - [`linearizability`]: a history recorder and a per-key linearizability
//!   checker (Wing & Gong with Lowe's memoization) for fault tests.
//! - [`cluster`]: 3- and 5-node clusters of real processes on fixed loopback
//!   ports, with kill -9, restart and fault injection.

pub mod cluster;
pub mod linearizability;
pub mod mesh;

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use meshreg_proto::registry::v1::registry_client::RegistryClient;
use serde_json::Value;
use tonic::transport::Channel;

/// Path of the `meshreg` binary under test.
pub fn meshreg_bin() -> PathBuf {
    if let Ok(p) = std::env::var("MESHREG_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test> → target/<profile>/meshreg
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = dir.join("meshreg");
    assert!(
        bin.exists(),
        "{} not found: run the tests with `cargo test --workspace` (which builds it) or set MESHREG_BIN",
        bin.display()
    );
    bin
}

/// Path of the `meshreg-bridge` binary (next to `meshreg`, or `$MESHREG_BRIDGE_BIN`).
pub fn bridge_bin() -> PathBuf {
    if let Ok(p) = std::env::var("MESHREG_BRIDGE_BIN") {
        return PathBuf::from(p);
    }
    let bin = meshreg_bin().with_file_name("meshreg-bridge");
    assert!(
        bin.exists(),
        "{} not found: run the tests with `cargo test --workspace` (which builds it) or set MESHREG_BRIDGE_BIN",
        bin.display()
    );
    bin
}

/// A running `meshreg server` (or `meshreg-bridge`) process.
#[derive(Debug)]
pub struct Server {
    child: Child,
    /// HTTP base URL, e.g. `http://127.0.0.1:41234`.
    pub http: String,
    /// gRPC endpoint URL.
    pub grpc: String,
    /// Raft peer address (`host:port`).
    pub raft: String,
    /// Raft node id.
    pub node_id: u64,
    /// Data directory.
    pub data_dir: PathBuf,
}

impl Server {
    /// Starts a server on port 0 over `data_dir` (created if missing) with
    /// extra flags, and waits until it prints its listening line.
    pub fn start(data_dir: &Path, extra: &[&str]) -> anyhow::Result<Server> {
        Self::start_at(data_dir, [0, 0, 0], extra)
    }

    /// Like [`Server::start`], on the given (HTTP, gRPC, Raft) ports.
    pub fn start_at(data_dir: &Path, ports: [u16; 3], extra: &[&str]) -> anyhow::Result<Server> {
        let addr = |p: u16| format!("127.0.0.1:{p}");
        let mut cmd = Command::new(meshreg_bin());
        cmd.arg("server")
            .arg("--data-dir")
            .arg(data_dir)
            .args([
                "--http-addr",
                &addr(ports[0]),
                "--grpc-addr",
                &addr(ports[1]),
            ])
            .args(["--raft-addr", &addr(ports[2])])
            .args(extra);
        Self::spawn(cmd, data_dir)
    }

    /// Starts `meshreg-bridge --config <config>` on port 0, logging to
    /// `dir/server.log`, and waits until it prints its listening line and
    /// is ready. Its temporary directories (its state, unless `extra` has
    /// `--data-dir`) go under `dir/tmp` (`TMPDIR`).
    pub fn start_bridge(dir: &Path, config: &Path, extra: &[&str]) -> anyhow::Result<Server> {
        std::fs::create_dir_all(dir.join("tmp"))?;
        let mut cmd = Command::new(bridge_bin());
        cmd.env("TMPDIR", dir.join("tmp"))
            .arg("--config")
            .arg(config)
            .args(["--http-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0"])
            .args(extra);
        Self::spawn(cmd, dir)
    }

    /// Runs `cmd` (logging to `data_dir/server.log`) and waits for its
    /// listening line and `/readyz`.
    fn spawn(mut cmd: Command, data_dir: &Path) -> anyhow::Result<Server> {
        std::fs::create_dir_all(data_dir)?;
        let log = File::options()
            .create(true)
            .append(true)
            .open(data_dir.join("server.log"))?;
        let mut child = cmd
            .env("MESHREG_LOG", "info,openraft=warn")
            .env("MESHREG_BRIDGE_LOG", "info,openraft=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()?;
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            // Keep draining so the child never blocks on a full pipe.
            for _ in lines {}
        });
        let line = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                let log = std::fs::read_to_string(data_dir.join("server.log")).unwrap_or_default();
                anyhow::bail!("meshreg exited or did not start within 60 s; its log:\n{log}");
            }
        };
        let v: Value = serde_json::from_str(&line)?;
        let http = format!("http://{}", v["http"].as_str().unwrap_or_default());
        let grpc = format!("http://{}", v["grpc"].as_str().unwrap_or_default());
        let raft = v["raft"].as_str().unwrap_or_default().to_string();
        let node_id = v["node_id"].as_u64().unwrap_or_default();
        let s = Server {
            child,
            http,
            grpc,
            raft,
            node_id,
            data_dir: data_dir.to_path_buf(),
        };
        s.wait_ready()?;
        Ok(s)
    }

    fn wait_ready(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = http_agent().get(format!("{}/readyz", self.http)).call() {
                if r.status() == 200 {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                let log =
                    std::fs::read_to_string(self.data_dir.join("server.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                anyhow::bail!(
                    "meshreg not ready within 30 s; last log lines:\n{}",
                    tail.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A gRPC client.
    pub async fn grpc_client(&self) -> RegistryClient<Channel> {
        RegistryClient::connect(self.grpc.clone())
            .await
            .expect("connect gRPC")
    }

    /// The OS process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGSTOP or SIGCONT (a stalled process, e.g. a long GC pause).
    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status();
    }

    /// `kill -9`: no shutdown, no flush.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Ctrl-C (SIGINT) and wait for a clean exit; returns the exit status success.
    pub fn stop(mut self) -> bool {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-INT", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st.success();
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// GET `path` and decode JSON.
    pub fn get(&self, path: &str) -> Reply {
        Reply::from(http_agent().get(format!("{}{path}", self.http)).call())
    }

    /// GET `path` with a 2 s timeout (for polling nodes that may be frozen).
    pub fn get_quick(&self, path: &str) -> Reply {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(2)))
            .build()
            .into();
        Reply::from(agent.get(format!("{}{path}", self.http)).call())
    }

    /// POST JSON text to `path`.
    pub fn post(&self, path: &str, body: &str) -> Reply {
        Reply::from(
            http_agent()
                .post(format!("{}{path}", self.http))
                .header("content-type", "application/json")
                .send(body),
        )
    }

    /// PUT a JSON body to `path`.
    pub fn put_json(&self, path: &str, body: &str) -> Reply {
        Reply::from(
            http_agent()
                .put(format!("{}{path}", self.http))
                .header("content-type", "application/json")
                .send(body),
        )
    }

    /// PUT with an empty body.
    pub fn put(&self, path: &str) -> Reply {
        Reply::from(
            http_agent()
                .put(format!("{}{path}", self.http))
                .send_empty(),
        )
    }

    /// DELETE `path`.
    pub fn delete(&self, path: &str) -> Reply {
        Reply::from(http_agent().delete(format!("{}{path}", self.http)).call())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http_agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into()
}

/// An HTTP reply: status, headers of interest and body.
#[derive(Debug)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// The `x-meshreg-index` header, if any.
    pub index: Option<u64>,
    /// Body text.
    pub text: String,
}

impl Reply {
    fn from(r: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Reply {
        match r {
            Ok(mut resp) => {
                let index = resp
                    .headers()
                    .get("x-meshreg-index")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok());
                Reply {
                    status: resp.status().as_u16(),
                    index,
                    text: resp.body_mut().read_to_string().unwrap_or_default(),
                }
            }
            Err(e) => Reply {
                status: 0,
                index: None,
                text: e.to_string(),
            },
        }
    }

    /// The body as JSON (panics with the body when it is not).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }
}

/// Polls `f` every 50 ms until it returns true or `timeout` passes.
pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
