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
    sysctl::{self, Setting, Sysctls},
    tunnel,
};
use netlink_packet_route::link::InfoKind;

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

/// One device of a real server, as [`configure`] prepares it: made if absent
/// (the dummy `lvs0`, or a tunnel module's device) and up, its sysctls, then
/// its VIPs.
#[derive(Debug, Clone, PartialEq)]
pub struct RealServerDevice<'a> {
    pub name: &'static str,
    /// The tunnel device; `None` for the dummy device of DirectRouting VIPs.
    pub tunnel: Option<tunnel::TunnelDevice>,
    pub sysctls: Vec<Setting>,
    pub vips: Vec<&'a RealServerVip>,
}

impl RealServerDevice<'_> {
    /// The device's kind, as it is made.
    pub fn kind(&self) -> InfoKind {
        self.tunnel.as_ref().map_or(InfoKind::Dummy, |t| t.kind().clone())
    }
}

/// The devices that `vips` need, by name, each with its VIPs.
pub fn devices(vips: &[RealServerVip]) -> Vec<RealServerDevice<'_>> {
    let mut by_device: BTreeMap<&'static str, Vec<&RealServerVip>> = BTreeMap::new();
    for vip in vips {
        by_device.entry(device_name(vip)).or_default().push(vip);
    }
    by_device
        .into_iter()
        .map(|(name, vips)| match vips[0].mode {
            RealServerMode::DirectRouting => {
                RealServerDevice { name, tunnel: None, sysctls: sysctl::real_server_dr(name), vips }
            }
            RealServerMode::Tunnel => RealServerDevice {
                name,
                tunnel: Some(tunnel_device(vips[0])),
                sysctls: sysctl::real_server_tun(name),
                vips,
            },
        })
        .collect()
}

/// The steps of a real server's configuration, each one change: taken on
/// the host by [`super::OnHost`], recorded by a dry run. [`configure_with`]
/// is their one order.
pub trait RealServerSteps {
    /// Makes `device` if it is absent, and raises it.
    fn ensure_device(
        &self,
        changes: &mut HostChanges,
        device: &RealServerDevice<'_>,
    ) -> Result<(), HostError>;
    fn set_sysctls(&self, changes: &mut HostChanges, settings: &[Setting]) -> Result<(), HostError>;
    /// Opens GUE's UDP port `port`, unless fou holds it already.
    fn open_gue_port(&self, changes: &mut HostChanges, port: GuePort) -> Result<(), HostError>;
    /// Adds the addresses that are absent.
    fn add_addresses(
        &self,
        changes: &mut HostChanges,
        addresses: &[DeviceAddress],
    ) -> Vec<(DeviceAddress, HostError)>;
}

/// Configures this host as a real server of `vips`: each device with its
/// settings, then its VIPs in one batch. Returns the VIPs that could not be
/// configured, each with why; the others are in place.
pub fn configure(
    changes: &mut HostChanges,
    sysctls: &Sysctls,
    vips: &[RealServerVip],
) -> Vec<(IpAddr, HostError)> {
    configure_with(&super::OnHost(sysctls), changes, vips)
}

/// [`configure`]'s order, with `steps` taking each step.
pub fn configure_with(
    steps: &impl RealServerSteps,
    changes: &mut HostChanges,
    vips: &[RealServerVip],
) -> Vec<(IpAddr, HostError)> {
    let mut failures = Vec::new();
    // Ports a VIP uses and that are open; a port that failed to open is retried
    // for its next VIP, which then reports its own failure.
    let mut open_ports = BTreeSet::new();
    for device in devices(vips) {
        let made = steps.ensure_device(changes, &device);
        if let Err(e) = made.and_then(|()| steps.set_sysctls(changes, &device.sysctls)) {
            failures.extend(device.vips.iter().map(|vip| (vip.address, e.clone())));
            continue;
        }
        let mut ready = Vec::new();
        for vip in &device.vips {
            let address = DeviceAddress { device: device.name.into(), address: vip.address };
            // GUE arrives on a UDP port that the fou module must open; without
            // it the VIP would receive nothing, so it is not taken.
            match gue_port(vip) {
                Some(Err(e)) => failures.push((vip.address, e)),
                Some(Ok(port)) if !open_ports.contains(&port) => match steps.open_gue_port(changes, port) {
                    Ok(()) => {
                        open_ports.insert(port);
                        ready.push(address);
                    }
                    Err(e) => failures.push((vip.address, e)),
                },
                _ => ready.push(address),
            }
        }
        failures.extend(steps.add_addresses(changes, &ready).into_iter().map(|(a, e)| (a.address, e)));
    }
    failures
}

impl RealServerSteps for super::OnHost<'_> {
    fn ensure_device(
        &self,
        changes: &mut HostChanges,
        device: &RealServerDevice<'_>,
    ) -> Result<(), HostError> {
        match &device.tunnel {
            None => link::ensure_dummy(changes, device.name),
            Some(tunnel) => tunnel::ensure(changes, tunnel),
        }
    }

    fn set_sysctls(&self, changes: &mut HostChanges, settings: &[Setting]) -> Result<(), HostError> {
        self.0.apply(changes, settings)
    }

    fn open_gue_port(&self, changes: &mut HostChanges, port: GuePort) -> Result<(), HostError> {
        fou::open_gue_port(changes, port)
    }

    fn add_addresses(
        &self,
        changes: &mut HostChanges,
        addresses: &[DeviceAddress],
    ) -> Vec<(DeviceAddress, HostError)> {
        address::add_addresses(changes, addresses)
    }
}

/// Whether the GUE port `port` is open (read only).
pub fn gue_port_open(port: GuePort) -> Result<bool, HostError> {
    fou::gue_port_open(port)
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
pub fn gue_port(vip: &RealServerVip) -> Option<Result<GuePort, HostError>> {
    let tunnel = vip.tunnel.as_ref().filter(|t| t.encapsulation == TunnelEncapsulation::Gue)?;
    Some(match tunnel.port {
        Some(port) => Ok(GuePort { port, ipv6: vip.address.is_ipv6() }),
        None => Err(HostError::new(
            format!("receiving {} over GUE", vip.address),
            Cause::Unsupported("tunnel.port is not set: GUE needs the UDP port it arrives on".into()),
        )),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vip(address: &str, mode: RealServerMode) -> RealServerVip {
        let yaml = format!(
            "{{address: '{address}', mode: {mode:?}, owner: {{namespace: default, name: web, uid: u1, generation: 1}}}}"
        );
        lvs_crds::yaml::from_str(&yaml).unwrap()
    }

    #[test]
    fn each_device_gets_its_kind_its_sysctls_and_its_vips() {
        let vips = [
            vip("192.168.16.100", RealServerMode::DirectRouting),
            vip("192.168.16.101", RealServerMode::Tunnel),
            vip("192.168.16.102", RealServerMode::DirectRouting),
        ];
        let devices = devices(&vips);
        let summary: Vec<_> = devices
            .iter()
            .map(|d| {
                (d.name, d.kind(), d.sysctls.len(), d.vips.iter().map(|v| v.address.to_string()).collect())
            })
            .collect();
        assert_eq!(
            summary,
            [
                (
                    "lvs0",
                    InfoKind::Dummy,
                    4,
                    vec!["192.168.16.100".to_string(), "192.168.16.102".to_string()]
                ),
                ("tunl0", InfoKind::IpIp, 6, vec!["192.168.16.101".to_string()]),
            ]
        );
        assert_eq!(devices[1].sysctls, sysctl::real_server_tun("tunl0"));
        assert_eq!(devices[1].tunnel, Some(tunnel::device_for(TunnelEncapsulation::Ipip, vips[1].address)));
    }
}
