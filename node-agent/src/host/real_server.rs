//! A real server's part of the host, in one path: DirectRouting VIPs on the
//! dummy device `lvs0` with the ARP sysctls, Tunnel VIPs on their tunnel's
//! device with `rp_filter` relaxed. Every device's
//! settings are in place before a VIP appears on it, or neighbours may learn this
//! host's MAC for the VIP.

use std::{collections::BTreeMap, net::IpAddr};

use lvs_crds::{
    lvs_node::{RealServerMode, RealServerVip},
    virtual_service::TunnelEncapsulation,
};

use super::{
    address,
    changes::{DeviceAddress, HostChanges},
    error::{Cause, HostError},
    link,
    sysctl::{self, Sysctls},
    tunnel,
};

/// The dummy device that holds a real server's DirectRouting VIPs: dummy devices
/// are NOARP, so the VIP is never announced from it.
pub const VIP_DEVICE: &str = "lvs0";

/// Where each VIP goes: its device.
pub fn vip_addresses(vips: &[RealServerVip]) -> Vec<DeviceAddress> {
    vips.iter().map(|vip| DeviceAddress { device: device_name(vip).into(), address: vip.address }).collect()
}

fn device_name(vip: &RealServerVip) -> &'static str {
    match vip.mode {
        RealServerMode::DirectRouting => VIP_DEVICE,
        RealServerMode::Tunnel => tunnel_device(vip).name,
    }
}

fn tunnel_device(vip: &RealServerVip) -> tunnel::TunnelDevice {
    tunnel::device_for(vip.tunnel.as_ref().map(|t| t.encapsulation).unwrap_or_default(), vip.address)
}

/// Configures this host as a real server of `vips`: each device with its
/// settings, then its VIPs in one batch. Returns the VIPs that could not be
/// configured, each with why; the others are in place.
pub fn configure(
    changes: &mut HostChanges,
    sysctls: &Sysctls,
    vips: &[RealServerVip],
) -> Vec<(IpAddr, HostError)> {
    let mut by_device: BTreeMap<&'static str, Vec<&RealServerVip>> = BTreeMap::new();
    for vip in vips {
        by_device.entry(device_name(vip)).or_default().push(vip);
    }
    let mut failures = Vec::new();
    for (device, vips) in by_device {
        let prepared = match vips[0].mode {
            RealServerMode::DirectRouting => link::ensure_dummy(changes, device)
                .and_then(|()| sysctls.apply(changes, &sysctl::real_server_dr(device))),
            RealServerMode::Tunnel => tunnel::ensure(changes, &tunnel_device(vips[0]))
                .and_then(|()| sysctls.apply(changes, &sysctl::real_server_tun(device))),
        };
        if let Err(e) = prepared {
            failures.extend(vips.iter().map(|vip| (vip.address, e.clone())));
            continue;
        }
        let mut ready = Vec::new();
        for vip in vips {
            // GUE arrives on a UDP port that the fou module must be told to open
            // (its generic-netlink family): not done yet, so say so rather than
            // hold a VIP that receives nothing.
            if vip.tunnel.as_ref().is_some_and(|t| t.encapsulation == TunnelEncapsulation::Gue) {
                let why = Cause::Unsupported("GUE real servers are not supported yet".into());
                failures
                    .push((vip.address, HostError::new(format!("receiving {} over GUE", vip.address), why)));
            } else {
                ready.push(DeviceAddress { device: device.into(), address: vip.address });
            }
        }
        failures.extend(address::add_addresses(changes, &ready).into_iter().map(|(a, e)| (a.address, e)));
    }
    failures
}
