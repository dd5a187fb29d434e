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
        "--tcp-outbound",
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

#[test]
fn a_bad_tcp_outbound_is_a_clear_error() {
    for (value, want) in [
        ("13306", "expected <port>=<target>"),
        ("0=db.default:3306", "tcp_outbound: port: must be 1..=65535"),
        (
            "99999=db.default:3306",
            "tcp_outbound: port: \"99999\" is not a port number",
        ),
        ("13306=", "tcp_outbound: target: required"),
        (
            "13306=db|default",
            "tcp_outbound: target: \"db|default\" contains '|'",
        ),
    ] {
        let (ok, text) = proxy(&["--app", "pay", "--tcp-outbound", value]);
        assert!(!ok, "{value}: {text}");
        assert!(text.contains("--tcp-outbound"), "{value}: {text}");
        assert!(text.contains(want), "{value}: {text}");
    }
    // The same port twice, or a port another listener has.
    let (ok, text) = proxy(&[
        "--app",
        "pay",
        "--tcp-outbound",
        "13306=db.default:3306",
        "--tcp-outbound",
        "13306=cache.default:6379",
    ]);
    assert!(!ok);
    assert!(
        text.contains("tcp_outbound[1].port: 13306 is already the port of tcp_outbound[0]"),
        "{text}"
    );
    let (ok, text) = proxy(&[
        "--app",
        "pay",
        "--admin-port",
        "13306",
        "--tcp-outbound",
        "13306=db.default:3306",
    ]);
    assert!(!ok);
    assert!(
        text.contains("tcp_outbound[0].port: 13306 is already the port of admin_port"),
        "{text}"
    );

    // In the bootstrap file.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("proxy.toml");
    for (toml, want) in [
        ("[[tcp_outbound]]\nport = 13306\n", "target"),
        (
            "[[tcp_outbound]]\nport = 0\ntarget = \"db:3306\"\n",
            "tcp_outbound[0].port: must be 1..=65535",
        ),
        (
            "[[tcp_outbound]]\nport = 13306\ntraget = \"db:3306\"\n",
            "traget",
        ),
        (
            "[[tcp_outbound]]\nport = 13306\ntarget = \"d b\"\n",
            "tcp_outbound[0].target",
        ),
    ] {
        std::fs::write(&file, format!("app = \"pay\"\n{toml}")).unwrap();
        let (ok, text) = proxy(&["--bootstrap", file.to_str().unwrap()]);
        assert!(!ok, "{toml}: {text}");
        assert!(text.contains(want), "{toml}: {text}");
    }
}
