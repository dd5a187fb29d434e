//! Modes: how this process's calls leave it.
//!
//! - [`Mode::Direct`] ("SDK mode"): the SDK subscribes to the target over
//!   delta xDS and picks an endpoint itself ([`crate::lb`]).
//! - [`Mode::Mesh`]: calls go to the local sidecar's (`meshreg-proxy`'s)
//!   outbound listener with the target as `Host` / `:authority`; the SDK
//!   makes no subscription. The instance registers with metadata
//!   `meshreg.io/sidecar-port = <inbound port>` so that other sidecars send
//!   to this application through its sidecar.
//! - [`Mode::Auto`]: decided from, in order: the mode set in code, the
//!   mode file ([`Builder::mode_file`](crate::Builder::mode_file)), the
//!   `MESHREG_MODE` environment variable, the sidecar's bootstrap file
//!   (`MESHREG_PROXY_BOOTSTRAP`, else `/etc/meshreg/proxy.toml`), and the
//!   sidecar's admin port answering `GET /ready` with 200.
//!
//! [`decide`] is that order as a plain function over plain inputs
//! ([`Evidence`]); `detect` gathers the inputs (environment, file,
//! probe) and calls it.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::Error;

/// Environment variable naming the mode: `direct`, `mesh` or `auto`.
pub const MODE_ENV: &str = "MESHREG_MODE";
/// Environment variable naming the sidecar's bootstrap file (the one
/// `meshreg-proxy` reads).
pub const BOOTSTRAP_ENV: &str = "MESHREG_PROXY_BOOTSTRAP";
/// Where the sidecar's bootstrap file is looked for without
/// `MESHREG_PROXY_BOOTSTRAP`.
pub const DEFAULT_BOOTSTRAP: &str = "/etc/meshreg/proxy.toml";
/// Instance metadata key carrying the sidecar's inbound port (`docs/xds.md`,
/// "Naming conventions"; `docs/proxy.md`, "Mesh mode in three steps").
pub const SIDECAR_PORT_KEY: &str = "meshreg.io/sidecar-port";

/// How calls leave this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Mode {
    /// The SDK discovers and balances ("SDK mode").
    Direct,
    /// Calls go through the local sidecar.
    Mesh,
    /// Decide from the environment (see the module documentation). Never
    /// the mode in effect: a [`Decision`] is always `Direct` or `Mesh`.
    #[default]
    Auto,
}

impl Mode {
    /// `direct`, `mesh` or `auto`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Direct => "direct",
            Mode::Mesh => "mesh",
            Mode::Auto => "auto",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Mode {
    type Err = String;

    /// `direct`, `mesh` or `auto`, ignoring ASCII case and surrounding
    /// whitespace.
    fn from_str(s: &str) -> Result<Mode, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "direct" => Ok(Mode::Direct),
            "mesh" => Ok(Mode::Mesh),
            "auto" => Ok(Mode::Auto),
            _ => Err(format!(
                "{s:?} is not a mode: expected direct, mesh or auto"
            )),
        }
    }
}

/// Where the local sidecar listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SidecarConfig {
    /// Its outbound listener: mesh-mode calls are sent here
    /// (default `127.0.0.1:15001`).
    pub outbound: SocketAddr,
    /// Its inbound listener's port, registered as
    /// `meshreg.io/sidecar-port` in mesh mode (default 15006).
    pub inbound_port: u16,
    /// Its admin address, probed with `GET /ready` (default
    /// `127.0.0.1:15000`).
    pub admin: SocketAddr,
}

impl Default for SidecarConfig {
    fn default() -> SidecarConfig {
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        SidecarConfig {
            outbound: SocketAddr::new(lo, 15001),
            inbound_port: 15006,
            admin: SocketAddr::new(lo, 15000),
        }
    }
}

/// The fields of `meshreg-proxy`'s bootstrap file the SDK reads
/// (`docs/proxy.md`, "Running it"); the others are ignored.
#[derive(Debug, Deserialize)]
#[serde(default)]
struct BootstrapView {
    admin_port: u16,
    outbound_port: u16,
    inbound_port: u16,
    bind_ip: Option<String>,
    admin_ip: String,
}

impl Default for BootstrapView {
    fn default() -> BootstrapView {
        let d = SidecarConfig::default();
        BootstrapView {
            admin_port: d.admin.port(),
            outbound_port: d.outbound.port(),
            inbound_port: d.inbound_port,
            bind_ip: None,
            admin_ip: "127.0.0.1".into(),
        }
    }
}

impl SidecarConfig {
    /// The addresses in a `meshreg-proxy` bootstrap file (TOML): ports
    /// `outbound_port`, `inbound_port`, `admin_port` (defaults 15001,
    /// 15006, 15000); the outbound listener on `bind_ip` (default
    /// `127.0.0.1`, the outbound Listener's address), the admin port on
    /// `admin_ip`. An unspecified IP (`0.0.0.0`, `::`) is dialled on
    /// loopback. The error names the field.
    pub fn from_bootstrap(text: &str) -> Result<SidecarConfig, String> {
        let b: BootstrapView = toml::from_str(text).map_err(|e| e.to_string())?;
        let ip = |field: &str, s: &str| -> Result<IpAddr, String> {
            let ip: IpAddr = s
                .parse()
                .map_err(|e| format!("{field}: {s:?} is not an IP address: {e}"))?;
            Ok(if ip.is_unspecified() {
                IpAddr::V4(Ipv4Addr::LOCALHOST)
            } else {
                ip
            })
        };
        for (field, port) in [
            ("admin_port", b.admin_port),
            ("outbound_port", b.outbound_port),
            ("inbound_port", b.inbound_port),
        ] {
            if port == 0 {
                return Err(format!("{field}: must be 1..=65535"));
            }
        }
        let out_ip = match &b.bind_ip {
            Some(s) => ip("bind_ip", s)?,
            None => IpAddr::V4(Ipv4Addr::LOCALHOST),
        };
        Ok(SidecarConfig {
            outbound: SocketAddr::new(out_ip, b.outbound_port),
            inbound_port: b.inbound_port,
            admin: SocketAddr::new(ip("admin_ip", &b.admin_ip)?, b.admin_port),
        })
    }
}

/// Why a mode was chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// Set in code: [`Builder::mode`](crate::Builder::mode) or
    /// [`Client::set_mode`](crate::Client::set_mode).
    Configured,
    /// Read from the mode file.
    ModeFile(PathBuf),
    /// The `MESHREG_MODE` environment variable.
    Env,
    /// The sidecar's bootstrap file exists at this path.
    BootstrapFile(PathBuf),
    /// The sidecar's admin port at this address answered `GET /ready` with 200.
    AdminReady(SocketAddr),
    /// Neither a bootstrap file nor a ready admin port.
    NoSidecar {
        /// The bootstrap path looked at.
        bootstrap: PathBuf,
        /// The admin address probed.
        admin: SocketAddr,
    },
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Configured => f.write_str("set in code"),
            Reason::ModeFile(p) => write!(f, "mode file {}", p.display()),
            Reason::Env => write!(f, "{MODE_ENV}"),
            Reason::BootstrapFile(p) => {
                write!(f, "the sidecar bootstrap file {} exists", p.display())
            }
            Reason::AdminReady(a) => {
                write!(f, "the sidecar admin port {a} answers GET /ready with 200")
            }
            Reason::NoSidecar { bootstrap, admin } => write!(
                f,
                "no sidecar: no bootstrap file at {} and no ready admin port at {admin}",
                bootstrap.display()
            ),
        }
    }
}

/// The mode in effect: `mode` is [`Mode::Direct`] or [`Mode::Mesh`], never
/// [`Mode::Auto`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Direct or mesh.
    pub mode: Mode,
    /// Why.
    pub reason: Reason,
    /// Where the sidecar is (used in mesh mode).
    pub sidecar: SidecarConfig,
}

impl Decision {
    /// The port registered as `meshreg.io/sidecar-port`: the sidecar's
    /// inbound port in mesh mode, none in direct mode.
    pub fn sidecar_port(&self) -> Option<u16> {
        (self.mode == Mode::Mesh).then_some(self.sidecar.inbound_port)
    }
}

/// What [`decide`] looks at, gathered by the client (environment, files, a probe of the admin port).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evidence {
    /// The mode set in code ([`Mode::Auto`]: none).
    pub configured: Mode,
    /// The mode file, when configured: its path and, when it exists, its
    /// content.
    pub mode_file: Option<(PathBuf, Option<String>)>,
    /// `MESHREG_MODE`, when set.
    pub env: Option<String>,
    /// The sidecar bootstrap path looked at.
    pub bootstrap: PathBuf,
    /// Whether that file exists.
    pub bootstrap_exists: bool,
    /// The sidecar admin address.
    pub admin: SocketAddr,
    /// Whether it answered `GET /ready` with 200 (false when not probed).
    pub admin_ready: bool,
}

/// Decides the mode: the first of the mode set in code, the mode file,
/// `MESHREG_MODE`, the bootstrap file's existence, the admin port's
/// readiness, that says something. An empty mode file or variable, or one
/// saying `auto`, says nothing. Errors (a value that is not a mode) name
/// the source: a wrong setting fails loudly rather than falling through.
pub fn decide(e: &Evidence) -> Result<(Mode, Reason), String> {
    if e.configured != Mode::Auto {
        return Ok((e.configured, Reason::Configured));
    }
    let said = |text: &str, source: &str| -> Result<Option<Mode>, String> {
        if text.trim().is_empty() {
            return Ok(None);
        }
        match text.parse::<Mode>() {
            Ok(Mode::Auto) => Ok(None),
            Ok(m) => Ok(Some(m)),
            Err(err) => Err(format!("{source}: {err}")),
        }
    };
    if let Some((path, Some(text))) = &e.mode_file {
        if let Some(m) = said(text, &format!("mode file {}", path.display()))? {
            return Ok((m, Reason::ModeFile(path.clone())));
        }
    }
    if let Some(v) = &e.env {
        if let Some(m) = said(v, MODE_ENV)? {
            return Ok((m, Reason::Env));
        }
    }
    if e.bootstrap_exists {
        return Ok((Mode::Mesh, Reason::BootstrapFile(e.bootstrap.clone())));
    }
    if e.admin_ready {
        return Ok((Mode::Mesh, Reason::AdminReady(e.admin)));
    }
    Ok((
        Mode::Direct,
        Reason::NoSidecar {
            bootstrap: e.bootstrap.clone(),
            admin: e.admin,
        },
    ))
}

/// The mode settings fixed at build time.
#[derive(Debug, Clone, Default)]
pub(crate) struct ModeSettings {
    /// `.mode_file(path)`.
    pub mode_file: Option<PathBuf>,
    /// `.sidecar_bootstrap(path)`.
    pub bootstrap: Option<PathBuf>,
    /// `.sidecar(config)`.
    pub sidecar: Option<SidecarConfig>,
}

/// Gathers the [`Evidence`] (environment, files, and a probe of the admin
/// port only when nothing before it decided) and decides. In mesh mode the
/// sidecar's addresses are, in order: `.sidecar(..)`, the bootstrap file,
/// the defaults; a bootstrap file that cannot be read is an error.
pub(crate) async fn detect(
    configured: Mode,
    s: &ModeSettings,
    probe_timeout: Duration,
) -> Result<Decision, Error> {
    let env = |k: &str| std::env::var(k).ok();
    let bootstrap = s
        .bootstrap
        .clone()
        .or_else(|| {
            env(BOOTSTRAP_ENV)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        })
        .unwrap_or_else(|| PathBuf::from(DEFAULT_BOOTSTRAP));
    let mut ev = Evidence {
        configured,
        mode_file: None,
        env: None,
        bootstrap_exists: false,
        admin: s.sidecar.unwrap_or_default().admin,
        admin_ready: false,
        bootstrap,
    };
    if configured == Mode::Auto {
        if let Some(path) = &s.mode_file {
            let text = match tokio::fs::read_to_string(path).await {
                Ok(t) => Some(t),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(Error::Config(format!("mode file {}: {e}", path.display()))),
            };
            ev.mode_file = Some((path.clone(), text));
        }
        ev.env = env(MODE_ENV);
        ev.bootstrap_exists = tokio::fs::try_exists(&ev.bootstrap).await.unwrap_or(false);
    }
    let (mut mode, mut reason) = decide(&ev).map_err(Error::Config)?;
    if matches!(reason, Reason::NoSidecar { .. }) {
        ev.admin_ready = probe_ready(ev.admin, probe_timeout).await.is_ok();
        (mode, reason) = decide(&ev).map_err(Error::Config)?;
    }
    let sidecar = match s.sidecar {
        Some(sc) => sc,
        None if mode == Mode::Mesh => bootstrap_or_default(&ev.bootstrap).await?,
        None => SidecarConfig::default(),
    };
    Ok(Decision {
        mode,
        reason,
        sidecar,
    })
}

/// The sidecar addresses from the bootstrap file at `path`, or the
/// defaults when there is no file.
async fn bootstrap_or_default(path: &Path) -> Result<SidecarConfig, Error> {
    match tokio::fs::read_to_string(path).await {
        Ok(text) => SidecarConfig::from_bootstrap(&text)
            .map_err(|e| Error::Config(format!("sidecar bootstrap {}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(SidecarConfig::default()),
        Err(e) => Err(Error::Config(format!(
            "sidecar bootstrap {}: {e}",
            path.display()
        ))),
    }
}

/// `GET /ready` on the sidecar's admin port over HTTP/1.1 within
/// `timeout`: `Ok` on status 200, else what happened.
pub(crate) async fn probe_ready(admin: SocketAddr, timeout: Duration) -> Result<(), String> {
    let work = async {
        let mut s = tokio::net::TcpStream::connect(admin)
            .await
            .map_err(|e| format!("connect {admin}: {e}"))?;
        let req = format!("GET /ready HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| format!("write to {admin}: {e}"))?;
        let mut buf = Vec::with_capacity(256);
        let mut chunk = [0u8; 256];
        while !buf.windows(2).any(|w| w == b"\r\n") && buf.len() < 1024 {
            let n = s
                .read(&mut chunk)
                .await
                .map_err(|e| format!("read from {admin}: {e}"))?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        match status_of(&buf) {
            Some(200) => Ok(()),
            Some(code) => Err(format!("{admin} answered GET /ready with {code}")),
            None => Err(format!("{admin} did not answer GET /ready with HTTP")),
        }
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "{admin}: no answer to GET /ready within {} ms",
            timeout.as_millis()
        )),
    }
}

/// The status code of an HTTP/1.x response's status line.
fn status_of(head: &[u8]) -> Option<u16> {
    let line = head.split(|&b| b == b'\r').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split(' ');
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    parts.next()?.parse().ok()
}

#[cfg(test)]
mod tests;
