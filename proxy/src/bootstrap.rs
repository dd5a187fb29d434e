//! The proxy's bootstrap: who it is and where meshreg is. Everything else
//! (listeners, routes, clusters, endpoints) comes over xDS.
//!
//! A small TOML file (`--bootstrap`, see docs/proxy.md) and/or flags; a
//! flag overrides the file. The same file is what the SDK's `auto` mode
//! looks for to decide that a sidecar is present.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// Default admin port (Envoy's and Istio's).
pub const ADMIN_PORT: u16 = 15000;
/// Default outbound listener port.
pub const OUTBOUND_PORT: u16 = 15001;
/// Default inbound listener port.
pub const INBOUND_PORT: u16 = 15006;

/// Where the proxy runs, as Envoy's `core.v3.Locality`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Locality {
    /// Region.
    pub region: String,
    /// Zone.
    pub zone: String,
    /// Sub-zone.
    pub subzone: String,
}

/// Longest `target` of a [`TcpOutbound`], in bytes: an application name
/// (253), `.`, a namespace (63) and `:<port>`.
pub const MAX_TCP_TARGET_LEN: usize = 323;

/// One outbound TCP port (Istio's Sidecar egress listener, without
/// iptables): the application connects to `127.0.0.1:<port>` and its
/// traffic goes to `target`. HTTP/1.x and h2c on that port are routed as
/// HTTP (retries, timeouts), anything else is proxied as bytes.
///
/// In the bootstrap file `[[tcp_outbound]]` with `port` and `target`; on
/// the command line `--tcp-outbound <port>=<target>` (see
/// [`TcpOutbound::parse`]). The sidecar subscribes to the Listener
/// `sidecar|outbound-tcp|<port>|<target>` (docs/xds.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpOutbound {
    /// The local port (1..=65535) the listener binds on `127.0.0.1` (or
    /// `bind_ip`).
    pub port: u16,
    /// Where it goes: `<app>.<namespace>:<port>` or `<app>:<port>` (port
    /// `<port>` of an application of the sidecar's namespace), or a service
    /// (interface) name (each instance on the port its service definition
    /// names). 1..=323 bytes of visible ASCII other than `|`.
    pub target: String,
}

impl TcpOutbound {
    /// Parses the `--tcp-outbound` form `<port>=<target>`, e.g.
    /// `13306=db.default:3306`, and checks it as [`Bootstrap::finish`] does.
    ///
    /// # Errors
    /// No `=`, a port that is not 1..=65535, or an invalid target; the
    /// message names the part.
    pub fn parse(s: &str) -> Result<TcpOutbound, String> {
        let (port, target) = s.split_once('=').ok_or_else(|| {
            format!("{s:?}: expected <port>=<target>, e.g. 13306=db.default:3306")
        })?;
        let port: u16 = port
            .trim()
            .parse()
            .map_err(|_| format!("port: {port:?} is not a port number (1..=65535)"))?;
        let t = TcpOutbound {
            port,
            target: target.trim().to_string(),
        };
        t.check()
            .map_err(|(field, msg)| format!("{field}: {msg}"))?;
        Ok(t)
    }

    /// Checks the fields: (field, message) for the first bad one.
    fn check(&self) -> Result<(), (&'static str, String)> {
        if self.port == 0 {
            return Err(("port", "must be 1..=65535".into()));
        }
        let t = &self.target;
        if t.is_empty() {
            return Err((
                "target",
                "required: <app>.<namespace>:<port>, <app>:<port> or a service name".into(),
            ));
        }
        if t.len() > MAX_TCP_TARGET_LEN {
            return Err((
                "target",
                format!("{} bytes; at most {MAX_TCP_TARGET_LEN} allowed", t.len()),
            ));
        }
        if let Some(c) = t.chars().find(|c| !c.is_ascii_graphic() || *c == '|') {
            return Err((
                "target",
                format!("{t:?} contains {c:?}; allowed is visible ASCII other than '|'"),
            ));
        }
        Ok(())
    }
}

/// The bootstrap file (TOML). Every field has a default except `app`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Bootstrap {
    /// xDS node id; defaults to `sidecar~<app>~<pid>`.
    pub node_id: String,
    /// Namespace of the application.
    pub namespace: String,
    /// The application this sidecar runs beside (required).
    pub app: String,
    /// meshreg xDS addresses (`host:port`, port 7071), any node of the cluster;
    /// the proxy fails over between them.
    pub xds: Vec<String>,
    /// Admin port (config dump, stats, readiness, drain).
    pub admin_port: u16,
    /// Outbound listener port: the application sends its calls here.
    pub outbound_port: u16,
    /// Inbound listener port: other sidecars send here, forwarded to the application.
    pub inbound_port: u16,
    /// When set, every listener binds this IP instead of the one in its
    /// Listener resource (e.g. `127.0.0.1` on a test machine).
    pub bind_ip: Option<String>,
    /// IP the admin port binds.
    pub admin_ip: String,
    /// Log one line per request (Envoy's default access log format).
    pub access_log: bool,
    /// How long a drain waits for in-flight requests, in milliseconds.
    pub drain_timeout_ms: u64,
    /// Where the proxy runs; endpoints in the same zone (then region) are preferred.
    pub locality: Locality,
    /// Outbound TCP ports, one per destination (`[[tcp_outbound]]`); none
    /// by default.
    pub tcp_outbound: Vec<TcpOutbound>,
}

impl Default for Bootstrap {
    fn default() -> Self {
        Bootstrap {
            node_id: String::new(),
            namespace: "default".into(),
            app: String::new(),
            xds: vec!["127.0.0.1:7071".into()],
            admin_port: ADMIN_PORT,
            outbound_port: OUTBOUND_PORT,
            inbound_port: INBOUND_PORT,
            bind_ip: None,
            admin_ip: "127.0.0.1".into(),
            access_log: false,
            drain_timeout_ms: 5_000,
            locality: Locality::default(),
            tcp_outbound: Vec::new(),
        }
    }
}

impl Bootstrap {
    /// Reads a bootstrap file.
    ///
    /// # Errors
    /// The file cannot be read, or is not valid TOML for this shape (the
    /// message names the field).
    pub fn load(path: &Path) -> anyhow::Result<Bootstrap> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("reading bootstrap {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("bootstrap {}: {e}", path.display()))
    }

    /// Checks the fields and fills in the node id.
    ///
    /// # Errors
    /// A missing `app`, no xDS address, a zero port, or a bad
    /// `tcp_outbound` entry: a bad port or target, or a port another
    /// listener of this sidecar already has (naming the field, e.g.
    /// `tcp_outbound[1].port`).
    pub fn finish(mut self) -> anyhow::Result<Bootstrap> {
        if self.app.is_empty() {
            anyhow::bail!("app: required (the application this sidecar runs beside)");
        }
        if self.namespace.is_empty() {
            anyhow::bail!("namespace: must not be empty");
        }
        if self.xds.is_empty() {
            anyhow::bail!("xds: at least one meshreg address (host:port) is required");
        }
        for (field, port) in [
            ("admin_port", self.admin_port),
            ("outbound_port", self.outbound_port),
            ("inbound_port", self.inbound_port),
        ] {
            if port == 0 {
                anyhow::bail!("{field}: must be 1..=65535");
            }
        }
        let mut taken: Vec<(String, u16)> = vec![
            ("admin_port".into(), self.admin_port),
            ("outbound_port".into(), self.outbound_port),
            ("inbound_port".into(), self.inbound_port),
        ];
        for (i, t) in self.tcp_outbound.iter().enumerate() {
            t.check()
                .map_err(|(field, msg)| anyhow::anyhow!("tcp_outbound[{i}].{field}: {msg}"))?;
            // Listeners bind with SO_REUSEPORT: two on one port would
            // silently share its connections.
            if let Some((other, _)) = taken.iter().find(|(_, p)| *p == t.port) {
                anyhow::bail!(
                    "tcp_outbound[{i}].port: {} is already the port of {other}",
                    t.port
                );
            }
            taken.push((format!("tcp_outbound[{i}]"), t.port));
        }
        if let Some(ip) = &self.bind_ip {
            ip.parse::<std::net::IpAddr>()
                .map_err(|e| anyhow::anyhow!("bind_ip: {ip:?} is not an IP address: {e}"))?;
        }
        if self.node_id.is_empty() {
            self.node_id = format!("sidecar~{}~{}", self.app, std::process::id());
        }
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_fields_and_errors() {
        let b: Bootstrap = toml::from_str(
            "app = \"pay\"\nxds = [\"127.0.0.1:1\"]\nbind_ip = \"127.0.0.1\"\n[locality]\nzone = \"z1\"\n",
        )
        .unwrap();
        let b = b.finish().unwrap();
        assert_eq!(b.app, "pay");
        assert_eq!(b.outbound_port, OUTBOUND_PORT);
        assert_eq!(b.locality.zone, "z1");
        assert!(b.node_id.starts_with("sidecar~pay~"));

        let err = toml::from_str::<Bootstrap>("app = \"x\"\nbogus = 1\n").unwrap_err();
        assert!(err.to_string().contains("bogus"), "{err}");
        let err = Bootstrap::default().finish().unwrap_err();
        assert!(err.to_string().starts_with("app:"), "{err}");
        let b = Bootstrap {
            app: "x".into(),
            bind_ip: Some("nope".into()),
            ..Default::default()
        };
        assert!(b.finish().unwrap_err().to_string().starts_with("bind_ip:"));
    }

    #[test]
    fn tcp_outbound_from_the_file_and_the_flag_form() {
        let b: Bootstrap = toml::from_str(
            "app = \"pay\"\n[[tcp_outbound]]\nport = 13306\ntarget = \"db.default:3306\"\n\
             [[tcp_outbound]]\nport = 16379\ntarget = \"cache.Redis\"\n",
        )
        .unwrap();
        let b = b.finish().unwrap();
        assert_eq!(
            b.tcp_outbound,
            [
                TcpOutbound {
                    port: 13306,
                    target: "db.default:3306".into()
                },
                TcpOutbound {
                    port: 16379,
                    target: "cache.Redis".into()
                }
            ]
        );
        assert_eq!(
            TcpOutbound::parse("13306=db.default:3306"),
            Ok(b.tcp_outbound[0].clone())
        );
        assert!(Bootstrap::default().tcp_outbound.is_empty());

        for (text, want) in [
            ("13306", "expected <port>=<target>"),
            ("x=db:1", "port: \"x\" is not a port number"),
            ("70000=db:1", "port: \"70000\""),
            ("0=db:1", "port: must be 1..=65535"),
            ("13306=", "target: required"),
            ("13306=db|1", "target: \"db|1\" contains '|'"),
            ("13306=d b:1", "target: \"d b:1\" contains ' '"),
        ] {
            let err = TcpOutbound::parse(text).unwrap_err();
            assert!(err.contains(want), "{text}: {err}");
        }

        // In the file: a missing or unknown key, a bad value, a port taken.
        let err =
            toml::from_str::<Bootstrap>("app = \"x\"\n[[tcp_outbound]]\nport = 1\n").unwrap_err();
        assert!(err.to_string().contains("target"), "{err}");
        let err = toml::from_str::<Bootstrap>(
            "app = \"x\"\n[[tcp_outbound]]\nport = 1\ntarget = \"a:1\"\nhost = \"b\"\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("host"), "{err}");
        let with = |entries: &[(u16, &str)]| Bootstrap {
            app: "x".into(),
            tcp_outbound: entries
                .iter()
                .map(|(port, target)| TcpOutbound {
                    port: *port,
                    target: target.to_string(),
                })
                .collect(),
            ..Default::default()
        };
        for (entries, want) in [
            (vec![(0, "db:1")], "tcp_outbound[0].port: must be 1..=65535"),
            (
                vec![(1, "db:1"), (2, "")],
                "tcp_outbound[1].target: required",
            ),
            (
                vec![(1, "db:1"), (1, "db:2")],
                "tcp_outbound[1].port: 1 is already the port of tcp_outbound[0]",
            ),
            (
                vec![(OUTBOUND_PORT, "db:1")],
                "tcp_outbound[0].port: 15001 is already the port of outbound_port",
            ),
        ] {
            let err = with(&entries).finish().unwrap_err().to_string();
            assert!(err.starts_with(want), "{entries:?}: {err}");
        }
        let long = "d".repeat(MAX_TCP_TARGET_LEN + 1);
        let err = with(&[(1, &long)]).finish().unwrap_err().to_string();
        assert!(
            err.starts_with("tcp_outbound[0].target: 324 bytes"),
            "{err}"
        );
    }
}
