//! An echo gRPC server (`meshreg.example.Echo`) that registers itself with
//! meshreg as application `echo`, in whatever mode the environment says
//! (see `docs/sdk.md`, "Modes"): in mesh mode its registration carries its
//! sidecar's inbound port, so callers' sidecars reach it through its own.
//!
//! ```sh
//! cargo run -p meshreg-sdk --example echo_server -- \
//!     --registry http://127.0.0.1:7071 --port 50051 --name e1
//! ```
//!
//! Flags: `--registry` (default `http://127.0.0.1:7071`), `--address`
//! (default `127.0.0.1`), `--port` (default 50051), `--name` (default
//! `e1`), `--mode-file`. SIGHUP decides the mode again; Ctrl-C
//! deregisters and exits.

#[path = "common/args.rs"]
mod args;
#[path = "common/echo.rs"]
mod echo;

use meshreg_sdk::{Client, ServiceSpec};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    args::init_logs();
    let address = args::flag_or("address", "127.0.0.1");
    let port: u16 = args::flag_or("port", "50051").parse()?;
    let name = args::flag_or("name", "e1");
    let mut b = Client::builder()
        .registry(args::flag_or("registry", "http://127.0.0.1:7071"))
        .app("echo")
        .address(address.clone())
        .port("grpc", port)
        .service(
            ServiceSpec::new(echo::SERVICE)
                .protocol("grpc")
                .port_name("grpc"),
        )
        .label("name", name.clone());
    if let Some(f) = args::flag("mode-file") {
        b = b.mode_file(f);
    }
    let client = b.build()?;
    let addr: std::net::SocketAddr = format!("{address}:{port}").parse()?;
    let server = tonic::transport::Server::builder()
        .add_service(echo::EchoServer::new(name.clone()))
        .serve_with_shutdown(addr, async {
            let _ = tokio::signal::ctrl_c().await;
        });
    let server = tokio::spawn(server);
    // Registered once it serves; the mode (and why) is logged.
    let reg = client.register().await?;
    let _hup = client.reload_mode_on_sighup()?;
    let d = client.mode().await?;
    println!(
        "echo server {name} on {addr}: registered as {:?} in {} mode ({})",
        reg.ids, d.mode, d.reason
    );
    server.await??;
    client.shutdown().await;
    println!("deregistered");
    Ok(())
}
