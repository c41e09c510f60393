//! Host configuration, owned and reversible: sysctls, addresses, the ipip tunnel,
//! the FullNAT masquerade table and gratuitous ARP / unsolicited NA.
//!
//! Everything the agent changes on the host is written into a [`HostChanges`]
//! record, which the caller persists in its state file under `--state-dir`, so
//! that [`HostChanges::undo`] can put the host back as it was, even after a
//! restart of the agent. The agent never undoes what it did not do: an address or
//! device that was already there is left alone.

pub mod address;
pub mod announce;
pub mod link;
pub mod nat;
mod nftables;
pub mod real_server;
mod rtnl;
pub mod sysctl;
pub mod tunnel;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

pub use sysctl::Sysctls;

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
    /// Whether the agent's nftables table exists (see [`nat`]).
    pub nft_table: bool,
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
        *self == Self::default()
    }

    /// Undoes every recorded change, in the reverse order of configuration: the
    /// masquerade table, the addresses, the devices, and the sysctls last (the
    /// ARP settings must outlive the VIPs they hide). Keeps going after a failure,
    /// so that one stuck item does not pin the others, and reports the failures;
    /// what could not be undone stays recorded.
    pub fn undo(&mut self, sysctls: &Sysctls) -> Result<()> {
        let mut failures = Vec::new();
        if let Err(e) = nat::remove_masquerade(self) {
            failures.push(format!("{e:#}"));
        }
        for owned in self.addresses.clone() {
            if let Err(e) = address::remove_address(self, &owned.device, owned.address) {
                failures.push(format!("{e:#}"));
            }
        }
        for device in self.raised_devices.clone() {
            if let Err(e) = link::lower_device(self, &device) {
                failures.push(format!("{e:#}"));
            }
        }
        for device in self.created_devices.clone() {
            if let Err(e) = link::delete_device(self, &device) {
                failures.push(format!("{e:#}"));
            }
        }
        if let Err(e) = sysctls.restore_all(self) {
            failures.push(format!("{e:#}"));
        }
        if failures.is_empty() { Ok(()) } else { bail!("host changes not undone: {}", failures.join("; ")) }
    }
}
