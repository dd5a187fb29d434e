//! The per-stream xDS protocol, sans I/O: what to answer to each request
//! and to each data change, for state-of-the-world and delta ADS
//! (envoy's `xds_protocol.rst`; gRPC A27/A28).
//!
//! Rules kept here:
//! - ACK/NACK is told by `error_detail`; a NACKed version is not sent
//!   again until the data changes.
//! - Listener and Cluster SotW responses are complete; an empty
//!   subscription to them is a wildcard (as is `*`).
//! - On one stream a change goes out CDS → EDS → LDS → RDS, and EDS is
//!   re-sent for clusters that a CDS response just updated.
//! - Delta: `initial_resource_versions` on a new stream, `*` wildcard,
//!   subscribe/unsubscribe, `removed_resources` for names that are gone or
//!   do not exist, re-subscribing a name re-sends it.
//! - A request whose `response_nonce` is not the last one sent for its type
//!   is stale: its ACK/NACK is ignored (its subscription still counts).

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use bytes::BufMut;
use envoy_types::pb::envoy::service::discovery::v3 as ds;
use prost::encoding::{encode_key, encode_varint, encoded_len_varint, key_len, WireType};

use crate::cache::Built;
use crate::resources::{version_of, ResourceType};

/// Resources as one stream sees them (its namespace, current data).
pub trait View {
    /// Resource `name` of `ty`, if it exists.
    fn get(&mut self, ty: ResourceType, name: &str) -> Option<Arc<Built>>;
    /// Every resource name of `ty` (wildcard set).
    fn all(&mut self, ty: ResourceType) -> Arc<Vec<String>>;
    /// System version for delta responses (the registry revision).
    fn system_version(&self) -> String;
}

/// A request the stream cannot serve; ends this stream only.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// The type URL is not one meshreg serves.
    #[error("unsupported type_url {0:?}: meshreg serves Listener, RouteConfiguration, Cluster and ClusterLoadAssignment (envoy v3), and networking.istio.io/v1alpha3/ServiceEntry (MCP); other Istio collections get an empty response")]
    UnknownType(String),
}

/// How a stream treats a requested type URL.
enum Kind {
    /// One of the types meshreg serves.
    Served(ResourceType),
    /// Another Istio config collection (`<group>/<version>/<Kind>`, as an
    /// MCP sink such as istiod asks for): answered with an empty response.
    Empty,
    /// `core/v1alpha1/MeshConfig`: never answered (istiod owns it).
    Ignored,
}

fn classify(url: &str) -> Result<Kind, ProtocolError> {
    if let Some(ty) = ResourceType::from_url(url) {
        return Ok(Kind::Served(ty));
    }
    if url == crate::mcp::MESH_CONFIG_TYPE {
        return Ok(Kind::Ignored);
    }
    let parts: Vec<&str> = url.split('/').collect();
    let collection = !url.starts_with("type.googleapis.com/")
        && parts.len() == 3
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
        });
    if collection {
        Ok(Kind::Empty)
    } else {
        Err(ProtocolError::UnknownType(url.to_string()))
    }
}

/// What a stream's client last did with a type, for `/v1/xds/clients`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct TypeStatus {
    /// Subscribed names; `["*"]` for a wildcard.
    pub subscribed: Vec<String>,
    /// Last version sent.
    pub sent_version: Option<String>,
    /// Last version ACKed.
    pub acked_version: Option<String>,
    /// Last NACK: the version and the client's error message.
    pub last_nack: Option<(String, String)>,
    /// Responses sent for this type.
    pub responses: u64,
}

#[derive(Debug, Default)]
struct Sub {
    started: bool,
    wildcard: bool,
    names: BTreeSet<String>,
    nonce: Option<String>,
    status: TypeStatus,
}

impl Sub {
    fn subscribed(&self) -> Vec<String> {
        let mut v: Vec<String> = self.names.iter().cloned().collect();
        if self.wildcard {
            v.insert(0, "*".into());
        }
        v
    }

    /// The names this subscription covers: its explicit names, plus every
    /// name of the type for a wildcard. Borrowed unless wildcard.
    fn targets(&self, ty: ResourceType, view: &mut dyn View) -> Cow<'_, BTreeSet<String>> {
        if !self.wildcard {
            return Cow::Borrowed(&self.names);
        }
        let mut t = self.names.clone();
        t.extend(view.all(ty).iter().cloned());
        Cow::Owned(t)
    }
}

/// Nonces unique per stream: a stream id prefix and a counter.
#[derive(Debug)]
struct Nonces {
    prefix: String,
    next: u64,
}

impl Nonces {
    fn take(&mut self) -> String {
        self.next += 1;
        format!("{}-{}", self.prefix, self.next)
    }
}

/// What a stream does with one request's type.
enum Route {
    /// Serve this resource type.
    Serve(ResourceType),
    /// Send nothing.
    Nothing,
    /// Send an empty response with this nonce.
    Empty(String),
}

/// Per-stream state shared by the SotW and delta variants: nonces, the
/// MCP loop-guard flag, and which collections got their empty answer.
#[derive(Debug)]
struct Routing {
    nonces: Nonces,
    /// ServiceEntries carry native instances only: the subscriber is
    /// another meshreg's MCP sink (loop guard).
    native_only: bool,
    empty_answered: BTreeSet<String>,
}

impl Routing {
    fn new(id: u64) -> Self {
        Self {
            nonces: Nonces {
                prefix: format!("{id:x}"),
                next: 0,
            },
            native_only: false,
            empty_answered: BTreeSet::new(),
        }
    }

    /// Classifies a request's type: the resource type to serve, an empty
    /// answer (once per collection; its ACK gets nothing), or nothing.
    fn route(&mut self, type_url: &str, response_nonce: &str) -> Result<Route, ProtocolError> {
        Ok(match classify(type_url)? {
            Kind::Served(ResourceType::ServiceEntry) if self.native_only => {
                Route::Serve(ResourceType::ServiceEntryNative)
            }
            Kind::Served(ty) => Route::Serve(ty),
            Kind::Ignored => Route::Nothing,
            Kind::Empty => {
                if !response_nonce.is_empty() && self.empty_answered.contains(type_url) {
                    Route::Nothing
                } else {
                    self.empty_answered.insert(type_url.to_string());
                    Route::Empty(self.nonces.take())
                }
            }
        })
    }
}

/// Records an ACK or NACK of `sub`'s last response (a stale `nonce` is
/// ignored). `version` is what an ACK acknowledges; `None` for the version
/// last sent (delta requests carry none).
fn status_of(
    nacks: &mut u64,
    sub: &mut Sub,
    nonce: &str,
    version: Option<&str>,
    error: Option<&str>,
) {
    if sub.nonce.as_deref() != Some(nonce) {
        return; // stale
    }
    match (error, version) {
        (Some(msg), _) => {
            *nacks += 1;
            sub.status.last_nack = Some((
                sub.status.sent_version.clone().unwrap_or_default(),
                msg.to_string(),
            ));
        }
        // An ACK per push on every stream: the strings' allocations are
        // reused.
        (None, Some(v)) => match &mut sub.status.acked_version {
            Some(acked) => {
                acked.clear();
                acked.push_str(v);
            }
            none => *none = Some(v.to_string()),
        },
        (None, None) => sub
            .status
            .acked_version
            .clone_from(&sub.status.sent_version),
    }
}

// ------------------------------------------------------------------ SotW

#[derive(Debug, Default)]
struct SotwSub {
    sub: Sub,
    /// version_info of the last response, and the last one NACKed.
    sent: Option<String>,
    nacked: Option<String>,
    /// Names and versions in the last response.
    sent_names: BTreeMap<String, String>,
}

/// State-of-the-world ADS stream state.
#[derive(Debug)]
pub struct SotwStream {
    types: BTreeMap<ResourceType, SotwSub>,
    routing: Routing,
    /// NACKs received.
    pub nacks: u64,
}

impl SotwStream {
    /// A new stream; `id` makes its nonces unique.
    pub fn new(id: u64) -> Self {
        Self {
            types: BTreeMap::new(),
            routing: Routing::new(id),
            nacks: 0,
        }
    }

    /// Marks the subscriber as another meshreg's MCP sink (loop guard).
    pub fn set_native_only(&mut self, on: bool) {
        self.routing.native_only = on;
    }

    /// Handles one request; returns the responses to send, in order.
    ///
    /// # Errors
    /// [`ProtocolError::UnknownType`] for a type meshreg does not serve.
    pub fn on_request(
        &mut self,
        req: &ds::DiscoveryRequest,
        view: &mut dyn View,
    ) -> Result<Vec<SotwResponse>, ProtocolError> {
        let ty = match self.routing.route(&req.type_url, &req.response_nonce)? {
            Route::Serve(ty) => ty,
            Route::Nothing => return Ok(Vec::new()),
            Route::Empty(nonce) => {
                return Ok(vec![SotwResponse {
                    version_info: "empty".into(),
                    type_url: Cow::Owned(req.type_url.clone()),
                    nonce,
                    ..Default::default()
                }]);
            }
        };
        let s = self.types.entry(ty).or_default();
        let first = !s.sub.started;
        s.sub.started = true;
        if !req.response_nonce.is_empty() {
            let error = req.error_detail.as_ref().map(|e| e.message.as_str());
            let was_nack = error.is_some();
            status_of(
                &mut self.nacks,
                &mut s.sub,
                &req.response_nonce,
                Some(&req.version_info),
                error,
            );
            if was_nack && s.sub.nonce.as_deref() == Some(req.response_nonce.as_str()) {
                s.nacked = s.sent.clone();
            }
        }
        let names: BTreeSet<String> = req
            .resource_names
            .iter()
            .filter(|n| *n != "*")
            .cloned()
            .collect();
        let wildcard = req.resource_names.iter().any(|n| n == "*")
            || (ty.is_sotw_complete() && req.resource_names.is_empty());
        let changed = names != s.sub.names || wildcard != s.sub.wildcard;
        if changed || first {
            s.sub.names = names;
            s.sub.wildcard = wildcard;
            s.sub.status.subscribed = s.sub.subscribed();
        }
        // A new stream always gets an answer (also when its first request
        // carries a nonce from another server); a subscription change gets
        // one for the complete types so absent names are reported.
        let force = first || (changed && ty.is_sotw_complete());
        let mut out = Vec::new();
        if let Some(r) = self.respond(ty, force || changed, view) {
            out.push(r);
        }
        Ok(out)
    }

    /// Responses for a data change, in CDS → EDS → LDS → RDS order.
    pub fn on_change(&mut self, view: &mut dyn View) -> Vec<SotwResponse> {
        let mut out = Vec::new();
        let mut eds_forced = false;
        for ty in ResourceType::ALL {
            if !self.types.get(&ty).is_some_and(|s| s.sub.started) {
                continue;
            }
            let force = ty == ResourceType::Endpoint && eds_forced;
            if let Some(r) = self.respond(ty, force, view) {
                eds_forced |= ty == ResourceType::Cluster;
                out.push(r);
            }
        }
        out
    }

    fn respond(
        &mut self,
        ty: ResourceType,
        force: bool,
        view: &mut dyn View,
    ) -> Option<SotwResponse> {
        let s = self.types.get_mut(&ty)?;
        let targets = s.sub.targets(ty, view);
        let built: Vec<Arc<Built>> = targets.iter().filter_map(|n| view.get(ty, n)).collect();
        let mut key = Vec::new();
        for b in &built {
            key.extend_from_slice(b.name.as_bytes());
            key.push(0);
            key.extend_from_slice(b.version.as_bytes());
            key.push(0);
        }
        let version = version_of(&key);
        let unchanged = s.sent.as_deref() == Some(version.as_str());
        let nacked = s.nacked.as_deref() == Some(version.as_str());
        if (unchanged && !force) || nacked {
            return None;
        }
        let nonce = self.routing.nonces.take();
        s.sent = Some(version.clone());
        s.sub.nonce = Some(nonce.clone());
        s.sub.status.sent_version = Some(version.clone());
        s.sub.status.responses += 1;
        s.sent_names = built
            .iter()
            .map(|b| (b.name.clone(), b.version.clone()))
            .collect();
        Some(SotwResponse {
            version_info: version,
            resources: built,
            type_url: Cow::Borrowed(ty.url()),
            nonce,
        })
    }

    /// Per-type status, for `/v1/xds/clients`.
    pub fn status(&self) -> BTreeMap<&'static str, TypeStatus> {
        self.types
            .iter()
            .map(|(t, s)| (t.short(), s.sub.status.clone()))
            .collect()
    }
}

// ------------------------------------------------------ responses as sent

/// A response as written on the wire: its protobuf encoding without the
/// gRPC length prefix.
pub trait Encode {
    /// Length of the encoding, bytes.
    fn encoded_len(&self) -> usize;
    /// Appends the encoding to `buf`, which has room for it.
    fn encode_raw(&self, buf: &mut impl BufMut);
}

/// One state-of-the-world response: `DiscoveryResponse`
/// (`envoy/service/discovery/v3/discovery.proto`) whose resources are the
/// shared, already encoded [`Built`]s rather than copies of them, so a push
/// to many streams copies each resource once per stream, into the frame
/// that carries it. Encodes to the bytes prost gives
/// [`SotwResponse::to_message`] (tested).
#[derive(Debug, Clone, Default)]
pub struct SotwResponse {
    /// `version_info` (1).
    pub version_info: String,
    /// `resources` (2): each resource's `Any`.
    pub resources: Vec<Arc<Built>>,
    /// `type_url` (4).
    pub type_url: Cow<'static, str>,
    /// `nonce` (5).
    pub nonce: String,
}

impl SotwResponse {
    /// The same response as a prost message (copies every resource).
    pub fn to_message(&self) -> ds::DiscoveryResponse {
        ds::DiscoveryResponse {
            version_info: self.version_info.clone(),
            resources: self.resources.iter().map(|b| b.any.clone()).collect(),
            type_url: self.type_url.to_string(),
            nonce: self.nonce.clone(),
            ..Default::default()
        }
    }
}

impl Encode for SotwResponse {
    fn encoded_len(&self) -> usize {
        string_len(1, &self.version_info)
            + self
                .resources
                .iter()
                .map(|b| prost::encoding::message::encoded_len(2, &b.any))
                .sum::<usize>()
            + string_len(4, &self.type_url)
            + string_len(5, &self.nonce)
    }

    fn encode_raw(&self, buf: &mut impl BufMut) {
        put_string(1, &self.version_info, buf);
        for b in &self.resources {
            prost::encoding::message::encode(2, &b.any, buf);
        }
        put_string(4, &self.type_url, buf);
        put_string(5, &self.nonce, buf);
    }
}

// ----------------------------------------------------------------- delta

/// One delta response: `DeltaDiscoveryResponse`
/// (`envoy/service/discovery/v3/discovery.proto`) whose resources are the
/// shared, already encoded [`Built`]s rather than copies of them, so a push
/// to many streams copies each resource once per stream, into the frame
/// that carries it. Encodes to the bytes prost gives
/// [`DeltaResponse::to_message`] (tested).
#[derive(Debug, Clone, Default)]
pub struct DeltaResponse {
    /// `system_version_info` (1).
    pub system_version_info: String,
    /// `resources` (2): each a `Resource` with `version` (1), `resource`
    /// (2) and `name` (3).
    pub resources: Vec<Arc<Built>>,
    /// `type_url` (4).
    pub type_url: Cow<'static, str>,
    /// `nonce` (5).
    pub nonce: String,
    /// `removed_resources` (6).
    pub removed_resources: Vec<String>,
}

impl DeltaResponse {
    /// The same response as a prost message (copies every resource).
    pub fn to_message(&self) -> ds::DeltaDiscoveryResponse {
        ds::DeltaDiscoveryResponse {
            system_version_info: self.system_version_info.clone(),
            resources: self
                .resources
                .iter()
                .map(|b| ds::Resource {
                    name: b.name.clone(),
                    version: b.version.clone(),
                    resource: Some(b.any.clone()),
                    ..Default::default()
                })
                .collect(),
            type_url: self.type_url.to_string(),
            removed_resources: self.removed_resources.clone(),
            nonce: self.nonce.clone(),
            ..Default::default()
        }
    }

    /// Length of one `Resource`'s encoding, without its key and length.
    fn resource_len(b: &Built) -> usize {
        string_len(1, &b.version)
            + prost::encoding::message::encoded_len(2, &b.any)
            + string_len(3, &b.name)
    }
}

impl Encode for DeltaResponse {
    fn encoded_len(&self) -> usize {
        string_len(1, &self.system_version_info)
            + self
                .resources
                .iter()
                .map(|b| delimited_len(2, Self::resource_len(b)))
                .sum::<usize>()
            + string_len(4, &self.type_url)
            + string_len(5, &self.nonce)
            + self
                .removed_resources
                .iter()
                .map(|n| delimited_len(6, n.len()))
                .sum::<usize>()
    }

    fn encode_raw(&self, buf: &mut impl BufMut) {
        put_string(1, &self.system_version_info, buf);
        for b in &self.resources {
            encode_key(2, WireType::LengthDelimited, buf);
            encode_varint(Self::resource_len(b) as u64, buf);
            put_string(1, &b.version, buf);
            prost::encoding::message::encode(2, &b.any, buf);
            put_string(3, &b.name, buf);
        }
        put_string(4, &self.type_url, buf);
        put_string(5, &self.nonce, buf);
        for n in &self.removed_resources {
            put_delimited(6, n.as_bytes(), buf);
        }
    }
}

/// Encoded length of a length-delimited field of `len` bytes.
fn delimited_len(tag: u32, len: usize) -> usize {
    key_len(tag) + encoded_len_varint(len as u64) + len
}

/// Encoded length of a proto3 `string` field (nothing when empty).
fn string_len(tag: u32, s: &str) -> usize {
    if s.is_empty() {
        0
    } else {
        delimited_len(tag, s.len())
    }
}

fn put_delimited(tag: u32, bytes: &[u8], buf: &mut impl BufMut) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(bytes.len() as u64, buf);
    buf.put_slice(bytes);
}

/// A proto3 `string` field (nothing when empty).
fn put_string(tag: u32, s: &str, buf: &mut impl BufMut) {
    if !s.is_empty() {
        put_delimited(tag, s.as_bytes(), buf);
    }
}

#[derive(Debug, Default)]
struct DeltaSub {
    sub: Sub,
    /// What the client has, as far as this server knows: name → version.
    has: BTreeMap<String, String>,
    /// Explicitly subscribed names already reported as nonexistent.
    told_absent: BTreeSet<String>,
}

/// Delta (incremental) ADS stream state.
#[derive(Debug)]
pub struct DeltaStream {
    types: BTreeMap<ResourceType, DeltaSub>,
    routing: Routing,
    /// NACKs received.
    pub nacks: u64,
}

impl DeltaStream {
    /// A new stream; `id` makes its nonces unique.
    pub fn new(id: u64) -> Self {
        Self {
            types: BTreeMap::new(),
            routing: Routing::new(id),
            nacks: 0,
        }
    }

    /// Marks the subscriber as another meshreg's MCP sink (loop guard).
    pub fn set_native_only(&mut self, on: bool) {
        self.routing.native_only = on;
    }

    /// Handles one request; returns the responses to send.
    ///
    /// # Errors
    /// [`ProtocolError::UnknownType`] for a type meshreg does not serve.
    pub fn on_request(
        &mut self,
        req: &ds::DeltaDiscoveryRequest,
        view: &mut dyn View,
    ) -> Result<Vec<DeltaResponse>, ProtocolError> {
        let ty = match self.routing.route(&req.type_url, &req.response_nonce)? {
            Route::Serve(ty) => ty,
            Route::Nothing => return Ok(Vec::new()),
            Route::Empty(nonce) => {
                return Ok(vec![DeltaResponse {
                    system_version_info: "empty".into(),
                    type_url: Cow::Owned(req.type_url.clone()),
                    nonce,
                    ..Default::default()
                }]);
            }
        };
        let d = self.types.entry(ty).or_default();
        let first = !d.sub.started;
        if first {
            d.sub.started = true;
            d.has = req.initial_resource_versions.clone().into_iter().collect();
            // Legacy wildcard: a first LDS/CDS request naming nothing.
            d.sub.wildcard = ty.is_sotw_complete() && req.resource_names_subscribe.is_empty();
        }
        if !req.response_nonce.is_empty() {
            let error = req.error_detail.as_ref().map(|e| e.message.as_str());
            status_of(
                &mut self.nacks,
                &mut d.sub,
                &req.response_nonce,
                None,
                error,
            );
        }
        let mut changed = first;
        for n in &req.resource_names_subscribe {
            changed = true;
            if n == "*" {
                d.sub.wildcard = true;
            } else if !d.sub.names.insert(n.clone()) && !first {
                // Re-subscribing a name re-sends it.
                d.has.remove(n);
                d.told_absent.remove(n);
            }
        }
        for n in &req.resource_names_unsubscribe {
            changed = true;
            if n == "*" {
                d.sub.wildcard = false;
            } else {
                d.sub.names.remove(n);
                d.told_absent.remove(n);
            }
        }
        // The client forgets what it unsubscribed from.
        if changed && !first {
            let targets = d.sub.targets(ty, view);
            d.has.retain(|n, _| targets.contains(n));
        }
        let mut out = Vec::new();
        if changed {
            d.sub.status.subscribed = d.sub.subscribed();
            if let Some(r) = self.respond(ty, view) {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// Responses for a data change, in CDS → EDS → LDS → RDS order. EDS
    /// for clusters a CDS response just updated is re-sent.
    pub fn on_change(&mut self, view: &mut dyn View) -> Vec<DeltaResponse> {
        let mut out = Vec::new();
        for ty in ResourceType::ALL {
            if !self.types.get(&ty).is_some_and(|d| d.sub.started) {
                continue;
            }
            if let Some(r) = self.respond(ty, view) {
                if ty == ResourceType::Cluster {
                    if let Some(eds) = self.types.get_mut(&ResourceType::Endpoint) {
                        for res in &r.resources {
                            eds.has.remove(&res.name);
                        }
                    }
                }
                out.push(r);
            }
        }
        out
    }

    fn respond(&mut self, ty: ResourceType, view: &mut dyn View) -> Option<DeltaResponse> {
        let d = self.types.get_mut(&ty)?;
        let targets = d.sub.targets(ty, view);
        let mut resources = Vec::new();
        let mut removed = Vec::new();
        for name in targets.iter() {
            match view.get(ty, name) {
                Some(b) => {
                    d.told_absent.remove(name);
                    let fresh = match d.has.get_mut(name) {
                        Some(v) if *v == b.version => false,
                        // Reuses the version string's allocation.
                        Some(v) => {
                            v.clone_from(&b.version);
                            true
                        }
                        None => {
                            d.has.insert(name.clone(), b.version.clone());
                            true
                        }
                    };
                    if fresh {
                        resources.push(b);
                    }
                }
                None => {
                    let had = d.has.remove(name).is_some();
                    let explicit = d.sub.names.contains(name);
                    if had || (explicit && d.told_absent.insert(name.clone())) {
                        removed.push(name.clone());
                    }
                }
            }
        }
        // Resources the client has that left the target set (wildcard shrink).
        let gone: Vec<String> = d
            .has
            .keys()
            .filter(|n| !targets.contains(*n))
            .cloned()
            .collect();
        for n in gone {
            d.has.remove(&n);
            removed.push(n);
        }
        if resources.is_empty() && removed.is_empty() {
            return None;
        }
        let nonce = self.routing.nonces.take();
        let version = view.system_version();
        d.sub.nonce = Some(nonce.clone());
        d.sub.status.sent_version = Some(version.clone());
        d.sub.status.responses += 1;
        Some(DeltaResponse {
            system_version_info: version,
            resources,
            type_url: Cow::Borrowed(ty.url()),
            removed_resources: removed,
            nonce,
        })
    }

    /// Per-type status, for `/v1/xds/clients`.
    pub fn status(&self) -> BTreeMap<&'static str, TypeStatus> {
        self.types
            .iter()
            .map(|(t, d)| (t.short(), d.sub.status.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests;
