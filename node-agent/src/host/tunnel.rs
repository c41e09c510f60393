//! The receiving end of IPIP tunnelling on a TUN real server: the ipip module's
//! fallback device `tunl0`, up and holding the VIP, with reverse-path filtering
//! relaxed (see [`super::sysctl::real_server_tun`]).

use std::net::IpAddr;

use anyhow::{Result, bail};

use super::{HostChanges, Sysctls, address, run, sysctl};

/// The fallback device the ipip module creates in every network namespace; it
/// decapsulates IPIP packets addressed to any local address.
pub const TUNNEL_DEVICE: &str = "tunl0";

/// Makes sure the ipip module is loaded, so that `tunl0` exists. `modprobe` may be
/// missing or not allowed (in a container); creating an ipip link makes the
/// kernel load the module itself, and the probe link is deleted again.
pub fn ensure_ipip() -> Result<()> {
    if address::device_exists(TUNNEL_DEVICE) {
        return Ok(());
    }
    let _ = run("modprobe", &["ipip"]);
    if !address::device_exists(TUNNEL_DEVICE) {
        let probe = "lvs-ipip-probe";
        if run("ip", &["link", "add", probe, "type", "ipip"]).is_ok() {
            let _ = run("ip", &["link", "delete", probe]);
        }
    }
    if !address::device_exists(TUNNEL_DEVICE) {
        bail!("no {TUNNEL_DEVICE}: the ipip module could not be loaded (modprobe ipip)");
    }
    Ok(())
}

/// Configures a TUN real server for `vip`: the sysctls first (the ARP settings
/// must be in place before the VIP appears), then `tunl0` up with the VIP.
pub fn configure_real_server(changes: &mut HostChanges, sysctls: &Sysctls, vip: IpAddr) -> Result<()> {
    ensure_ipip()?;
    sysctls.apply(changes, &sysctl::real_server_tun())?;
    address::raise_device(changes, TUNNEL_DEVICE)?;
    address::add_address(changes, TUNNEL_DEVICE, vip)
}
