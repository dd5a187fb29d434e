//! What a Dubbo registry holds, as read (sans I/O): provider URLs,
//! application-level instances and service-name mappings, each under its
//! key in the source (a znode path, an etcd key), and the one function
//! that turns them into meshreg registrations ([`Catalog::records`]).
//!
//! Entries are parsed when they are stored, so a bad one is found once and
//! carries its reason until it changes; [`Catalog::records`] only groups
//! and validates.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use meshreg_registry::model::{
    validate, Health, InstanceSpec, Locality, Provenance, Registration, ServiceDef,
};

use crate::dubbo::{self, AppInstance, ProviderUrl, SERVICE_PARAMS};

/// One entry of the source, parsed, with the source's version of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry<T> {
    /// The parsed value, or why it cannot be used (quarantined).
    pub value: Result<T, String>,
    /// The source's version of the entry: the znode's `mzxid`, the etcd
    /// key's `mod_revision`.
    pub revision: i64,
    /// When this revision of the entry was first seen, Unix ms.
    pub observed_at_ms: i64,
}

/// A service-name mapping entry (`/dubbo/mapping/{interface}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    /// The interface.
    pub interface: String,
    /// Applications that provide it.
    pub apps: Vec<String>,
}

/// Everything read from one source, by key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Catalog {
    /// Interface-level provider URLs, by znode path.
    pub providers: BTreeMap<String, Entry<ProviderUrl>>,
    /// Application-level instances, by znode path or etcd key.
    pub instances: BTreeMap<String, Entry<AppInstance>>,
    /// Service-name mappings, by znode path.
    pub mappings: BTreeMap<String, Entry<Mapping>>,
}

/// Registrations for one sync of a source, and the entries left out with why.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Records {
    /// Validated registrations, one per instance.
    pub records: Vec<Registration>,
    /// (source key, reason) of every entry that could not be used.
    pub quarantined: Vec<(String, String)>,
}

fn put<T: PartialEq>(
    map: &mut BTreeMap<String, Entry<T>>,
    key: &str,
    value: Result<T, String>,
    revision: i64,
    now_ms: i64,
) -> bool {
    if let Some(old) = map.get(key) {
        if old.revision == revision && old.value == value {
            return false;
        }
    }
    map.insert(
        key.to_string(),
        Entry {
            value,
            revision,
            observed_at_ms: now_ms,
        },
    );
    true
}

/// Keys of `map` that start with `prefix`, in order.
fn keys_with_prefix<'m, T>(
    map: &'m BTreeMap<String, Entry<T>>,
    prefix: &'m str,
) -> impl Iterator<Item = String> + 'm {
    map.range(prefix.to_string()..)
        .take_while(move |(k, _)| k.starts_with(prefix))
        .map(|(k, _)| k.clone())
}

fn remove_under<T>(map: &mut BTreeMap<String, Entry<T>>, prefix: &str) -> bool {
    let keys: Vec<String> = keys_with_prefix(map, prefix).collect();
    for k in &keys {
        map.remove(k);
    }
    !keys.is_empty()
}

fn carry<T: PartialEq>(new: &mut BTreeMap<String, Entry<T>>, old: &BTreeMap<String, Entry<T>>) {
    for (k, e) in new.iter_mut() {
        if let Some(o) = old.get(k) {
            if o.revision == e.revision && o.value == e.value {
                e.observed_at_ms = o.observed_at_ms;
            }
        }
    }
}

impl Catalog {
    /// Stores the provider whose znode is `path`; its URL is the last path
    /// segment. Returns whether anything changed.
    pub fn put_provider(&mut self, path: &str, revision: i64, now_ms: i64) -> bool {
        let name = path.rsplit('/').next().unwrap_or_default();
        put(
            &mut self.providers,
            path,
            dubbo::parse_provider(name),
            revision,
            now_ms,
        )
    }

    /// Stores an application-level instance of `app` found at `key`, with
    /// its JSON `data`, or the reason it cannot be used (`app` is `Err`
    /// when the key does not follow the layout). Returns whether anything changed.
    pub fn put_instance(
        &mut self,
        key: &str,
        app: Result<&str, String>,
        data: &[u8],
        revision: i64,
        now_ms: i64,
    ) -> bool {
        let value = app.and_then(|app| dubbo::parse_app_instance(app, data));
        put(&mut self.instances, key, value, revision, now_ms)
    }

    /// Stores a provider already parsed (or the reason it cannot be used)
    /// under `key`: for sources whose entries are not URL-named znodes
    /// (Dubbo's interface-level services in Nacos). Returns whether
    /// anything changed.
    pub fn put_parsed_provider(
        &mut self,
        key: &str,
        value: Result<ProviderUrl, String>,
        revision: i64,
        now_ms: i64,
    ) -> bool {
        put(&mut self.providers, key, value, revision, now_ms)
    }

    /// Stores an application-level instance already parsed (or the reason
    /// it cannot be used) under `key`. Returns whether anything changed.
    pub fn put_parsed_instance(
        &mut self,
        key: &str,
        value: Result<AppInstance, String>,
        revision: i64,
        now_ms: i64,
    ) -> bool {
        put(&mut self.instances, key, value, revision, now_ms)
    }

    /// Keys of every entry, of any kind, that start with `prefix`.
    pub fn keys_under(&self, prefix: &str) -> Vec<String> {
        keys_with_prefix(&self.providers, prefix)
            .chain(keys_with_prefix(&self.instances, prefix))
            .chain(keys_with_prefix(&self.mappings, prefix))
            .collect()
    }

    /// Stores the mapping of `interface` found at `path`. Returns whether
    /// anything changed.
    pub fn put_mapping(
        &mut self,
        path: &str,
        interface: &str,
        data: &[u8],
        revision: i64,
        now_ms: i64,
    ) -> bool {
        let value = validate::service_name("interface", interface)
            .map_err(|e| e.to_string())
            .map(|()| Mapping {
                interface: interface.to_string(),
                apps: dubbo::parse_mapping(data),
            });
        put(&mut self.mappings, path, value, revision, now_ms)
    }

    /// Removes the entry at `key`, whatever its kind. Returns whether it existed.
    pub fn remove(&mut self, key: &str) -> bool {
        // Non-short-circuiting: a key is in at most one map, but look in all.
        self.providers.remove(key).is_some()
            | self.instances.remove(key).is_some()
            | self.mappings.remove(key).is_some()
    }

    /// Removes every entry whose key starts with `prefix` (a subtree when
    /// `prefix` ends with `/`). Returns whether any existed.
    pub fn remove_under(&mut self, prefix: &str) -> bool {
        remove_under(&mut self.providers, prefix)
            | remove_under(&mut self.instances, prefix)
            | remove_under(&mut self.mappings, prefix)
    }

    /// Number of entries of every kind.
    pub fn len(&self) -> usize {
        self.providers.len() + self.instances.len() + self.mappings.len()
    }

    /// True when the catalog holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keeps the first-observed time of every entry that `old` already had
    /// at the same revision (after a full resync), so that unchanged
    /// records are not rewritten just because they were read again.
    pub fn carry_observed_from(&mut self, old: &Catalog) {
        carry(&mut self.providers, &old.providers);
        carry(&mut self.instances, &old.instances);
        carry(&mut self.mappings, &old.mappings);
    }

    /// The instances of this catalog, for namespace `namespace` of source
    /// `source` (docs/mcp.md, "ZooKeeper / Dubbo" and "etcd"):
    ///
    /// - each application-level instance is one instance, serving the
    ///   interfaces the mappings give its application;
    /// - provider URLs are grouped by (`application`, host, port) into one
    ///   instance whose services are the URLs' interfaces; a URL whose
    ///   application, host and port match an application-level instance
    ///   (its main port or one of its `dubbo.endpoints`) adds its interface
    ///   to that instance instead;
    /// - every record is validated; what fails is quarantined with the
    ///   reason, and never blocks the rest.
    pub fn records(&self, namespace: &str, source: &str) -> Records {
        let mut out = Records::default();
        let mut drafts: BTreeMap<(String, String, u16), Draft> = BTreeMap::new();
        // (app, host, any port of the instance) → its draft key.
        let mut by_port: HashMap<(String, String, u16), (String, String, u16)> = HashMap::new();

        let mut app_services: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for (key, e) in &self.mappings {
            match &e.value {
                Ok(m) => {
                    for app in &m.apps {
                        app_services
                            .entry(app.as_str())
                            .or_default()
                            .insert(m.interface.as_str());
                    }
                }
                Err(why) => out.quarantined.push((key.clone(), why.clone())),
            }
        }

        for (key, e) in &self.instances {
            let inst = match &e.value {
                Ok(i) => i,
                Err(why) => {
                    out.quarantined.push((key.clone(), why.clone()));
                    continue;
                }
            };
            let id = (inst.app.clone(), inst.address.clone(), inst.port);
            if let Some(other) = drafts.get(&id) {
                out.quarantined.push((
                    key.clone(),
                    format!("same application and address:port as {}", other.source_key),
                ));
                continue;
            }
            let draft = Draft::from_instance(key, e, inst, app_services.get(inst.app.as_str()));
            for port in draft.ports.values() {
                if let Ok(p) = u16::try_from(*port) {
                    by_port
                        .entry((inst.app.clone(), inst.address.clone(), p))
                        .or_insert_with(|| id.clone());
                }
            }
            drafts.insert(id, draft);
        }

        for (key, e) in &self.providers {
            let url = match &e.value {
                Ok(u) => u,
                Err(why) => {
                    out.quarantined.push((key.clone(), why.clone()));
                    continue;
                }
            };
            let Some(app) = url.application() else {
                out.quarantined
                    .push((key.clone(), "the URL has no application= parameter".into()));
                continue;
            };
            let (weight, serving) = match provider_weight(url) {
                Ok(w) => w,
                Err(why) => {
                    out.quarantined.push((key.clone(), why));
                    continue;
                }
            };
            let id = by_port
                .get(&(app.to_string(), url.host.clone(), url.port))
                .cloned()
                .unwrap_or_else(|| (app.to_string(), url.host.clone(), url.port));
            let draft = drafts.entry(id).or_insert_with(|| Draft {
                app: app.to_string(),
                address: url.host.clone(),
                port: url.port,
                source_key: key.clone(),
                ..Default::default()
            });
            draft.add_provider(e, url, weight, serving);
        }

        for draft in drafts.into_values() {
            let key = draft.source_key.clone();
            match validate::registration("record", draft.into_spec(namespace, source)) {
                Ok(r) => out.records.push(r),
                Err(e) => out.quarantined.push((key, e.to_string())),
            }
        }
        out
    }
}

/// `weight` (default 100) and whether the provider takes traffic: Dubbo's
/// weight 0, `enabled=false` and `disabled=true` mean it does not.
fn provider_weight(url: &ProviderUrl) -> Result<(u32, bool), String> {
    let weight = match url.params.get("weight").map(|w| w.trim()) {
        None | Some("") => 0,
        Some(w) => w
            .parse::<u32>()
            .map_err(|_| format!("weight {w:?} is not a non-negative integer"))?,
    };
    let enabled = url.params.get("enabled").is_none_or(|v| v != "false")
        && url.params.get("disabled").is_none_or(|v| v != "true");
    let has_weight = url.params.contains_key("weight");
    Ok((weight, enabled && !(has_weight && weight == 0)))
}

/// An instance being assembled from one or more entries.
#[derive(Debug, Default)]
struct Draft {
    app: String,
    address: String,
    /// The port of the instance's identity (`address:port`): the main port.
    port: u16,
    ports: BTreeMap<String, u32>,
    labels: BTreeMap<String, String>,
    metadata: BTreeMap<String, String>,
    /// Service name → (definition, came from a provider URL).
    services: BTreeMap<String, (ServiceDef, bool)>,
    weight: u32,
    locality: Locality,
    not_serving: bool,
    source_key: String,
    revision: i64,
    observed_at_ms: i64,
}

impl Draft {
    fn from_instance(
        key: &str,
        e: &Entry<AppInstance>,
        inst: &AppInstance,
        services: Option<&BTreeSet<&str>>,
    ) -> Draft {
        let main_protocol = inst
            .endpoints
            .iter()
            .find(|(_, p)| *p == inst.port)
            .map_or("dubbo", |(proto, _)| proto.as_str());
        let main_name = dubbo::port_name(main_protocol);
        let mut ports = BTreeMap::new();
        ports.insert(main_name.clone(), u32::from(inst.port));
        for (proto, port) in &inst.endpoints {
            if ports.values().any(|p| *p == u32::from(*port)) {
                continue;
            }
            let mut name = dubbo::port_name(proto);
            if ports.contains_key(&name) {
                name = dubbo::port_name(&format!("{name}-{port}"));
            }
            ports.insert(name, u32::from(*port));
        }
        let mut d = Draft {
            app: inst.app.clone(),
            address: inst.address.clone(),
            port: inst.port,
            ports,
            not_serving: !inst.serving,
            weight: inst.weight,
            locality: inst.locality.clone(),
            source_key: key.to_string(),
            revision: e.revision,
            observed_at_ms: e.observed_at_ms,
            ..Default::default()
        };
        for (k, v) in &inst.metadata {
            d.add_param(k, v);
        }
        for iface in services.into_iter().flatten() {
            let def = ServiceDef {
                name: (*iface).to_string(),
                protocol: main_protocol.to_string(),
                port_name: main_name.clone(),
                params: BTreeMap::new(),
            };
            d.services.insert(def.name.clone(), (def, false));
        }
        d
    }

    fn add_provider(
        &mut self,
        e: &Entry<ProviderUrl>,
        url: &ProviderUrl,
        weight: u32,
        serving: bool,
    ) {
        let port_name = match self.ports.iter().find(|(_, p)| **p == u32::from(url.port)) {
            Some((n, _)) => n.clone(),
            None => {
                let mut name = dubbo::port_name(&url.protocol);
                if self.ports.contains_key(&name) {
                    name = dubbo::port_name(&format!("{name}-{}", url.port));
                }
                self.ports.insert(name.clone(), u32::from(url.port));
                name
            }
        };
        if self.weight == 0 {
            self.weight = weight;
        }
        self.not_serving |= !serving;
        self.revision = self.revision.max(e.revision);
        self.observed_at_ms = self.observed_at_ms.max(e.observed_at_ms);
        for (k, v) in &url.params {
            if matches!(
                k.as_str(),
                "application" | "interface" | "weight" | "enabled" | "disabled"
            ) || SERVICE_PARAMS.contains(&k.as_str())
            {
                continue;
            }
            self.add_param(k, v);
        }
        let def = ServiceDef {
            name: url.interface.clone(),
            protocol: url.protocol.clone(),
            port_name,
            params: SERVICE_PARAMS
                .iter()
                .filter_map(|k| {
                    url.params
                        .get(*k)
                        .filter(|v| !v.is_empty())
                        .map(|v| ((*k).to_string(), v.clone()))
                })
                .collect(),
        };
        match self.services.get(&def.name) {
            // New, or only known from a mapping: the URL is more precise.
            None | Some((_, false)) => {
                self.services.insert(def.name.clone(), (def, true));
            }
            Some((same, true)) if *same == def => {}
            // The same interface again with another version or group:
            // Dubbo's service key `interface:version:group` keeps it apart.
            Some(_) => {
                let p = |k: &str| def.params.get(k).cloned().unwrap_or_default();
                let name = format!("{}:{}:{}", def.name, p("version"), p("group"));
                self.services
                    .entry(name.clone())
                    .or_insert((ServiceDef { name, ..def }, true));
            }
        }
    }

    /// A parameter or metadata entry: a label when it can be one (and the
    /// label set is not full), else metadata. The first value of a key wins.
    fn add_param(&mut self, k: &str, v: &str) {
        if self.labels.contains_key(k) || self.metadata.contains_key(k) {
            return;
        }
        if dubbo::is_label(k, v) && self.labels.len() < validate::MAX_LABELS {
            self.labels.insert(k.to_string(), v.to_string());
        } else {
            self.metadata.insert(k.to_string(), v.to_string());
        }
    }

    fn into_spec(self, namespace: &str, source: &str) -> InstanceSpec {
        // The identity is address:port of the main port, whatever the
        // port names (the registry's default is the first port by name).
        let id = if self.address.contains(':') {
            format!("[{}]:{}", self.address, self.port)
        } else {
            format!("{}:{}", self.address, self.port)
        };
        InstanceSpec {
            namespace: namespace.to_string(),
            app: self.app,
            id,
            address: self.address,
            ports: self.ports,
            labels: self.labels,
            metadata: self.metadata,
            weight: self.weight,
            locality: self.locality,
            health: Some(if self.not_serving {
                Health::NotServing
            } else {
                Health::Serving
            }),
            services: self.services.into_values().map(|(d, _)| d).collect(),
            provenance: Some(Provenance {
                source: source.to_string(),
                source_key: self.source_key,
                observed_revision: self.revision.to_string(),
                observed_at_ms: self.observed_at_ms,
            }),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests;
