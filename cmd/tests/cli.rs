//! The `meshreg` and `meshreg-bridge` command lines as a user meets them:
//! help, bad flags and bad config files fail fast with a message naming the
//! problem.
//!
//! Having integration tests here also makes `cargo test --workspace` build
//! the binaries that the multi-process tests in `tests/` run.

use std::process::Command;

fn meshreg(args: &[&str]) -> (bool, String) {
    run(env!("CARGO_BIN_EXE_meshreg"), args)
}

fn bridge(args: &[&str]) -> (bool, String) {
    run(env!("CARGO_BIN_EXE_meshreg-bridge"), args)
}

fn run(bin: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(bin)
        .args(args)
        .output()
        .expect("run the binary");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn help_lists_the_commands() {
    let (ok, text) = meshreg(&["--help"]);
    assert!(ok);
    assert!(text.contains("server") && text.contains("ctl"), "{text}");
    let (ok, text) = meshreg(&["ctl", "--help"]);
    assert!(ok);
    for cmd in ["register", "list", "watch", "cluster", "xds"] {
        assert!(text.contains(cmd), "ctl --help lacks {cmd}: {text}");
    }
}

#[test]
fn bad_config_files_name_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, text) = meshreg(&["server", "--config", "/nonexistent/meshreg.toml"]);
    assert!(!ok);
    assert!(
        text.contains("cannot read config file /nonexistent/meshreg.toml"),
        "{text}"
    );

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "node_idd = 3\n").unwrap();
    let (ok, text) = meshreg(&["server", "--config", bad.to_str().unwrap()]);
    assert!(!ok);
    assert!(text.contains("node_idd"), "{text}");

    let bad = dir.path().join("xds.toml");
    std::fs::write(&bad, "[xds]\ndebounce_quiet = 5\n").unwrap();
    let (ok, text) = meshreg(&["server", "--config", bad.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        text.contains("[xds]") && text.contains("debounce_quiet"),
        "{text}"
    );

    let bad = dir.path().join("raft.toml");
    std::fs::write(&bad, "[raft]\nelection_timeout_min_ms = 5000\n").unwrap();
    let (ok, text) = meshreg(&["server", "--config", bad.to_str().unwrap()]);
    assert!(!ok);
    assert!(text.contains("raft.election_timeout_min_ms"), "{text}");
}

#[test]
fn bad_flags_and_unreachable_servers_fail_clearly() {
    let (ok, text) = meshreg(&["server", "--http-addr", "not-an-address"]);
    assert!(!ok);
    assert!(text.contains("--http-addr"), "{text}");
    let (ok, text) = meshreg(&["ctl", "--addr", "http://127.0.0.1:1", "list"]);
    assert!(!ok);
    assert!(
        text.contains("cannot connect to http://127.0.0.1:1"),
        "{text}"
    );
}

#[test]
fn the_bridge_rejects_what_it_cannot_serve() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, text) = bridge(&["--help"]);
    assert!(ok);
    for flag in [
        "--config",
        "--grpc-addr",
        "--http-addr",
        "--data-dir",
        "7171",
        "7170",
    ] {
        assert!(text.contains(flag), "--help lacks {flag}: {text}");
    }
    let (ok, text) = bridge(&[]);
    assert!(!ok);
    assert!(text.contains("--config"), "{text}");

    let cases = [
        ("", "no [[sources]]"),
        (
            "node_id = 2\n[[sources]]\nname = \"zk\"\nkind = \"zookeeper\"\naddress = \"127.0.0.1:2181\"\n",
            "unknown key \"node_id\"",
        ),
        (
            "[[sources]]\nname = \"up\"\naddress = \"127.0.0.1:7071\"\nroot = \"/dubbo\"\n",
            "`root` does not apply",
        ),
    ];
    for (i, (toml, message)) in cases.into_iter().enumerate() {
        let cfg = dir.path().join(format!("{i}.toml"));
        std::fs::write(&cfg, toml).unwrap();
        let (ok, text) = bridge(&["--config", cfg.to_str().unwrap()]);
        assert!(!ok, "{toml}");
        assert!(text.contains(message), "{toml}: {text}");
    }
}
