//! xDS server settings: the `[xds]` section of the TOML config of
//! `meshreg server` and of `meshreg-bridge`.

use serde::{Deserialize, Serialize};

/// xDS server settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct XdsConfig {
    /// Push after the registry has been quiet this long, ms.
    pub debounce_quiet_ms: u64,
    /// ...but no later than this after the first change, ms.
    pub debounce_max_ms: u64,
    /// Sustained requests per second one ADS stream may send.
    pub requests_per_second: u32,
    /// Requests one ADS stream may send in a burst.
    pub request_burst: u32,
    /// Most resources kept built in the shared cache.
    pub cache_max_entries: usize,
    /// Serve imported records (those with a provenance) to other meshregs'
    /// MCP sinks too. Off by default: a meshreg sink (node id starting with
    /// `meshreg-sink-`) gets natively registered instances only, so two
    /// meshregs importing from each other never send each other's records
    /// back (the loop guard, [`crate::mcp::Export::NativeOnly`]). The
    /// `meshreg-bridge` binary turns it on: re-serving what it imports is
    /// its whole job.
    pub export_imported_to_meshreg: bool,
}

impl Default for XdsConfig {
    fn default() -> Self {
        Self {
            debounce_quiet_ms: 100,
            debounce_max_ms: 1_000,
            requests_per_second: 50,
            request_burst: 200,
            cache_max_entries: 100_000,
            export_imported_to_meshreg: false,
        }
    }
}
