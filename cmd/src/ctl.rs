//! `meshreg ctl`: the registry from a terminal, over gRPC.

use std::collections::HashMap;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use meshreg_proto::registry::v1 as pb;
use meshreg_proto::registry::v1::registry_client::RegistryClient;
use serde_json::{json, Value};
use tokio_stream::StreamExt;
use tonic::transport::Channel;

#[derive(Debug, Args)]
pub struct CtlArgs {
    /// gRPC address of any registry node.
    #[arg(
        long,
        global = true,
        env = "MESHREG_ADDR",
        default_value = "http://127.0.0.1:7071"
    )]
    addr: String,
    /// Namespace.
    #[arg(
        short,
        long,
        global = true,
        env = "MESHREG_NAMESPACE",
        default_value = "default"
    )]
    namespace: String,
    /// Output format.
    #[arg(short, long, global = true, value_enum, default_value_t = Output::Text)]
    output: Output,
    #[command(subcommand)]
    cmd: CtlCmd,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Output {
    Text,
    Json,
}

/// Selector flags shared by `list` and `watch`.
#[derive(Debug, Args)]
struct SelectorArgs {
    /// Application.
    #[arg(long)]
    app: Option<String>,
    /// Service (interface) exposed by the instance's revision.
    #[arg(long)]
    service: Option<String>,
    /// Health states, comma-separated (serving,warning,not_serving,draining,unknown).
    #[arg(long)]
    health: Option<String>,
    /// Locality region.
    #[arg(long)]
    region: Option<String>,
    /// Locality zone.
    #[arg(long)]
    zone: Option<String>,
    /// Kubernetes label selector, e.g. `env=prod,version in (v1,v2),!canary`.
    #[arg(short = 'l', long)]
    selector: Option<String>,
}

#[derive(Debug, Subcommand)]
enum CtlCmd {
    /// Register an instance. With --ttl-ms it is ephemeral: ctl keeps its
    /// session alive until interrupted, and it disappears after that.
    Register {
        #[arg(long)]
        app: String,
        #[arg(long)]
        address: String,
        /// Named port, `name=port`; repeatable.
        #[arg(long = "port", required = true)]
        ports: Vec<String>,
        /// Label `key=value`; repeatable.
        #[arg(long = "label")]
        labels: Vec<String>,
        /// Metadata `key=value`; repeatable.
        #[arg(long = "meta")]
        metadata: Vec<String>,
        /// Service exposed, `name[:protocol[:port_name]]`; repeatable.
        #[arg(long = "service")]
        services: Vec<String>,
        #[arg(long)]
        id: Option<String>,
        #[arg(long)]
        weight: Option<u32>,
        /// serving, warning, not_serving, draining.
        #[arg(long)]
        health: Option<String>,
        #[arg(long)]
        region: Option<String>,
        #[arg(long)]
        zone: Option<String>,
        /// Service revision (derived from the services when absent).
        #[arg(long)]
        revision: Option<String>,
        /// Make the instance ephemeral with a session of this TTL (ms).
        #[arg(long)]
        ttl_ms: Option<u64>,
    },
    /// Remove an instance.
    Deregister {
        #[arg(long)]
        app: String,
        #[arg(long)]
        id: String,
    },
    /// List instances matching a selector.
    List {
        #[command(flatten)]
        sel: SelectorArgs,
        /// Wait until this node has applied this revision.
        #[arg(long, default_value_t = 0)]
        min_revision: u64,
        /// Confirm leadership before reading.
        #[arg(long)]
        linearizable: bool,
    },
    /// Show one instance.
    Get {
        #[arg(long)]
        app: String,
        #[arg(long)]
        id: String,
    },
    /// List applications.
    Apps,
    /// Resolve a service (interface) to the applications exposing it.
    Resolve { service: String },
    /// Show the services of one service revision.
    Revision {
        #[arg(long)]
        app: String,
        revision: String,
    },
    /// Stream the matching instances, then every change.
    Watch {
        #[command(flatten)]
        sel: SelectorArgs,
        /// Start after this revision instead of with the current state.
        #[arg(long, default_value_t = 0)]
        from_revision: u64,
    },
    /// Namespaces.
    #[command(subcommand)]
    Namespace(NamespaceCmd),
    /// Cluster status, membership and leadership.
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// Connected xDS clients: node, namespace, variant, subscriptions,
    /// last ACKed version and last NACK per type (like `istioctl proxy-status`).
    Xds {
        /// HTTP address of the node to ask (each node lists its own clients).
        #[arg(long, env = "MESHREG_HTTP", default_value = "http://127.0.0.1:7070")]
        http: String,
    },
    /// Registries this cluster imports (MCP, ZooKeeper, etcd and Nacos
    /// sources): state, priority, last sync, record counts (owned and
    /// shadowed), quarantined and shadowed records with reasons.
    /// Ask the leader.
    Sources {
        /// HTTP address of the node to ask.
        #[arg(long, env = "MESHREG_HTTP", default_value = "http://127.0.0.1:7070")]
        http: String,
    },
}

#[derive(Debug, Subcommand)]
enum ClusterCmd {
    /// Members, leader, term, log indexes and replication lag as the node at --addr sees them.
    Status,
    /// Add a node: as a learner, then as a voter once it has caught up.
    Add {
        /// New node's id.
        #[arg(long)]
        node_id: u64,
        /// Its Raft address.
        #[arg(long)]
        raft_addr: String,
        /// Its gRPC API address.
        #[arg(long)]
        grpc_addr: String,
        /// Its HTTP API address.
        #[arg(long)]
        http_addr: String,
    },
    /// Remove a node from the cluster (any node forwards it to the leader).
    Remove {
        #[arg(long)]
        node_id: u64,
    },
    /// Hand leadership to another voter once it has the whole log; any
    /// node takes it. Prints the new leader.
    TransferLeader {
        /// The voter to lead; without it, the most caught-up other voter.
        #[arg(long)]
        to: Option<u64>,
    },
}

#[derive(Debug, Subcommand)]
enum NamespaceCmd {
    /// List namespaces.
    List,
    /// Create a namespace.
    Create { name: String },
    /// Delete an empty namespace.
    Delete { name: String },
}

fn kv(flag: &str, s: &str) -> anyhow::Result<(String, String)> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| anyhow::anyhow!("--{flag} {s:?}: expected key=value"))
}

fn health_arg(s: &str) -> anyhow::Result<i32> {
    let h: meshreg_registry::model::Health = s
        .parse()
        .map_err(|e: String| anyhow::anyhow!("--health: {e}"))?;
    Ok(meshreg_registry::api::convert::health_out(h))
}

fn selector(s: SelectorArgs) -> anyhow::Result<pb::Selector> {
    let mut health = Vec::new();
    if let Some(h) = &s.health {
        for part in h.split(',').filter(|p| !p.is_empty()) {
            health.push(health_arg(part)?);
        }
    }
    Ok(pb::Selector {
        app: s.app.unwrap_or_default(),
        service: s.service.unwrap_or_default(),
        health,
        locality: Some(pb::Locality {
            region: s.region.unwrap_or_default(),
            zone: s.zone.unwrap_or_default(),
            subzone: String::new(),
        }),
        labels: s.selector.unwrap_or_default(),
        ..Default::default()
    })
}

fn health_name(h: i32) -> &'static str {
    match pb::Health::try_from(h) {
        Ok(pb::Health::Serving) => "SERVING",
        Ok(pb::Health::Warning) => "WARNING",
        Ok(pb::Health::NotServing) => "NOT_SERVING",
        Ok(pb::Health::Draining) => "DRAINING",
        _ => "UNKNOWN",
    }
}

fn sorted<V: Clone>(m: &HashMap<String, V>) -> Vec<(String, V)> {
    let mut v: Vec<(String, V)> = m.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn instance_json(i: &pb::Instance) -> Value {
    let loc = i.locality.clone().unwrap_or_default();
    json!({
        "namespace": i.namespace, "app": i.app, "id": i.id, "address": i.address,
        "ports": i.ports, "labels": i.labels, "metadata": i.metadata, "weight": i.weight,
        "health": health_name(i.health),
        "locality": {"region": loc.region, "zone": loc.zone, "subzone": loc.subzone},
        "revision": i.revision, "session": i.session,
        "create_revision": i.create_revision, "mod_revision": i.mod_revision,
    })
}

fn instance_line(i: &pb::Instance) -> String {
    let ports: Vec<String> = sorted(&i.ports)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let labels: Vec<String> = sorted(&i.labels)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let zone = i
        .locality
        .as_ref()
        .map(|l| l.zone.clone())
        .unwrap_or_default();
    format!(
        "{:<20} {:<24} {:<16} {:<24} {:<11} {:<8} {}",
        i.app,
        i.id,
        i.address,
        ports.join(","),
        health_name(i.health),
        if zone.is_empty() { "-".into() } else { zone },
        labels.join(",")
    )
}

const HEADER: &str = "APP                  ID                       ADDRESS          PORTS                    HEALTH      ZONE     LABELS";

fn short(v: &Value) -> String {
    v.as_str()
        .map(|s| s.chars().take(8).collect())
        .unwrap_or_else(|| "-".into())
}

/// A ctl command that prints what a node's HTTP port returns.
type HttpPrinter = fn(&str, bool) -> anyhow::Result<()>;

fn get_json(http: &str, path: &str) -> anyhow::Result<Value> {
    let url = format!("{}{path}", http.trim_end_matches('/'));
    let body = ureq::get(&url)
        .call()
        .map_err(|e| anyhow::anyhow!("GET {url}: {e}"))?
        .body_mut()
        .read_to_string()?;
    Ok(serde_json::from_str(&body)?)
}

/// `meshreg ctl sources`: GET /v1/sources and print it.
fn sources(http: &str, json_out: bool) -> anyhow::Result<()> {
    let v = get_json(http, "/v1/sources")?;
    if json_out {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "{:<16} {:<9} {:<22} {:<10} {:>8} {:>8} {:>8} {:>8} {:>9} {:>8} {:>11}  LAST ERROR",
        "SOURCE",
        "KIND",
        "ADDRESS",
        "STATE",
        "PRIORITY",
        "RECORDS",
        "OWNED",
        "SHADOWED",
        "UPSERTED",
        "REMOVED",
        "QUARANTINED"
    );
    for s in v["sources"].as_array().into_iter().flatten() {
        println!(
            "{:<16} {:<9} {:<22} {:<10} {:>8} {:>8} {:>8} {:>8} {:>9} {:>8} {:>11}  {}",
            s["name"].as_str().unwrap_or("-"),
            s["kind"].as_str().unwrap_or("-"),
            s["address"].as_str().unwrap_or("-"),
            s["state"].as_str().unwrap_or("-"),
            s["priority"].as_i64().unwrap_or(0),
            s["records"].as_u64().unwrap_or(0),
            s["owned"].as_u64().unwrap_or(0),
            s["shadowed"].as_u64().unwrap_or(0),
            s["upserted"].as_u64().unwrap_or(0),
            s["removed"].as_u64().unwrap_or(0),
            s["quarantined_total"]
                .as_u64()
                .unwrap_or_else(|| s["quarantined"].as_array().map_or(0, |q| q.len() as u64)),
            s["last_error"].as_str().unwrap_or("")
        );
        for (what, list) in [
            ("quarantined", &s["quarantined"]),
            ("shadowed", &s["shadowed_records"]),
        ] {
            for q in list.as_array().into_iter().flatten() {
                println!(
                    "    {what} {}: {}",
                    q[0].as_str().unwrap_or("?"),
                    q[1].as_str().unwrap_or("?")
                );
            }
        }
    }
    Ok(())
}

/// `meshreg ctl xds`: GET /v1/xds/clients and print it.
fn xds_clients(http: &str, json_out: bool) -> anyhow::Result<()> {
    let v = get_json(http, "/v1/xds/clients")?;
    if json_out {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "{:<28} {:<12} {:<6} {:<22} {:<10} {:<10} {:<10} {:<10} LAST NACK",
        "NODE", "NAMESPACE", "XDS", "PEER", "CDS", "EDS", "LDS", "RDS"
    );
    for c in v["clients"].as_array().into_iter().flatten() {
        let t = &c["types"];
        let col = |ty: &str| {
            if t[ty].is_null() {
                "-".to_string()
            } else {
                let acked = short(&t[ty]["acked_version"]);
                let sent = short(&t[ty]["sent_version"]);
                if acked == sent {
                    format!("{acked} ok")
                } else {
                    format!("{acked} …")
                }
            }
        };
        let nack = ["CDS", "EDS", "LDS", "RDS"]
            .iter()
            .find_map(|ty| {
                t[*ty]["last_nack"][1]
                    .as_str()
                    .map(|m| format!("{ty}: {m}"))
            })
            .unwrap_or_default();
        println!(
            "{:<28} {:<12} {:<6} {:<22} {:<10} {:<10} {:<10} {:<10} {}",
            c["node_id"].as_str().unwrap_or("-"),
            c["namespace"].as_str().unwrap_or("-"),
            c["variant"].as_str().unwrap_or("-"),
            c["peer"].as_str().unwrap_or("-"),
            col("CDS"),
            col("EDS"),
            col("LDS"),
            col("RDS"),
            nack
        );
    }
    Ok(())
}

/// Runs one ctl command.
pub async fn run(args: CtlArgs) -> anyhow::Result<()> {
    // Commands served over the HTTP port, with a blocking client.
    let over_http: Option<(String, HttpPrinter)> = match &args.cmd {
        CtlCmd::Xds { http } => Some((http.clone(), xds_clients)),
        CtlCmd::Sources { http } => Some((http.clone(), sources)),
        _ => None,
    };
    if let Some((http, print)) = over_http {
        let json_out = matches!(args.output, Output::Json);
        return tokio::task::spawn_blocking(move || print(&http, json_out)).await?;
    }
    let channel = Channel::from_shared(args.addr.clone())
        .map_err(|e| anyhow::anyhow!("--addr {:?}: {e}", args.addr))?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to {}: {e}", args.addr))?;
    let mut admin = meshreg_proto::cluster::v1::cluster_client::ClusterClient::new(channel.clone());
    let mut c = RegistryClient::new(channel);
    let ns = args.namespace.clone();
    let json_out = matches!(args.output, Output::Json);
    let status = |s: tonic::Status| anyhow::anyhow!("{}: {}", s.code(), s.message());
    match args.cmd {
        CtlCmd::Register {
            app,
            address,
            ports,
            labels,
            metadata,
            services,
            id,
            weight,
            health,
            region,
            zone,
            revision,
            ttl_ms,
        } => {
            let mut port_map = HashMap::new();
            for p in &ports {
                let (k, v) = kv("port", p)?;
                let v: u32 = v
                    .parse()
                    .map_err(|_| anyhow::anyhow!("--port {p:?}: port must be a number"))?;
                port_map.insert(k, v);
            }
            let session = match ttl_ms {
                Some(ttl) => {
                    c.grant_session(pb::GrantSessionRequest { ttl_ms: ttl })
                        .await
                        .map_err(status)?
                        .into_inner()
                        .session_id
                }
                None => 0,
            };
            let svc = services
                .iter()
                .map(|s| {
                    let mut parts = s.splitn(3, ':');
                    pb::ServiceDef {
                        name: parts.next().unwrap_or_default().to_string(),
                        protocol: parts.next().unwrap_or_default().to_string(),
                        port_name: parts.next().unwrap_or_default().to_string(),
                        params: HashMap::new(),
                    }
                })
                .collect();
            let instance = pb::Instance {
                namespace: ns.clone(),
                app,
                id: id.unwrap_or_default(),
                address,
                ports: port_map,
                labels: labels
                    .iter()
                    .map(|l| kv("label", l))
                    .collect::<anyhow::Result<_>>()?,
                metadata: metadata
                    .iter()
                    .map(|l| kv("meta", l))
                    .collect::<anyhow::Result<_>>()?,
                weight: weight.unwrap_or(0),
                health: health.as_deref().map(health_arg).transpose()?.unwrap_or(0),
                locality: Some(pb::Locality {
                    region: region.unwrap_or_default(),
                    zone: zone.unwrap_or_default(),
                    subzone: String::new(),
                }),
                revision: revision.unwrap_or_default(),
                session,
                ..Default::default()
            };
            let resp = c
                .register(pb::RegisterRequest {
                    instances: vec![pb::register_request::Entry {
                        instance: Some(instance),
                        services: svc,
                    }],
                })
                .await
                .map_err(status)?
                .into_inner();
            if json_out {
                println!(
                    "{}",
                    json!({"revision": resp.revision, "ids": resp.ids, "session": session})
                );
            } else {
                println!(
                    "registered {} at revision {}",
                    resp.ids.join(","),
                    resp.revision
                );
            }
            if let Some(ttl) = ttl_ms {
                eprintln!(
                    "session {session}: keeping alive every {} ms; Ctrl-C to stop",
                    ttl / 3
                );
                let (tx, rx) = tokio::sync::mpsc::channel(4);
                let mut replies = c
                    .keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx))
                    .await
                    .map_err(status)?
                    .into_inner();
                let mut tick = tokio::time::interval(Duration::from_millis(ttl / 3));
                loop {
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => {
                            let _ = c.revoke_session(pb::RevokeSessionRequest { session_id: session }).await;
                            eprintln!("session {session} revoked");
                            return Ok(());
                        }
                        _ = tick.tick() => {
                            if tx.send(pb::KeepAliveRequest { session_id: session }).await.is_err() { break; }
                        }
                        r = replies.next() => match r {
                            Some(Ok(_)) => {}
                            Some(Err(s)) => return Err(status(s)),
                            None => anyhow::bail!("keepalive stream closed by the server"),
                        }
                    }
                }
            }
        }
        CtlCmd::Deregister { app, id } => {
            let r = c
                .deregister(pb::DeregisterRequest {
                    keys: vec![pb::InstanceKey {
                        namespace: ns,
                        app,
                        id,
                    }],
                })
                .await
                .map_err(status)?
                .into_inner();
            println!("removed {} at revision {}", r.removed, r.revision);
        }
        CtlCmd::List {
            sel,
            min_revision,
            linearizable,
        } => {
            let r = c
                .list_instances(pb::ListInstancesRequest {
                    namespace: ns,
                    selector: Some(selector(sel)?),
                    read: Some(pb::ReadOptions {
                        min_revision,
                        linearizable,
                    }),
                })
                .await
                .map_err(status)?
                .into_inner();
            if json_out {
                let v: Vec<Value> = r.instances.iter().map(instance_json).collect();
                println!(
                    "{}",
                    serde_json::to_string_pretty(&json!({"revision": r.revision, "instances": v}))?
                );
            } else {
                println!("{HEADER}");
                for i in &r.instances {
                    println!("{}", instance_line(i));
                }
                let n = r.instances.len();
                println!(
                    "({n} instance{}, revision {})",
                    if n == 1 { "" } else { "s" },
                    r.revision
                );
            }
        }
        CtlCmd::Get { app, id } => {
            let r = c
                .get_instance(pb::GetInstanceRequest {
                    key: Some(pb::InstanceKey {
                        namespace: ns,
                        app,
                        id,
                    }),
                    read: None,
                })
                .await
                .map_err(status)?
                .into_inner();
            let i = r.instance.unwrap_or_default();
            println!("{}", serde_json::to_string_pretty(&instance_json(&i))?);
        }
        CtlCmd::Apps => {
            let r = c
                .list_applications(pb::ListApplicationsRequest {
                    namespace: ns,
                    read: None,
                })
                .await
                .map_err(status)?
                .into_inner();
            if json_out {
                let v: Vec<Value> = r
                    .applications
                    .iter()
                    .map(|a| json!({"name": a.name, "instance_count": a.instance_count, "revisions": a.revisions, "services": a.services}))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!("{:<24} {:>9}  SERVICES", "APP", "INSTANCES");
                for a in &r.applications {
                    println!(
                        "{:<24} {:>9}  {}",
                        a.name,
                        a.instance_count,
                        a.services.join(",")
                    );
                }
            }
        }
        CtlCmd::Resolve { service } => {
            let r = c
                .resolve_service(pb::ResolveServiceRequest {
                    namespace: ns,
                    service,
                    read: None,
                })
                .await
                .map_err(status)?
                .into_inner();
            if json_out {
                println!("{}", json!({"apps": r.apps, "revision": r.revision}));
            } else {
                for a in &r.apps {
                    println!("{a}");
                }
            }
        }
        CtlCmd::Revision { app, revision } => {
            let r = c
                .get_service_revision(pb::GetServiceRevisionRequest {
                    namespace: ns,
                    app,
                    revision,
                    read: None,
                })
                .await
                .map_err(status)?
                .into_inner();
            for s in r.service_revision.unwrap_or_default().services {
                println!("{} protocol={} port={}", s.name, s.protocol, s.port_name);
            }
        }
        CtlCmd::Watch { sel, from_revision } => {
            let mut stream = c
                .watch(pb::WatchRequest {
                    namespace: ns,
                    selector: Some(selector(sel)?),
                    from_revision,
                })
                .await
                .map_err(status)?
                .into_inner();
            while let Some(msg) = stream.next().await {
                let m = msg.map_err(status)?;
                for e in &m.events {
                    let kind = if e.kind == pb::watch_event::Kind::Delete as i32 {
                        "DELETE"
                    } else {
                        "PUT"
                    };
                    let i = e.instance.clone().unwrap_or_default();
                    if json_out {
                        println!(
                            "{}",
                            json!({"revision": m.revision, "resync": m.resync, "kind": kind, "instance": instance_json(&i)})
                        );
                    } else {
                        println!("{:>6} {:<6} {}", m.revision, kind, instance_line(&i));
                    }
                }
                if m.events.is_empty() && m.resync && !json_out {
                    println!("{:>6} (no matching instances)", m.revision);
                }
            }
        }
        CtlCmd::Cluster(cmd) => {
            use meshreg_proto::cluster::v1 as cpb;
            match cmd {
                ClusterCmd::Status => {
                    let s = admin
                        .status(cpb::StatusRequest {})
                        .await
                        .map_err(status)?
                        .into_inner();
                    if json_out {
                        let members: Vec<Value> = s
                            .members
                            .iter()
                            .map(|m| json!({"node_id": m.node_id, "raft_addr": m.raft_addr, "grpc_addr": m.grpc_addr, "http_addr": m.http_addr, "voter": m.voter, "matched_index": m.matched_index, "lag": m.lag}))
                            .collect();
                        println!(
                            "{}",
                            serde_json::to_string_pretty(
                                &json!({"node_id": s.node_id, "state": s.state, "term": s.term, "leader_id": s.leader_id, "last_log_index": s.last_log_index, "commit_index": s.commit_index, "applied_index": s.applied_index, "snapshot_index": s.snapshot_index, "revision": s.revision, "members": members})
                            )?
                        );
                    } else {
                        println!(
                            "node {} is {} in term {}; leader {}; last log {}, applied {}, snapshot {}, revision {}",
                            s.node_id, s.state, s.term, if s.leader_id == 0 { "unknown".to_string() } else { s.leader_id.to_string() },
                            s.last_log_index, s.applied_index, s.snapshot_index, s.revision
                        );
                        println!(
                            "{:>4}  {:<8} {:<22} {:<22} {:<22} {:>8} {:>6}",
                            "ID", "ROLE", "RAFT", "GRPC", "HTTP", "MATCHED", "LAG"
                        );
                        for m in &s.members {
                            let role = if m.node_id == s.leader_id {
                                "leader"
                            } else if m.voter {
                                "voter"
                            } else {
                                "learner"
                            };
                            println!(
                                "{:>4}  {:<8} {:<22} {:<22} {:<22} {:>8} {:>6}",
                                m.node_id,
                                role,
                                m.raft_addr,
                                m.grpc_addr,
                                m.http_addr,
                                m.matched_index,
                                m.lag
                            );
                        }
                    }
                }
                ClusterCmd::Add {
                    node_id,
                    raft_addr,
                    grpc_addr,
                    http_addr,
                } => {
                    let r = admin
                        .add_node(cpb::AddNodeRequest {
                            node_id,
                            raft_addr,
                            grpc_addr,
                            http_addr,
                        })
                        .await
                        .map_err(status)?
                        .into_inner();
                    println!("node {node_id} added; voters: {:?}", r.voters);
                }
                ClusterCmd::Remove { node_id } => {
                    let r = admin
                        .remove_node(cpb::RemoveNodeRequest { node_id })
                        .await
                        .map_err(|s| {
                            let hint = s
                                .metadata()
                                .get("x-meshreg-leader-addr")
                                .and_then(|v| v.to_str().ok())
                                .map(|a| format!(" (send it to the leader: --addr http://{a})"))
                                .unwrap_or_default();
                            anyhow::anyhow!("{}: {}{hint}", s.code(), s.message())
                        })?
                        .into_inner();
                    println!("node {node_id} removed; voters: {:?}", r.voters);
                }
                ClusterCmd::TransferLeader { to } => {
                    let r = admin
                        .transfer_leader(cpb::TransferLeaderRequest {
                            to: to.unwrap_or(0),
                        })
                        .await
                        .map_err(status)?
                        .into_inner();
                    if json_out {
                        println!("{}", json!({"leader_id": r.leader_id, "term": r.term}));
                    } else {
                        println!("node {} is the leader in term {}", r.leader_id, r.term);
                    }
                }
            }
        }
        CtlCmd::Xds { .. } | CtlCmd::Sources { .. } => unreachable!("handled before connecting"),
        CtlCmd::Namespace(cmd) => match cmd {
            NamespaceCmd::List => {
                let r = c
                    .list_namespaces(pb::ListNamespacesRequest { read: None })
                    .await
                    .map_err(status)?
                    .into_inner();
                for n in r.namespaces {
                    println!("{}", n.name);
                }
            }
            NamespaceCmd::Create { name } => {
                let r = c
                    .create_namespace(pb::CreateNamespaceRequest {
                        namespace: Some(pb::Namespace {
                            name: name.clone(),
                            labels: HashMap::new(),
                        }),
                    })
                    .await
                    .map_err(status)?
                    .into_inner();
                println!("created namespace {name} at revision {}", r.revision);
            }
            NamespaceCmd::Delete { name } => {
                let r = c
                    .delete_namespace(pb::DeleteNamespaceRequest { name: name.clone() })
                    .await
                    .map_err(status)?
                    .into_inner();
                println!("deleted namespace {name} at revision {}", r.revision);
            }
        },
    }
    Ok(())
}
