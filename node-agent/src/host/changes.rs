//! The record of what the agent changed on the host: every other module of
//! `host` writes into it, and nothing in it calls them back (the undo lives in
//! the parent module, which depends on all of them).

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::IpAddr,
};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// What the agent changed on the host, so it can be undone.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct HostChanges {
    /// The value each sysctl key had before the agent first changed it.
    pub sysctls: BTreeMap<String, String>,
    /// Devices the agent created (e.g. the dummy device `lvs0`).
    pub created_devices: BTreeSet<String>,
    /// Devices that were down until the agent brought them up (e.g. `tunl0`).
    pub raised_devices: BTreeSet<String>,
    /// Addresses the agent added, with their device.
    pub addresses: BTreeSet<DeviceAddress>,
    /// Local routes the agent added, each holding a block of VIPs (see
    /// [`super::local_routes`]).
    pub routes: BTreeSet<DeviceRoute>,
    /// Whether the agent's nftables table exists (see [`super::nat`]).
    pub nft_table: bool,
    /// The real servers that table masquerades to, as last loaded (what a dry
    /// run compares with).
    #[serde(skip_serializing_if = "BTreeSet::is_empty")]
    pub masqueraded: BTreeSet<IpAddr>,
    /// GUE ports the agent opened on a real server (see [`super::fou`]).
    pub gue_ports: BTreeSet<GuePort>,
    /// Whether what is already in place of the desired host part is recorded
    /// as the agent's (adopted): only while the record is lost (a state file
    /// that could not be trusted), until the first full round.
    #[serde(skip)]
    pub adopt: bool,
}

/// A UDP port on which the kernel's fou module receives GUE, for one family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct GuePort {
    pub port: u16,
    pub ipv6: bool,
}

impl fmt::Display for GuePort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.port, if self.ipv6 { "ipv6" } else { "ipv4" })
    }
}

/// An address on a device.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DeviceAddress {
    pub device: String,
    pub address: IpAddr,
}

impl HostChanges {
    /// True when the agent has nothing on the host to undo.
    pub fn is_empty(&self) -> bool {
        let HostChanges {
            sysctls,
            created_devices,
            raised_devices,
            addresses,
            routes,
            nft_table,
            masqueraded: _,
            gue_ports,
            adopt: _,
        } = self;
        sysctls.is_empty()
            && created_devices.is_empty()
            && raised_devices.is_empty()
            && addresses.is_empty()
            && routes.is_empty()
            && !nft_table
            && gue_ports.is_empty()
    }
}

/// A local route on a device, holding a block of VIPs.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DeviceRoute {
    pub device: String,
    pub block: IpNet,
}
