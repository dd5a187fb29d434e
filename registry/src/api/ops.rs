//! Registry operations shared by the gRPC and HTTP APIs.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::command::{Command, CommandResponse};
use crate::error::{Error, Result};
use crate::model::{
    validate, Application, Instance, InstanceKey, InstanceSpec, Namespace, ServiceRevision,
};
use crate::node::{Node, ReadOptions};
use crate::selector::Selector;

/// A read's result and the revision it was read at.
#[derive(Debug)]
pub struct Read<T> {
    /// The result.
    pub value: T,
    /// Registry revision of the state it was read from.
    pub revision: u64,
    /// Revision of the last change in the namespace read (for blocking queries).
    pub namespace_revision: u64,
}

fn unexpected(resp: &CommandResponse) -> Error {
    Error::Internal(format!("unexpected command response {resp:?}"))
}

/// Checks that `ns` is a valid name of an existing namespace.
///
/// # Errors
/// [`Error::InvalidArgument`] or [`Error::NotFound`].
pub fn require_namespace(node: &Node, field: &str, ns: &str) -> Result<()> {
    validate::namespace(field, ns)?;
    if !node.shared().read().registry.has_namespace(ns) {
        return Err(Error::NotFound {
            kind: "namespace".into(),
            name: ns.into(),
            hint: format!(" ({field}); create it first"),
        });
    }
    Ok(())
}

/// Registers (creates or replaces) a batch of instances, all or nothing.
/// Returns the revision and the ids of the instances.
///
/// # Errors
/// [`Error::InvalidArgument`] naming `instances[i].<field>`, or
/// [`Error::NotFound`] for an unknown namespace or session.
pub async fn register(node: &Node, specs: Vec<InstanceSpec>) -> Result<(u64, Vec<String>)> {
    if specs.is_empty() {
        return Err(Error::invalid(
            "instances",
            "at least one instance is required",
        ));
    }
    if specs.len() > validate::MAX_BATCH {
        return Err(Error::invalid(
            "instances",
            format!(
                "{} instances; at most {} per request",
                specs.len(),
                validate::MAX_BATCH
            ),
        ));
    }
    let mut entries = Vec::with_capacity(specs.len());
    for (i, s) in specs.into_iter().enumerate() {
        entries.push(validate::registration(&format!("instances[{i}]"), s)?);
    }
    let ids = entries.iter().map(|e| e.instance.id.clone()).collect();
    let cmd = Command::Register { entries };
    let size = postcard::experimental::serialized_size(&cmd).unwrap_or(usize::MAX);
    if size > validate::MAX_COMMAND_BYTES {
        return Err(Error::invalid(
            "instances",
            format!(
                "the request takes {size} bytes in the log; at most {} per request: split the batch",
                validate::MAX_COMMAND_BYTES
            ),
        ));
    }
    match node.write(cmd).await? {
        CommandResponse::Applied { revision, .. } => Ok((revision, ids)),
        other => Err(unexpected(&other)),
    }
}

/// Removes instances; keys that do not exist are ignored. Returns the
/// revision and how many were removed.
///
/// # Errors
/// [`Error::InvalidArgument`] for a malformed key, [`Error::NotFound`] for
/// an unknown namespace.
pub async fn deregister(node: &Node, keys: Vec<InstanceKey>) -> Result<(u64, u32)> {
    if keys.is_empty() {
        return Err(Error::invalid("keys", "at least one key is required"));
    }
    if keys.len() > validate::MAX_BATCH {
        return Err(Error::invalid(
            "keys",
            format!("at most {} per request", validate::MAX_BATCH),
        ));
    }
    for (i, k) in keys.iter().enumerate() {
        require_namespace(node, &format!("keys[{i}].namespace"), &k.namespace)?;
        validate::app(&format!("keys[{i}].app"), &k.app)?;
        validate::instance_id(&format!("keys[{i}].id"), &k.id)?;
    }
    match node.write(Command::Deregister { keys }).await? {
        CommandResponse::Applied { revision, count } => Ok((revision, count)),
        other => Err(unexpected(&other)),
    }
}

/// Grants a session. Returns (id, ttl_ms, revision).
///
/// # Errors
/// [`Error::InvalidArgument`] for a TTL out of range.
pub async fn grant_session(node: &Node, ttl_ms: u64) -> Result<(u64, u64, u64)> {
    validate::ttl_ms("ttl_ms", ttl_ms)?;
    match node.write(Command::GrantSession { ttl_ms }).await? {
        CommandResponse::SessionGranted {
            id,
            ttl_ms,
            revision,
        } => {
            // Start its clock now rather than at the next lessor check.
            let _ = node.keepalive(id).await;
            Ok((id, ttl_ms, revision))
        }
        other => Err(unexpected(&other)),
    }
}

/// Revokes a session and removes its instances. Returns (revision, removed).
///
/// # Errors
/// [`Error::NotFound`] for an unknown or expired session.
pub async fn revoke_session(node: &Node, id: u64) -> Result<(u64, u32)> {
    if node.shared().read().registry.session_ttl(id).is_none() {
        return Err(Error::NotFound {
            kind: "session".into(),
            name: id.to_string(),
            hint: "; it expired or was already revoked".into(),
        });
    }
    match node
        .write(Command::RevokeSessions { ids: vec![id] })
        .await?
    {
        CommandResponse::Applied { revision, count } => Ok((revision, count)),
        other => Err(unexpected(&other)),
    }
}

/// Runs `f` on the applied registry after the read barrier, checking that
/// the namespace exists.
async fn read_ns<T>(
    node: &Node,
    ns: &str,
    opts: ReadOptions,
    f: impl FnOnce(&crate::state::Registry) -> T,
) -> Result<Read<T>> {
    require_namespace(node, "namespace", ns)?;
    node.read_barrier(opts).await?;
    let s = node.shared().read();
    Ok(Read {
        value: f(&s.registry),
        revision: s.registry.revision(),
        namespace_revision: s.registry.namespace_revision(ns),
    })
}

/// Instances of `ns` matching `sel`, sorted by (app, id).
///
/// # Errors
/// Invalid selector, unknown namespace, or the read barrier's errors.
pub async fn list(
    node: &Node,
    ns: &str,
    sel: &Selector,
    opts: ReadOptions,
) -> Result<Read<Vec<Arc<Instance>>>> {
    sel.validate("selector")?;
    read_ns(node, ns, opts, |r| r.list(ns, sel)).await
}

/// One instance.
///
/// # Errors
/// [`Error::NotFound`] when it does not exist.
pub async fn get(node: &Node, key: &InstanceKey, opts: ReadOptions) -> Result<Read<Arc<Instance>>> {
    validate::app("key.app", &key.app)?;
    validate::instance_id("key.id", &key.id)?;
    let r = read_ns(node, &key.namespace, opts, |r| r.get(key)).await?;
    let value = r
        .value
        .ok_or_else(|| Error::not_found("instance", key.to_string()))?;
    Ok(Read {
        value,
        revision: r.revision,
        namespace_revision: r.namespace_revision,
    })
}

/// Applications of a namespace.
///
/// # Errors
/// Unknown namespace or the read barrier's errors.
pub async fn applications(
    node: &Node,
    ns: &str,
    opts: ReadOptions,
) -> Result<Read<Vec<Application>>> {
    read_ns(node, ns, opts, |r| r.applications(ns)).await
}

/// ServiceMapping: applications exposing `service`.
///
/// # Errors
/// Invalid service name, unknown namespace or the read barrier's errors.
pub async fn resolve(
    node: &Node,
    ns: &str,
    service: &str,
    opts: ReadOptions,
) -> Result<Read<Vec<String>>> {
    validate::service_name("service", service)?;
    read_ns(node, ns, opts, |r| r.resolve(ns, service)).await
}

/// One service revision.
///
/// # Errors
/// [`Error::NotFound`] when no live instance advertises it.
pub async fn service_revision(
    node: &Node,
    ns: &str,
    app: &str,
    revision: &str,
    opts: ReadOptions,
) -> Result<Read<ServiceRevision>> {
    validate::app("app", app)?;
    validate::name("revision", revision, 128)?;
    let r = read_ns(node, ns, opts, |r| r.service_revision(ns, app, revision)).await?;
    let value = r
        .value
        .ok_or_else(|| Error::not_found("service revision", format!("{ns}/{app}/{revision}")))?;
    Ok(Read {
        value,
        revision: r.revision,
        namespace_revision: r.namespace_revision,
    })
}

/// Every namespace.
///
/// # Errors
/// The read barrier's errors.
pub async fn namespaces(node: &Node, opts: ReadOptions) -> Result<(Vec<Namespace>, u64)> {
    node.read_barrier(opts).await?;
    let s = node.shared().read();
    Ok((s.registry.namespaces(), s.registry.revision()))
}

/// Creates a namespace. Returns the revision.
///
/// # Errors
/// Invalid name or labels, or [`Error::AlreadyExists`].
pub async fn create_namespace(
    node: &Node,
    name: String,
    labels: BTreeMap<String, String>,
) -> Result<u64> {
    validate::namespace("name", &name)?;
    validate::labels("labels", &labels)?;
    match node
        .write(Command::CreateNamespace { name, labels })
        .await?
    {
        CommandResponse::Applied { revision, .. } => Ok(revision),
        other => Err(unexpected(&other)),
    }
}

/// Deletes an empty namespace. Returns the revision.
///
/// # Errors
/// [`Error::NotFound`], or [`Error::FailedPrecondition`] when it still has
/// instances or is `default`.
pub async fn delete_namespace(node: &Node, name: String) -> Result<u64> {
    validate::namespace("name", &name)?;
    match node.write(Command::DeleteNamespace { name }).await? {
        CommandResponse::Applied { revision, .. } => Ok(revision),
        other => Err(unexpected(&other)),
    }
}
