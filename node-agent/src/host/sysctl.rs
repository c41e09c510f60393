//! Sysctls under a configurable root, changed with their previous values recorded,
//! and the named profiles of settings that real servers and directors need.
//!
//! The reasons behind each profile value come from the LVS documentation, the
//! kernel's `ip-sysctl.rst` and `ipvs-sysctl.rst`, and what kube-proxy's IPVS mode
//! learnt in production (kubernetes/kubernetes#70747, #81775, #93297).

use std::{
    fs,
    path::{Path, PathBuf},
};

use super::{
    changes::HostChanges,
    error::{Cause, HostError, Result},
};

/// The host's sysctls, as files under a root directory: `/proc/sys` by default,
/// `/host/proc/sys` where the DaemonSet mounts the host's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sysctls {
    root: PathBuf,
}

impl Default for Sysctls {
    fn default() -> Self {
        Self::new("/proc/sys")
    }
}

impl Sysctls {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The file of `key`, e.g. `net.ipv4.conf.eth0.100.arp_ignore` ->
    /// `net/ipv4/conf/eth0.100/arp_ignore`. Device names may contain dots, so in
    /// `net.ipv{4,6}.conf.<device>.<name>` everything between `conf.` and the last
    /// dot is the device. Keys written with slashes are taken as they are.
    pub fn path(&self, key: &str) -> PathBuf {
        if key.contains('/') {
            return self.root.join(key);
        }
        for prefix in ["net.ipv4.conf.", "net.ipv6.conf."] {
            if let Some((device, name)) = key.strip_prefix(prefix).and_then(|rest| rest.rsplit_once('.')) {
                return self.root.join(prefix.replace('.', "/")).join(device).join(name);
            }
        }
        self.root.join(key.replace('.', "/"))
    }

    /// The current value of `key`, without the trailing newline.
    pub fn get(&self, key: &str) -> Result<String> {
        let path = self.path(key);
        let value = fs::read_to_string(&path)
            .map_err(|e| HostError::io(format!("reading sysctl {key} ({})", path.display()), e))?;
        Ok(value.trim_end().to_string())
    }

    fn write(&self, key: &str, value: &str) -> Result<()> {
        let path = self.path(key);
        fs::write(&path, format!("{value}\n"))
            .map_err(|e| HostError::io(format!("setting sysctl {key}={value} ({})", path.display()), e))
    }

    /// Sets `key` to `value`. The first time the agent changes a key, its previous
    /// value is recorded in `changes` so that [`Sysctls::restore`] can put it back;
    /// a key that already has the value is left alone and not recorded.
    pub fn set(&self, changes: &mut HostChanges, key: &str, value: &str) -> Result<()> {
        let current = self.get(key)?;
        if same_value(&current, value) {
            return Ok(());
        }
        self.write(key, value)?;
        changes.sysctls.entry(key.to_string()).or_insert(current);
        Ok(())
    }

    /// Applies every setting of a profile, in order.
    pub fn apply(&self, changes: &mut HostChanges, profile: &[Setting]) -> Result<()> {
        profile.iter().try_for_each(|setting| self.set(changes, &setting.key, &setting.value))
    }

    /// Puts `key` back to the value it had before the agent changed it, and forgets
    /// it. A key the agent never changed is left alone. A key whose file is gone
    /// (its device was deleted) is forgotten: there is nothing left to restore.
    pub fn restore(&self, changes: &mut HostChanges, key: &str) -> Result<()> {
        let Some(previous) = changes.sysctls.get(key) else { return Ok(()) };
        if self.path(key).exists() {
            self.write(key, previous)?;
        }
        changes.sysctls.remove(key);
        Ok(())
    }

    /// Restores every key the agent changed.
    pub fn restore_all(&self, changes: &mut HostChanges) -> Result<()> {
        let keys: Vec<String> = changes.sysctls.keys().cloned().collect();
        keys.iter().try_for_each(|key| self.restore(changes, key))
    }

    /// The running kernel's version, from `kernel.osrelease`. Read from the
    /// process's own `/proc`: the kernel is the same whatever the root (a
    /// DaemonSet mounts only the host's `net` sysctls under its root).
    pub fn kernel_version(&self) -> Result<KernelVersion> {
        let action = "reading kernel.osrelease";
        let release =
            fs::read_to_string("/proc/sys/kernel/osrelease").map_err(|e| HostError::io(action, e))?;
        let release = release.trim();
        KernelVersion::parse(release).ok_or_else(|| {
            HostError::new(action, Cause::Unsupported(format!("unrecognised kernel release {release:?}")))
        })
    }

    /// Whether this key exists (e.g. `net.ipv4.vs.*` only once IPVS is loaded).
    pub fn exists(&self, key: &str) -> bool {
        Path::exists(&self.path(key))
    }
}

/// Multi-value sysctls (`sync_threshold = "3 50"`) read back tab-separated.
fn same_value(current: &str, wanted: &str) -> bool {
    current.split_whitespace().eq(wanted.split_whitespace())
}

/// A sysctl that applying a profile would change: its value now (`None`: no
/// such key yet, e.g. of a device not made yet, or IPVS's before the module
/// loads) and the value wanted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SysctlChange {
    pub key: String,
    pub current: Option<String>,
    pub wanted: String,
}

/// The settings of `profile` whose current value (`current(key)`) differs from
/// the wanted one: what [`Sysctls::apply`] would change, in its order.
pub fn changes(profile: &[Setting], current: impl Fn(&str) -> Option<String>) -> Vec<SysctlChange> {
    profile
        .iter()
        .filter_map(|setting| {
            let now = current(&setting.key);
            let same = now.as_deref().is_some_and(|now| same_value(now, &setting.value));
            (!same).then(|| SysctlChange {
                key: setting.key.clone(),
                current: now,
                wanted: setting.value.clone(),
            })
        })
        .collect()
}

/// One sysctl setting of a profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    pub key: String,
    pub value: String,
}

fn setting(key: String, value: &str) -> Setting {
    Setting { key, value: value.to_string() }
}

/// A kernel's major and minor version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct KernelVersion(pub u32, pub u32);

impl KernelVersion {
    /// Parses a release such as `6.1.0-27-amd64`.
    pub fn parse(release: &str) -> Option<Self> {
        let mut numbers = release.split(|c: char| !c.is_ascii_digit());
        Some(Self(numbers.next()?.parse().ok()?, numbers.next()?.parse().ok()?))
    }
}

/// How a director forwards to its real servers (the VirtualService's `forwarding`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forwarding {
    DirectRouting,
    Tunnel,
    Nat,
    FullNat,
}

/// A DR real server holding the VIP on `vip_device` (e.g. `lvs0`).
///
/// - `arp_ignore=1`: answer ARP only for addresses of the receiving interface, so
///   the VIP on a dummy device is never ARP-answered and clients keep sending to
///   the director.
/// - `arp_announce=2`: always use the outgoing interface's best address as the ARP
///   source, so the real server never announces the VIP.
///
/// The kernel uses the maximum of `all` and the interface for both, so setting
/// them on `all` covers the interfaces ARP arrives on; the VIP's device is set too.
/// Apply this before adding the VIP, or neighbours may learn the real server's
/// MAC for it.
pub fn real_server_dr(vip_device: &str) -> Vec<Setting> {
    ["all", vip_device]
        .iter()
        .flat_map(|device| {
            [
                setting(format!("net.ipv4.conf.{device}.arp_ignore"), "1"),
                setting(format!("net.ipv4.conf.{device}.arp_announce"), "2"),
            ]
        })
        .collect()
}

/// A TUN real server holding the VIP on the tunnel device `tunnel_device`
/// (`tunl0`, `gre0`, ...): the DR ARP settings (the VIP may be in a local subnet)
/// plus `rp_filter=0` on the device and `all`. The decapsulated packets come from
/// the client's address through the tunnel device, which has no route back to
/// it, so reverse-path filtering would drop them; the kernel uses the maximum of
/// `all` and the interface, and distributions often set `all` to 1.
pub fn real_server_tun(tunnel_device: &str) -> Vec<Setting> {
    let mut settings = real_server_dr(tunnel_device);
    for device in ["all", tunnel_device] {
        settings.push(setting(format!("net.ipv4.conf.{device}.rp_filter"), "0"));
    }
    settings
}

/// A director forwarding with `forwarding` through `interface`, on `kernel`.
///
/// - `send_redirects=0` on `all` and the interface: redirects are sent when either
///   is on, and a one-armed director would otherwise tell real servers to bypass it.
/// - `ip_forward=1` for NAT and FullNAT: replies from the real servers are routed
///   through the director.
/// - `net.ipv4.vs.conntrack=1` for FullNAT: the nftables masquerade (see
///   [`super::nat`]) only sees IPVS flows that keep their conntrack entries.
/// - `expire_nodest_conn=1`: a packet of a connection whose real server was removed
///   expires it at once (the client gets a reset and reconnects to a live server)
///   instead of being dropped until the entry times out (kubernetes#71514: UDP
///   black-holed for 300 s).
/// - `expire_quiescent_template=1`: persistence templates pointing to a weight-0
///   real server expire, so drained servers stop getting new persistent clients.
/// - `conn_reuse_mode` is left at the kernel default (1, reschedule reused ports)
///   on 5.9 and later, which fixed it. Before 5.9, with conntrack on (FullNAT), mode
///   1 drops the first SYN of a reused port and costs the client a 1 s retransmit
///   (kubernetes#70747), so it is set to 0 there as kube-proxy does, accepting that
///   a busy client may keep reaching a draining server (kubernetes#81775).
pub fn director(forwarding: Forwarding, interface: &str, kernel: KernelVersion) -> Vec<Setting> {
    let mut settings: Vec<Setting> = ["all", interface]
        .iter()
        .map(|device| setting(format!("net.ipv4.conf.{device}.send_redirects"), "0"))
        .collect();
    if matches!(forwarding, Forwarding::Nat | Forwarding::FullNat) {
        settings.push(setting("net.ipv4.ip_forward".into(), "1"));
    }
    if forwarding == Forwarding::FullNat {
        settings.push(setting("net.ipv4.vs.conntrack".into(), "1"));
        if kernel < KernelVersion(5, 9) {
            settings.push(setting("net.ipv4.vs.conn_reuse_mode".into(), "0"));
        }
    }
    settings.push(setting("net.ipv4.vs.expire_nodest_conn".into(), "1"));
    settings.push(setting("net.ipv4.vs.expire_quiescent_template".into(), "1"));
    settings
}

#[cfg(test)]
mod tests {
    use super::*;
    use pretty_assertions::assert_eq;

    /// A temporary directory standing in for `/proc/sys`.
    struct FakeProc(PathBuf);

    impl FakeProc {
        fn new(name: &str, keys: &[(&str, &str)]) -> (Self, Sysctls) {
            let root = std::env::temp_dir().join(format!("lvs-agent-sysctl-{name}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&root);
            let sysctls = Sysctls::new(&root);
            for (key, value) in keys {
                let path = sysctls.path(key);
                fs::create_dir_all(path.parent().unwrap()).unwrap();
                fs::write(path, format!("{value}\n")).unwrap();
            }
            (Self(root), sysctls)
        }
    }

    impl Drop for FakeProc {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn pairs(settings: &[Setting]) -> Vec<(&str, &str)> {
        settings.iter().map(|s| (s.key.as_str(), s.value.as_str())).collect()
    }

    #[test]
    fn keys_map_to_files_with_dotted_device_names() {
        let sysctls = Sysctls::new("/host/proc/sys");
        assert_eq!(
            sysctls.path("net.ipv4.vs.expire_nodest_conn"),
            Path::new("/host/proc/sys/net/ipv4/vs/expire_nodest_conn")
        );
        assert_eq!(
            sysctls.path("net.ipv4.conf.eth0.100.arp_ignore"),
            Path::new("/host/proc/sys/net/ipv4/conf/eth0.100/arp_ignore")
        );
        assert_eq!(
            sysctls.path("net.ipv6.conf.all.forwarding"),
            Path::new("/host/proc/sys/net/ipv6/conf/all/forwarding")
        );
        assert_eq!(
            sysctls.path("net/ipv4/conf/a.b/rp_filter"),
            Path::new("/host/proc/sys/net/ipv4/conf/a.b/rp_filter")
        );
    }

    #[test]
    fn set_records_the_first_previous_value_and_restore_puts_it_back() {
        let (_proc, sysctls) =
            FakeProc::new("restore", &[("net.ipv4.conf.all.arp_ignore", "0"), ("net.ipv4.ip_forward", "1")]);
        let mut changes = HostChanges::default();

        sysctls.set(&mut changes, "net.ipv4.conf.all.arp_ignore", "1").unwrap();
        sysctls.set(&mut changes, "net.ipv4.conf.all.arp_ignore", "2").unwrap();
        // Already at the wanted value: untouched, not recorded.
        sysctls.set(&mut changes, "net.ipv4.ip_forward", "1").unwrap();

        assert_eq!(sysctls.get("net.ipv4.conf.all.arp_ignore").unwrap(), "2");
        assert_eq!(
            changes.sysctls.into_iter().collect::<Vec<_>>(),
            [("net.ipv4.conf.all.arp_ignore".into(), "0".into())]
        );
    }

    #[test]
    fn restore_survives_a_restart_through_the_serialised_record() {
        let (_proc, sysctls) = FakeProc::new(
            "restart",
            &[
                ("net.ipv4.conf.all.arp_ignore", "0"),
                ("net.ipv4.conf.all.arp_announce", "0"),
                ("net.ipv4.conf.lvs0.arp_ignore", "0"),
                ("net.ipv4.conf.lvs0.arp_announce", "1"),
            ],
        );
        let mut changes = HostChanges::default();
        sysctls.apply(&mut changes, &real_server_dr("lvs0")).unwrap();
        assert_eq!(sysctls.get("net.ipv4.conf.lvs0.arp_announce").unwrap(), "2");

        // The agent restarts: the record comes back from its state file.
        let saved = serde_json::to_string(&changes).unwrap();
        let mut changes: HostChanges = serde_json::from_str(&saved).unwrap();
        sysctls.restore_all(&mut changes).unwrap();

        assert!(changes.is_empty());
        for (key, value) in [
            ("net.ipv4.conf.all.arp_ignore", "0"),
            ("net.ipv4.conf.all.arp_announce", "0"),
            ("net.ipv4.conf.lvs0.arp_ignore", "0"),
            ("net.ipv4.conf.lvs0.arp_announce", "1"),
        ] {
            assert_eq!(sysctls.get(key).unwrap(), value, "{key}");
        }
    }

    #[test]
    fn restore_forgets_keys_of_deleted_devices_and_leaves_unchanged_keys_alone() {
        let (proc, sysctls) = FakeProc::new(
            "gone",
            &[("net.ipv4.conf.lvs0.arp_ignore", "0"), ("net.ipv4.conf.all.arp_ignore", "0")],
        );
        let mut changes = HostChanges::default();
        sysctls.set(&mut changes, "net.ipv4.conf.lvs0.arp_ignore", "1").unwrap();
        fs::remove_dir_all(proc.0.join("net/ipv4/conf/lvs0")).unwrap();
        // Changed by someone else, never by the agent.
        fs::write(sysctls.path("net.ipv4.conf.all.arp_ignore"), "2\n").unwrap();

        sysctls.restore_all(&mut changes).unwrap();
        sysctls.restore(&mut changes, "net.ipv4.conf.all.arp_ignore").unwrap();

        assert!(changes.is_empty());
        assert_eq!(sysctls.get("net.ipv4.conf.all.arp_ignore").unwrap(), "2");
    }

    #[test]
    fn multi_value_sysctls_compare_by_fields() {
        let (_proc, sysctls) = FakeProc::new("multi", &[("net.ipv4.vs.sync_threshold", "3\t50")]);
        let mut changes = HostChanges::default();
        sysctls.set(&mut changes, "net.ipv4.vs.sync_threshold", "3 50").unwrap();
        assert!(changes.is_empty());
    }

    #[test]
    fn changes_are_the_settings_that_differ_with_their_values_now() {
        let now = |key: &str| match key {
            "net.ipv4.conf.all.arp_ignore" => Some("0".to_string()),
            "net.ipv4.conf.all.arp_announce" => Some("2".to_string()),
            _ => None,
        };
        assert_eq!(
            changes(&real_server_dr("lvs0"), now),
            [
                SysctlChange {
                    key: "net.ipv4.conf.all.arp_ignore".into(),
                    current: Some("0".into()),
                    wanted: "1".into()
                },
                SysctlChange {
                    key: "net.ipv4.conf.lvs0.arp_ignore".into(),
                    current: None,
                    wanted: "1".into()
                },
                SysctlChange {
                    key: "net.ipv4.conf.lvs0.arp_announce".into(),
                    current: None,
                    wanted: "2".into()
                },
            ]
        );
        let multi = [setting("net.ipv4.vs.sync_threshold".into(), "3 50")];
        assert!(changes(&multi, |_| Some("3\t50".into())).is_empty(), "compared by fields");
    }

    #[test]
    fn kernel_versions_parse_from_releases() {
        assert_eq!(KernelVersion::parse("6.1.0-27-amd64"), Some(KernelVersion(6, 1)));
        assert_eq!(KernelVersion::parse("5.10.0"), Some(KernelVersion(5, 10)));
        assert_eq!(KernelVersion::parse("4"), None);
        assert!(KernelVersion(5, 8) < KernelVersion(5, 9) && KernelVersion(5, 10) > KernelVersion(5, 9));
    }

    #[test]
    fn real_server_profiles() {
        assert_eq!(
            pairs(&real_server_dr("lvs0")),
            [
                ("net.ipv4.conf.all.arp_ignore", "1"),
                ("net.ipv4.conf.all.arp_announce", "2"),
                ("net.ipv4.conf.lvs0.arp_ignore", "1"),
                ("net.ipv4.conf.lvs0.arp_announce", "2"),
            ]
        );
        assert_eq!(
            pairs(&real_server_tun("tunl0")),
            [
                ("net.ipv4.conf.all.arp_ignore", "1"),
                ("net.ipv4.conf.all.arp_announce", "2"),
                ("net.ipv4.conf.tunl0.arp_ignore", "1"),
                ("net.ipv4.conf.tunl0.arp_announce", "2"),
                ("net.ipv4.conf.all.rp_filter", "0"),
                ("net.ipv4.conf.tunl0.rp_filter", "0"),
            ]
        );
    }

    #[test]
    fn director_profiles() {
        let common =
            [("net.ipv4.vs.expire_nodest_conn", "1"), ("net.ipv4.vs.expire_quiescent_template", "1")];
        let redirects =
            [("net.ipv4.conf.all.send_redirects", "0"), ("net.ipv4.conf.eth0.send_redirects", "0")];
        let new = KernelVersion(6, 1);

        let dr = director(Forwarding::DirectRouting, "eth0", new);
        assert_eq!(pairs(&dr), [&redirects[..], &common].concat());
        assert_eq!(director(Forwarding::Tunnel, "eth0", new), dr);

        let nat = director(Forwarding::Nat, "eth0", KernelVersion(4, 19));
        assert_eq!(pairs(&nat), [&redirects[..], &[("net.ipv4.ip_forward", "1")], &common].concat());

        let full_nat = director(Forwarding::FullNat, "eth0", new);
        let forward = [("net.ipv4.ip_forward", "1"), ("net.ipv4.vs.conntrack", "1")];
        assert_eq!(pairs(&full_nat), [&redirects[..], &forward, &common].concat());

        // Before 5.9, conntrack with port reuse rescheduling drops SYNs.
        let old_full_nat = director(Forwarding::FullNat, "eth0", KernelVersion(5, 4));
        assert_eq!(
            pairs(&old_full_nat),
            [&redirects[..], &forward, &[("net.ipv4.vs.conn_reuse_mode", "0")], &common].concat()
        );
    }
}
