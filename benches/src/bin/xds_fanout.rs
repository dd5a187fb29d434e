//! xDS fan-out against a running meshreg (issue 4): how long one registry
//! change takes to reach many ADS streams, and what an idle stream costs
//! the server in memory.
//!
//! 1. Registers `--seed-instances` persistent instances of `--app` with port
//!    `--port`, so the cluster `outbound|<port>||<app>.default` exists; with
//!    `--apps N` (N > 1) also of `<app>-1` … `<app>-(N-1)`.
//! 2. Reads the server's RSS (`VmRSS` of `/proc/<--server-pid>/status`).
//! 3. Opens `--streams` ADS streams (`--variant delta` or `sotw`), real gRPC
//!    streams spread over HTTP/2 connections of `--per-connection` streams
//!    each, all subscribed to that one ClusterLoadAssignment (with
//!    `--apps N`, stream `i` to the one of app `i mod N`) (node metadata
//!    `NAMESPACE=default`); every response is ACKed with its nonce (and, for
//!    SotW, its `version_info`). Waits until every stream has its initial
//!    response, lets them sit idle `--settle-ms`, and reads the RSS again:
//!    `(after - before) / streams` is the server memory per idle stream
//!    (stream state, HTTP/2 and tonic buffers, and the connections' share).
//! 4. `--changes` times: registers one new instance (address
//!    `10.250.0.<k+1>`) of `--app` and measures, per stream watching it
//!    (all of them unless `--apps` > 1), the time from the moment
//!    the `Register` call returned (the write is committed) until that
//!    stream received a response whose ClusterLoadAssignment contains the
//!    new address. Changes are `--gap-ms` apart, longer than the debounce,
//!    so each is pushed on its own.
//!
//! Prints one JSON line for the connect phase (with the memory figures),
//! one per change, and a last one with the CPU time the server and this
//! process spent per change, and per stream watching the change per change
//! (over all the changes, from `/proc/<pid>/task/*/schedstat`). With
//! `--apps`, the server's CPU per change shows what the streams that do not
//! watch the changed application cost it. Latencies are measured in this
//! process, which shares the machine with the server: the client's own
//! scheduling delay (handling 10,000 responses on a loaded core) is part
//! of the figures.
//! To keep that share small:
//! - a response is not decoded whole: only its nonce and version are read
//!   (every other field skipped); the cluster name and the change
//!   addresses are searched for as bytes, the addresses as their encoded
//!   `SocketAddress.address` field (tag 2, length, bytes), which no other
//!   field of these ClusterLoadAssignments can hold;
//! - the searchers are built once, and only changes already made are
//!   searched for;
//! - the coordinator that collects the streams' reports runs as a task,
//!   not on the thread blocking on `main`, so a report is not a thread
//!   switch.
//!
//! Expects a registry where the change addresses are not registered yet
//! (a fresh server, or a distinct `--app` per run).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use clap::{Parser, ValueEnum};
use envoy_types::pb::envoy::config::core::v3::Node as EnvoyNode;
use envoy_types::pb::envoy::service::discovery::v3 as ds;
use envoy_types::pb::google::protobuf::{value, Struct, Value};
use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesUnordered, StreamExt};
use memchr::memmem;
use meshreg_benches::LatencyStats;
use meshreg_proto::registry::v1 as pb;
use meshreg_proto::registry::v1::registry_client::RegistryClient;
use prost::Message;
use std::future::Future;
use std::task::Poll;
use tokio::sync::{mpsc, Semaphore};

const EDS_TYPE: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Variant {
    /// `DeltaAggregatedResources`.
    Delta,
    /// `StreamAggregatedResources` (state of the world).
    Sotw,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::Delta => "delta",
            Variant::Sotw => "sotw",
        }
    }
}

#[derive(Debug, Parser)]
struct Args {
    /// gRPC address of meshreg (registry API and ADS share the port).
    #[arg(long, default_value = "http://127.0.0.1:7071")]
    addr: String,
    /// ADS variant.
    #[arg(long, value_enum, default_value_t = Variant::Delta)]
    variant: Variant,
    /// ADS streams to open.
    #[arg(long, default_value_t = 10_000)]
    streams: usize,
    /// Streams per HTTP/2 connection (meshreg allows 1,024 by default).
    #[arg(long, default_value_t = 100)]
    per_connection: usize,
    /// Streams being opened at once (each holds a slot until its initial
    /// response arrives).
    #[arg(long, default_value_t = 500)]
    open_parallelism: usize,
    /// Application the streams subscribe to (and the changes touch).
    #[arg(long, default_value = "fanout")]
    app: String,
    /// Applications the streams are spread over, round robin: `--app`,
    /// `<app>-1`, … Only the streams of `--app` see the changes.
    #[arg(long, default_value_t = 1)]
    apps: usize,
    /// Port of the application (the cluster is `outbound|<port>||<app>.default`).
    #[arg(long, default_value_t = 9000)]
    port: u16,
    /// Instances registered before the streams open.
    #[arg(long, default_value_t = 3)]
    seed_instances: usize,
    /// Instance changes to time (at most 250).
    #[arg(long, default_value_t = 5)]
    changes: usize,
    /// Pause before each change, ms (longer than the debounce quiet period).
    #[arg(long, default_value_t = 1_000)]
    gap_ms: u64,
    /// Idle time before each RSS reading, ms.
    #[arg(long, default_value_t = 2_000)]
    settle_ms: u64,
    /// How long to wait for all streams to get their initial response, s.
    #[arg(long, default_value_t = 300)]
    connect_timeout_s: u64,
    /// How long to wait for all streams to see one change, ms.
    #[arg(long, default_value_t = 10_000)]
    change_timeout_ms: u64,
    /// Process id of the meshreg server, for its RSS; none skips memory.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Never ACK a response (a diagnostic, not a client: it shows what
    /// pushing alone costs the server; meshreg's delta streams do not wait
    /// for ACKs, its SotW streams do).
    #[arg(long)]
    no_ack: bool,
}

/// What a stream task reports to the coordinator.
#[derive(Debug)]
enum Event {
    /// The stream received the subscribed resource for the first time;
    /// `watching`: it is one of `--app`'s.
    Initial { watching: bool },
    /// The stream received a response containing change `change`'s address.
    Saw { change: usize, at: Instant },
    /// The stream ended (error or server close).
    Ended { error: String, watching: bool },
}

/// Address of change `k`.
fn change_address(k: usize) -> String {
    format!("10.250.0.{}", k + 1)
}

fn instance(app: &str, address: String, port: u16) -> pb::register_request::Entry {
    pb::register_request::Entry {
        instance: Some(pb::Instance {
            namespace: "default".into(),
            app: app.to_string(),
            address,
            ports: HashMap::from([("grpc".to_string(), u32::from(port))]),
            labels: HashMap::from([("version".to_string(), "v1".to_string())]),
            ..Default::default()
        }),
        services: vec![],
    }
}

fn envoy_node(i: usize) -> EnvoyNode {
    EnvoyNode {
        id: format!("fanout-{i}"),
        cluster: "fanout".into(),
        metadata: Some(Struct {
            fields: [(
                "NAMESPACE".to_string(),
                Value {
                    kind: Some(value::Kind::StringValue("default".into())),
                },
            )]
            .into(),
        }),
        ..Default::default()
    }
}

/// `address` as an encoded `SocketAddress.address` field: tag 2
/// (length-delimited), length, bytes.
fn encoded_address(address: &str) -> Vec<u8> {
    let mut field = vec![0x12, address.len() as u8];
    field.extend_from_slice(address.as_bytes());
    field
}

/// What every stream of one application looks for, built once: each
/// change's address (encoded as [`encoded_address`]) and the cluster name,
/// as prebuilt searchers (building one costs more than a search).
struct Patterns {
    cluster: String,
    cluster_finder: memmem::Finder<'static>,
    changes: Vec<memmem::Finder<'static>>,
}

impl Patterns {
    fn new(cluster: String, changes: usize) -> Arc<Self> {
        Arc::new(Self {
            cluster_finder: memmem::Finder::new(cluster.as_bytes()).into_owned(),
            cluster,
            changes: (0..changes)
                .map(|k| memmem::Finder::new(&encoded_address(&change_address(k))).into_owned())
                .collect(),
        })
    }
}

/// Per-stream bookkeeping shared by both variants.
struct Tracker {
    patterns: Arc<Patterns>,
    /// Whether the stream watches `--app` (only those look for changes).
    watching: bool,
    /// How many changes the coordinator has made so far: later ones are
    /// not looked for.
    issued: Arc<AtomicUsize>,
    seen: Vec<bool>,
    initial: bool,
    events: mpsc::UnboundedSender<Event>,
    open_slot: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl Tracker {
    /// Whether the stream watches `--app` (only those look for changes).
    fn watching(&self) -> bool {
        self.watching
    }

    /// Looks at one response (its encoded bytes), received at `at`.
    fn on_response(&mut self, at: Instant, msg: &[u8]) {
        if self.watching {
            let issued = self.issued.load(Ordering::Acquire);
            let p = &self.patterns;
            for k in 0..issued {
                if !self.seen[k] && p.changes[k].find(msg).is_some() {
                    self.seen[k] = true;
                    let _ = self.events.send(Event::Saw { change: k, at });
                }
            }
        }
        if !self.initial && self.patterns.cluster_finder.find(msg).is_some() {
            self.initial = true;
            self.open_slot = None;
            let _ = self.events.send(Event::Initial {
                watching: self.watching(),
            });
        }
    }

    fn ended(&mut self, error: String) {
        self.open_slot = None;
        let _ = self.events.send(Event::Ended {
            error,
            watching: self.watching(),
        });
    }
}

/// The response fields the loader reads; prost skips the others (the
/// resources are searched as bytes, not decoded). `DiscoveryResponse` and
/// `DeltaDiscoveryResponse` both carry the nonce as field 5; field 1 is
/// SotW's `version_info` (delta's `system_version_info`, unused).
#[derive(Clone, PartialEq, prost::Message)]
struct ResponseHead {
    #[prost(string, tag = "1")]
    version_info: String,
    #[prost(string, tag = "5")]
    nonce: String,
}

/// One HTTP/2 connection to the server: its request handle, and the
/// channel to the task that runs the connection's streams.
#[derive(Clone)]
struct Connection {
    send: h2::client::SendRequest<Bytes>,
    streams: mpsc::UnboundedSender<BoxFuture<'static, ()>>,
}

/// Opens an HTTP/2 connection (prior knowledge, as gRPC over cleartext)
/// and spawns the task that drives it and its streams.
async fn connect(addr: &str) -> anyhow::Result<Connection> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let (send, conn) = h2::client::Builder::new()
        .initial_window_size(1 << 20)
        .initial_connection_window_size(1 << 24)
        .handshake(tcp)
        .await?;
    let (streams, new) = mpsc::unbounded_channel();
    tokio::spawn(drive(conn, new));
    Ok(Connection { send, streams })
}

/// Runs one connection and all its streams in one task: the streams that
/// received something are polled (each queues its ACK), then the
/// connection, which writes the ACKs together and reads what came in. A
/// task per stream would cost this process a wake-up and a write per ACK,
/// and the loader, playing 10,000 clients on one core, must stay cheaper
/// per stream than the server it measures.
async fn drive(
    conn: h2::client::Connection<tokio::net::TcpStream, Bytes>,
    mut new: mpsc::UnboundedReceiver<BoxFuture<'static, ()>>,
) {
    let mut conn = Some(Box::pin(conn));
    let mut streams = FuturesUnordered::new();
    let mut accepting = true;
    std::future::poll_fn(|cx| {
        while accepting {
            match new.poll_recv(cx) {
                Poll::Ready(Some(f)) => streams.push(f),
                Poll::Ready(None) => accepting = false,
                Poll::Pending => break,
            }
        }
        // `FuturesUnordered` returns `Pending` (and wakes the task) after
        // two streams that woke themselves, as h2 streams do when they
        // send: poll it a few rounds so that one write takes many ACKs.
        for _ in 0..16 {
            if let Poll::Ready(None) = streams.poll_next_unpin(cx) {
                break;
            }
        }
        if let Some(c) = conn.as_mut() {
            if c.as_mut().poll(cx).is_ready() {
                conn = None;
            }
        }
        if conn.is_none() && streams.is_empty() && !accepting {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
}

/// `msg` as one gRPC message (uncompressed flag, big-endian length, bytes).
fn grpc_frame(msg: &impl Message) -> Bytes {
    let len = msg.encoded_len();
    let mut b = BytesMut::with_capacity(5 + len);
    b.put_u8(0);
    b.put_u32(u32::try_from(len).expect("request under 4 GiB"));
    msg.encode(&mut b).expect("BytesMut grows");
    b.freeze()
}

/// The first request of stream `i` (node, subscription) and the ACK of a
/// response, for either variant.
fn first_request(variant: Variant, i: usize, cluster: &str) -> Bytes {
    match variant {
        Variant::Delta => grpc_frame(&ds::DeltaDiscoveryRequest {
            node: Some(envoy_node(i)),
            type_url: EDS_TYPE.into(),
            resource_names_subscribe: vec![cluster.to_string()],
            ..Default::default()
        }),
        Variant::Sotw => grpc_frame(&ds::DiscoveryRequest {
            node: Some(envoy_node(i)),
            type_url: EDS_TYPE.into(),
            resource_names: vec![cluster.to_string()],
            ..Default::default()
        }),
    }
}

fn ack(variant: Variant, cluster: &str, head: ResponseHead) -> Bytes {
    match variant {
        Variant::Delta => grpc_frame(&ds::DeltaDiscoveryRequest {
            type_url: EDS_TYPE.into(),
            response_nonce: head.nonce,
            ..Default::default()
        }),
        Variant::Sotw => grpc_frame(&ds::DiscoveryRequest {
            type_url: EDS_TYPE.into(),
            resource_names: vec![cluster.to_string()],
            version_info: head.version_info,
            response_nonce: head.nonce,
            ..Default::default()
        }),
    }
}

/// Runs ADS stream `i` on `conn` until it ends: sends the subscription,
/// then ACKs every response and reports what it carried to `t`.
///
/// A plain HTTP/2 stream with gRPC framing, written straight to `h2`
/// rather than through tonic's client: a stream costs this process one
/// task and no channel, so that the loader, which plays 10,000 clients on
/// one core, stays cheaper per stream than the server it measures.
async fn run_stream(conn: Connection, authority: String, a: StreamArgs, i: usize, mut t: Tracker) {
    if let Err(e) = stream(conn, &authority, a, i, &mut t).await {
        t.ended(e.to_string());
    }
}

/// How every stream behaves.
#[derive(Debug, Clone, Copy)]
struct StreamArgs {
    variant: Variant,
    no_ack: bool,
}

async fn stream(
    conn: Connection,
    authority: &str,
    StreamArgs { variant, no_ack }: StreamArgs,
    i: usize,
    t: &mut Tracker,
) -> anyhow::Result<()> {
    let method = match variant {
        Variant::Delta => "DeltaAggregatedResources",
        Variant::Sotw => "StreamAggregatedResources",
    };
    let req = http::Request::post(format!(
        "http://{authority}/envoy.service.discovery.v3.AggregatedDiscoveryService/{method}"
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .body(())?;
    let mut ready = conn.send.ready().await?;
    let (response, mut requests) = ready.send_request(req, false)?;
    requests.send_data(first_request(variant, i, &t.patterns.cluster), false)?;
    let response = response.await?;
    anyhow::ensure!(
        response.status() == 200,
        "HTTP status {}",
        response.status()
    );
    let mut body = response.into_body();
    let mut buf = BytesMut::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let at = Instant::now();
        let _ = body.flow_control().release_capacity(chunk.len());
        buf.extend_from_slice(&chunk);
        while buf.len() >= 5 {
            let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
            if buf.len() < 5 + len {
                break;
            }
            anyhow::ensure!(buf[0] == 0, "compressed response");
            let msg = buf.split_to(5 + len).split_off(5).freeze();
            let head = ResponseHead::decode(msg.clone())?;
            if !no_ack {
                requests.send_data(ack(variant, &t.patterns.cluster, head), false)?;
            }
            t.on_response(at, &msg);
        }
    }
    let status = body
        .trailers()
        .await?
        .and_then(|h| h.get("grpc-status").cloned());
    anyhow::bail!("server closed the stream (grpc-status {status:?})")
}

/// `VmRSS` of a process, bytes.
fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .ok_or_else(|| anyhow::anyhow!("no VmRSS in /proc/{pid}/status"))?
        .trim()
        .parse::<u64>()?;
    Ok(kb * 1024)
}

/// CPU time of all threads of a process (`/proc/<pid>/task/*/schedstat`,
/// first field, ns). Threads that exit in between are not counted.
fn cpu_ns(pid: &str) -> anyhow::Result<u64> {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let stat = std::fs::read_to_string(task?.path().join("schedstat"))?;
        total += stat
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Ok(total)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    // The coordinator runs as a task, not on the thread that blocks on
    // `main`: each event a stream sends it would otherwise wake that
    // thread, a context switch per response on the loader's core.
    tokio::spawn(run(a)).await?
}

async fn run(a: Args) -> anyhow::Result<()> {
    anyhow::ensure!(a.changes <= 250, "--changes is at most 250");
    anyhow::ensure!(a.per_connection > 0, "--per-connection must be positive");
    anyhow::ensure!(a.apps > 0, "--apps must be positive");
    let variant = a.variant.name();
    let app_name = |j: usize| match j {
        0 => a.app.clone(),
        j => format!("{}-{j}", a.app),
    };
    let cluster_of = |j: usize| format!("outbound|{}||{}.default", a.port, app_name(j));

    let mut registry = RegistryClient::connect(a.addr.clone()).await?;
    for j in 0..a.apps {
        registry
            .register(pb::RegisterRequest {
                instances: (0..a.seed_instances)
                    .map(|i| instance(&app_name(j), format!("10.0.0.{}", i + 1), a.port))
                    .collect(),
            })
            .await?;
    }

    let settle = Duration::from_millis(a.settle_ms);
    tokio::time::sleep(settle).await;
    let rss_before = a.server_pid.map(rss_bytes).transpose()?;

    // Open the streams.
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let open_slots = Arc::new(Semaphore::new(a.open_parallelism.max(1)));
    let started = Instant::now();
    let authority = a
        .addr
        .strip_prefix("http://")
        .ok_or_else(|| anyhow::anyhow!("--addr must be http://host:port"))?
        .trim_end_matches('/')
        .to_string();
    let mut channel: Option<Connection> = None;
    let patterns: Vec<Arc<Patterns>> = (0..a.apps)
        .map(|app| Patterns::new(cluster_of(app), a.changes))
        .collect();
    let issued = Arc::new(AtomicUsize::new(0));
    for i in 0..a.streams {
        let ch = match &channel {
            Some(c) if i % a.per_connection != 0 => c.clone(),
            _ => {
                // One `connect` is one HTTP/2 connection.
                let c = connect(&authority).await?;
                channel = Some(c.clone());
                c
            }
        };
        let permit = open_slots.clone().acquire_owned().await?;
        let watching = i % a.apps == 0;
        let t = Tracker {
            patterns: patterns[i % a.apps].clone(),
            watching,
            issued: issued.clone(),
            seen: vec![false; a.changes],
            initial: false,
            events: events_tx.clone(),
            open_slot: Some(permit),
        };
        let sa = StreamArgs {
            variant: a.variant,
            no_ack: a.no_ack,
        };
        let stream = Box::pin(run_stream(ch.clone(), authority.clone(), sa, i, t));
        if ch.streams.send(stream).is_err() {
            anyhow::bail!(
                "connection {} ended before its streams opened",
                i / a.per_connection
            );
        }
    }
    drop(events_tx);

    let mut connected = 0usize;
    let mut ended = 0usize;
    // Streams of `--app` that connected, and that ended.
    let (mut watchers, mut watchers_ended) = (0usize, 0usize);
    let mut errors: HashMap<String, usize> = HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(a.connect_timeout_s);
    while connected + ended < a.streams {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(Event::Initial { watching })) => {
                connected += 1;
                watchers += usize::from(watching);
            }
            Ok(Some(Event::Ended { error, watching })) => {
                ended += 1;
                watchers_ended += usize::from(watching);
                *errors.entry(error).or_default() += 1;
            }
            Ok(Some(Event::Saw { .. })) => {}
            Ok(None) | Err(_) => break,
        }
    }
    let connect_s = started.elapsed().as_secs_f64();
    tokio::time::sleep(settle).await;
    let rss_after = a.server_pid.map(rss_bytes).transpose()?;
    let per_stream = match (rss_before, rss_after) {
        (Some(b), Some(f)) if connected > 0 => {
            format!("{:.0}", (f as f64 - b as f64) / connected as f64)
        }
        _ => "null".into(),
    };
    let opt = |v: Option<u64>| v.map_or("null".into(), |v| v.to_string());
    println!(
        "{{\"phase\":\"connect\",\"variant\":\"{variant}\",\"streams\":{},\"apps\":{},\"connections\":{},\"connected\":{connected},\"ended\":{ended},\"seconds\":{connect_s:.3},\"rss_before_bytes\":{},\"rss_after_bytes\":{},\"rss_per_stream_bytes\":{per_stream},\"errors\":{:?}}}",
        a.streams,
        a.apps,
        a.streams.div_ceil(a.per_connection),
        opt(rss_before),
        opt(rss_after),
        errors,
    );

    // Time each change; CPU time of both sides over the changes.
    let server_cpu = |pid: Option<u32>| pid.map(|p| cpu_ns(&p.to_string())).transpose();
    let cpu_before = (server_cpu(a.server_pid)?, cpu_ns("self")?);
    let mut late = 0usize;
    for k in 0..a.changes {
        tokio::time::sleep(Duration::from_millis(a.gap_ms)).await;
        let alive = watchers.saturating_sub(watchers_ended);
        // Streams look for this change's address from now on.
        issued.store(k + 1, Ordering::Release);
        let call = Instant::now();
        registry
            .register(pb::RegisterRequest {
                instances: vec![instance(&a.app, change_address(k), a.port)],
            })
            .await?;
        let commit = Instant::now();
        let mut samples = Vec::with_capacity(alive);
        let mut before_commit = 0usize;
        let deadline = tokio::time::Instant::now() + Duration::from_millis(a.change_timeout_ms);
        while samples.len() < alive {
            match tokio::time::timeout_at(deadline, events.recv()).await {
                Ok(Some(Event::Saw { change, at })) if change == k => {
                    if at < commit {
                        before_commit += 1;
                    }
                    samples.push(at.saturating_duration_since(commit));
                }
                Ok(Some(Event::Saw { .. })) => late += 1,
                Ok(Some(Event::Ended { error, watching })) => {
                    ended += 1;
                    watchers_ended += usize::from(watching);
                    *errors.entry(error).or_default() += 1;
                }
                Ok(Some(Event::Initial { watching })) => watchers += usize::from(watching),
                Ok(None) | Err(_) => break,
            }
        }
        let within_1s = samples
            .iter()
            .filter(|d| **d <= Duration::from_secs(1))
            .count();
        let max = samples.iter().max().copied().unwrap_or_default();
        // The first stream's latency: the debounce and one push.
        let min = samples.iter().min().copied().unwrap_or_default();
        let got = samples.len();
        let stats = LatencyStats::from_samples(samples, got, commit - call);
        println!(
            "{{\"phase\":\"change\",\"variant\":\"{variant}\",\"change\":{},\"streams\":{alive},\"got\":{got},\"within_1s\":{within_1s},\"before_commit\":{before_commit},\"register_ms\":{:.3},\"min_ms\":{:.3},\"p50_ms\":{:.3},\"p99_ms\":{:.3},\"max_ms\":{:.3}}}",
            k + 1,
            ms(commit - call),
            ms(min),
            stats.p50_ms,
            stats.p99_ms,
            ms(max),
        );
    }
    // µs of CPU per change, and per watching stream per change: pushing
    // and handling the ACK on the server; receiving and ACKing in this
    // process.
    let per = |before: u64, after: u64, streams: usize| {
        let exchanges = (a.changes * streams).max(1);
        format!(
            "{:.1}",
            after.saturating_sub(before) as f64 / 1000.0 / exchanges as f64
        )
    };
    let watching = watchers.saturating_sub(watchers_ended);
    let (server_us, server_change_us) = match (cpu_before.0, server_cpu(a.server_pid)?) {
        (Some(b), Some(e)) => (per(b, e, watching), per(b, e, 1)),
        _ => ("null".into(), "null".into()),
    };
    let loader_us = per(cpu_before.1, cpu_ns("self")?, watching);
    println!(
        "{{\"phase\":\"done\",\"variant\":\"{variant}\",\"ended\":{ended},\"late_events\":{late},\"watching_streams\":{watching},\"server_cpu_us_per_change\":{server_change_us},\"server_cpu_us_per_stream_change\":{server_us},\"loader_cpu_us_per_stream_change\":{loader_us},\"errors\":{errors:?}}}"
    );
    Ok(())
}
