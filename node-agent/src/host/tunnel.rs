//! The receiving end of IPVS tunnelling on a TUN real server: the tunnel module's
//! catch-all device for the encapsulation and the VIP's family, up and holding
//! the VIP, with reverse-path filtering relaxed (see
//! [`super::sysctl::real_server_tun`]).
//!
//! Each tunnel module makes a fallback device in every network namespace (`tunl0`
//! for ipip, `ip6tnl0`, `gre0`, `ip6gre0`) that decapsulates packets addressed to
//! any local address. The agent asks for a device of that name and kind: when
//! the module is not loaded yet, the kernel loads it (which makes the fallback
//! device, so the request finds the name taken); where fallback devices are
//! disabled (`net.core.fb_tunnels_only_for_init_net`), the agent's own device
//! of that name, with no endpoints, catches the same packets, and is recorded.

use std::net::IpAddr;

use lvs_crds::virtual_service::TunnelEncapsulation;
use netlink_packet_route::link::InfoKind;

use super::{
    changes::HostChanges,
    error::{Cause, HostError, Result},
    link,
};

/// The device that receives a tunnel's packets for a VIP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelDevice {
    pub name: &'static str,
    kind: InfoKind,
}

impl TunnelDevice {
    pub fn kind(&self) -> &InfoKind {
        &self.kind
    }
}

/// The fallback device of the ipip module, which IPv4 IPIP tunnels end on.
pub const TUNNEL_DEVICE: &str = "tunl0";

/// The device that decapsulates `encapsulation` for a VIP of `vip`'s family. IPVS
/// wraps IPv6 in IPv6 (ip6_tunnel), and GUE carries the same inner packets as
/// IPIP, so GUE ends on the IPIP devices once the UDP port delivers it.
pub fn device_for(encapsulation: TunnelEncapsulation, vip: IpAddr) -> TunnelDevice {
    let (name, kind) = match (encapsulation, vip.is_ipv4()) {
        (TunnelEncapsulation::Ipip | TunnelEncapsulation::Gue, true) => (TUNNEL_DEVICE, InfoKind::IpIp),
        (TunnelEncapsulation::Ipip | TunnelEncapsulation::Gue, false) => ("ip6tnl0", InfoKind::Ip6Tnl),
        (TunnelEncapsulation::Gre, true) => ("gre0", InfoKind::GreTun),
        (TunnelEncapsulation::Gre, false) => ("ip6gre0", InfoKind::GreTun6),
    };
    TunnelDevice { name, kind }
}

/// Makes sure `device` exists (loading its module if need be) and is up.
pub fn ensure(changes: &mut HostChanges, device: &TunnelDevice) -> Result<()> {
    link::create_device(changes, device.name, device.kind.clone())?;
    if !link::device_exists(device.name) {
        let why = format!("the kernel did not make the {} device", device.kind);
        return Err(HostError::new(format!("making {}", device.name), Cause::Unsupported(why)));
    }
    link::raise_device(changes, device.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_encapsulation_and_family_ends_on_its_fallback_device() {
        let (v4, v6): (IpAddr, IpAddr) =
            ("192.168.16.100".parse().unwrap(), "2001:db8::100".parse().unwrap());
        let name = |encapsulation, vip| device_for(encapsulation, vip).name;
        assert_eq!(name(TunnelEncapsulation::Ipip, v4), "tunl0");
        assert_eq!(name(TunnelEncapsulation::Gue, v4), "tunl0");
        assert_eq!(name(TunnelEncapsulation::Ipip, v6), "ip6tnl0");
        assert_eq!(name(TunnelEncapsulation::Gre, v4), "gre0");
        assert_eq!(name(TunnelEncapsulation::Gre, v6), "ip6gre0");
    }
}
