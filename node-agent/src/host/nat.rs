//! FullNAT's source NAT: the director masquerades the traffic it forwards to the
//! real servers, so their replies come back through it even without a route to
//! the clients. The rules live in a table of the agent's own, replaced as a whole
//! in one `nft -f -` transaction and deleted on undo; other tables are never
//! touched.

use anyhow::Result;
use ipnet::IpNet;

use super::{HostChanges, run, run_with_input};

/// The agent's nftables table (family `inet`: one table for IPv4 and IPv6).
pub const TABLE: &str = "lvs_agent";

/// The nftables script that (re)creates the table with a masquerade rule for
/// traffic to `real_servers`. Declaring the table first makes the delete valid
/// when it does not exist yet; the whole script is one atomic transaction.
pub fn masquerade_script(real_servers: &[IpNet]) -> String {
    // Merged, since nftables refuses overlapping intervals in a set.
    let merged = IpNet::aggregate(&real_servers.to_vec());
    let set = |v4: bool| {
        let members: Vec<String> =
            merged.iter().filter(|net| matches!(net, IpNet::V4(_)) == v4).map(IpNet::to_string).collect();
        (!members.is_empty()).then(|| members.join(", "))
    };
    let mut script = format!(
        "table inet {TABLE}\ndelete table inet {TABLE}\ntable inet {TABLE} {{\n\tchain postrouting {{\n\t\t\
         type nat hook postrouting priority srcnat; policy accept;\n"
    );
    if let Some(v4) = set(true) {
        script += &format!("\t\tip daddr {{ {v4} }} masquerade\n");
    }
    if let Some(v6) = set(false) {
        script += &format!("\t\tip6 daddr {{ {v6} }} masquerade\n");
    }
    script += "\t}\n}\n";
    script
}

/// Masquerades traffic to `real_servers` (addresses or subnets), replacing the
/// agent's previous rules; with none, the table is removed.
pub fn set_masquerade(changes: &mut HostChanges, real_servers: &[IpNet]) -> Result<()> {
    if real_servers.is_empty() {
        return remove_masquerade(changes);
    }
    run_with_input("nft", &["-f", "-"], Some(&masquerade_script(real_servers)))?;
    changes.nft_table = true;
    Ok(())
}

/// Deletes the agent's table if the agent made it.
pub fn remove_masquerade(changes: &mut HostChanges) -> Result<()> {
    if changes.nft_table {
        // Declaring it first makes the delete succeed when it is already gone.
        run_with_input(
            "nft",
            &["-f", "-"],
            Some(&format!("table inet {TABLE}\ndelete table inet {TABLE}\n")),
        )?;
        changes.nft_table = false;
    }
    Ok(())
}

/// The names of the tables in this network namespace, as `family name`.
pub fn tables() -> Result<Vec<String>> {
    Ok(run("nft", &["list", "tables"])?
        .lines()
        .filter_map(|line| line.strip_prefix("table "))
        .map(str::to_string)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use pretty_assertions::assert_eq;

    #[test]
    fn script_replaces_the_table_with_one_rule_per_family() {
        let nets: Vec<IpNet> = ["10.0.2.0/24", "2001:db8::5/128", "10.0.3.7/32", "10.0.2.9/32"]
            .iter()
            .map(|n| n.parse().unwrap())
            .collect();
        assert_eq!(
            masquerade_script(&nets),
            "table inet lvs_agent\n\
             delete table inet lvs_agent\n\
             table inet lvs_agent {\n\
             \tchain postrouting {\n\
             \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
             \t\tip daddr { 10.0.2.0/24, 10.0.3.7/32 } masquerade\n\
             \t\tip6 daddr { 2001:db8::5/128 } masquerade\n\
             \t}\n\
             }\n"
        );
    }
}
