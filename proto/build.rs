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
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    tonic_prost_build::configure().compile_protos(&protos, &["proto"])?;
    Ok(())
}
