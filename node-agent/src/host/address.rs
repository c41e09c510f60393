//! Devices and addresses, through `ip` (iproute2): the dummy device `lvs0` that
//! holds a real server's VIPs, VIPs on a director's interface, and the local
//! addresses `--role auto` compares with the real servers.

use std::net::IpAddr;

use anyhow::{Context, Result};
use serde::Deserialize;

use super::{DeviceAddress, HostChanges, Sysctls, announce, run, sysctl};

/// The dummy device that holds a real server's VIPs: dummy devices are NOARP, so
/// the VIP is never announced from it.
pub const VIP_DEVICE: &str = "lvs0";

/// Configures a DR real server for `vip`: `lvs0`, its ARP sysctls (before the VIP
/// appears, or neighbours may learn this host's MAC for it), then the VIP on it.
pub fn configure_real_server(changes: &mut HostChanges, sysctls: &Sysctls, vip: IpAddr) -> Result<()> {
    ensure_dummy(changes, VIP_DEVICE)?;
    sysctls.apply(changes, &sysctl::real_server_dr(VIP_DEVICE))?;
    add_address(changes, VIP_DEVICE, vip)
}

/// A director takes `vip`: adds it to `interface` (if not there yet) and announces
/// it, so neighbours send its traffic here at once rather than to the previous
/// holder until their entries expire.
pub fn take_vip(changes: &mut HostChanges, interface: &str, vip: IpAddr) -> Result<()> {
    add_address(changes, interface, vip)?;
    announce::announce(interface, vip)
}

/// The device the kernel routes `address` through: where a VIP without an
/// explicit interface belongs.
pub fn route_device(address: IpAddr) -> Result<String> {
    let output = run("ip", &["-o", "route", "get", &address.to_string()])?;
    let mut words = output.split_whitespace();
    while let Some(word) = words.next() {
        if word == "dev" {
            return words.next().map(str::to_string).context("no device after `dev`");
        }
    }
    anyhow::bail!("no route to {address}: set spec.directors.interface")
}

/// A director gives `vip` up: removes it from `interface` if the agent added it.
pub fn release_vip(changes: &mut HostChanges, interface: &str, vip: IpAddr) -> Result<()> {
    remove_address(changes, interface, vip)
}

/// One device as `ip -json addr show` prints it (the fields used here).
#[derive(Debug, Deserialize)]
struct Link {
    ifname: String,
    #[serde(default)]
    flags: Vec<String>,
    #[serde(default)]
    addr_info: Vec<AddrInfo>,
}

#[derive(Debug, Deserialize)]
struct AddrInfo {
    local: IpAddr,
}

fn links(device: Option<&str>) -> Result<Vec<Link>> {
    let mut args = vec!["-json", "address", "show"];
    args.extend(device.map(|device| ["dev", device]).into_iter().flatten());
    let output = run("ip", &args)?;
    serde_json::from_str(&output).with_context(|| format!("unexpected output of `ip {}`", args.join(" ")))
}

/// Whether a device of this name exists.
pub fn device_exists(device: &str) -> bool {
    links(Some(device)).is_ok_and(|links| !links.is_empty())
}

fn is_up(device: &str) -> Result<bool> {
    Ok(links(Some(device))?.iter().any(|link| link.flags.iter().any(|flag| flag == "UP")))
}

/// Makes sure the dummy device `name` exists and is up. It is created only when
/// absent, and then recorded, so that undo deletes only a device the agent made.
pub fn ensure_dummy(changes: &mut HostChanges, name: &str) -> Result<()> {
    if !device_exists(name) {
        run("ip", &["link", "add", name, "type", "dummy"])?;
        // No IPv6 link-local address: the device only holds VIPs. (Fails, harmlessly,
        // where IPv6 is disabled.)
        let _ = run("ip", &["link", "set", name, "addrgenmode", "none"]);
        changes.created_devices.insert(name.to_string());
    }
    raise_device(changes, name)
}

/// Brings `device` up; recorded when it was down, so that undo brings it down.
pub fn raise_device(changes: &mut HostChanges, device: &str) -> Result<()> {
    if !is_up(device)? {
        run("ip", &["link", "set", device, "up"])?;
        if !changes.created_devices.contains(device) {
            changes.raised_devices.insert(device.to_string());
        }
    }
    Ok(())
}

/// Brings down a device the agent brought up, and forgets it.
pub fn lower_device(changes: &mut HostChanges, device: &str) -> Result<()> {
    if changes.raised_devices.contains(device) && device_exists(device) {
        run("ip", &["link", "set", device, "down"])?;
    }
    changes.raised_devices.remove(device);
    Ok(())
}

/// Deletes a device the agent created, and forgets it; any other is left alone.
pub fn delete_device(changes: &mut HostChanges, device: &str) -> Result<()> {
    if changes.created_devices.contains(device) && device_exists(device) {
        run("ip", &["link", "delete", device])?;
    }
    changes.created_devices.remove(device);
    Ok(())
}

/// The addresses of `device`.
pub fn addresses(device: &str) -> Result<Vec<IpAddr>> {
    Ok(links(Some(device))?.into_iter().flat_map(|link| link.addr_info).map(|info| info.local).collect())
}

/// Every address of this host (of the agent's network namespace), with its device.
pub fn local_addresses() -> Result<Vec<DeviceAddress>> {
    Ok(links(None)?
        .into_iter()
        .flat_map(|link| {
            let device = link.ifname;
            link.addr_info
                .into_iter()
                .map(move |info| DeviceAddress { device: device.clone(), address: info.local })
        })
        .collect())
}

/// Adds `address` as a host address (/32 or /128) on `device`. Recorded only when
/// the agent added it: an address that is already there belongs to someone else.
/// IPv6 addresses skip duplicate address detection, which would hold a VIP
/// (present on several hosts by design) tentative.
pub fn add_address(changes: &mut HostChanges, device: &str, address: IpAddr) -> Result<()> {
    if addresses(device)?.contains(&address) {
        return Ok(());
    }
    let prefix = if address.is_ipv4() { format!("{address}/32") } else { format!("{address}/128") };
    let mut args = vec!["address", "add", prefix.as_str(), "dev", device];
    if address.is_ipv6() {
        args.push("nodad");
    }
    run("ip", &args)?;
    changes.addresses.insert(DeviceAddress { device: device.to_string(), address });
    Ok(())
}

/// Removes `address` from `device` if the agent added it, and forgets it; an
/// address the agent did not add is never removed.
pub fn remove_address(changes: &mut HostChanges, device: &str, address: IpAddr) -> Result<()> {
    let owned = DeviceAddress { device: device.to_string(), address };
    if !changes.addresses.contains(&owned) {
        return Ok(());
    }
    if device_exists(device) && addresses(device)?.contains(&address) {
        let prefix = if address.is_ipv4() { format!("{address}/32") } else { format!("{address}/128") };
        run("ip", &["address", "delete", &prefix, "dev", device])?;
    }
    changes.addresses.remove(&owned);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ip_json_output() {
        let output = r#"[{"ifindex":1,"ifname":"lo","flags":["LOOPBACK","UP","LOWER_UP"],"mtu":65536,
            "addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8},{"family":"inet6","local":"::1","prefixlen":128}]},
            {"ifindex":3,"ifname":"lvs0","flags":["BROADCAST","NOARP"],"addr_info":[]}]"#;
        let links: Vec<Link> = serde_json::from_str(output).unwrap();
        assert_eq!(links[0].ifname, "lo");
        assert!(links[0].flags.contains(&"UP".to_string()));
        let addresses: Vec<IpAddr> = links[0].addr_info.iter().map(|info| info.local).collect();
        assert_eq!(addresses, ["127.0.0.1".parse::<IpAddr>().unwrap(), "::1".parse().unwrap()]);
        assert!(links[1].addr_info.is_empty());
    }
}
