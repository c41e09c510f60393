//! FullNAT's source NAT: the director masquerades the traffic it forwards to the
//! real servers, so their replies come back through it even without a route to
//! the clients. The rules live in a table of the agent's own, replaced as a whole
//! in one nf_tables transaction (see [`super::nftables`]) and deleted on undo;
//! other tables are never touched.
//!
//! The table, as `nft list table inet lvs_agent` shows it:
//!
//! ```text
//! table inet lvs_agent {
//!     chain postrouting {
//!         type nat hook postrouting priority srcnat; policy accept;
//!         ip daddr { 10.0.2.1, 10.0.2.2 } masquerade
//!         ip6 daddr 2001:db8::5 masquerade
//!     }
//! }
//! ```
//!
//! A family's real servers are one constant set (a hash lookup per new
//! connection, however many there are); a single one is one comparison.

use std::net::IpAddr;

use super::{
    changes::HostChanges,
    error::Result,
    nftables::{Attr, FAMILY_INET, Kind, NFPROTO_IPV4, NFPROTO_IPV6, Request, commit, table_exists},
};

/// The agent's nftables table (family `inet`: one table for IPv4 and IPv6).
pub const TABLE: &str = "lvs_agent";
const CHAIN: &str = "postrouting";

// Attributes of nf_tables.h.
const NFTA_TABLE_NAME: u16 = 1;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_SET_TABLE: u16 = 1;
const NFTA_SET_NAME: u16 = 2;
const NFTA_SET_FLAGS: u16 = 3;
const NFTA_SET_KEY_TYPE: u16 = 4;
const NFTA_SET_KEY_LEN: u16 = 5;
const NFTA_SET_ID: u16 = 10;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_SET_ELEM_LIST_SET_ID: u16 = 4;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;

const NF_INET_POST_ROUTING: u32 = 4;
/// `srcnat`, as `nft` names `NF_IP_PRI_NAT_SRC`.
const PRIORITY_SRCNAT: u32 = 100;
const NF_ACCEPT: u32 = 1;
const NFT_SET_ANONYMOUS: u32 = 0x1;
const NFT_SET_CONSTANT: u32 = 0x2;
/// nft's data types, which only `nft list` reads back: `ipv4_addr`, `ipv6_addr`.
const TYPE_IPADDR: u32 = 7;
const TYPE_IP6ADDR: u32 = 8;
/// The kernel names an anonymous set, numbering it in place of `%d`; requests
/// of the same transaction refer to it by its id.
const ANONYMOUS_SET: &str = "__set%d";
/// `NFT_REG_1`, a 16-byte register.
const REGISTER: u32 = 1;
/// Set elements per message: an attribute's length is 16 bits.
const ELEMENTS_PER_MESSAGE: usize = 1000;

/// Masquerades traffic to `real_servers`, replacing the agent's previous rules;
/// with none, the table is removed.
pub fn set_masquerade(changes: &mut HostChanges, real_servers: &[IpAddr]) -> Result<()> {
    if real_servers.is_empty() {
        return remove_masquerade(changes);
    }
    commit(&masquerade_table(real_servers))?;
    changes.nft_table = true;
    changes.masqueraded = real_servers.iter().copied().collect();
    Ok(())
}

/// Deletes the agent's table if the agent made it.
pub fn remove_masquerade(changes: &mut HostChanges) -> Result<()> {
    if changes.nft_table {
        commit(&replace_table())?;
        changes.nft_table = false;
        changes.masqueraded.clear();
    }
    Ok(())
}

/// Whether the agent's table is in the kernel (read only). Without nf_tables
/// loaded there is none, and asking would load it.
pub fn table_present() -> Result<bool> {
    if !std::path::Path::new("/sys/module/nf_tables").exists() {
        return Ok(false);
    }
    table_exists(FAMILY_INET, TABLE)
}

/// The table [`set_masquerade`] loads for `real_servers`, as `nft list table`
/// shows it (a dry run prints it).
pub fn ruleset(real_servers: &[IpAddr]) -> String {
    let mut rules = String::new();
    for (v4, family) in [(true, "ip"), (false, "ip6")] {
        let mut addresses: Vec<IpAddr> = real_servers.iter().filter(|a| a.is_ipv4() == v4).copied().collect();
        addresses.sort();
        addresses.dedup();
        let addresses: Vec<String> = addresses.iter().map(ToString::to_string).collect();
        match addresses.as_slice() {
            [] => {}
            [address] => rules.push_str(&format!("        {family} daddr {address} masquerade\n")),
            several => {
                rules.push_str(&format!("        {family} daddr {{ {} }} masquerade\n", several.join(", ")))
            }
        }
    }
    format!(
        "table inet {TABLE} {{\n    chain {CHAIN} {{\n        type nat hook postrouting priority srcnat; policy accept;\n{rules}    }}\n}}\n"
    )
}

/// Deletes the table, declaring it first so that the deletion succeeds when it
/// is gone already; what follows in the same transaction makes it anew.
fn replace_table() -> Vec<Request> {
    let table = || vec![Attr::string(NFTA_TABLE_NAME, TABLE)];
    vec![
        Request::new(Kind::NewTable, FAMILY_INET, table(), format!("table inet {TABLE}")),
        Request::new(Kind::DelTable, FAMILY_INET, table(), format!("deleting table inet {TABLE}")),
    ]
}

/// The whole table as one transaction: the old one gone, the new one whole.
fn masquerade_table(real_servers: &[IpAddr]) -> Vec<Request> {
    let mut requests = replace_table();
    requests.push(Request::new(
        Kind::NewTable,
        FAMILY_INET,
        vec![Attr::string(NFTA_TABLE_NAME, TABLE)],
        format!("table inet {TABLE}"),
    ));
    requests.push(Request::new(
        Kind::NewChain,
        FAMILY_INET,
        vec![
            Attr::string(NFTA_CHAIN_TABLE, TABLE),
            Attr::string(NFTA_CHAIN_NAME, CHAIN),
            Attr::nested(
                NFTA_CHAIN_HOOK,
                vec![
                    Attr::be32(NFTA_HOOK_HOOKNUM, NF_INET_POST_ROUTING),
                    Attr::be32(NFTA_HOOK_PRIORITY, PRIORITY_SRCNAT),
                ],
            ),
            Attr::be32(NFTA_CHAIN_POLICY, NF_ACCEPT),
            Attr::string(NFTA_CHAIN_TYPE, "nat"),
        ],
        format!("the nat chain {CHAIN}"),
    ));
    for (set_id, v4) in [(1, true), (2, false)] {
        let mut addresses: Vec<Vec<u8>> = real_servers
            .iter()
            .filter(|a| a.is_ipv4() == v4)
            .map(|address| match address {
                IpAddr::V4(ip) => ip.octets().to_vec(),
                IpAddr::V6(ip) => ip.octets().to_vec(),
            })
            .collect();
        addresses.sort();
        addresses.dedup();
        if !addresses.is_empty() {
            requests.extend(masquerade_rule(set_id, v4, &addresses));
        }
    }
    requests
}

/// `ip daddr { ... } masquerade` (or `ip6 daddr`) for one family's addresses.
fn masquerade_rule(set_id: u32, v4: bool, addresses: &[Vec<u8>]) -> Vec<Request> {
    let (nfproto, offset, length, key_type, family) = if v4 {
        (NFPROTO_IPV4, 16, 4, TYPE_IPADDR, "ip")
    } else {
        (NFPROTO_IPV6, 24, 16, TYPE_IP6ADDR, "ip6")
    };
    let mut requests = Vec::new();
    let match_address = if let [address] = addresses {
        compare(address)
    } else {
        requests.push(Request::new(
            Kind::NewSet,
            FAMILY_INET,
            vec![
                Attr::string(NFTA_SET_TABLE, TABLE),
                Attr::string(NFTA_SET_NAME, ANONYMOUS_SET),
                Attr::be32(NFTA_SET_FLAGS, NFT_SET_ANONYMOUS | NFT_SET_CONSTANT),
                Attr::be32(NFTA_SET_KEY_TYPE, key_type),
                Attr::be32(NFTA_SET_KEY_LEN, length),
                Attr::be32(NFTA_SET_ID, set_id),
            ],
            format!("the set of {family} real servers"),
        ));
        for chunk in addresses.chunks(ELEMENTS_PER_MESSAGE) {
            let elements = chunk
                .iter()
                .map(|address| {
                    Attr::nested(
                        NFTA_LIST_ELEM,
                        vec![Attr::nested(NFTA_SET_ELEM_KEY, vec![Attr::bytes(NFTA_DATA_VALUE, address)])],
                    )
                })
                .collect();
            requests.push(Request::new(
                Kind::NewSetElement,
                FAMILY_INET,
                vec![
                    Attr::string(NFTA_SET_ELEM_LIST_TABLE, TABLE),
                    Attr::string(NFTA_SET_ELEM_LIST_SET, ANONYMOUS_SET),
                    Attr::nested(NFTA_SET_ELEM_LIST_ELEMENTS, elements),
                    Attr::be32(NFTA_SET_ELEM_LIST_SET_ID, set_id),
                ],
                format!("{} {family} real servers", chunk.len()),
            ));
        }
        lookup(set_id)
    };
    let expressions = vec![
        // meta nfproto: an inet table sees both families.
        expression("meta", vec![Attr::be32(1, REGISTER), Attr::be32(2, NFT_META_NFPROTO)]),
        compare(&[nfproto]),
        // payload: the destination address of the network header.
        expression(
            "payload",
            vec![
                Attr::be32(1, REGISTER),
                Attr::be32(2, NFT_PAYLOAD_NETWORK_HEADER),
                Attr::be32(3, offset),
                Attr::be32(4, length),
            ],
        ),
        match_address,
        expression("masq", Vec::new()),
    ];
    requests.push(Request::new(
        Kind::NewRule,
        FAMILY_INET,
        vec![
            Attr::string(NFTA_RULE_TABLE, TABLE),
            Attr::string(NFTA_RULE_CHAIN, CHAIN),
            Attr::nested(NFTA_RULE_EXPRESSIONS, expressions),
        ],
        format!("the {family} masquerade rule"),
    ));
    requests
}

const NFT_META_NFPROTO: u32 = 15;
const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
const NFT_CMP_EQ: u32 = 0;

/// One expression of a rule: its name and, if any, its attributes.
fn expression(name: &str, data: Vec<Attr>) -> Attr {
    let mut attrs = vec![Attr::string(NFTA_EXPR_NAME, name)];
    if !data.is_empty() {
        attrs.push(Attr::nested(NFTA_EXPR_DATA, data));
    }
    Attr::nested(NFTA_LIST_ELEM, attrs)
}

/// `cmp eq`: the register equals `value`.
fn compare(value: &[u8]) -> Attr {
    expression(
        "cmp",
        vec![
            Attr::be32(1, REGISTER),
            Attr::be32(2, NFT_CMP_EQ),
            Attr::nested(3, vec![Attr::bytes(NFTA_DATA_VALUE, value)]),
        ],
    )
}

/// `lookup`: the register is in the set of this transaction's `set_id`.
fn lookup(set_id: u32) -> Attr {
    expression("lookup", vec![Attr::string(1, ANONYMOUS_SET), Attr::be32(2, REGISTER), Attr::be32(4, set_id)])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(requests: &[Request]) -> Vec<Kind> {
        requests.iter().map(Request::kind).collect()
    }

    #[test]
    fn the_table_is_replaced_whole_with_a_set_per_family_of_several() {
        let addresses: Vec<IpAddr> =
            ["10.0.2.1", "2001:db8::5", "10.0.3.7", "10.0.2.1"].iter().map(|a| a.parse().unwrap()).collect();
        let requests = masquerade_table(&addresses);
        assert_eq!(
            kinds(&requests),
            [
                Kind::NewTable,
                Kind::DelTable,
                Kind::NewTable,
                Kind::NewChain,
                Kind::NewSet,
                Kind::NewSetElement,
                Kind::NewRule,
                Kind::NewRule,
            ],
            "IPv4: a set of two (deduplicated); IPv6: one comparison"
        );
    }

    #[test]
    fn the_ruleset_is_the_tables_listing() {
        let addresses: Vec<IpAddr> =
            ["10.0.2.2", "2001:db8::5", "10.0.2.1", "10.0.2.1"].iter().map(|a| a.parse().unwrap()).collect();
        assert_eq!(
            ruleset(&addresses),
            "table inet lvs_agent {\n    chain postrouting {\n        type nat hook postrouting priority srcnat; policy accept;\n        ip daddr { 10.0.2.1, 10.0.2.2 } masquerade\n        ip6 daddr 2001:db8::5 masquerade\n    }\n}\n"
        );
    }

    #[test]
    fn set_elements_are_split_so_that_each_message_fits_16_bit_attribute_lengths() {
        let addresses: Vec<IpAddr> = (0..2500u32)
            .map(|i| IpAddr::from(std::net::Ipv6Addr::from(0x2001_0db8u128 << 96 | i as u128)))
            .collect();
        let requests = masquerade_table(&addresses);
        assert_eq!(kinds(&requests).iter().filter(|k| **k == Kind::NewSetElement).count(), 3);
    }
}
