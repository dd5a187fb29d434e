//! The ZooKeeper adapter: reads Dubbo's two layouts with one-shot watches
//! (re-armed on every event), never by polling:
//!
//! - interface level: `{root}/{interface}/providers/{URL-encoded URL}`,
//!   a child watch on `{root}` and on every `providers` node; provider
//!   URLs live in the znode names, so each new one is read once (its stat,
//!   for the `mzxid`);
//! - application level: `{services_root}/{app}/{host:port}` with a child
//!   watch on the root and on every application, and a data watch on every
//!   instance node; `{root}/mapping/{interface}` with a child watch and a
//!   data watch on every mapping node.
//!
//! A node that does not exist (yet) gets an existence watch instead, which
//! fires when it is created. The client re-registers watches itself after
//! a reconnect within the session; when the session ends (expires), [`run`]
//! returns an error and the sink calls it again, which reads everything
//! anew into a fresh catalog ([`Feed::begin_resync`]).

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use futures_util::future::{join_all, BoxFuture};
use futures_util::stream::{FuturesUnordered, StreamExt};
use zookeeper_client::{Client, EventType, OneshotWatcher, SessionState, WatchedEvent};

use crate::error::Error;
use crate::feed::{now_ms, Feed};

/// Session timeout asked of the ensemble. Also bounds how long a connect
/// to an unreachable ensemble takes to fail.
pub const SESSION_TIMEOUT: Duration = Duration::from_secs(10);

/// Children of the interface-level root that are not interfaces (Dubbo's
/// mapping, dynamic configuration and metadata trees).
const RESERVED: [&str; 3] = ["mapping", "config", "metadata"];

/// Requests sent at once when reading many nodes (pipelined on one session).
const BATCH: usize = 1000;

/// Where to read in ZooKeeper.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZookeeperConfig {
    /// Connect string, `host:port[,host:port...]` (an optional `/chroot`
    /// suffix is applied to every path).
    pub address: String,
    /// Interface-level root, `/dubbo`; also holds `mapping/`.
    pub root: String,
    /// Application-level root, `/services`.
    pub services_root: String,
}

impl ZookeeperConfig {
    /// Checks the paths: absolute, no trailing `/`, not the root itself.
    ///
    /// # Errors
    /// [`Error::Config`] naming the field.
    pub fn validate(&self) -> Result<(), Error> {
        if self.address.trim().is_empty() {
            return Err(Error::Config("address must not be empty".into()));
        }
        for (field, p) in [("root", &self.root), ("services_root", &self.services_root)] {
            if !p.starts_with('/') || p.ends_with('/') || p.contains("//") {
                return Err(Error::Config(format!(
                    "{field} {p:?} must be an absolute znode path without a trailing '/', e.g. \"/dubbo\""
                )));
            }
        }
        Ok(())
    }
}

/// Which kind of children a watched node has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    /// `{root}`: interfaces.
    Interfaces,
    /// `{root}/{interface}/providers`: URL-encoded provider URLs.
    Providers,
    /// `{root}/mapping`: interfaces, each with comma-separated apps as data.
    Mappings,
    /// `{services_root}`: applications.
    Apps,
    /// `{services_root}/{app}`: instances, each with JSON data.
    Instances,
}

#[derive(Debug)]
struct DirState {
    kind: Dir,
    children: BTreeSet<String>,
}

#[derive(Debug, Clone, Copy)]
enum Armed {
    Children,
    Data,
}

#[derive(Debug)]
struct Fired {
    path: String,
    armed: Armed,
    event: WatchedEvent,
}

/// Reads `cfg` into `feed` and follows it until the session ends or a
/// request fails (always an error; dropping the future stops it).
///
/// # Errors
/// [`Error::Config`], [`Error::Zookeeper`], [`Error::SessionEnded`].
pub async fn run(cfg: &ZookeeperConfig, feed: &Feed) -> Result<(), Error> {
    cfg.validate()?;
    let client = Client::connector()
        .with_session_timeout(SESSION_TIMEOUT)
        .connect(&cfg.address)
        .await
        .map_err(|source| Error::Zookeeper {
            address: cfg.address.clone(),
            source,
        })?;
    tracing::info!(address = %cfg.address, session = ?client.session_id(), "connected to ZooKeeper");
    let mut engine = Engine {
        cfg,
        feed,
        client,
        dirs: HashMap::new(),
        watches: FuturesUnordered::new(),
    };
    let roots = [
        (cfg.root.clone(), Dir::Interfaces),
        (format!("{}/mapping", cfg.root), Dir::Mappings),
        (cfg.services_root.clone(), Dir::Apps),
    ];
    feed.begin_resync();
    let mut queue = Vec::new();
    for (path, kind) in roots {
        engine.track(&path, kind);
        queue.push(path);
    }
    engine.sync(queue).await?;
    feed.finish_resync();
    tracing::info!(address = %cfg.address, nodes = engine.dirs.len(), "ZooKeeper source loaded; following its watches");
    engine.follow().await
}

struct Engine<'a> {
    cfg: &'a ZookeeperConfig,
    feed: &'a Feed,
    client: Client,
    /// Nodes whose children are watched, by path.
    dirs: HashMap<String, DirState>,
    /// Armed watches.
    watches: FuturesUnordered<BoxFuture<'static, Fired>>,
}

fn join(parent: &str, child: &str) -> String {
    format!("{parent}/{child}")
}

fn terminal(state: SessionState) -> bool {
    matches!(
        state,
        SessionState::Expired | SessionState::Closed | SessionState::AuthFailed
    )
}

impl Engine<'_> {
    fn err(&self, source: zookeeper_client::Error) -> Error {
        Error::Zookeeper {
            address: self.cfg.address.clone(),
            source,
        }
    }

    fn track(&mut self, path: &str, kind: Dir) {
        self.dirs.insert(
            path.to_string(),
            DirState {
                kind,
                children: BTreeSet::new(),
            },
        );
    }

    fn arm(&mut self, path: &str, armed: Armed, w: OneshotWatcher) {
        let path = path.to_string();
        self.watches.push(Box::pin(async move {
            let event = w.changed().await;
            Fired { path, armed, event }
        }));
    }

    /// Re-reads the children of every queued node (and, depth first, of
    /// the nodes they add).
    async fn sync(&mut self, mut queue: Vec<String>) -> Result<(), Error> {
        while let Some(path) = queue.pop() {
            self.sync_dir(&path, &mut queue).await?;
        }
        Ok(())
    }

    async fn sync_dir(&mut self, path: &str, queue: &mut Vec<String>) -> Result<(), Error> {
        let Some(kind) = self.dirs.get(path).map(|d| d.kind) else {
            return Ok(());
        };
        let children = loop {
            match self.client.list_and_watch_children(path).await {
                Ok((children, w)) => {
                    self.arm(path, Armed::Children, w);
                    break children;
                }
                Err(zookeeper_client::Error::NoNode) => {
                    let (stat, w) = self
                        .client
                        .check_and_watch_stat(path)
                        .await
                        .map_err(|e| self.err(e))?;
                    if stat.is_some() {
                        continue; // created meanwhile: list it
                    }
                    // Fires when the node is created.
                    self.arm(path, Armed::Children, w);
                    break Vec::new();
                }
                Err(e) => return Err(self.err(e)),
            }
        };
        let new: BTreeSet<String> = children
            .into_iter()
            .filter(|c| kind != Dir::Interfaces || !RESERVED.contains(&c.as_str()))
            .collect();
        let old = match self.dirs.get_mut(path) {
            Some(d) => std::mem::replace(&mut d.children, new.clone()),
            None => return Ok(()),
        };
        for gone in old.difference(&new) {
            self.forget(kind, &join(path, gone));
        }
        let added: Vec<String> = new.difference(&old).cloned().collect();
        match kind {
            Dir::Interfaces => {
                for i in added {
                    let p = format!("{path}/{i}/providers");
                    self.track(&p, Dir::Providers);
                    queue.push(p);
                }
            }
            Dir::Apps => {
                for a in added {
                    let p = join(path, &a);
                    self.track(&p, Dir::Instances);
                    queue.push(p);
                }
            }
            Dir::Providers => self.read_providers(path, &added).await?,
            Dir::Mappings | Dir::Instances => {
                for chunk in added.chunks(BATCH) {
                    let paths: Vec<String> = chunk.iter().map(|c| join(path, c)).collect();
                    let reads =
                        join_all(paths.iter().map(|p| self.client.get_and_watch_data(p))).await;
                    let now = now_ms();
                    for (p, r) in paths.iter().zip(reads) {
                        match r {
                            Ok((data, stat, w)) => {
                                self.arm(p, Armed::Data, w);
                                self.put_leaf(kind, p, &data, stat.mzxid, now);
                            }
                            // Deleted since the listing: the child watch tells.
                            Err(zookeeper_client::Error::NoNode) => {}
                            Err(e) => return Err(self.err(e)),
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Provider URLs are in the znode names and never change in place; one
    /// stat per new provider gives its `mzxid`.
    async fn read_providers(&mut self, path: &str, names: &[String]) -> Result<(), Error> {
        for chunk in names.chunks(BATCH) {
            let paths: Vec<String> = chunk.iter().map(|c| join(path, c)).collect();
            let stats = join_all(paths.iter().map(|p| self.client.check_stat(p))).await;
            let now = now_ms();
            for (p, st) in paths.iter().zip(stats) {
                match st {
                    Ok(Some(stat)) => {
                        self.feed.edit(|c| c.put_provider(p, stat.mzxid, now));
                    }
                    Ok(None) => {}
                    Err(e) => return Err(self.err(e)),
                }
            }
        }
        Ok(())
    }

    fn put_leaf(&self, kind: Dir, path: &str, data: &[u8], revision: i64, now: i64) {
        let (parent, name) = path.rsplit_once('/').unwrap_or(("", path));
        match kind {
            Dir::Mappings => {
                self.feed
                    .edit(|c| c.put_mapping(path, name, data, revision, now));
            }
            Dir::Instances => {
                let app = parent.rsplit('/').next().unwrap_or_default();
                self.feed
                    .edit(|c| c.put_instance(path, Ok(app), data, revision, now));
            }
            _ => {}
        }
    }

    /// A child of a `kind` node is gone: drop it and what was read under it.
    fn forget(&mut self, kind: Dir, child: &str) {
        let subtree = match kind {
            Dir::Interfaces => Some(format!("{child}/providers")),
            Dir::Apps => Some(child.to_string()),
            _ => None,
        };
        match subtree {
            Some(dir) => {
                self.dirs.remove(&dir);
                self.feed.edit(|c| c.remove_under(&format!("{dir}/")));
            }
            None => {
                self.feed.edit(|c| c.remove(child));
            }
        }
    }

    async fn reread_leaf(&mut self, path: &str) -> Result<(), Error> {
        let (parent, name) = path.rsplit_once('/').unwrap_or(("", path));
        let Some(kind) = self
            .dirs
            .get(parent)
            .filter(|d| d.children.contains(name))
            .map(|d| d.kind)
        else {
            return Ok(()); // no longer tracked
        };
        match self.client.get_and_watch_data(path).await {
            Ok((data, stat, w)) => {
                self.arm(path, Armed::Data, w);
                self.put_leaf(kind, path, &data, stat.mzxid, now_ms());
            }
            Err(zookeeper_client::Error::NoNode) => {
                self.feed.edit(|c| c.remove(path));
                // So that the parent's next listing reads it again if it
                // comes back under the same name.
                if let Some(d) = self.dirs.get_mut(parent) {
                    d.children.remove(name);
                }
            }
            Err(e) => return Err(self.err(e)),
        }
        Ok(())
    }

    /// Handles fired watches until the session ends or a request fails.
    async fn follow(&mut self) -> Result<(), Error> {
        let mut state = self.client.state_watcher();
        loop {
            let fired = tokio::select! {
                f = self.watches.next(), if !self.watches.is_empty() => f,
                s = state.changed() => {
                    if terminal(s) {
                        return Err(Error::SessionEnded {
                            address: self.cfg.address.clone(),
                            state: format!("{s:?}"),
                        });
                    }
                    continue;
                }
            };
            let Some(f) = fired else { continue };
            if f.event.event_type == EventType::Session && terminal(f.event.session_state) {
                return Err(Error::SessionEnded {
                    address: self.cfg.address.clone(),
                    state: format!("{:?}", f.event.session_state),
                });
            }
            match f.armed {
                Armed::Children => self.sync(vec![f.path]).await?,
                Armed::Data => self.reread_leaf(&f.path).await?,
            }
        }
    }
}
