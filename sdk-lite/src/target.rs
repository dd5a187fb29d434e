//! What a subscription names, and the xDS resource name it maps to
//! (`docs/xds.md`, "Naming conventions").

use std::fmt;

use crate::Error;

/// A discovery target, relative to the client's namespace.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    /// The instances of application `app` that have port number `port`:
    /// cluster `outbound|<port>||<app>.<namespace>`.
    App {
        /// Application name.
        app: String,
        /// Port number.
        port: u16,
    },
    /// The instances exposing service (interface) `name`, each on the port
    /// its service definition names: cluster `service|<name>.<namespace>`.
    Service {
        /// Service name, e.g. `helloworld.Greeter`.
        name: String,
    },
    /// An xDS cluster / ClusterLoadAssignment name given verbatim.
    Cluster(String),
}

impl Target {
    /// Application `app`, port `port`.
    pub fn app(app: impl Into<String>, port: u16) -> Target {
        Target::App {
            app: app.into(),
            port,
        }
    }

    /// Service (interface) `name`.
    pub fn service(name: impl Into<String>) -> Target {
        Target::Service { name: name.into() }
    }

    /// Parses a target as a user writes it:
    /// - `outbound|…` or `service|…`: a cluster name, verbatim;
    /// - `<app>.<namespace>:<port>` or `<app>:<port>`: an application port
    ///   (a `.<namespace>` suffix is only stripped by
    ///   [`Target::resource_name`] when it is the client's namespace);
    /// - anything else: a service name.
    pub fn parse(s: &str) -> Result<Target, Error> {
        let bad = |reason: &str| Error::InvalidTarget {
            target: s.to_string(),
            reason: reason.to_string(),
        };
        if s.is_empty() {
            return Err(bad("empty"));
        }
        if s.starts_with("outbound|") || s.starts_with("service|") {
            return Ok(Target::Cluster(s.to_string()));
        }
        if let Some((host, port)) = s.rsplit_once(':') {
            if let Ok(port) = port.parse::<u16>() {
                if host.is_empty() || port == 0 {
                    return Err(bad(
                        "expected <app>[.<namespace>]:<port> with a port 1..=65535",
                    ));
                }
                return Ok(Target::app(host, port));
            }
        }
        if s.chars().any(|c| c.is_whitespace() || c == '|' || c == '/') {
            return Err(bad("a service name has no whitespace, '|' or '/'"));
        }
        Ok(Target::service(s))
    }

    /// Parses a `meshreg://<target>` URI (as used for gRPC channels):
    /// `meshreg://pay:9090`, `meshreg://pay.default:9090`,
    /// `meshreg://helloworld.Greeter`. The part after `meshreg://` is read
    /// as [`Target::parse`] reads it (so a port-less name is a service
    /// name); a trailing `/` is ignored; a string without the scheme is
    /// read as a plain target.
    pub fn parse_uri(s: &str) -> Result<Target, Error> {
        let rest = match s.split_once("://") {
            Some(("meshreg", rest)) => rest,
            Some((scheme, _)) => {
                return Err(Error::InvalidTarget {
                    target: s.to_string(),
                    reason: format!("scheme {scheme:?}: expected meshreg://<app>[.<namespace>]:<port> or meshreg://<service>"),
                })
            }
            None => s,
        };
        Target::parse(rest.strip_suffix('/').unwrap_or(rest)).map_err(|e| match e {
            Error::InvalidTarget { reason, .. } => Error::InvalidTarget {
                target: s.to_string(),
                reason,
            },
            other => other,
        })
    }

    /// The `Host` / `:authority` that names this target to a sidecar's
    /// outbound listener in namespace `ns` (`docs/xds.md`, "Outbound
    /// route"): `<app>.<ns>:<port>` for an application port, the service
    /// name for a service. A cluster name is mapped back when it is one of
    /// those two in `ns`; otherwise there is no authority and the error
    /// says why.
    pub fn mesh_authority(&self, ns: &str) -> Result<String, String> {
        let suffix = format!(".{ns}");
        match self {
            Target::App { app, port } => {
                let app = app.strip_suffix(&suffix).unwrap_or(app);
                Ok(format!("{app}.{ns}:{port}"))
            }
            Target::Service { name } => Ok(name.clone()),
            Target::Cluster(name) => {
                if let Some(rest) = name.strip_prefix("outbound|") {
                    let mut parts = rest.split('|');
                    if let (Some(port), Some(""), Some(host), None) =
                        (parts.next(), parts.next(), parts.next(), parts.next())
                    {
                        if let (Ok(port), Some(_)) =
                            (port.parse::<u16>(), host.strip_suffix(&suffix))
                        {
                            return Ok(format!("{host}:{port}"));
                        }
                    }
                } else if let Some(rest) = name.strip_prefix("service|") {
                    if let Some(svc) = rest.strip_suffix(&suffix) {
                        return Ok(svc.to_string());
                    }
                }
                Err(format!(
                    "cluster {name:?} has no name a sidecar routes in namespace {ns:?}; use <app>:<port> or a service name"
                ))
            }
        }
    }

    /// The ClusterLoadAssignment name of this target in namespace `ns`.
    pub fn resource_name(&self, ns: &str) -> String {
        match self {
            Target::App { app, port } => {
                let suffix = format!(".{ns}");
                let app = app.strip_suffix(&suffix).unwrap_or(app);
                format!("outbound|{port}||{app}.{ns}")
            }
            Target::Service { name } => format!("service|{name}.{ns}"),
            Target::Cluster(name) => name.clone(),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::App { app, port } => write!(f, "{app}:{port}"),
            Target::Service { name } => f.write_str(name),
            Target::Cluster(name) => f.write_str(name),
        }
    }
}

impl TryFrom<&str> for Target {
    type Error = Error;
    fn try_from(s: &str) -> Result<Target, Error> {
        Target::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_names_like_the_xds_server() {
        let t = Target::parse("pay.default:9090").unwrap();
        assert_eq!(t.resource_name("default"), "outbound|9090||pay.default");
        let t = Target::parse("pay:9090").unwrap();
        assert_eq!(t.resource_name("prod"), "outbound|9090||pay.prod");
        let t = Target::parse("helloworld.Greeter").unwrap();
        assert_eq!(
            t.resource_name("default"),
            "service|helloworld.Greeter.default"
        );
        let t = Target::parse("outbound|1||x.y").unwrap();
        assert_eq!(t.resource_name("default"), "outbound|1||x.y");
        assert!(Target::parse("").is_err());
        assert!(Target::parse(":80").is_err());
        assert!(Target::parse("pay:0").is_err());
        assert!(Target::parse("a b").is_err());
    }

    #[test]
    fn names_targets_to_a_sidecar() {
        let a = |s: &str| Target::parse_uri(s).unwrap().mesh_authority("default");
        assert_eq!(a("meshreg://pay:9090").unwrap(), "pay.default:9090");
        assert_eq!(
            a("meshreg://pay.default:9090/").unwrap(),
            "pay.default:9090"
        );
        assert_eq!(a("pay:9090").unwrap(), "pay.default:9090");
        assert_eq!(a("meshreg://shop.Pay").unwrap(), "shop.Pay");
        assert_eq!(a("outbound|9090||pay.default").unwrap(), "pay.default:9090");
        assert_eq!(a("service|shop.Pay.default").unwrap(), "shop.Pay");
        assert!(a("outbound|9090||pay.other").is_err());
        assert!(a("outbound|9090|v1|pay.default").is_err());
        assert!(Target::parse_uri("http://pay:9090").is_err());
        assert!(Target::parse_uri("meshreg://").is_err());
        assert_eq!(
            Target::parse_uri("meshreg://pay:9090").unwrap(),
            Target::app("pay", 9090)
        );
    }
}
