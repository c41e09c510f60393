//! A real server's part of the host, in one path: DirectRouting VIPs on the
//! dummy device `lvs0` with the ARP sysctls, Tunnel VIPs on their tunnel's
//! device with `rp_filter` relaxed, and GUE's UDP port open. Every device's
//! settings are in place before a VIP appears on it, or neighbours may learn this
//! host's MAC for the VIP.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use lvs_crds::{
    lvs_node::{RealServerMode, RealServerVip},
    virtual_service::TunnelEncapsulation,
};

use super::{
    address,
    changes::{DeviceAddress, GuePort, HostChanges},
    error::{Cause, HostError},
    fou, link,
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
    // Ports a VIP uses and that are open; a port that failed to open is retried
    // for its next VIP, which then reports its own failure.
    let mut open_ports = BTreeSet::new();
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
            // GUE arrives on a UDP port that the fou module must open; without
            // it the VIP would receive nothing, so it is not taken.
            match gue_port(vip) {
                Some(Err(e)) => failures.push((vip.address, e)),
                Some(Ok(port)) if !open_ports.contains(&port) => match fou::open_gue_port(changes, port) {
                    Ok(()) => {
                        open_ports.insert(port);
                        ready.push(DeviceAddress { device: device.into(), address: vip.address });
                    }
                    Err(e) => failures.push((vip.address, e)),
                },
                _ => ready.push(DeviceAddress { device: device.into(), address: vip.address }),
            }
        }
        failures.extend(address::add_addresses(changes, &ready).into_iter().map(|(a, e)| (a.address, e)));
    }
    failures
}

/// Closes the GUE ports the agent opened that no VIP of `vips` uses any more.
/// Returns those that could not be closed (they stay recorded).
pub fn close_unused_gue_ports(
    changes: &mut HostChanges,
    vips: &[RealServerVip],
) -> Vec<(GuePort, HostError)> {
    let wanted: BTreeSet<GuePort> = vips.iter().filter_map(|vip| gue_port(vip)?.ok()).collect();
    let unused: Vec<GuePort> = changes.gue_ports.difference(&wanted).copied().collect();
    unused
        .into_iter()
        .filter_map(|port| fou::close_gue_port(changes, port).err().map(|e| (port, e)))
        .collect()
}

/// The GUE port a VIP receives on, if it is a GUE VIP; an error if it has none.
fn gue_port(vip: &RealServerVip) -> Option<Result<GuePort, HostError>> {
    let tunnel = vip.tunnel.as_ref().filter(|t| t.encapsulation == TunnelEncapsulation::Gue)?;
    Some(match tunnel.port {
        Some(port) => Ok(GuePort { port, ipv6: vip.address.is_ipv6() }),
        None => Err(HostError::new(
            format!("receiving {} over GUE", vip.address),
            Cause::Unsupported("tunnel.port is not set: GUE needs the UDP port it arrives on".into()),
        )),
    })
}
