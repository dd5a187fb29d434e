//! The `meshreg-proxy` command line as a user meets it: bad flags and a bad
//! bootstrap fail fast with a message naming the field.
//!
//! Having integration tests here also makes `cargo test --workspace` build
//! the `meshreg-proxy` binary that the mesh tests in `tests/` run.

use std::process::Command;

fn proxy(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_meshreg-proxy"))
        .args(args)
        .output()
        .expect("run meshreg-proxy");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn help_names_the_bootstrap_flags() {
    let (ok, text) = proxy(&["--help"]);
    assert!(ok, "{text}");
    for flag in [
        "--bootstrap",
        "--app",
        "--xds",
        "--admin-port",
        "--outbound-port",
        "--inbound-port",
    ] {
        assert!(text.contains(flag), "--help lacks {flag}: {text}");
    }
}

#[test]
fn a_missing_app_or_bad_bootstrap_is_a_clear_error() {
    let (ok, text) = proxy(&["--admin-port", "1"]);
    assert!(!ok);
    assert!(text.contains("app: required"), "{text}");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("proxy.toml");
    std::fs::write(&file, "app = \"pay\"\noutbound_prot = 15001\n").unwrap();
    let (ok, text) = proxy(&["--bootstrap", file.to_str().unwrap()]);
    assert!(!ok);
    assert!(text.contains("outbound_prot"), "{text}");

    let (ok, text) = proxy(&["--app", "pay", "--bind-ip", "localhost"]);
    assert!(!ok);
    assert!(text.contains("bind_ip"), "{text}");
}
