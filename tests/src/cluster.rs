//! Clusters of real `meshreg` processes on loopback for fault tests. Each
//! node keeps its ports for the life of the cluster, so a restarted node is
//! found at the address recorded in the Raft membership.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{eventually, Server};

pub use crate::mesh::free_port;

/// A cluster of `meshreg` processes.
#[derive(Debug)]
pub struct TestCluster {
    nodes: Vec<Option<Server>>,
    ports: Vec<[u16; 3]>,
    dir: tempfile::TempDir,
    config: PathBuf,
    seed_raft: String,
    extra: Vec<String>,
}

impl TestCluster {
    /// Starts `n` nodes (ids 1..=n): node 1 as the seed, the others joining
    /// through it, and waits until all are voters. `config_toml` is written
    /// to a file every node loads; `extra` flags go to every node.
    pub fn start(n: usize, config_toml: &str, extra: &[&str]) -> anyhow::Result<TestCluster> {
        let dir = tempfile::tempdir()?;
        let config = dir.path().join("meshreg.toml");
        std::fs::write(&config, config_toml)?;
        let ports: Vec<[u16; 3]> = (0..n)
            .map(|_| [free_port(), free_port(), free_port()])
            .collect();
        let mut c = TestCluster {
            nodes: (0..n).map(|_| None).collect(),
            seed_raft: format!("127.0.0.1:{}", ports[0][2]),
            ports,
            dir,
            config,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        c.restart(1)?;
        for id in 2..=n as u64 {
            c.restart(id)?;
        }
        let ok = eventually(Duration::from_secs(60), || {
            c.voters(1).map(|v| v.len()) == Some(n)
        });
        anyhow::ensure!(
            ok,
            "cluster of {n} did not form within 60 s: {:?}",
            c.status(1)
        );
        Ok(c)
    }

    fn data_dir(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("node{id}"))
    }

    /// (Re)starts node `id` on its ports over its data directory.
    pub fn restart(&mut self, id: u64) -> anyhow::Result<()> {
        let idx = (id - 1) as usize;
        let node_id = id.to_string();
        let config = self.config.to_string_lossy().to_string();
        let mut args: Vec<&str> = vec!["--node-id", &node_id, "--config", &config];
        if id != 1 {
            args.extend(["--join", self.seed_raft.as_str()]);
        }
        args.extend(self.extra.iter().map(String::as_str));
        let s = Server::start_at(&self.data_dir(id), self.ports[idx], &args)?;
        self.nodes[idx] = Some(s);
        Ok(())
    }

    /// Starts one more node (id n+1) that joins through node 1; returns its id.
    pub fn grow(&mut self) -> anyhow::Result<u64> {
        self.nodes.push(None);
        self.ports.push([free_port(), free_port(), free_port()]);
        let id = self.nodes.len() as u64;
        self.restart(id)?;
        Ok(id)
    }

    /// A running node (panics if it is down).
    pub fn node(&self, id: u64) -> &Server {
        self.nodes[(id - 1) as usize]
            .as_ref()
            .expect("node is running")
    }

    /// Ids of the running nodes.
    pub fn live(&self) -> Vec<u64> {
        (1..=self.nodes.len() as u64)
            .filter(|id| self.nodes[(*id - 1) as usize].is_some())
            .collect()
    }

    /// `kill -9` node `id`.
    pub fn kill9(&mut self, id: u64) {
        if let Some(s) = self.nodes[(id - 1) as usize].take() {
            s.kill9();
        }
    }

    /// Ctrl-C node `id` and wait for it to exit.
    pub fn stop(&mut self, id: u64) -> bool {
        self.nodes[(id - 1) as usize]
            .take()
            .is_some_and(Server::stop)
    }

    /// `GET /v1/cluster` of node `id`.
    pub fn status(&self, id: u64) -> Option<Value> {
        let s = self.nodes.get((id - 1) as usize)?.as_ref()?;
        let r = s.get_quick("/v1/cluster");
        (r.status == 200).then(|| r.json())
    }

    /// Voter ids as node `id` sees them.
    pub fn voters(&self, id: u64) -> Option<Vec<u64>> {
        let st = self.status(id)?;
        Some(
            st["members"]
                .as_array()?
                .iter()
                .filter(|m| m["voter"] == true)
                .filter_map(|m| m["node_id"].as_u64())
                .collect(),
        )
    }

    /// The leader that a majority of the running nodes agree on, waiting
    /// up to `timeout`; `not` excludes a node (e.g. one just killed).
    pub fn wait_leader(&self, timeout: Duration, not: Option<u64>) -> Option<u64> {
        let deadline = Instant::now() + timeout;
        loop {
            let live = self.live();
            let mut votes = std::collections::HashMap::new();
            for id in &live {
                if let Some(l) = self.status(*id).and_then(|s| s["leader_id"].as_u64()) {
                    *votes.entry(l).or_insert(0) += 1;
                }
            }
            let quorum = self.nodes.len() / 2 + 1;
            if let Some((l, _)) = votes
                .into_iter()
                .find(|(l, n)| *n >= quorum && Some(*l) != not && live.contains(l))
            {
                return Some(l);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Cuts (or, with an empty list, heals) node `id`'s Raft links to `peers`.
    pub fn block(&self, id: u64, peers: &[u64]) {
        let body = serde_json::json!({ "blocked_peers": peers }).to_string();
        let r = self.node(id).put_json("/debug/faults", &body);
        assert_eq!(r.status, 200, "fault injection on node {id}: {}", r.text);
    }

    /// Isolates node `id` from every other node, both ways.
    pub fn isolate(&self, id: u64) {
        let others: Vec<u64> = (1..=self.nodes.len() as u64).filter(|o| *o != id).collect();
        self.block(id, &others);
        for o in &others {
            if self.nodes[(*o - 1) as usize].is_some() {
                self.block(*o, &[id]);
            }
        }
    }

    /// Heals every cut link.
    pub fn heal(&self) {
        for id in self.live() {
            self.block(id, &[]);
        }
    }

    /// The cluster's temporary directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for TestCluster {
    /// When a test fails, show the end of every node's log (the data
    /// directory goes away with the cluster).
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for id in 1..=self.nodes.len() as u64 {
            let log =
                std::fs::read_to_string(self.data_dir(id).join("server.log")).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let start = lines.len().saturating_sub(25);
            eprintln!(
                "---- node {id}: last log lines ----\n{}",
                lines[start..].join("\n")
            );
        }
    }
}
