//! `--flag value` command-line parsing for the examples (no dependency).

#![allow(dead_code)] // each example uses some of it

/// The value of `--name`, if given.
pub fn flag(name: &str) -> Option<String> {
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == format!("--{name}") {
            return args.next();
        }
        if let Some(v) = a.strip_prefix(&format!("--{name}=")) {
            return Some(v.to_string());
        }
    }
    None
}

/// The value of `--name`, or `default`.
pub fn flag_or(name: &str, default: &str) -> String {
    flag(name).unwrap_or_else(|| default.to_string())
}

/// Logs to stderr, `RUST_LOG` or `info`.
pub fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}
