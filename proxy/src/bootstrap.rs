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
    /// A missing `app`, no xDS address, or a zero port (naming the field).
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
}
