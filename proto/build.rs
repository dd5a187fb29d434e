//! Compiles the protos with a vendored `protoc`, so a fresh machine needs no system protoc.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY of set_var: build scripts are single-threaded.
    std::env::set_var("PROTOC", protoc);
    let protos = [
        "proto/meshreg/registry/v1/registry.proto",
        "proto/meshreg/raft/v1/raft.proto",
        "proto/meshreg/cluster/v1/cluster.proto",
    ];
    // Istio's MCP envelope and ServiceEntry, as meshreg serves them over
    // MCP-over-xDS. Messages only (no services). `google.protobuf` maps to
    // envoy-types' copy, so `Any` and `Timestamp` are the very types the ADS
    // server puts in a DiscoveryResponse; maps are BTreeMaps so that encoding
    // is deterministic and a hash of the bytes is a stable version.
    let istio = [
        "proto/istio/mcp/v1alpha1/resource.proto",
        "proto/istio/networking/v1alpha3/service_entry.proto",
        "proto/istio/networking/v1alpha3/workload_entry.proto",
    ];
    // The client side of etcd's v3 API that the etcd adapter uses
    // (`KV.Range`, `Watch.Watch`): meshreg's own wire-compatible subset of
    // etcd's api/, laid out under etcd's import paths. Client only.
    let etcd = [
        "proto/etcd/api/mvccpb/kv.proto",
        "proto/etcd/api/etcdserverpb/rpc.proto",
    ];
    for p in protos.iter().chain(&istio).chain(&etcd) {
        println!("cargo:rerun-if-changed={p}");
    }
    tonic_prost_build::configure().compile_protos(&protos, &["proto"])?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(false)
        // Turns off prost's default `.google.protobuf` → `prost_types`
        // mapping, which would clash with the extern_path below; nothing
        // under `google/` is generated because the whole package is extern.
        .compile_well_known_types(true)
        .extern_path(".google.protobuf", "::envoy_types::pb::google::protobuf")
        .btree_map(".")
        .compile_protos(&istio, &["proto"])?;
    tonic_prost_build::configure()
        .build_server(false)
        .compile_protos(&etcd, &["proto"])?;
    Ok(())
}
