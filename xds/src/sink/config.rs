//! `[[sources]]`: one entry per registry this cluster imports.

use std::collections::BTreeMap;

use meshreg_adapters::etcd::EtcdConfig;
use meshreg_adapters::nacos::{NacosConfig, DEFAULT_GROUP};
use meshreg_adapters::zookeeper::ZookeeperConfig;
use meshreg_registry::model::{validate, DEFAULT_NAMESPACE};
use serde::{Deserialize, Serialize};

/// What a source is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// An MCP-over-xDS server (another meshreg, Nacos's MCP server, the bridge).
    #[default]
    Mcp,
    /// A ZooKeeper ensemble holding Dubbo's registry layouts.
    Zookeeper,
    /// An etcd cluster holding Dubbo's application-level layout.
    Etcd,
    /// A Nacos 2.x server (its gRPC API): the services of one namespace.
    Nacos,
}

impl SourceKind {
    /// The name used in the config and in `/v1/sources`.
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Mcp => "mcp",
            SourceKind::Zookeeper => "zookeeper",
            SourceKind::Etcd => "etcd",
            SourceKind::Nacos => "nacos",
        }
    }
}

/// One source (a `[[sources]]` entry of the server's TOML config). Fields
/// that belong to another kind are rejected by [`SourceConfig::validate`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Name recorded as the provenance of every record it contributes.
    pub name: String,
    /// `mcp` (the default), `zookeeper`, `etcd` or `nacos`.
    #[serde(default)]
    pub kind: SourceKind,
    /// `mcp`: `host:port` of the source's ADS endpoint. `zookeeper`: the
    /// connect string, `host:port[,host:port...]`. `etcd`: endpoints,
    /// `host:port[,host:port...]`.
    pub address: String,
    /// `mcp` only: source namespace → local namespace; unmapped namespaces
    /// keep their name, and records for a namespace that does not exist
    /// here are quarantined.
    #[serde(default)]
    pub namespaces: BTreeMap<String, String>,
    /// Rank among sources (higher wins): where several sources have a
    /// record for the same instance (namespace, app, `address:port`), the
    /// highest priority backs it and the others' records are kept
    /// shadowed, each taking over when the winner goes away; on equal
    /// priority the record backing the instance stays. A native
    /// registration always wins. Sent with every sync
    /// (`SyncSourceRanked`); see docs/mcp.md, "Merging".
    #[serde(default)]
    pub priority: i32,
    /// `zookeeper`, `etcd` and `nacos`: local namespace of every record;
    /// default `default`.
    #[serde(default)]
    pub namespace: Option<String>,
    /// `zookeeper`: interface-level root, default `/dubbo` (providers under
    /// `{root}/{interface}/providers`, mappings under `{root}/mapping`).
    #[serde(default)]
    pub root: Option<String>,
    /// `zookeeper`: application-level root, default `/services`.
    #[serde(default)]
    pub services_root: Option<String>,
    /// `etcd`: key prefix of the application-level layout, default `/services/`.
    #[serde(default)]
    pub prefix: Option<String>,
    /// `nacos`: the Nacos namespace id to read; default `""` (`public`).
    #[serde(default)]
    pub nacos_namespace: Option<String>,
    /// `nacos`: the groups whose services are read; default `["DEFAULT_GROUP"]`.
    #[serde(default)]
    pub groups: Option<Vec<String>>,
    /// `nacos`: user name, when the server requires authentication.
    #[serde(default)]
    pub username: Option<String>,
    /// `nacos`: password, with `username`.
    #[serde(default)]
    pub password: Option<String>,
}

impl SourceConfig {
    /// Local namespace of a `zookeeper` or `etcd` source's records.
    pub fn local_namespace(&self) -> &str {
        self.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE)
    }

    /// The ZooKeeper adapter's settings (defaults applied).
    pub fn zookeeper(&self) -> ZookeeperConfig {
        ZookeeperConfig {
            address: self.address.trim().to_string(),
            root: self.root.clone().unwrap_or_else(|| "/dubbo".into()),
            services_root: self
                .services_root
                .clone()
                .unwrap_or_else(|| "/services".into()),
        }
    }

    /// The etcd adapter's settings (defaults applied).
    pub fn etcd(&self) -> EtcdConfig {
        EtcdConfig {
            endpoints: self
                .address
                .split(',')
                .map(str::trim)
                .filter(|e| !e.is_empty())
                .map(str::to_string)
                .collect(),
            prefix: self.prefix.clone().unwrap_or_else(|| "/services/".into()),
        }
    }

    /// The Nacos adapter's settings (defaults applied).
    pub fn nacos(&self) -> NacosConfig {
        NacosConfig {
            address: self.address.trim().to_string(),
            namespace: self.nacos_namespace.clone().unwrap_or_default(),
            groups: self
                .groups
                .clone()
                .unwrap_or_else(|| vec![DEFAULT_GROUP.to_string()]),
            username: self.username.clone(),
            password: self.password.clone(),
        }
    }

    /// Checks the entry as a whole: a valid name, an address, and only the
    /// fields of its kind.
    ///
    /// # Errors
    /// What is wrong, naming the source and the field.
    pub fn validate(&self) -> Result<(), String> {
        let fail = |why: String| Err(format!("source {:?}: {why}", self.name));
        validate::name("sources.name", &self.name, 63).map_err(|e| e.to_string())?;
        if self.address.trim().is_empty() {
            return fail("address must not be empty".into());
        }
        let kind = self.kind.as_str();
        let only = |field: &str, set: bool, kinds: &[SourceKind]| {
            if set && !kinds.contains(&self.kind) {
                let names: Vec<&str> = kinds.iter().map(|k| k.as_str()).collect();
                Err(format!(
                    "source {:?}: `{field}` does not apply to kind {kind:?} (only to {})",
                    self.name,
                    names.join(", ")
                ))
            } else {
                Ok(())
            }
        };
        let adapters = [SourceKind::Zookeeper, SourceKind::Etcd, SourceKind::Nacos];
        let nacos = [SourceKind::Nacos];
        only(
            "namespaces",
            !self.namespaces.is_empty(),
            &[SourceKind::Mcp],
        )?;
        only("namespace", self.namespace.is_some(), &adapters)?;
        only("root", self.root.is_some(), &[SourceKind::Zookeeper])?;
        only(
            "services_root",
            self.services_root.is_some(),
            &[SourceKind::Zookeeper],
        )?;
        only("prefix", self.prefix.is_some(), &[SourceKind::Etcd])?;
        only("nacos_namespace", self.nacos_namespace.is_some(), &nacos)?;
        only("groups", self.groups.is_some(), &nacos)?;
        only("username", self.username.is_some(), &nacos)?;
        only("password", self.password.is_some(), &nacos)?;
        if let Some(ns) = &self.namespace {
            validate::namespace("namespace", ns)
                .map_err(|e| format!("source {:?}: {e}", self.name))?;
        }
        let adapter = match self.kind {
            SourceKind::Mcp => Ok(()),
            SourceKind::Zookeeper => self.zookeeper().validate(),
            SourceKind::Etcd => self.etcd().validate(),
            SourceKind::Nacos => self.nacos().validate(),
        };
        adapter.or_else(|e| fail(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> Result<SourceConfig, String> {
        let s: SourceConfig = toml::from_str(toml_text).map_err(|e| e.to_string())?;
        s.validate()?;
        Ok(s)
    }

    #[test]
    fn kinds_and_defaults() {
        let m = parse("name = \"dc2\"\naddress = \"10.0.0.1:7071\"").unwrap();
        assert_eq!(m.kind, SourceKind::Mcp, "kind defaults to mcp");
        let z = parse("name = \"zk\"\nkind = \"zookeeper\"\naddress = \"a:2181,b:2181\"").unwrap();
        assert_eq!(z.zookeeper().root, "/dubbo");
        assert_eq!(z.zookeeper().services_root, "/services");
        assert_eq!(z.local_namespace(), "default");
        let e = parse(
            "name = \"et\"\nkind = \"etcd\"\naddress = \"a:2379, b:2379\"\nnamespace = \"team\"\nprefix = \"/svc/\"",
        )
        .unwrap();
        assert_eq!(e.etcd().endpoints, vec!["a:2379", "b:2379"]);
        assert_eq!(e.etcd().prefix, "/svc/");
        assert_eq!(e.local_namespace(), "team");
        let n = parse(
            "name = \"nc\"\nkind = \"nacos\"\naddress = \"127.0.0.1:8848\"\nnacos_namespace = \"dev\"",
        )
        .unwrap();
        assert_eq!(n.nacos().namespace, "dev");
        assert_eq!(n.nacos().groups, vec!["DEFAULT_GROUP"]);
    }

    #[test]
    fn mistakes_are_named() {
        for (text, why) in [
            (
                "name = \"x\"\nkind = \"consul\"\naddress = \"a\"",
                "unknown variant",
            ),
            (
                "name = \"x\"\nkind = \"etcd\"\naddress = \"a\"\nroot = \"/d\"",
                "`root` does not apply to kind \"etcd\"",
            ),
            (
                "name = \"x\"\naddress = \"a\"\nprefix = \"/p/\"",
                "`prefix` does not apply",
            ),
            (
                "name = \"x\"\nkind = \"zookeeper\"\naddress = \"a\"\nnamespaces = { a = \"b\" }",
                "`namespaces`",
            ),
            (
                "name = \"x\"\nkind = \"zookeeper\"\naddress = \"a\"\nroot = \"dubbo/\"",
                "absolute znode path",
            ),
            (
                "name = \"x\"\nkind = \"zookeeper\"\naddress = \" \"",
                "address must not be empty",
            ),
            (
                "name = \"x\"\nkind = \"etcd\"\naddress = \"a\"\nnamespace = \"a b\"",
                "namespace",
            ),
            ("name = \"bad name\"\naddress = \"a\"", "sources.name"),
            (
                "name = \"x\"\nkind = \"zookeeper\"\naddress = \"a\"\ngroups = [\"g\"]",
                "`groups` does not apply to kind \"zookeeper\"",
            ),
            (
                "name = \"x\"\nkind = \"nacos\"\naddress = \"a\"\ngroups = []",
                "groups must list",
            ),
            (
                "name = \"x\"\nkind = \"nacos\"\naddress = \"a\"\npassword = \"p\"",
                "username and password",
            ),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.contains(why), "{text}: {e}");
        }
    }
}
