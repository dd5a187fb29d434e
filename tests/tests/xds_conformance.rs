//! xDS protocol conformance against the real binary with a raw ADS client:
//! ACK, NACK (no resend until the data changes), wildcard and named
//! subscriptions, unsubscribe, removal, nonexistent names, reconnect with
//! `initial_resource_versions`, CDS → EDS ordering, for SotW and delta; and
//! bad input (unknown types, request floods) ending only the offending stream;
//! a client that stops reading holding back only itself, and catching up
//! with the latest state; a change waking only the streams whose resources
//! it may touch;
//! and the sidecar's own resources (`sidecar|…`, `inbound|…`) on one delta
//! stream as `meshreg-proxy` asks for them.

use std::collections::HashMap;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::Node as EnvoyNode;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::{filter, Listener};
use envoy_types::pb::envoy::config::route::v3::{route, RouteConfiguration};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::RouteSpecifier, HttpConnectionManager,
};
use envoy_types::pb::envoy::service::discovery::v3 as ds;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use meshreg_tests::Server;
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::Streaming;

const LDS: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
const CDS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
const EDS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
const RDS: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
const PAY: &str = "outbound|9090||pay.default";

fn node() -> Option<EnvoyNode> {
    Some(node_in("conformance", "test", "default"))
}

/// A node whose metadata names namespace `ns`, as Istio sets it.
fn node_in(id: &str, cluster: &str, ns: &str) -> EnvoyNode {
    EnvoyNode {
        id: id.into(),
        cluster: cluster.into(),
        metadata: Some(Struct {
            fields: HashMap::from([(
                "NAMESPACE".to_string(),
                Value {
                    kind: Some(Kind::StringValue(ns.into())),
                },
            )]),
        }),
        ..Default::default()
    }
}

/// Registers an instance of `app` on port 9090; returns the revision.
fn register(s: &Server, app: &str, ip: &str) -> u64 {
    let body = format!(
        r#"{{"app":"{app}","address":"{ip}","ports":{{"grpc":9090}},"labels":{{"v":"1"}}}}"#
    );
    let r = s.post("/v1/namespaces/default/instances", &body);
    assert_eq!(r.status, 200, "{}", r.text);
    r.json()["revision"].as_u64().expect("a revision")
}

fn endpoints(any: &envoy_types::pb::google::protobuf::Any) -> usize {
    let cla = ClusterLoadAssignment::decode(any.value.as_slice()).unwrap();
    cla.endpoints.iter().map(|l| l.lb_endpoints.len()).sum()
}

struct Sotw {
    tx: mpsc::Sender<ds::DiscoveryRequest>,
    rx: Streaming<ds::DiscoveryResponse>,
}

impl Sotw {
    async fn open(s: &Server) -> Sotw {
        let mut c = AggregatedDiscoveryServiceClient::connect(s.grpc.clone())
            .await
            .unwrap();
        let (tx, rx) = mpsc::channel(16);
        let rx = c
            .stream_aggregated_resources(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        Sotw { tx, rx }
    }

    async fn send(&self, ty: &str, names: &[&str], version: &str, nonce: &str, nack: bool) {
        self.tx
            .send(ds::DiscoveryRequest {
                node: node(),
                version_info: version.into(),
                resource_names: names.iter().map(|n| n.to_string()).collect(),
                type_url: ty.into(),
                response_nonce: nonce.into(),
                error_detail: nack.then(|| RpcStatus {
                    code: 3,
                    message: "rejected by test".into(),
                    details: vec![],
                }),
                ..Default::default()
            })
            .await
            .unwrap();
    }

    async fn next(
        &mut self,
        within: Duration,
    ) -> Option<Result<ds::DiscoveryResponse, tonic::Status>> {
        tokio::time::timeout(within, self.rx.next())
            .await
            .ok()
            .flatten()
    }

    async fn expect(&mut self) -> ds::DiscoveryResponse {
        self.next(Duration::from_secs(10))
            .await
            .expect("a response")
            .expect("not an error")
    }

    async fn ack(&self, r: &ds::DiscoveryResponse, names: &[&str]) {
        self.send(&r.type_url, names, &r.version_info, &r.nonce, false)
            .await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sotw_ack_nack_wildcard_ordering_and_removal() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &[]).unwrap();
    register(&s, "pay", "10.0.0.1");
    register(&s, "pay", "10.0.0.2");
    let mut a = Sotw::open(&s).await;

    // Named LDS, wildcard CDS, named EDS; each answered, each ACKed.
    a.send(LDS, &["pay.default:9090"], "", "", false).await;
    let l = a.expect().await;
    assert_eq!(l.type_url, LDS);
    assert_eq!(l.resources.len(), 1);
    a.ack(&l, &["pay.default:9090"]).await;
    a.send(CDS, &[], "", "", false).await;
    let c = a.expect().await;
    assert_eq!(
        c.resources.len(),
        1,
        "wildcard CDS: every cluster of the namespace"
    );
    a.ack(&c, &[]).await;
    a.send(EDS, &[PAY], "", "", false).await;
    let e = a.expect().await;
    assert_eq!(endpoints(&e.resources[0]), 2);
    a.ack(&e, &[PAY]).await;
    assert!(
        a.next(Duration::from_millis(500)).await.is_none(),
        "nothing more after the ACKs"
    );

    // A third instance: only EDS changes.
    register(&s, "pay", "10.0.0.3");
    let e2 = a.expect().await;
    assert_eq!(e2.type_url, EDS);
    assert_eq!(endpoints(&e2.resources[0]), 3);
    assert_ne!(e2.version_info, e.version_info);
    assert_ne!(e2.nonce, e.nonce);

    // NACK it: not resent while the data does not change.
    a.send(EDS, &[PAY], &e.version_info, &e2.nonce, true).await;
    s.post("/v1/namespaces", r#"{"name":"elsewhere"}"#); // a change that does not touch pay
    assert!(
        a.next(Duration::from_millis(800)).await.is_none(),
        "a NACKed version was resent"
    );
    let st = s.get("/v1/xds/clients").json();
    assert_eq!(
        st["clients"][0]["types"]["EDS"]["last_nack"][1],
        "rejected by test"
    );
    register(&s, "pay", "10.0.0.4");
    let e3 = a.expect().await;
    assert_eq!(endpoints(&e3.resources[0]), 4);
    a.ack(&e3, &[PAY]).await;

    // A new app adds a cluster: CDS (complete) first, then EDS again.
    register(&s, "bill", "10.0.1.1");
    let c2 = a.expect().await;
    assert_eq!(c2.type_url, CDS);
    assert_eq!(
        c2.resources.len(),
        2,
        "a SotW CDS response is the whole set"
    );
    let e4 = a.expect().await;
    assert_eq!(e4.type_url, EDS, "EDS follows a CDS update");
    let lds = a.next(Duration::from_millis(300)).await;
    assert!(lds.is_none() || lds.unwrap().unwrap().type_url == LDS);

    // Removal: the last pay instances go; EDS has no endpoints.
    for ip in ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"] {
        s.delete(&format!("/v1/namespaces/default/instances/pay/{ip}:9090"));
    }
    let mut saw_cds_without_pay = false;
    while let Some(Ok(r)) = a.next(Duration::from_secs(2)).await {
        if r.type_url == CDS && r.resources.len() == 1 {
            saw_cds_without_pay = true;
        }
    }
    assert!(saw_cds_without_pay, "the removed cluster left the CDS set");
}

type DeltaTx = mpsc::Sender<ds::DeltaDiscoveryRequest>;
type AdsClient = AggregatedDiscoveryServiceClient<tonic::transport::Channel>;

/// A new delta stream on `c`: its request sender and response stream.
async fn open_delta(c: &mut AdsClient) -> (DeltaTx, Streaming<ds::DeltaDiscoveryResponse>) {
    let (tx, rx) = mpsc::channel(16);
    let stream = c
        .delta_aggregated_resources(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    (tx, stream)
}

/// ACKs the EDS response with `nonce`.
async fn ack_eds(tx: &DeltaTx, nonce: String) {
    tx.send(ds::DeltaDiscoveryRequest {
        type_url: EDS.into(),
        response_nonce: nonce,
        ..Default::default()
    })
    .await
    .unwrap();
}

async fn next(
    st: &mut Streaming<ds::DeltaDiscoveryResponse>,
    ms: u64,
) -> Option<ds::DeltaDiscoveryResponse> {
    tokio::time::timeout(Duration::from_millis(ms), st.next())
        .await
        .ok()
        .flatten()
        .map(|r| r.expect("not an error"))
}

#[tokio::test(flavor = "multi_thread")]
async fn delta_subscriptions_removals_and_reconnect_with_initial_versions() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &[]).unwrap();
    register(&s, "pay", "10.0.0.1");
    let mut c = AggregatedDiscoveryServiceClient::connect(s.grpc.clone())
        .await
        .unwrap();
    let (tx, mut stream) = open_delta(&mut c).await;
    let req = |sub: &[&str], unsub: &[&str], nonce: &str| ds::DeltaDiscoveryRequest {
        node: node(),
        type_url: EDS.into(),
        resource_names_subscribe: sub.iter().map(|n| n.to_string()).collect(),
        resource_names_unsubscribe: unsub.iter().map(|n| n.to_string()).collect(),
        response_nonce: nonce.into(),
        ..Default::default()
    };
    tx.send(req(&[PAY, "outbound|1||ghost.default"], &[], ""))
        .await
        .unwrap();
    let r = next(&mut stream, 10_000).await.expect("initial response");
    assert_eq!(r.resources.len(), 1);
    assert_eq!(r.resources[0].name, PAY);
    assert_eq!(
        r.removed_resources,
        vec!["outbound|1||ghost.default"],
        "nonexistent names are removed"
    );
    let pay_version = r.resources[0].version.clone();
    tx.send(req(&[], &[], &r.nonce)).await.unwrap();
    assert!(next(&mut stream, 500).await.is_none());

    // A change is pushed; a change to another app is not.
    register(&s, "pay", "10.0.0.2");
    let r = next(&mut stream, 10_000).await.expect("push");
    assert_eq!(endpoints(r.resources[0].resource.as_ref().unwrap()), 2);
    let v2 = r.resources[0].version.clone();
    tx.send(req(&[], &[], &r.nonce)).await.unwrap();
    register(&s, "other", "10.0.9.9");
    assert!(
        next(&mut stream, 800).await.is_none(),
        "an unrelated change was pushed"
    );

    // Reconnect to the same server with what the client has: nothing is
    // resent for the current version; a stale version is replaced.
    drop(tx);
    let (tx2, mut s2) = open_delta(&mut c).await;
    let mut first = req(&[PAY], &[], "");
    first.initial_resource_versions = HashMap::from([(PAY.to_string(), v2.clone())]);
    tx2.send(first).await.unwrap();
    assert!(
        next(&mut s2, 800).await.is_none(),
        "a current resource was resent on reconnect"
    );
    drop(tx2);
    let (tx3, mut s3) = open_delta(&mut c).await;
    let mut first = req(&[PAY], &[], "");
    first.initial_resource_versions = HashMap::from([(PAY.to_string(), pay_version)]);
    tx3.send(first).await.unwrap();
    let r = next(&mut s3, 10_000)
        .await
        .expect("the stale version is replaced");
    assert_eq!(r.resources[0].version, v2);

    // Removal of a subscribed resource, then unsubscribe: no more pushes.
    for ip in ["10.0.0.1", "10.0.0.2"] {
        s.delete(&format!("/v1/namespaces/default/instances/pay/{ip}:9090"));
    }
    let r = loop {
        let r = next(&mut s3, 10_000).await.expect("removal");
        if !r.removed_resources.is_empty() {
            break r;
        }
    };
    assert_eq!(r.removed_resources, vec![PAY]);
    tx3.send(req(&[], &[PAY], &r.nonce)).await.unwrap();
    register(&s, "pay", "10.0.0.5");
    assert!(
        next(&mut s3, 800).await.is_none(),
        "pushed after unsubscribe"
    );
}

/// A delta stream on its own connection, subscribed to `PAY`, with the
/// first response read and ACKed. `window` caps what the connection
/// buffers unread (bytes; HTTP/2 stream and connection window).
async fn delta_pay_stream(
    s: &Server,
    window: u32,
) -> (DeltaTx, Streaming<ds::DeltaDiscoveryResponse>) {
    let channel = tonic::transport::Endpoint::from_shared(s.grpc.clone())
        .unwrap()
        .initial_stream_window_size(window)
        .initial_connection_window_size(window)
        .connect()
        .await
        .unwrap();
    let mut c = AggregatedDiscoveryServiceClient::new(channel);
    delta_eds_stream(&mut c, PAY).await
}

/// Opens a delta stream subscribed to the EDS resource `name`; returns it
/// after ACKing its first response (the resource, or its removal when it
/// does not exist).
async fn delta_eds_stream(
    c: &mut AdsClient,
    name: &str,
) -> (DeltaTx, Streaming<ds::DeltaDiscoveryResponse>) {
    let (tx, mut stream) = open_delta(c).await;
    tx.send(ds::DeltaDiscoveryRequest {
        node: node(),
        type_url: EDS.into(),
        resource_names_subscribe: vec![name.into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let r = next(&mut stream, 10_000).await.expect("initial response");
    ack_eds(&tx, r.nonce).await;
    (tx, stream)
}

fn pay_endpoints(r: &ds::DeltaDiscoveryResponse) -> Option<usize> {
    let res = r.resources.iter().find(|r| r.name == PAY)?;
    Some(endpoints(res.resource.as_ref()?))
}

fn streams_listed(s: &Server) -> usize {
    s.get("/v1/xds/clients").json()["clients"]
        .as_array()
        .map_or(0, Vec::len)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stuck_client_holds_back_only_itself_and_then_gets_the_latest_state() {
    let dir = tempfile::tempdir().unwrap();
    // A push per change, not one per debounced batch.
    let config = dir.path().join("meshreg.toml");
    std::fs::write(
        &config,
        "[xds]\ndebounce_quiet_ms = 1\ndebounce_max_ms = 2\n",
    )
    .unwrap();
    let s = Server::start(
        &dir.path().join("data"),
        &["--config", config.to_str().unwrap()],
    )
    .unwrap();
    register(&s, "pay", "10.0.0.1");
    // The stuck client stops reading once 64 KiB are buffered unread.
    let (_stuck_tx, mut stuck) = delta_pay_stream(&s, 65_535).await;
    let (good_tx, mut good) = delta_pay_stream(&s, 4 << 20).await;
    assert_eq!(streams_listed(&s), 2);

    // Every change adds an endpoint with 1 KiB of labels: the EDS response
    // grows by about 1 KiB a change, 40 changes about 800 KiB in all.
    let big = (0..16)
        .map(|k| format!(r#""k{k}":"{}""#, "x".repeat(60)))
        .collect::<Vec<_>>()
        .join(",");
    let changes = 40;
    for i in 0..changes {
        let body = format!(
            r#"{{"app":"pay","address":"10.0.1.{i}","ports":{{"grpc":9090}},"labels":{{{big}}}}}"#
        );
        assert_eq!(
            s.post("/v1/namespaces/default/instances", &body).status,
            200
        );
    }
    let want = changes + 1;
    // The client that reads keeps up (its ACKs are sent, the stuck one's
    // unread responses are no concern of its).
    let (mut seen, mut pushes) = (0, 0);
    while seen < want {
        let r = next(&mut good, 10_000)
            .await
            .expect("the reading client is not held back");
        seen = pay_endpoints(&r).unwrap_or(seen);
        pushes += 1;
        ack_eds(&good_tx, r.nonce).await;
    }

    // The stuck client reads at last: it ends with the latest state, and
    // what piled up while it did not read was coalesced, not queued.
    let mut responses = 0;
    let mut last = 0;
    while let Some(r) = next(&mut stuck, 3_000).await {
        responses += 1;
        last = pay_endpoints(&r).unwrap_or(last);
    }
    assert_eq!(last, want, "the latest state reached the stuck client");
    eprintln!("pushes to the reading client: {pushes}; to the stuck one: {responses}");
    assert!(
        pushes > changes / 2,
        "only {pushes} pushes for {changes} changes: too few to fill a window"
    );
    assert!(
        responses < pushes,
        "{responses} responses to the stuck client, {pushes} to the reading one: nothing was coalesced"
    );

    // A client that goes away leaves the client list.
    drop(stuck);
    drop(_stuck_tx);
    let mut listed = streams_listed(&s);
    for _ in 0..50 {
        if listed == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        listed = streams_listed(&s);
    }
    assert_eq!(listed, 1, "a closed stream is still listed");
}

/// The value of a counter or gauge on `/metrics`.
fn metric(s: &Server, name: &str) -> f64 {
    let text = s.get("/metrics").text;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// Waits until `/metrics` shows `name` at `want` or more; returns it.
async fn metric_reaches(s: &Server, name: &str, want: f64) -> f64 {
    let mut v = metric(s, name);
    for _ in 0..100 {
        if v >= want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        v = metric(s, name);
    }
    v
}

#[tokio::test(flavor = "multi_thread")]
async fn a_change_wakes_only_the_streams_it_concerns() {
    const WAKES: &str = "meshreg_xds_stream_wakes_total";
    const BILL: &str = "outbound|9090||bill.default";
    const GHOST: &str = "outbound|9090||ghost.default";
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &[]).unwrap();
    register(&s, "pay", "10.0.0.1");
    let rev = register(&s, "bill", "10.0.1.1");
    // The registrations are published before the streams open.
    let published = metric_reaches(&s, "meshreg_xds_revision", rev as f64).await;
    assert!(published >= rev as f64, "revision {rev} never published");
    let mut c = AggregatedDiscoveryServiceClient::connect(s.grpc.clone())
        .await
        .unwrap();
    let (pay_tx, mut pay) = delta_eds_stream(&mut c, PAY).await;
    let (bill_tx, mut bill) = delta_eds_stream(&mut c, BILL).await;
    // A name that does not resolve yet: any change in the namespace may
    // bring it.
    let (_ghost_tx, mut ghost) = delta_eds_stream(&mut c, GHOST).await;
    let w0 = metric(&s, WAKES);

    // A change to pay wakes the pay stream and the one waiting for a
    // name to appear, not the bill stream.
    register(&s, "pay", "10.0.0.2");
    let r = next(&mut pay, 10_000).await.expect("pay is pushed");
    assert_eq!(pay_endpoints(&r), Some(2));
    ack_eds(&pay_tx, r.nonce).await;
    assert!(metric_reaches(&s, WAKES, w0 + 2.0).await >= w0 + 2.0);
    assert!(next(&mut bill, 500).await.is_none(), "bill got a push");
    assert!(next(&mut ghost, 10).await.is_none(), "ghost got a push");
    assert_eq!(
        metric(&s, WAKES),
        w0 + 2.0,
        "a stream not watching pay was woken"
    );

    // A name subscribed later is watched too: the pay stream adds bill.
    pay_tx
        .send(ds::DeltaDiscoveryRequest {
            type_url: EDS.into(),
            resource_names_subscribe: vec![BILL.into()],
            ..Default::default()
        })
        .await
        .unwrap();
    let r = next(&mut pay, 10_000)
        .await
        .expect("bill on the pay stream");
    assert_eq!(r.resources[0].name, BILL);
    ack_eds(&pay_tx, r.nonce).await;
    register(&s, "bill", "10.0.1.2");
    for (tx, st) in [(&bill_tx, &mut bill), (&pay_tx, &mut pay)] {
        let r = next(st, 10_000).await.expect("bill is pushed");
        assert_eq!(r.resources[0].name, BILL);
        let cla = ClusterLoadAssignment::decode(
            r.resources[0].resource.as_ref().unwrap().value.as_slice(),
        )
        .unwrap();
        assert_eq!(
            cla.endpoints
                .iter()
                .map(|l| l.lb_endpoints.len())
                .sum::<usize>(),
            2
        );
        ack_eds(tx, r.nonce).await;
    }
    assert!(metric_reaches(&s, WAKES, w0 + 5.0).await >= w0 + 5.0);

    // The awaited name appears: only then does its stream get a push.
    register(&s, "ghost", "10.0.2.1");
    let r = next(&mut ghost, 10_000).await.expect("ghost is pushed");
    assert_eq!(r.resources[0].name, GHOST);
    assert!(metric_reaches(&s, WAKES, w0 + 6.0).await >= w0 + 6.0);
    assert!(next(&mut pay, 500).await.is_none(), "pay got a push");
    assert!(next(&mut bill, 10).await.is_none(), "bill got a push");
    assert_eq!(
        metric(&s, WAKES),
        w0 + 6.0,
        "streams not watching ghost were woken"
    );
}

/// Sends each `Vec<u8>` as one gRPC message as it is (a client sending
/// garbage); decodes delta responses.
#[derive(Debug, Clone, Copy)]
struct RawCodec;

#[derive(Debug)]
struct RawEncoder;

impl tonic::codec::Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: Vec<u8>,
        buf: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(buf, &item);
        Ok(())
    }
}

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = ds::DeltaDiscoveryResponse;
    type Encoder = RawEncoder;
    type Decoder = tonic_prost::ProstDecoder<ds::DeltaDiscoveryResponse>;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        tonic_prost::ProstDecoder::default()
    }
}

/// Sends `request` (any bytes, framed as one gRPC message) on a new
/// DeltaAggregatedResources stream; the status the stream ends with.
async fn raw_delta_stream_error(
    channel: &tonic::transport::Channel,
    request: Vec<u8>,
) -> tonic::Status {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.unwrap();
    let mut st = grpc
        .streaming(
            tonic::Request::new(tokio_stream::iter([request])),
            tonic::codegen::http::uri::PathAndQuery::from_static(
                "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources",
            ),
            RawCodec,
        )
        .await
        .unwrap()
        .into_inner();
    tokio::time::timeout(Duration::from_secs(5), st.message())
        .await
        .expect("an answer")
        .unwrap_err()
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_end_only_their_own_stream() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &[]).unwrap();
    register(&s, "pay", "10.0.0.1");
    let mut good = Sotw::open(&s).await;
    good.send(EDS, &[PAY], "", "", false).await;
    let first = good.expect().await;

    // Unknown type URL: INVALID_ARGUMENT on that stream.
    let mut bad = Sotw::open(&s).await;
    bad.send("type.googleapis.com/not.a.Type", &[], "", "", false)
        .await;
    let err = bad
        .next(Duration::from_secs(5))
        .await
        .expect("an answer")
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("not.a.Type"), "{}", err.message());

    // A request that is not a DeltaDiscoveryRequest: that stream ends with
    // INTERNAL naming the decode error (gRPC's code for a parse error).
    let channel = tonic::transport::Endpoint::from_shared(s.grpc.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let err = raw_delta_stream_error(&channel, vec![0xff_u8, 0xff, 0xff, 0xff]).await;
    assert_eq!(err.code(), tonic::Code::Internal);
    assert!(err.message().contains("decode"), "{}", err.message());

    // A request over the 4 MiB limit: RESOURCE_EXHAUSTED naming the
    // limit, as soon as its length prefix arrives.
    let err = raw_delta_stream_error(&channel, vec![0x0a_u8; 4 * 1024 * 1024 + 1]).await;
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("limit"), "{}", err.message());

    // A stream that says its requests are compressed: UNIMPLEMENTED
    // naming the encoding (meshreg negotiates none).
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.unwrap();
    let mut req = tonic::Request::new(tokio_stream::iter([vec![0x0a_u8, 0x00]]));
    req.metadata_mut()
        .insert("grpc-encoding", "gzip".parse().unwrap());
    let err = grpc
        .streaming(
            req,
            tonic::codegen::http::uri::PathAndQuery::from_static(
                "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources",
            ),
            RawCodec,
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unimplemented);
    assert!(err.message().contains("gzip"), "{}", err.message());

    // A method the ADS service does not have: UNIMPLEMENTED.
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let err = grpc
        .unary::<_, ds::DiscoveryResponse, _>(
            tonic::Request::new(ds::DiscoveryRequest::default()),
            tonic::codegen::http::uri::PathAndQuery::from_static(
                "/envoy.service.discovery.v3.AggregatedDiscoveryService/FetchEverything",
            ),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unimplemented);
    assert!(
        err.message().contains("FetchEverything"),
        "{}",
        err.message()
    );

    // A request flood: RESOURCE_EXHAUSTED on that stream.
    let mut flood = Sotw::open(&s).await;
    let mut limited = None;
    for i in 0..2_000 {
        if flood
            .tx
            .send(ds::DiscoveryRequest {
                node: node(),
                type_url: EDS.into(),
                resource_names: vec![format!("n{i}")],
                ..Default::default()
            })
            .await
            .is_err()
        {
            break;
        }
    }
    while let Some(r) = flood.next(Duration::from_secs(5)).await {
        if let Err(e) = r {
            limited = Some(e);
            break;
        }
    }
    assert_eq!(
        limited.expect("the flood was limited").code(),
        tonic::Code::ResourceExhausted
    );

    // Hundreds of streams opened and dropped.
    for _ in 0..300 {
        let _ = Sotw::open(&s).await;
    }
    // The good stream still gets pushes.
    good.ack(&first, &[PAY]).await;
    register(&s, "pay", "10.0.0.2");
    let r = good.expect().await;
    assert_eq!(endpoints(&r.resources[0]), 2);
    // Unknown type, undecodable request, oversized request, flood: four
    // streams rejected (the compressed one is refused before it is a
    // stream; the 300 dropped ones are not rejected).
    let metrics = s.get("/metrics").text;
    assert!(
        metrics.contains("meshreg_xds_rejected_total 4"),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("rejected"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// MCP-over-xDS as istiod consumes it: ServiceEntries wrapped in
/// `istio.mcp.v1alpha1.Resource`, across namespaces, pushed on change;
/// other Istio collections answered empty; MeshConfig ignored; a first
/// request carrying a nonce from another server answered.
#[tokio::test(flavor = "multi_thread")]
async fn mcp_service_entries_as_istiod_asks_for_them() {
    use meshreg_proto::istio::mcp::v1alpha1::Resource as McpResource;
    use meshreg_proto::istio::networking::v1alpha3::ServiceEntry;
    const SE: &str = "networking.istio.io/v1alpha3/ServiceEntry";

    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &[]).unwrap();
    register(&s, "pay", "10.0.0.1");
    assert_eq!(s.post("/v1/namespaces", r#"{"name":"team-b"}"#).status, 201);
    let r = s.post(
        "/v1/namespaces/team-b/instances",
        r#"{"app":"Order_Service","address":"10.0.2.1","ports":{"http":8080,"grpc":9090},"weight":250}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text);

    let Sotw { tx, rx: mut st } = Sotw::open(&s).await;
    let istiod = |ty: &str, nonce: &str| ds::DiscoveryRequest {
        node: Some(node_in("istiod-1", "", "istio-system")),
        type_url: ty.into(),
        response_nonce: nonce.into(),
        ..Default::default()
    };
    let decode = |r: &ds::DiscoveryResponse| -> Vec<(String, ServiceEntry)> {
        r.resources
            .iter()
            .map(|a| {
                assert_eq!(
                    a.type_url,
                    "type.googleapis.com/istio.mcp.v1alpha1.Resource"
                );
                let res = McpResource::decode(a.value.as_slice()).unwrap();
                let body = res.body.unwrap();
                (
                    res.metadata.unwrap().name,
                    ServiceEntry::decode(body.value.as_slice()).unwrap(),
                )
            })
            .collect()
    };

    // First request with a nonce from a previous server: answered.
    tx.send(istiod(SE, "nonce-from-another-server"))
        .await
        .unwrap();
    let r = next_sotw(&mut st).await.expect("ServiceEntries");
    assert_eq!(r.type_url, SE);
    let entries = decode(&r);
    let names: Vec<&str> = entries.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names.contains(&"default/pay"), "{names:?}");
    let (_, order) = entries
        .iter()
        .find(|(n, _)| n.starts_with("team-b/"))
        .unwrap();
    assert_eq!(order.ports.len(), 2, "every port, not only the first");
    assert_eq!(order.endpoints[0].weight, 250, "weights are not truncated");
    assert!(
        order.hosts[0]
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-'),
        "{:?}",
        order.hosts
    );

    // Other collections: one empty answer each; MeshConfig: none.
    tx.send(istiod("networking.istio.io/v1alpha3/VirtualService", ""))
        .await
        .unwrap();
    let e = next_sotw(&mut st).await.expect("empty answer");
    assert_eq!(e.type_url, "networking.istio.io/v1alpha3/VirtualService");
    assert!(e.resources.is_empty());
    tx.send(istiod("core/v1alpha1/MeshConfig", ""))
        .await
        .unwrap();
    let mut ack = istiod(SE, &r.nonce);
    ack.version_info = r.version_info.clone();
    tx.send(ack).await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(600), st.next())
            .await
            .is_err(),
        "MeshConfig and the ACK get no response"
    );

    // A new application is pushed as a new complete set.
    register(&s, "bill", "10.0.1.1");
    let r2 = next_sotw(&mut st).await.expect("push");
    assert_eq!(r2.type_url, SE);
    assert_eq!(decode(&r2).len(), 3);
}

/// istiod's ServiceEntry stream opened on an empty registry, where no
/// resource exists to say what it depends on, still gets the first
/// application of any namespace.
#[tokio::test(flavor = "multi_thread")]
async fn istiod_on_an_empty_registry_gets_the_first_service_entry() {
    const SE: &str = "networking.istio.io/v1alpha3/ServiceEntry";
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &[]).unwrap();
    let Sotw { tx, rx: mut st } = Sotw::open(&s).await;
    let mut req = ds::DiscoveryRequest {
        node: Some(node_in("istiod-1", "", "istio-system")),
        type_url: SE.into(),
        ..Default::default()
    };
    tx.send(req.clone()).await.unwrap();
    let r = next_sotw(&mut st).await.expect("the empty set");
    assert!(r.resources.is_empty());
    req.version_info = r.version_info;
    req.response_nonce = r.nonce;
    tx.send(req).await.unwrap();

    register(&s, "pay", "10.0.0.1");
    let r = next_sotw(&mut st).await.expect("pay's ServiceEntry");
    assert_eq!(r.resources.len(), 1);
}

async fn next_sotw(st: &mut Streaming<ds::DiscoveryResponse>) -> Option<ds::DiscoveryResponse> {
    tokio::time::timeout(Duration::from_secs(5), st.next())
        .await
        .ok()
        .flatten()
        .map(|r| r.expect("not an error"))
}

/// The sidecar's configuration as `meshreg-proxy` asks for it: one delta
/// stream, node metadata naming its app, every name explicit. Listeners,
/// routes, inbound and outbound clusters and the endpoints' sidecar port
/// arrive; a new application in the namespace re-sends the outbound route
/// and nothing else.
#[tokio::test(flavor = "multi_thread")]
async fn sidecar_configuration_on_one_delta_stream() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &[]).unwrap();
    let r = s.post(
        "/v1/namespaces/default/instances",
        r#"{"app":"pay","address":"10.0.0.1","ports":{"grpc":9090},"metadata":{"meshreg.io/sidecar-port":"15006"}}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text);
    let mut c = AggregatedDiscoveryServiceClient::connect(s.grpc.clone())
        .await
        .unwrap();
    let (tx, mut stream) = open_delta(&mut c).await;
    let sidecar = Some(EnvoyNode {
        id: "sidecar~10.0.0.1~pay-1.default".into(),
        metadata: Some(Struct {
            fields: [
                ("meshreg.io/namespace", "default"),
                ("meshreg.io/app", "pay"),
                ("meshreg.io/proxy", "sidecar"),
            ]
            .into_iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    Value {
                        kind: Some(Kind::StringValue(v.into())),
                    },
                )
            })
            .collect(),
        }),
        ..Default::default()
    });
    let req = |ty: &str, sub: &[&str], nonce: &str| ds::DeltaDiscoveryRequest {
        node: sidecar.clone(),
        type_url: ty.into(),
        resource_names_subscribe: sub.iter().map(|n| n.to_string()).collect(),
        response_nonce: nonce.into(),
        ..Default::default()
    };
    // Subscribes, checks the names that came back, ACKs; returns the
    // resources by name.
    let mut ask = async |ty: &str, names: &[&str]| {
        tx.send(req(ty, names, "")).await.unwrap();
        let r = next(&mut stream, 10_000).await.expect("a response");
        assert_eq!(r.type_url, ty);
        assert!(r.removed_resources.is_empty(), "{:?}", r.removed_resources);
        let mut got: Vec<&str> = r.resources.iter().map(|x| x.name.as_str()).collect();
        got.sort();
        let mut want = names.to_vec();
        want.sort();
        assert_eq!(got, want);
        tx.send(req(ty, &[], &r.nonce)).await.unwrap();
        r.resources
            .into_iter()
            .map(|x| (x.name, x.resource.unwrap().value))
            .collect::<HashMap<_, _>>()
    };

    let hcm = |l: &Listener| {
        let Some(filter::ConfigType::TypedConfig(a)) = &l.filter_chains[0].filters[0].config_type
        else {
            panic!("no typed_config")
        };
        let m = HttpConnectionManager::decode(a.value.as_slice()).unwrap();
        match m.route_specifier {
            Some(RouteSpecifier::Rds(rds)) => rds.route_config_name,
            other => panic!("{other:?}"),
        }
    };
    let ls = ask(
        LDS,
        &["sidecar|outbound|15001", "sidecar|inbound|pay|15006"],
    )
    .await;
    let out = Listener::decode(ls["sidecar|outbound|15001"].as_slice()).unwrap();
    assert_eq!(hcm(&out), "sidecar|outbound|default");
    assert_eq!(
        out.listener_filters[0].name,
        "envoy.filters.listener.http_inspector"
    );
    let inb = Listener::decode(ls["sidecar|inbound|pay|15006"].as_slice()).unwrap();
    assert_eq!(hcm(&inb), "sidecar|inbound|pay");

    let cluster_of = |rc: &RouteConfiguration, vh: usize, rt: usize| match &rc.virtual_hosts[vh]
        .routes[rt]
        .action
    {
        Some(route::Action::Route(a)) => match &a.cluster_specifier {
            Some(
                envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier::Cluster(
                    c,
                ),
            ) => c.clone(),
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    };
    let rs = ask(RDS, &["sidecar|outbound|default", "sidecar|inbound|pay"]).await;
    let out = RouteConfiguration::decode(rs["sidecar|outbound|default"].as_slice()).unwrap();
    assert_eq!(out.virtual_hosts.len(), 1);
    assert_eq!(
        out.virtual_hosts[0].domains,
        ["pay.default:9090", "pay:9090", "pay.default", "pay"]
    );
    assert_eq!(cluster_of(&out, 0, 0), PAY);
    let inb = RouteConfiguration::decode(rs["sidecar|inbound|pay"].as_slice()).unwrap();
    assert_eq!(inb.virtual_hosts[0].routes.len(), 2, "port 9090, default");
    assert_eq!(
        inb.virtual_hosts[0].routes[0]
            .r#match
            .as_ref()
            .unwrap()
            .headers[0]
            .name,
        "x-meshreg-port"
    );
    assert_eq!(cluster_of(&inb, 0, 0), "inbound|9090||pay.default");

    let cs = ask(CDS, &[PAY, "inbound|9090||pay.default"]).await;
    let outbound = Cluster::decode(cs[PAY].as_slice()).unwrap();
    assert!(outbound.outlier_detection.is_some() && outbound.circuit_breakers.is_some());
    let inbound = Cluster::decode(cs["inbound|9090||pay.default"].as_slice()).unwrap();
    assert!(inbound.eds_cluster_config.is_none());
    assert_eq!(
        inbound.load_assignment.unwrap().endpoints[0]
            .lb_endpoints
            .len(),
        1
    );

    let es = ask(EDS, &[PAY]).await;
    let cla = ClusterLoadAssignment::decode(es[PAY].as_slice()).unwrap();
    let md = cla.endpoints[0].lb_endpoints[0].metadata.as_ref().unwrap();
    assert_eq!(
        md.filter_metadata["meshreg"].fields["sidecar_port"].kind,
        Some(Kind::NumberValue(15006.0))
    );
    assert!(
        next(&mut stream, 500).await.is_none(),
        "nothing after the ACKs"
    );

    // A new application: its virtual host is added to the outbound route;
    // the listeners, the inbound route and pay's clusters do not change.
    register(&s, "bill", "10.0.1.1");
    let r = next(&mut stream, 10_000).await.expect("the outbound route");
    assert_eq!(r.type_url, RDS);
    assert_eq!(r.resources.len(), 1);
    assert_eq!(r.resources[0].name, "sidecar|outbound|default");
    let out =
        RouteConfiguration::decode(r.resources[0].resource.as_ref().unwrap().value.as_slice())
            .unwrap();
    assert_eq!(out.virtual_hosts.len(), 2);
    assert_eq!(out.virtual_hosts[0].name, "bill.default:9090");
    tx.send(req(RDS, &[], &r.nonce)).await.unwrap();
    assert!(
        next(&mut stream, 800).await.is_none(),
        "only the route changed"
    );
}
