//! `lvs-agent list --output json|yaml`: the kernel's IPVS table as a document
//! for scripts, with the same facts as `ipvsadm -L -n --stats` (connections and
//! counters; the kernel's rate estimates beside them) in named fields rather
//! than columns.

use std::net::IpAddr;

use lvs_ipvs::{
    DestinationEntry, ForwardMethod, Netmask, Protocol, ServiceEntry, ServiceFlags, ServiceKey, Stats,
};
use serde::Serialize;

/// The whole table.
#[derive(Debug, Serialize)]
pub struct Listing {
    pub services: Vec<ServiceListing>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceListing {
    /// `TCP`, `UDP`, `SCTP`, or `fwmark` for a firewall-mark service.
    pub protocol: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<IpAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fwmark: Option<u32>,
    pub scheduler: String,
    /// Present for persistent services.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub persistence: Option<PersistenceListing>,
    pub one_packet: bool,
    pub stats: Counters,
    pub destinations: Vec<DestinationListing>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PersistenceListing {
    pub timeout_seconds: u32,
    /// An IPv4 mask, or an IPv6 prefix length.
    pub netmask: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DestinationListing {
    pub address: IpAddr,
    pub port: u16,
    /// `Masquerade` (NAT), `DirectRoute`, `Tunnel`, `Local`, `Bypass`.
    pub forwarding: String,
    pub weight: u32,
    pub upper_threshold: u32,
    pub lower_threshold: u32,
    pub active_connections: u32,
    pub inactive_connections: u32,
    pub persistent_connections: u32,
    pub stats: Counters,
}

/// The kernel's counters since the entry was made, and its rate estimates
/// (per second, averaged over about 2 s).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Counters {
    pub connections: u64,
    pub packets_in: u64,
    pub packets_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub connections_per_second: u64,
    pub packets_in_per_second: u64,
    pub packets_out_per_second: u64,
    pub bytes_in_per_second: u64,
    pub bytes_out_per_second: u64,
}

impl From<&Stats> for Counters {
    fn from(stats: &Stats) -> Self {
        Counters {
            connections: stats.connections,
            packets_in: stats.packets_in,
            packets_out: stats.packets_out,
            bytes_in: stats.bytes_in,
            bytes_out: stats.bytes_out,
            connections_per_second: stats.connections_rate,
            packets_in_per_second: stats.packets_in_rate,
            packets_out_per_second: stats.packets_out_rate,
            bytes_in_per_second: stats.bytes_in_rate,
            bytes_out_per_second: stats.bytes_out_rate,
        }
    }
}

impl Listing {
    pub fn of(table: &[(ServiceEntry, Vec<DestinationEntry>)]) -> Self {
        Listing {
            services: table
                .iter()
                .map(|(service, destinations)| service_listing(service, destinations))
                .collect(),
        }
    }
}

fn service_listing(entry: &ServiceEntry, destinations: &[DestinationEntry]) -> ServiceListing {
    let service = &entry.service;
    let (protocol, address, port, fwmark) = match service.key {
        ServiceKey::Address { protocol, address } => {
            (protocol_name(protocol), Some(address.ip()), Some(address.port()), None)
        }
        ServiceKey::Fwmark { mark, .. } => ("fwmark".to_owned(), None, None, Some(mark)),
    };
    let persistence = service.flags.contains(ServiceFlags::PERSISTENT).then(|| PersistenceListing {
        timeout_seconds: service.timeout,
        netmask: match service.netmask {
            Netmask::Ipv4(mask) => mask.to_string(),
            Netmask::Ipv6Prefix(prefix) => prefix.to_string(),
        },
    });
    ServiceListing {
        protocol,
        address,
        port,
        fwmark,
        scheduler: service.scheduler.clone(),
        persistence,
        one_packet: service.flags.contains(ServiceFlags::ONE_PACKET),
        stats: Counters::from(&entry.stats),
        destinations: destinations.iter().map(destination_listing).collect(),
    }
}

fn destination_listing(entry: &DestinationEntry) -> DestinationListing {
    let destination = &entry.destination;
    DestinationListing {
        address: destination.address.ip(),
        port: destination.address.port(),
        forwarding: match destination.forward {
            ForwardMethod::Other(n) => format!("Other({n})"),
            method => format!("{method:?}"),
        },
        weight: destination.weight,
        upper_threshold: destination.upper_threshold,
        lower_threshold: destination.lower_threshold,
        active_connections: entry.active_connections,
        inactive_connections: entry.inactive_connections,
        persistent_connections: entry.persistent_connections,
        stats: Counters::from(&entry.stats),
    }
}

fn protocol_name(protocol: Protocol) -> String {
    match protocol {
        Protocol::Other(n) => n.to_string(),
        known => known.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lvs_ipvs::ipvsadm::parse_rules;

    /// The listing of a table made from ipvsadm rules names every field.
    #[test]
    fn a_table_lists_as_named_fields() {
        let rules =
            "-A -t 192.0.2.1:80 -s wrr -p 300\n-a -t 192.0.2.1:80 -r 10.0.0.1:8080 -m -w 3\n-A -f 7 -s rr\n";
        let table: Vec<(ServiceEntry, Vec<DestinationEntry>)> = table_of(rules);
        let json = serde_json::to_value(Listing::of(&table)).unwrap();
        let web = &json["services"][0];
        assert_eq!(web["protocol"], "TCP");
        assert_eq!(web["address"], "192.0.2.1");
        assert_eq!(web["port"], 80);
        assert_eq!(web["scheduler"], "wrr");
        assert_eq!(web["persistence"]["timeoutSeconds"], 300);
        assert_eq!(web["persistence"]["netmask"], "255.255.255.255");
        let server = &web["destinations"][0];
        assert_eq!(server["address"], "10.0.0.1");
        assert_eq!(server["port"], 8080);
        assert_eq!(server["forwarding"], "Masquerade");
        assert_eq!(server["weight"], 3);
        assert_eq!(server["stats"]["bytesIn"], 0);
        let marked = &json["services"][1];
        assert_eq!((marked["protocol"].as_str(), marked["fwmark"].as_u64()), (Some("fwmark"), Some(7)));
        assert!(marked.get("address").is_none() && marked.get("persistence").is_none());
    }

    /// The entries the rules would make, as a dump would return them.
    fn table_of(rules: &str) -> Vec<(ServiceEntry, Vec<DestinationEntry>)> {
        let mut table: Vec<(ServiceEntry, Vec<DestinationEntry>)> = Vec::new();
        for op in parse_rules(rules).unwrap() {
            match op {
                lvs_ipvs::IpvsOp::AddService(service) => {
                    table.push((ServiceEntry { service, stats: Stats::default() }, Vec::new()));
                }
                lvs_ipvs::IpvsOp::AddDestination(key, destination) => {
                    let (_, destinations) = table.iter_mut().find(|(s, _)| s.service.key == key).unwrap();
                    destinations.push(DestinationEntry {
                        destination,
                        active_connections: 0,
                        inactive_connections: 0,
                        persistent_connections: 0,
                        stats: Stats::default(),
                    });
                }
                other => panic!("{other:?}"),
            }
        }
        table
    }
}
