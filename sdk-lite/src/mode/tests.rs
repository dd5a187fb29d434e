use super::*;

fn ev() -> Evidence {
    Evidence {
        configured: Mode::Auto,
        mode_file: None,
        env: None,
        bootstrap: PathBuf::from("/etc/meshreg/proxy.toml"),
        bootstrap_exists: false,
        admin: SidecarConfig::default().admin,
        admin_ready: false,
    }
}

#[test]
fn decides_in_order_code_file_env_bootstrap_admin() {
    // Nothing at all: direct, saying what was looked at.
    let (m, r) = decide(&ev()).unwrap();
    assert_eq!(m, Mode::Direct);
    assert_eq!(
        r.to_string(),
        "no sidecar: no bootstrap file at /etc/meshreg/proxy.toml and no ready admin port at 127.0.0.1:15000"
    );
    // Each source alone.
    let admin = Evidence {
        admin_ready: true,
        ..ev()
    };
    assert_eq!(
        decide(&admin).unwrap(),
        (Mode::Mesh, Reason::AdminReady(admin.admin))
    );
    let file = Evidence {
        bootstrap_exists: true,
        ..ev()
    };
    assert_eq!(
        decide(&file).unwrap(),
        (
            Mode::Mesh,
            Reason::BootstrapFile("/etc/meshreg/proxy.toml".into())
        )
    );
    // The environment beats the sidecar's presence, both ways.
    let env_direct = Evidence {
        env: Some("direct".into()),
        bootstrap_exists: true,
        admin_ready: true,
        ..ev()
    };
    assert_eq!(decide(&env_direct).unwrap(), (Mode::Direct, Reason::Env));
    let env_mesh = Evidence {
        env: Some(" MESH\n".into()),
        ..ev()
    };
    assert_eq!(decide(&env_mesh).unwrap(), (Mode::Mesh, Reason::Env));
    // `auto` or empty says nothing: on to the next source.
    for v in ["auto", "", "  "] {
        let e = Evidence {
            env: Some(v.into()),
            bootstrap_exists: true,
            ..ev()
        };
        assert_eq!(decide(&e).unwrap().0, Mode::Mesh, "{v:?}");
    }
    // The mode file beats the environment; a missing one says nothing.
    let f = PathBuf::from("/run/app/mode");
    let file_mesh = Evidence {
        mode_file: Some((f.clone(), Some("mesh\n".into()))),
        env: Some("direct".into()),
        ..ev()
    };
    assert_eq!(
        decide(&file_mesh).unwrap(),
        (Mode::Mesh, Reason::ModeFile(f.clone()))
    );
    let missing = Evidence {
        mode_file: Some((f.clone(), None)),
        env: Some("mesh".into()),
        ..ev()
    };
    assert_eq!(decide(&missing).unwrap(), (Mode::Mesh, Reason::Env));
    // Code beats everything.
    let code = Evidence {
        configured: Mode::Direct,
        mode_file: Some((f, Some("mesh".into()))),
        env: Some("mesh".into()),
        bootstrap_exists: true,
        admin_ready: true,
        ..ev()
    };
    assert_eq!(decide(&code).unwrap(), (Mode::Direct, Reason::Configured));
}

#[test]
fn a_wrong_value_is_an_error_naming_its_source() {
    let e = Evidence {
        env: Some("sidecar".into()),
        bootstrap_exists: true,
        ..ev()
    };
    let err = decide(&e).unwrap_err();
    assert!(
        err.starts_with("MESHREG_MODE: \"sidecar\" is not a mode"),
        "{err}"
    );
    let e = Evidence {
        mode_file: Some(("/m".into(), Some("on".into()))),
        ..ev()
    };
    assert!(decide(&e).unwrap_err().starts_with("mode file /m:"));
}

#[test]
fn reads_the_proxy_bootstrap_file() {
    let sc = SidecarConfig::from_bootstrap(
        "app = \"pay\"\nxds = [\"10.0.0.1:7071\"]\noutbound_port = 25001\ninbound_port = 25006\nadmin_port = 25000\nbind_ip = \"0.0.0.0\"\n[locality]\nzone = \"a\"\n",
    )
    .unwrap();
    assert_eq!(sc.outbound, "127.0.0.1:25001".parse().unwrap());
    assert_eq!(sc.inbound_port, 25006);
    assert_eq!(sc.admin, "127.0.0.1:25000".parse().unwrap());
    let sc = SidecarConfig::from_bootstrap("app = \"pay\"\nbind_ip = \"10.1.1.1\"\n").unwrap();
    assert_eq!(sc.outbound, "10.1.1.1:15001".parse().unwrap());
    assert_eq!(sc.admin, SidecarConfig::default().admin);
    assert_eq!(
        SidecarConfig::from_bootstrap("app = \"pay\"\n").unwrap(),
        SidecarConfig::default()
    );
    let err = SidecarConfig::from_bootstrap("bind_ip = \"x\"\n").unwrap_err();
    assert!(err.starts_with("bind_ip:"), "{err}");
    assert!(SidecarConfig::from_bootstrap("inbound_port = 0\n")
        .unwrap_err()
        .starts_with("inbound_port:"));
    assert!(SidecarConfig::from_bootstrap("outbound_port = \"x\"\n").is_err());
}

#[test]
fn parses_status_lines() {
    assert_eq!(status_of(b"HTTP/1.1 200 OK\r\n"), Some(200));
    assert_eq!(
        status_of(b"HTTP/1.1 503 Service Unavailable\r\n\r\n"),
        Some(503)
    );
    assert_eq!(status_of(b"SSH-2.0-OpenSSH\r\n"), None);
    assert_eq!(status_of(b""), None);
}

#[tokio::test]
async fn probes_the_admin_port() {
    // A listener answering 200, then one answering 503, then nothing.
    for (answer, ok) in [
        (
            &b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nLIVE"[..],
            true,
        ),
        (&b"HTTP/1.1 503 Service Unavailable\r\n\r\n"[..], false),
    ] {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = [0u8; 512];
            let n = s.read(&mut buf).await.unwrap();
            assert!(buf[..n].starts_with(b"GET /ready HTTP/1.1\r\n"));
            s.write_all(answer).await.unwrap();
        });
        let r = probe_ready(addr, Duration::from_secs(2)).await;
        assert_eq!(r.is_ok(), ok, "{r:?}");
        server.await.unwrap();
    }
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = l.local_addr().unwrap();
    drop(l);
    assert!(probe_ready(dead, Duration::from_secs(2)).await.is_err());
}
