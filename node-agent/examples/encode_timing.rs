use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_generic::GenlMessage;
use std::time::Instant;
fn main() {
    let text = std::fs::read_to_string("/tmp/t/rules-10k").unwrap();
    let t = Instant::now();
    let ops = lvs_agent::ipvsadm::parse_rules(&text).unwrap();
    println!("parse {} rules {:?}", ops.len(), t.elapsed());
    let t = Instant::now();
    let mut out = Vec::new();
    for op in &ops {
        let mut genl = GenlMessage::from_payload(op.to_message());
        genl.set_resolved_family_id(30);
        let mut m = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::InnerMessage(genl));
        m.finalize();
        let start = out.len();
        out.resize(start + m.buffer_len(), 0);
        m.serialize(&mut out[start..]);
    }
    println!("encode {} bytes {:?}", out.len(), t.elapsed());
}
