//! Calls the echo server (`echo_server.rs`) through meshreg by name, with a
//! tonic channel made in one line, `client.grpc_channel("meshreg://echo:50051")`.
//! The same binary runs in direct mode (the SDK discovers and balances
//! the echo servers) and in mesh mode (calls go to the local sidecar):
//!
//! ```sh
//! MESHREG_MODE=direct cargo run -p meshreg-sdk --example echo_client
//! MESHREG_MODE=mesh   cargo run -p meshreg-sdk --example echo_client   # beside a meshreg-proxy
//! ```
//!
//! Flags: `--registry` (default `http://127.0.0.1:7071`), `--target`
//! (default `meshreg://echo:50051`), `--count` (calls, default 5; 0 runs
//! until Ctrl-C), `--interval-ms` (default 500), `--mode-file`. SIGHUP
//! decides the mode again (write `mesh` or `direct` to the mode file
//! first), switching a running client.

#[path = "common/args.rs"]
mod args;
#[path = "common/echo.rs"]
mod echo;

use std::time::Duration;

use meshreg_sdk::Client;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    args::init_logs();
    let target = args::flag_or("target", "meshreg://echo:50051");
    let count: u64 = args::flag_or("count", "5").parse()?;
    let interval = Duration::from_millis(args::flag_or("interval-ms", "500").parse()?);
    let mut b = Client::builder().registry(args::flag_or("registry", "http://127.0.0.1:7071"));
    if let Some(f) = args::flag("mode-file") {
        b = b.mode_file(f);
    }
    let client = b.build()?;
    let _hup = client.reload_mode_on_sighup()?;

    // The one line: a tonic channel for a meshreg target, in either mode.
    let channel = client.grpc_channel(&target).await?;
    let mut echo = echo::EchoClient::new(channel);

    let mut n = 0u64;
    while count == 0 || n < count {
        n += 1;
        let mode = client.mode().await?.mode;
        match tokio::time::timeout(Duration::from_secs(5), echo.say(&format!("hello {n}"))).await {
            Ok(Ok(r)) => println!("{mode}: {} from {}", r.message, r.from),
            Ok(Err(status)) => println!("{mode}: error: {status}"),
            Err(_) => println!("{mode}: no answer within 5 s"),
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    client.shutdown().await;
    Ok(())
}
