//! Raw IP sockets carrying VRRP (protocol 112), one per (interface, family),
//! and the receive-side checks of RFC 5798 7.1.
//!
//! IPv4: the socket is bound to the interface (SO_BINDTODEVICE), joined to
//! 224.0.0.18 there, sends with TTL 255 from the interface's primary address
//! (IP_MULTICAST_IF), without loopback. Received datagrams carry their IP
//! header, which gives TTL, source and destination.
//! IPv6: the same with ff02::12 and hop limit 255; the kernel picks the
//! link-local source; hop limit and destination of received packets come as
//! IPV6_HOPLIMIT / IPV6_PKTINFO control messages.
//!
//! Every packet that fails a check is counted by reason ([`Drops`]), never
//! fatal.

use std::{
    io::{self, IoSliceMut},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6},
    os::fd::AsRawFd,
    sync::atomic::{AtomicU64, Ordering},
};

use nix::{
    ifaddrs::getifaddrs,
    net::if_::if_nametoindex,
    sys::socket::{ControlMessageOwned, MsgFlags, SockaddrIn6, recvmsg, setsockopt, sockopt},
};
use socket2::{Domain, InterfaceIndexOrAddress, Protocol, Socket, Type};
use tokio::{io::Interest, net::UdpSocket};

use crate::AddressFamily;

use super::packet::{self, Advertisement, PacketError};

/// Largest datagram read: VRRP packets are far smaller; anything longer is cut
/// and then fails its length check.
const RECEIVE_BUFFER: usize = 2048;

/// Why a received packet was dropped, one counter each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum DropReason {
    /// IPv4 TTL or IPv6 hop limit other than 255: not from the link.
    BadTtl,
    /// Shorter than its headers and addresses.
    Truncated,
    /// VRRP version other than 3.
    BadVersion,
    /// VRRP type other than advertisement.
    BadType,
    /// Address count that does not match the length.
    BadAddressCount,
    /// Wrong checksum (with the pseudo-header).
    BadChecksum,
    /// A virtual router id this node does not run on that interface.
    WrongVrid,
    /// Sent by this node (source is its own address).
    Own,
    /// IPv6 source outside fe80::/10 (RFC 5798 5.1.2.1: adverts come from
    /// the sender's link-local address).
    NotLinkLocal,
    /// Valid, but its instance had not taken the previous ones yet (a flood):
    /// the queue per instance is bounded.
    QueueFull,
}

impl From<PacketError> for DropReason {
    fn from(error: PacketError) -> Self {
        match error {
            PacketError::Truncated(_) => DropReason::Truncated,
            PacketError::Version(_) => DropReason::BadVersion,
            PacketError::Type(_) => DropReason::BadType,
            PacketError::AddressCount { .. } => DropReason::BadAddressCount,
            PacketError::Checksum { .. } => DropReason::BadChecksum,
        }
    }
}

/// Dropped packets by reason, over all interfaces (a snapshot).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Drops {
    pub bad_ttl: u64,
    pub truncated: u64,
    pub bad_version: u64,
    pub bad_type: u64,
    pub bad_address_count: u64,
    pub bad_checksum: u64,
    pub wrong_vrid: u64,
    pub own: u64,
    pub not_link_local: u64,
    pub queue_full: u64,
}

impl Drops {
    /// (reason label, count) pairs, for metrics.
    pub fn by_reason(&self) -> [(&'static str, u64); 10] {
        [
            ("bad_ttl", self.bad_ttl),
            ("truncated", self.truncated),
            ("bad_version", self.bad_version),
            ("bad_type", self.bad_type),
            ("bad_address_count", self.bad_address_count),
            ("bad_checksum", self.bad_checksum),
            ("wrong_vrid", self.wrong_vrid),
            ("own", self.own),
            ("not_link_local", self.not_link_local),
            ("queue_full", self.queue_full),
        ]
    }
}

/// The live counters behind [`Drops`], shared by the receive tasks.
#[derive(Debug, Default)]
pub(crate) struct DropCounters([AtomicU64; 10]);

impl DropCounters {
    pub(crate) fn count(&self, reason: DropReason) {
        self.0[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> Drops {
        let get = |reason: DropReason| self.0[reason as usize].load(Ordering::Relaxed);
        Drops {
            bad_ttl: get(DropReason::BadTtl),
            truncated: get(DropReason::Truncated),
            bad_version: get(DropReason::BadVersion),
            bad_type: get(DropReason::BadType),
            bad_address_count: get(DropReason::BadAddressCount),
            bad_checksum: get(DropReason::BadChecksum),
            wrong_vrid: get(DropReason::WrongVrid),
            own: get(DropReason::Own),
            not_link_local: get(DropReason::NotLinkLocal),
            queue_full: get(DropReason::QueueFull),
        }
    }
}

/// One received IP packet, before the VRRP checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RawPacket {
    pub(crate) source: IpAddr,
    pub(crate) destination: IpAddr,
    /// IPv4 TTL or IPv6 hop limit; None when the kernel did not say (dropped).
    pub(crate) ttl: Option<u8>,
    /// The VRRP message: the IP payload.
    pub(crate) payload: Vec<u8>,
}

/// Splits an IPv4 datagram (as an IPv4 raw socket returns it) into header
/// fields and payload.
pub(crate) fn parse_ipv4(datagram: &[u8]) -> Result<RawPacket, DropReason> {
    if datagram.len() < 20 || datagram[0] >> 4 != 4 {
        return Err(DropReason::Truncated);
    }
    let header_length = usize::from(datagram[0] & 0x0f) * 4;
    let total_length = usize::from(u16::from_be_bytes([datagram[2], datagram[3]]));
    if header_length < 20 || total_length < header_length || datagram.len() < total_length {
        return Err(DropReason::Truncated);
    }
    let address = |at: usize| {
        IpAddr::V4(Ipv4Addr::new(datagram[at], datagram[at + 1], datagram[at + 2], datagram[at + 3]))
    };
    Ok(RawPacket {
        source: address(12),
        destination: address(16),
        ttl: Some(datagram[8]),
        payload: datagram[header_length..total_length].to_vec(),
    })
}

/// The checks of RFC 5798 7.1 in its order: TTL, then the VRRP message
/// (length, version, type, count, checksum), then the VRID; own packets and
/// IPv6 ones from beyond the link-local range are dropped too. Cheap: no
/// allocation before the checksum passed.
pub(crate) fn check(
    packet: &RawPacket,
    own_address: IpAddr,
    known_vrid: impl Fn(u8) -> bool,
) -> Result<Advertisement, DropReason> {
    if packet.ttl != Some(255) {
        return Err(DropReason::BadTtl);
    }
    let advert = Advertisement::parse(&packet.payload, packet.source, packet.destination)?;
    if packet.source == own_address {
        return Err(DropReason::Own);
    }
    if let IpAddr::V6(source) = packet.source
        && !is_link_local(&source)
    {
        return Err(DropReason::NotLinkLocal);
    }
    if !known_vrid(advert.virtual_router_id) {
        return Err(DropReason::WrongVrid);
    }
    Ok(advert)
}

/// The address adverts go out from: the interface's primary IPv4 address
/// (the first one the kernel lists) or its first IPv6 link-local address.
pub(crate) fn own_address(interface: &str, family: AddressFamily) -> io::Result<IpAddr> {
    let addresses = getifaddrs().map_err(io::Error::from)?;
    addresses
        .filter(|entry| entry.interface_name == interface)
        .filter_map(|entry| entry.address)
        .find_map(|address| match family {
            AddressFamily::IPv4 => address.as_sockaddr_in().map(|a| IpAddr::V4(a.ip())),
            AddressFamily::IPv6 => address
                .as_sockaddr_in6()
                .map(|a| a.ip())
                .filter(|ip| is_link_local(ip) && !tentative(ip))
                .map(IpAddr::V6),
        })
        .ok_or_else(|| {
            let what = match family {
                AddressFamily::IPv4 => "IPv4 address",
                AddressFamily::IPv6 => "IPv6 link-local address",
            };
            io::Error::new(io::ErrorKind::NotFound, format!("interface {interface} has no {what}"))
        })
}

/// fe80::/10.
pub(crate) fn is_link_local(address: &Ipv6Addr) -> bool {
    address.segments()[0] & 0xffc0 == 0xfe80
}

/// Whether `address` is still tentative (duplicate address detection running,
/// or failed), as /proc/net/if_inet6 says: the kernel sends nothing from it,
/// so an instance using it would hear no one and be heard by no one.
fn tentative(address: &Ipv6Addr) -> bool {
    let listed = format!("{:032x}", u128::from(*address));
    let table = std::fs::read_to_string("/proc/net/if_inet6").unwrap_or_default();
    table.lines().any(|line| is_tentative_entry(line, &listed))
}

/// One /proc/net/if_inet6 line (address, index, prefix, scope, flags, name, in
/// hex) for the address `listed`, with IFA_F_TENTATIVE or IFA_F_DADFAILED.
fn is_tentative_entry(line: &str, listed: &str) -> bool {
    const TENTATIVE: u32 = 0x40;
    const DAD_FAILED: u32 = 0x08;
    let fields: Vec<&str> = line.split_whitespace().collect();
    let flags = fields.get(4).and_then(|f| u32::from_str_radix(f, 16).ok()).unwrap_or(0);
    fields.first() == Some(&listed) && flags & (TENTATIVE | DAD_FAILED) != 0
}

/// A VRRP socket on one interface for one family. The raw socket is driven
/// through tokio's `UdpSocket`, whose calls (send_to, recv_from, readiness)
/// are the same for any datagram socket.
#[derive(Debug)]
pub(crate) struct VrrpSocket {
    socket: UdpSocket,
    family: AddressFamily,
    interface_index: u32,
    own_address: IpAddr,
}

impl VrrpSocket {
    /// Opens and configures the socket; needs CAP_NET_RAW and a tokio runtime
    /// context.
    pub(crate) fn open(interface: &str, family: AddressFamily) -> io::Result<Self> {
        let context = |what: &str| {
            let interface = interface.to_owned();
            let what = what.to_owned();
            move |error: io::Error| {
                io::Error::new(error.kind(), format!("VRRP socket on {interface}: {what}: {error}"))
            }
        };
        let interface_index =
            if_nametoindex(interface).map_err(io::Error::from).map_err(context("interface"))?;
        let own_address = own_address(interface, family)?;
        let domain = match family {
            AddressFamily::IPv4 => Domain::IPV4,
            AddressFamily::IPv6 => Domain::IPV6,
        };
        let socket = Socket::new(domain, Type::RAW, Some(Protocol::from(i32::from(packet::PROTOCOL))))
            .map_err(context("opening a raw socket (needs CAP_NET_RAW)"))?;
        socket.bind_device(Some(interface.as_bytes())).map_err(context("SO_BINDTODEVICE"))?;
        match own_address {
            IpAddr::V4(own) => {
                socket
                    .join_multicast_v4_n(
                        &packet::MULTICAST_V4,
                        &InterfaceIndexOrAddress::Index(interface_index),
                    )
                    .map_err(context("joining 224.0.0.18"))?;
                // Also fixes the source address of what we send (raw sockets
                // take it from IP_MULTICAST_IF for multicast destinations).
                socket.set_multicast_if_v4(&own).map_err(context("IP_MULTICAST_IF"))?;
                socket.set_multicast_ttl_v4(255).map_err(context("IP_MULTICAST_TTL"))?;
                socket.set_ttl_v4(255).map_err(context("IP_TTL"))?;
                socket.set_multicast_loop_v4(false).map_err(context("IP_MULTICAST_LOOP"))?;
            }
            IpAddr::V6(_) => {
                socket
                    .join_multicast_v6(&packet::MULTICAST_V6, interface_index)
                    .map_err(context("joining ff02::12"))?;
                socket.set_multicast_if_v6(interface_index).map_err(context("IPV6_MULTICAST_IF"))?;
                socket.set_multicast_hops_v6(255).map_err(context("IPV6_MULTICAST_HOPS"))?;
                socket.set_unicast_hops_v6(255).map_err(context("IPV6_UNICAST_HOPS"))?;
                socket.set_multicast_loop_v6(false).map_err(context("IPV6_MULTICAST_LOOP"))?;
                setsockopt(&socket, sockopt::Ipv6RecvHopLimit, &true)
                    .map_err(io::Error::from)
                    .map_err(context("IPV6_RECVHOPLIMIT"))?;
                setsockopt(&socket, sockopt::Ipv6RecvPacketInfo, &true)
                    .map_err(io::Error::from)
                    .map_err(context("IPV6_RECVPKTINFO"))?;
            }
        }
        socket.set_nonblocking(true).map_err(context("O_NONBLOCK"))?;
        let socket = UdpSocket::from_std(std::net::UdpSocket::from(socket))?;
        Ok(VrrpSocket { socket, family, interface_index, own_address })
    }

    pub(crate) fn own_address(&self) -> IpAddr {
        self.own_address
    }

    /// The index of the interface the socket is bound to, when it was opened.
    pub(crate) fn interface_index(&self) -> u32 {
        self.interface_index
    }

    /// Sends one advertisement to the VRRP group. Never blocks: a full send
    /// buffer is an error (the next advertisement follows one interval later).
    pub(crate) fn send(&self, advert: &Advertisement) -> io::Result<()> {
        let destination = packet::multicast(self.family);
        let bytes = advert.emit(self.own_address, destination);
        let address = match self.family {
            AddressFamily::IPv4 => SocketAddr::V4(SocketAddrV4::new(packet::MULTICAST_V4, 0)),
            AddressFamily::IPv6 => {
                SocketAddr::V6(SocketAddrV6::new(packet::MULTICAST_V6, 0, 0, self.interface_index))
            }
        };
        self.socket.try_send_to(&bytes, address).map(|_| ())
    }

    /// The next packet received on the socket.
    pub(crate) async fn receive(&self) -> io::Result<Result<RawPacket, DropReason>> {
        let mut buffer = [0u8; RECEIVE_BUFFER];
        match self.family {
            AddressFamily::IPv4 => {
                let (length, _) = self.socket.recv_from(&mut buffer).await?;
                Ok(parse_ipv4(&buffer[..length]))
            }
            AddressFamily::IPv6 => loop {
                self.socket.readable().await?;
                match self.socket.try_io(Interest::READABLE, || receive_v6(&self.socket, &mut buffer)) {
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
                    result => return result,
                }
            },
        }
    }
}

/// One IPv6 packet with its hop limit and destination from the control
/// messages (the IPv6 header itself is not delivered to raw sockets).
fn receive_v6(socket: &UdpSocket, buffer: &mut [u8]) -> io::Result<Result<RawPacket, DropReason>> {
    let mut control = nix::cmsg_space!(nix::libc::c_int, nix::libc::in6_pktinfo);
    let mut iov = [IoSliceMut::new(buffer)];
    let message = recvmsg::<SockaddrIn6>(socket.as_raw_fd(), &mut iov, Some(&mut control), MsgFlags::empty())
        .map_err(io::Error::from)?;
    let mut ttl = None;
    let mut destination = IpAddr::V6(packet::MULTICAST_V6);
    for control in message.cmsgs().map_err(io::Error::from)? {
        match control {
            ControlMessageOwned::Ipv6HopLimit(limit) => ttl = u8::try_from(limit).ok(),
            ControlMessageOwned::Ipv6PacketInfo(info) => destination = IpAddr::from(info.ipi6_addr.s6_addr),
            _ => {}
        }
    }
    let length = message.bytes;
    let Some(source) = message.address.map(|address| IpAddr::V6(address.ip())) else {
        return Ok(Err(DropReason::Truncated));
    };
    Ok(Ok(RawPacket { source, destination, ttl, payload: buffer[..length].to_vec() }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tentative_link_local_addresses_are_recognised() {
        let address = "fe8000000000000090be43fffedb352e";
        assert!(is_tentative_entry(&format!("{address} 02 40 20 40     eth0"), address));
        assert!(is_tentative_entry(&format!("{address} 02 40 20 08     eth0"), address), "DAD failed");
        assert!(!is_tentative_entry(&format!("{address} 02 40 20 80     eth0"), address), "permanent");
        assert!(!is_tentative_entry("fe800000000000000000000000000001 02 40 20 40 eth1", address));
        let ip: Ipv6Addr = "fe80::90be:43ff:fedb:352e".parse().unwrap();
        assert_eq!(format!("{:032x}", u128::from(ip)), address);
    }

    const GROUP: IpAddr = IpAddr::V4(packet::MULTICAST_V4);

    fn peer() -> IpAddr {
        "192.168.16.12".parse().unwrap()
    }

    fn own() -> IpAddr {
        "192.168.16.11".parse().unwrap()
    }

    fn advert(vrid: u8) -> Advertisement {
        Advertisement {
            virtual_router_id: vrid,
            priority: 100,
            max_advert_interval: 100,
            addresses: vec!["192.168.16.100".parse().unwrap()],
        }
    }

    fn packet(source: IpAddr, ttl: u8, payload: Vec<u8>) -> RawPacket {
        RawPacket { source, destination: GROUP, ttl: Some(ttl), payload }
    }

    fn vrid_51(vrid: u8) -> bool {
        vrid == 51
    }

    /// An IPv4 header (20 bytes, TTL `ttl`, protocol 112) before `payload`.
    fn datagram(ttl: u8, payload: &[u8]) -> Vec<u8> {
        let total = (20 + payload.len()) as u16;
        let mut bytes = vec![0x45, 0xc0];
        bytes.extend_from_slice(&total.to_be_bytes());
        bytes.extend_from_slice(&[0, 0, 0, 0, ttl, 112, 0, 0, 192, 168, 16, 12, 224, 0, 0, 18]);
        bytes.extend_from_slice(payload);
        bytes
    }

    #[test]
    fn accepts_a_good_advert() {
        let bytes = advert(51).emit(peer(), GROUP);
        assert_eq!(check(&packet(peer(), 255, bytes), own(), vrid_51), Ok(advert(51)));
    }

    #[test]
    fn drops_by_reason() {
        let good = advert(51).emit(peer(), GROUP);
        let cases = [
            (packet(peer(), 64, good.clone()), DropReason::BadTtl),
            (RawPacket { ttl: None, ..packet(peer(), 255, good.clone()) }, DropReason::BadTtl),
            (packet(peer(), 255, good[..5].to_vec()), DropReason::Truncated),
            (packet(peer(), 255, advert(52).emit(peer(), GROUP)), DropReason::WrongVrid),
            (packet(own(), 255, advert(51).emit(own(), GROUP)), DropReason::Own),
            (packet("192.168.16.13".parse().unwrap(), 255, good.clone()), DropReason::BadChecksum),
            (packet(peer(), 255, [&good[..], &[0, 0, 0, 0]].concat()), DropReason::BadAddressCount),
        ];
        for (packet, reason) in cases {
            assert_eq!(check(&packet, own(), vrid_51), Err(reason), "{packet:?}");
        }
        let mut v2 = good.clone();
        v2[0] = 0x21;
        assert_eq!(check(&packet(peer(), 255, v2), own(), vrid_51), Err(DropReason::BadVersion));
        let mut other_type = good;
        other_type[0] = 0x3f;
        assert_eq!(check(&packet(peer(), 255, other_type), own(), vrid_51), Err(DropReason::BadType));
    }

    #[test]
    fn ipv6_adverts_must_come_from_a_link_local_address() {
        let group = IpAddr::V6(packet::MULTICAST_V6);
        let own: IpAddr = "fe80::11".parse().unwrap();
        let advert = Advertisement {
            virtual_router_id: 51,
            priority: 100,
            max_advert_interval: 100,
            addresses: vec!["fd00:16::100".parse().unwrap()],
        };
        let from = |source: &str| {
            let source: IpAddr = source.parse().unwrap();
            RawPacket { source, destination: group, ttl: Some(255), payload: advert.emit(source, group) }
        };
        assert_eq!(check(&from("fe80::12"), own, vrid_51), Ok(advert.clone()));
        assert_eq!(check(&from("febf::12"), own, vrid_51), Ok(advert.clone()), "fe80::/10 ends at febf");
        for source in ["fd00:16::12", "2001:db8::12", "fec0::12", "::1", "ff02::1"] {
            assert_eq!(check(&from(source), own, vrid_51), Err(DropReason::NotLinkLocal), "{source}");
        }
    }

    #[test]
    fn splits_an_ipv4_datagram() {
        let payload = advert(51).emit(peer(), GROUP);
        assert_eq!(parse_ipv4(&datagram(255, &payload)), Ok(packet(peer(), 255, payload.clone())));
        // Ethernet padding after the IP total length is not VRRP payload.
        let padded = [&datagram(255, &payload)[..], &[0; 6]].concat();
        assert_eq!(parse_ipv4(&padded).unwrap().payload, payload);
    }

    #[test]
    fn rejects_broken_ipv4_headers() {
        let payload = advert(51).emit(peer(), GROUP);
        let whole = datagram(255, &payload);
        assert_eq!(parse_ipv4(&whole[..19]), Err(DropReason::Truncated));
        assert_eq!(parse_ipv4(&whole[..25]), Err(DropReason::Truncated), "shorter than its total length");
        let mut ihl = whole.clone();
        ihl[0] = 0x44;
        assert_eq!(parse_ipv4(&ihl), Err(DropReason::Truncated));
        let mut v6 = whole;
        v6[0] = 0x65;
        assert_eq!(parse_ipv4(&v6), Err(DropReason::Truncated));
    }

    #[test]
    fn counters_count_each_reason_apart() {
        let counters = DropCounters::default();
        counters.count(DropReason::BadTtl);
        counters.count(DropReason::WrongVrid);
        counters.count(DropReason::WrongVrid);
        counters.count(DropReason::NotLinkLocal);
        counters.count(DropReason::QueueFull);
        let drops = counters.snapshot();
        assert_eq!(
            drops,
            Drops { bad_ttl: 1, wrong_vrid: 2, not_link_local: 1, queue_full: 1, ..Drops::default() }
        );
        assert_eq!(drops.by_reason().iter().map(|(_, n)| n).sum::<u64>(), 5);
    }
}
