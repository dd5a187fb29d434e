//! Deterministic synthetic workload: instances spread over ~1,000
//! applications, 5 zones, 3 versions and 4 environments, mostly SERVING.
//!
//! The same seed always yields the same instances, so figures from
//! different runs and machines describe the same registry.
//!
//! Shape of one instance (index `i`, application `a`):
//! - namespace `default`, app `app-0042`, address `10.x.y.z` derived from
//!   `i` (unique for `i < 2^24`), one port `grpc: 9090`, so the id is
//!   `10.x.y.z:9090`;
//! - region `region-1`, zone `zone-a`..`zone-e` (uniform);
//! - labels `version` = `v1` (60 %), `v2` (30 %), `v3` (10 %) and
//!   `env` = `prod` (50 %), `staging` (20 %), `test` (15 %), `dev` (15 %);
//! - health SERVING 90 %, WARNING 4 %, NOT_SERVING 3 %, DRAINING 2 %,
//!   UNKNOWN 1 %;
//! - one metadata entry (`pod`);
//! - the application's services: 1 to 3 gRPC services, the same for every
//!   instance of the application, so all of them share one revision.

use std::collections::BTreeMap;

use anyhow::{bail, Context};
use meshreg_registry::command::{Command, CommandResponse};
use meshreg_registry::model::validate;
use meshreg_registry::model::{
    Health, InstanceSpec, Locality, Registration, ServiceDef, DEFAULT_NAMESPACE,
};
use meshreg_registry::state::Registry;

/// Number of applications the instances are spread over.
pub const APPS: usize = 1_000;

/// Zone names; every instance is in region [`REGION`].
pub const ZONES: [&str; 5] = ["zone-a", "zone-b", "zone-c", "zone-d", "zone-e"];

/// The one region.
pub const REGION: &str = "region-1";

/// Name of application number `a`.
pub fn app_name(a: usize) -> String {
    format!("app-{a:04}")
}

/// Generator of [`InstanceSpec`]s; see the module doc for their shape.
#[derive(Debug)]
pub struct Workload {
    rng: fastrand::Rng,
    /// Services of each application, indexed by application number.
    services: Vec<Vec<ServiceDef>>,
}

impl Workload {
    /// A generator seeded with `seed`. Applications and their services
    /// depend only on the seed.
    pub fn new(seed: u64) -> Self {
        let mut rng = fastrand::Rng::with_seed(seed);
        let services = (0..APPS)
            .map(|a| {
                (0..rng.usize(1..=3))
                    .map(|k| ServiceDef {
                        name: format!("com.example.app{a:04}.Service{k}"),
                        protocol: "grpc".into(),
                        port_name: String::new(),
                        params: BTreeMap::new(),
                    })
                    .collect()
            })
            .collect();
        Self { rng, services }
    }

    /// The spec of instance number `i` (which fixes its address and id);
    /// application, zone, labels and health are drawn from the generator.
    pub fn spec(&mut self, i: u32) -> InstanceSpec {
        let rng = &mut self.rng;
        let a = rng.usize(..APPS);
        let version = match rng.u32(..100) {
            0..60 => "v1",
            60..90 => "v2",
            _ => "v3",
        };
        let env = match rng.u32(..100) {
            0..50 => "prod",
            50..70 => "staging",
            70..85 => "test",
            _ => "dev",
        };
        let health = match rng.u32(..100) {
            0..90 => Health::Serving,
            90..94 => Health::Warning,
            94..97 => Health::NotServing,
            97..99 => Health::Draining,
            _ => Health::Unknown,
        };
        let zone = ZONES[rng.usize(..ZONES.len())];
        let app = app_name(a);
        InstanceSpec {
            namespace: DEFAULT_NAMESPACE.into(),
            address: format!("10.{}.{}.{}", (i >> 16) & 0xff, (i >> 8) & 0xff, i & 0xff),
            ports: BTreeMap::from([("grpc".to_string(), 9090)]),
            labels: BTreeMap::from([
                ("version".to_string(), version.to_string()),
                ("env".to_string(), env.to_string()),
            ]),
            metadata: BTreeMap::from([("pod".to_string(), format!("{app}-{i}"))]),
            health: Some(health),
            locality: Locality {
                region: REGION.into(),
                zone: zone.into(),
                subzone: String::new(),
            },
            services: self.services[a].clone(),
            app,
            ..Default::default()
        }
    }

    /// Validated registrations of instances `range`, as a client's request
    /// would produce them.
    ///
    /// # Errors
    /// When a generated spec fails validation (a bug in this generator).
    pub fn registrations(
        &mut self,
        range: std::ops::Range<u32>,
    ) -> anyhow::Result<Vec<Registration>> {
        range
            .map(|i| {
                let spec = self.spec(i);
                validate::registration(&format!("instances[{i}]"), spec)
                    .context("generated spec is invalid")
            })
            .collect()
    }

    /// Registers instances `range` into `reg` with `Register` commands of
    /// `batch` instances each.
    ///
    /// # Errors
    /// When a spec fails validation or a command is rejected.
    pub fn register(
        &mut self,
        reg: &mut Registry,
        range: std::ops::Range<u32>,
        batch: u32,
    ) -> anyhow::Result<()> {
        let mut start = range.start;
        while start < range.end {
            let end = range.end.min(start.saturating_add(batch.max(1)));
            let entries = self.registrations(start..end)?;
            let want = entries.len();
            match reg.apply(&Command::Register { entries }) {
                CommandResponse::Applied { count, .. } if count as usize == want => {}
                other => bail!("register of instances {start}..{end}: {other:?}"),
            }
            start = end;
        }
        Ok(())
    }
}

/// A registry holding instances `0..n` of `Workload::new(seed)`, registered
/// with `Register` commands of `batch` instances each.
///
/// # Errors
/// When a spec fails validation or a command is rejected.
pub fn build_registry(
    n: u32,
    seed: u64,
    batch: u32,
    feed_capacity: usize,
) -> anyhow::Result<Registry> {
    let mut reg = Registry::new(feed_capacity);
    Workload::new(seed).register(&mut reg, 0..n, batch)?;
    Ok(reg)
}
