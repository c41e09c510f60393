//! The route-netlink datagram splitter ([`super::rtnl`]'s framing loop) never
//! panics (issue 12): arbitrary datagrams, and datagrams of real messages with
//! a length field lied about, bytes cut or appended. A well-formed datagram
//! splits into its messages, in order, with their sequence numbers and flags.
//! (tests/parse_properties.rs covers the message decoder itself.)
//!
//! Cases per property: proptest's default (256), or PROPTEST_CASES (tests/fuzz
//! runs them long).

use netlink_packet_core::{ErrorMessage, NLM_F_MULTIPART, NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::{
    RouteNetlinkMessage,
    link::{LinkAttribute, LinkMessage},
};
use proptest::{collection::vec, prelude::*, sample::Index};

use super::rtnl::parse;

/// A message as the kernel frames it: header with `sequence` and `flags`,
/// padded to 4 bytes.
fn framed(payload: NetlinkPayload<RouteNetlinkMessage>, sequence: u32, flags: u16) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.sequence_number = sequence;
    header.flags = flags;
    let mut message = NetlinkMessage::new(header, payload);
    message.finalize();
    let mut bytes = vec![0; message.buffer_len()];
    message.serialize(&mut bytes);
    bytes.resize(bytes.len().div_ceil(4) * 4, 0);
    bytes
}

/// One reply of the kinds the agent reads: a link (odd-length name, so that
/// padding matters), an acknowledgement, or a refusal.
fn reply() -> impl Strategy<Value = (NetlinkPayload<RouteNetlinkMessage>, Option<i32>)> {
    prop_oneof![
        "[a-z0-9]{1,15}".prop_map(|name| {
            let mut link = LinkMessage::default();
            link.attributes.push(LinkAttribute::IfName(name));
            (NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)), None)
        }),
        (0i32..200).prop_map(|errno| {
            let mut error = ErrorMessage::default();
            error.code = std::num::NonZeroI32::new(-errno);
            (NetlinkPayload::Error(error), Some(errno))
        }),
    ]
}

proptest! {
    #[test]
    fn arbitrary_datagrams_never_panic_the_splitter(bytes in vec(any::<u8>(), 0..200)) {
        let _ = parse(&bytes);
    }

    /// Real messages back to back split into themselves, in order.
    #[test]
    fn well_formed_datagrams_split_into_their_messages(
        replies in vec((reply(), any::<u32>(), any::<bool>()), 1..8),
    ) {
        let mut datagram = Vec::new();
        for ((payload, _), sequence, multipart) in &replies {
            let flags = if *multipart { NLM_F_MULTIPART } else { 0 };
            datagram.extend(framed(payload.clone(), *sequence, flags));
        }
        let split = parse(&datagram).unwrap();
        prop_assert_eq!(split.len(), replies.len());
        for (reply, ((payload, errno), sequence, multipart)) in split.iter().zip(&replies) {
            prop_assert_eq!(reply.sequence, *sequence);
            prop_assert_eq!(reply.flags & NLM_F_MULTIPART != 0, *multipart);
            match (&reply.payload, errno) {
                (NetlinkPayload::Error(e), Some(errno)) => {
                    prop_assert_eq!(e.code.map_or(0, |c| -c.get()), *errno);
                }
                (NetlinkPayload::InnerMessage(got), None) => {
                    let NetlinkPayload::InnerMessage(sent) = payload else { unreachable!() };
                    prop_assert_eq!(got, sent);
                }
                (got, _) => prop_assert!(false, "{got:?} for {payload:?}"),
            }
        }
    }

    /// One message's length field set to anything, the datagram cut anywhere or
    /// followed by junk: an error or messages, never a panic; the messages before
    /// the damage are still read right when the splitter gets past them.
    #[test]
    fn lying_lengths_cuts_and_junk_never_panic(
        replies in vec(reply(), 1..6),
        victim in any::<Index>(),
        length in prop_oneof![Just(0u32), 1u32..16, 16u32..300, Just(u32::MAX)],
        cut in any::<Index>(),
        junk in vec(any::<u8>(), 0..24),
    ) {
        let frames: Vec<Vec<u8>> = replies.iter().enumerate()
            .map(|(i, (payload, _))| framed(payload.clone(), i as u32, 0))
            .collect();
        let victim = victim.index(frames.len());
        let mut datagram = Vec::new();
        let mut victim_at = 0;
        for (i, frame) in frames.iter().enumerate() {
            if i == victim {
                victim_at = datagram.len();
            }
            datagram.extend_from_slice(frame);
        }
        datagram[victim_at..victim_at + 4].copy_from_slice(&length.to_ne_bytes());
        let cut = cut.index(datagram.len() + 1);
        datagram.truncate(cut);
        datagram.extend(junk);
        if let Ok(split) = parse(&datagram) {
            // Messages wholly before the damage keep their sequence numbers.
            for (i, reply) in split.iter().enumerate().take(victim) {
                if frames[..=i].iter().map(Vec::len).sum::<usize>() <= cut.min(victim_at) {
                    prop_assert_eq!(reply.sequence, i as u32);
                }
            }
        }
    }
}
