//! Network devices over rtnetlink: listing them, creating the agent's devices
//! (the dummy `lvs0`, tunnel devices), bringing them up and down, deleting them.
//! No `ip` process: the agent's image holds no such program.
//!
//! Creating a device of a kind whose module is not loaded (dummy, ipip, ip6_tunnel,
//! ip_gre, ip6_gre) makes the kernel load it (`rtnl-link-<kind>` module aliases),
//! so the agent never runs `modprobe` either.

use std::collections::BTreeMap;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::{
    RouteNetlinkMessage,
    link::{
        AfSpecInet6, AfSpecUnspec, In6AddrGenMode, InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
    },
};
use nix::errno::Errno;

use super::{
    changes::HostChanges,
    error::{Cause, HostError, Result},
    rtnl::{Answer, Rtnl},
};

/// One network device: index, name, whether it is up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Link {
    pub(crate) index: u32,
    pub(crate) name: String,
    pub(crate) up: bool,
}

pub(crate) fn links(rtnl: &mut Rtnl) -> Result<Vec<Link>> {
    let replies = rtnl
        .dump(RouteNetlinkMessage::GetLink(LinkMessage::default()))
        .map_err(|e| HostError::io("listing links", e))?;
    Ok(replies
        .into_iter()
        .filter_map(|reply| match reply {
            RouteNetlinkMessage::NewLink(link) => Some(link),
            _ => None,
        })
        .filter_map(|link| {
            let name = link.attributes.iter().find_map(|a| match a {
                LinkAttribute::IfName(name) => Some(name.clone()),
                _ => None,
            })?;
            Some(Link { index: link.header.index, name, up: link.header.flags.contains(LinkFlags::Up) })
        })
        .collect())
}

/// Device names by index.
pub(crate) fn link_names(rtnl: &mut Rtnl) -> Result<BTreeMap<u32, String>> {
    Ok(links(rtnl)?.into_iter().map(|link| (link.index, link.name)).collect())
}

fn find(rtnl: &mut Rtnl, device: &str) -> Result<Option<Link>> {
    Ok(links(rtnl)?.into_iter().find(|link| link.name == device))
}

/// Whether a device of this name exists.
pub fn device_exists(device: &str) -> bool {
    Rtnl::connect().and_then(|mut rtnl| find(&mut rtnl, device)).is_ok_and(|link| link.is_some())
}

/// Whether the device `name` is up, or `None` when there is no such device.
pub fn device_state(name: &str) -> Result<Option<bool>> {
    let mut rtnl = Rtnl::connect()?;
    Ok(find(&mut rtnl, name)?.map(|link| link.up))
}

/// A change of a device, as a dry run lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkChange {
    /// Made, of this kind (`dummy`, `ipip`, ...).
    Create {
        name: String,
        kind: String,
    },
    Up(String),
    Down(String),
    Delete(String),
}

/// What making sure `name` exists (of `kind`) and is up changes, given its
/// state now (`None`: absent; else whether it is up).
pub fn ensure_changes(name: &str, kind: &InfoKind, state: Option<bool>) -> Vec<LinkChange> {
    match state {
        None => vec![
            LinkChange::Create { name: name.into(), kind: kind.to_string() },
            LinkChange::Up(name.into()),
        ],
        Some(false) => vec![LinkChange::Up(name.into())],
        Some(true) => vec![],
    }
}

/// One request that wants only an acknowledgement. The kernel's refusal is
/// [`Cause::Refused`]; a failure of the socket keeps its own cause, so that lost
/// answers (`ENOBUFS`) read as an unknown outcome rather than as a refusal.
fn request(rtnl: &mut Rtnl, message: RouteNetlinkMessage, flags: u16, action: &str) -> Result<()> {
    answer(rtnl.batch(vec![message], flags), action)
}

fn answer(batch: std::io::Result<Vec<Answer>>, action: &str) -> Result<()> {
    let mut answers = batch.map_err(|e| HostError::io(action, e))?;
    match answers.pop() {
        Some(Ok(_)) => Ok(()),
        Some(Err(errno)) => Err(HostError::refused(action, Errno::from_raw(errno))),
        None => Err(HostError::new(action, Cause::Unsupported("the kernel gave no answer".into()))),
    }
}

/// Creates the device `name` of `kind` unless a device of that name exists (then
/// it is someone else's, or the kernel's own, and nothing is recorded). A device
/// the agent created is recorded, so that undo deletes it and nothing else.
pub fn create_device(changes: &mut HostChanges, name: &str, kind: InfoKind) -> Result<()> {
    let mut rtnl = Rtnl::connect()?;
    if find(&mut rtnl, name)?.is_some() {
        return Ok(());
    }
    let mut message = LinkMessage::default();
    message.attributes.push(LinkAttribute::IfName(name.to_string()));
    message.attributes.push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(kind.clone())]));
    let action = format!("creating {name} (type {kind})");
    match request(&mut rtnl, RouteNetlinkMessage::NewLink(message), NLM_F_CREATE | NLM_F_EXCL, &action) {
        Ok(()) => {
            changes.created_devices.insert(name.to_string());
            Ok(())
        }
        // Loading the kind's module made it: a tunnel module's fallback device.
        Err(e) if matches!(e.cause, Cause::Refused(Errno::EEXIST)) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Makes sure the dummy device `name` exists and is up, without an IPv6
/// link-local address (it only holds VIPs). Created only when absent.
pub fn ensure_dummy(changes: &mut HostChanges, name: &str) -> Result<()> {
    if !device_exists(name) {
        create_device(changes, name, InfoKind::Dummy)?;
        if changes.created_devices.contains(name) {
            // Fails, harmlessly, where IPv6 is disabled.
            let _ = set_link(name, |message| {
                message.attributes.push(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet6(vec![
                    AfSpecInet6::AddrGenMode(In6AddrGenMode::None),
                ])]))
            });
        }
    }
    raise_device(changes, name)
}

/// A change of the existing device `device`, as `RTM_NEWLINK` on its index.
fn set_link(device: &str, change: impl FnOnce(&mut LinkMessage)) -> Result<()> {
    let mut rtnl = Rtnl::connect()?;
    let action = format!("changing {device}");
    let link =
        find(&mut rtnl, device)?.ok_or_else(|| HostError::new(&action, Cause::NoDevice(device.into())))?;
    let mut message = LinkMessage::default();
    message.header.index = link.index;
    change(&mut message);
    request(&mut rtnl, RouteNetlinkMessage::SetLink(message), 0, &action)
}

fn set_up(device: &str, up: bool) -> Result<()> {
    set_link(device, |message| {
        message.header.change_mask = LinkFlags::Up;
        if up {
            message.header.flags = LinkFlags::Up;
        }
    })
    .map_err(|e| e.for_action(format!("bringing {device} {}", if up { "up" } else { "down" })))
}

fn is_up(device: &str) -> Result<bool> {
    let mut rtnl = Rtnl::connect()?;
    Ok(find(&mut rtnl, device)?.is_some_and(|link| link.up))
}

/// Brings `device` up; recorded when it was down, so that undo brings it down.
pub fn raise_device(changes: &mut HostChanges, device: &str) -> Result<()> {
    if !is_up(device)? {
        set_up(device, true)?;
        if !changes.created_devices.contains(device) {
            changes.raised_devices.insert(device.to_string());
        }
    }
    Ok(())
}

/// Brings down a device the agent brought up, and forgets it.
pub fn lower_device(changes: &mut HostChanges, device: &str) -> Result<()> {
    if changes.raised_devices.contains(device) && device_exists(device) {
        set_up(device, false)?;
    }
    changes.raised_devices.remove(device);
    Ok(())
}

/// Deletes a device the agent created, and forgets it; any other is left alone.
pub fn delete_device(changes: &mut HostChanges, device: &str) -> Result<()> {
    if changes.created_devices.contains(device) {
        let mut rtnl = Rtnl::connect()?;
        if let Some(link) = find(&mut rtnl, device)? {
            let mut message = LinkMessage::default();
            message.header.index = link.index;
            match request(&mut rtnl, RouteNetlinkMessage::DelLink(message), 0, &format!("deleting {device}"))
            {
                Ok(()) => {}
                Err(e) if matches!(e.cause, Cause::Refused(Errno::ENODEV)) => {}
                Err(e) => return Err(e),
            }
        }
    }
    changes.created_devices.remove(device);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_is_made_when_absent_and_raised_when_down() {
        let create = LinkChange::Create { name: "lvs0".into(), kind: "dummy".into() };
        let up = LinkChange::Up("lvs0".into());
        assert_eq!(ensure_changes("lvs0", &InfoKind::Dummy, None), [create, up.clone()]);
        assert_eq!(ensure_changes("lvs0", &InfoKind::Dummy, Some(false)), [up]);
        assert_eq!(ensure_changes("lvs0", &InfoKind::Dummy, Some(true)), []);
        let ipip = ensure_changes("tunl0", &InfoKind::IpIp, None);
        assert_eq!(ipip[0], LinkChange::Create { name: "tunl0".into(), kind: "ipip".into() });
    }

    /// A single request's answers lost to an overrun receive buffer is an unknown
    /// outcome (the engine reads the host again), not the kernel's refusal.
    #[test]
    fn a_lost_answer_is_an_unknown_outcome_and_a_refusal_is_the_kernels() {
        let lost = answer(
            Err(std::io::Error::from_raw_os_error(Errno::ENOBUFS as i32)),
            "creating lvs0 (type dummy)",
        );
        let lost = lost.unwrap_err();
        assert!(lost.outcome_unknown(), "{lost:?}");
        assert!(lost.to_string().starts_with("creating lvs0 (type dummy): outcome unknown"), "{lost}");

        let refused = answer(Ok(vec![Err(Errno::EPERM as i32)]), "changing lvs0").unwrap_err();
        assert_eq!(refused.errno(), Some(Errno::EPERM));
        assert!(!refused.outcome_unknown());
        assert_eq!(refused.to_string(), "changing lvs0: Operation not permitted");

        assert!(answer(Ok(vec![Ok(Vec::new())]), "changing lvs0").is_ok());
        assert!(answer(Ok(Vec::new()), "changing lvs0").is_err());
    }
}
