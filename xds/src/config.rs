//! xDS server settings (the `[xds]` section of the server's TOML config).

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
}

impl Default for XdsConfig {
    fn default() -> Self {
        Self {
            debounce_quiet_ms: 100,
            debounce_max_ms: 1_000,
            requests_per_second: 50,
            request_burst: 200,
            cache_max_entries: 100_000,
        }
    }
}
