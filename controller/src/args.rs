//! Command line flags, each with an environment variable as fallback.

use std::{net::SocketAddr, path::PathBuf};

use clap::{Parser, Subcommand, ValueEnum};
use ipnet::IpNet;
use k8s_openapi::jiff::Timestamp;

/// lvs-controller: resolves VirtualServices into per-node LvsNode objects
/// and reports their status.
#[derive(Parser, Debug, Clone)]
#[command(version, about)]
pub struct Args {
    /// Absent: run the controller.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Kubeconfig file; absent: in-cluster config, else ~/.kube/config.
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,

    /// Serve the VirtualServices of this namespace only; absent: all
    /// namespaces. Either way the controller owns every LvsNode: run one
    /// controller per cluster.
    #[arg(long, env = "WATCH_NAMESPACE")]
    pub namespace: Option<String>,

    /// Address of the HTTP server (/metrics, /healthz, /readyz).
    #[arg(long, env = "METRICS_ADDRESS", default_value = "0.0.0.0:8080")]
    pub metrics_address: SocketAddr,

    /// The cluster's Service CIDRs (comma-separated): never a VIP. VIPs come
    /// from VipPools; this guards against a pool that overlaps them.
    #[arg(long, env = "SERVICE_CIDRS", value_delimiter = ',')]
    pub service_cidrs: Vec<IpNet>,

    /// The cluster's pod CIDRs (comma-separated): never a VIP.
    #[arg(long, env = "POD_CIDRS", value_delimiter = ',')]
    pub pod_cidrs: Vec<IpNet>,

    /// The API server's addresses (comma-separated): never a VIP. Added to
    /// the endpoints of the `default/kubernetes` Service and the client
    /// config's host, which are found by themselves.
    #[arg(long, env = "API_SERVER_ADDRESSES", value_delimiter = ',')]
    pub api_server_addresses: Vec<std::net::IpAddr>,

    /// Also serve the Services of type LoadBalancer that name no
    /// `loadBalancerClass` (those naming `lvs.dev/ipvs` are served always):
    /// make lvs-operator the cluster's default load-balancer implementation.
    /// Leave it off where another implementation (a cloud provider, MetalLB)
    /// serves classless Services.
    #[arg(long, env = "DEFAULT_LOAD_BALANCER_CLASS")]
    pub default_load_balancer_class: bool,

    /// Namespace of the leader-election Lease.
    #[arg(long, env = "LEASE_NAMESPACE", default_value = "lvs-system")]
    pub lease_namespace: String,

    /// Name of the leader-election Lease.
    #[arg(long, env = "LEASE_NAME", default_value = "lvs-controller")]
    pub lease_name: String,

    /// This replica's identity in the Lease; absent: the host name.
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,

    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Subcommand, Debug, Clone)]
pub enum Command {
    /// Print what the controller would write for the objects in files, with no
    /// cluster: the LvsNodes it would apply and delete, and each
    /// VirtualService's status. LvsNodes among the files stand for the
    /// existing ones, with the agents' reports.
    Translate {
        /// A YAML or JSON file (documents separated by `---`, or `kind: List`),
        /// or a directory of them, read recursively.
        #[arg(short = 'f', long = "filename")]
        path: PathBuf,
        /// The time the conditions' transitions are stamped with (RFC 3339,
        /// e.g. 2026-01-01T00:00:00Z); absent: now. Fixed, the output is the
        /// same on every run.
        #[arg(long)]
        now: Option<Timestamp>,
    },
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line, for log collectors.
    Json,
    /// Human-readable lines.
    Text,
}

impl Args {
    /// `--identity`, else the host name (a pod's host name is its name).
    pub fn identity(&self) -> String {
        self.identity.clone().unwrap_or_else(|| {
            std::env::var("HOSTNAME")
                .ok()
                .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
                .map(|name| name.trim().to_owned())
                .filter(|name| !name.is_empty())
                .unwrap_or_else(|| "lvs-controller".to_owned())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse() {
        let args = Args::try_parse_from([
            "lvs-controller",
            "--namespace=web",
            "--metrics-address=127.0.0.1:9090",
            "--service-cidrs=10.96.0.0/12,fd00:10:96::/112",
            "--pod-cidrs=10.244.0.0/16",
            "--api-server-addresses=192.0.2.1",
            "--identity=replica-1",
            "--log-format=json",
            "--default-load-balancer-class",
        ])
        .unwrap();
        assert!(args.default_load_balancer_class);
        assert_eq!(args.namespace.as_deref(), Some("web"));
        assert_eq!(args.metrics_address, "127.0.0.1:9090".parse().unwrap());
        assert_eq!(
            args.service_cidrs,
            ["10.96.0.0/12".parse::<IpNet>().unwrap(), "fd00:10:96::/112".parse().unwrap()]
        );
        assert_eq!(args.pod_cidrs, ["10.244.0.0/16".parse::<IpNet>().unwrap()]);
        assert_eq!(args.api_server_addresses, ["192.0.2.1".parse::<std::net::IpAddr>().unwrap()]);
        assert_eq!(args.identity(), "replica-1");
        assert_eq!(args.log_format, LogFormat::Json);
        assert_eq!(args.lease_namespace, "lvs-system");
    }

    #[test]
    fn the_translate_subcommand_parses() {
        let args = Args::try_parse_from([
            "lvs-controller",
            "--service-cidrs=10.96.0.0/12",
            "translate",
            "-f",
            "manifests/",
            "--now=2026-01-01T00:00:00Z",
        ])
        .unwrap();
        let Some(Command::Translate { path, now }) = args.command else { panic!("{args:?}") };
        assert_eq!(path, PathBuf::from("manifests/"));
        assert_eq!(now.unwrap().to_string(), "2026-01-01T00:00:00Z");
        assert!(Args::try_parse_from(["lvs-controller"]).unwrap().command.is_none());
    }

    #[test]
    fn bad_cidrs_are_refused() {
        assert!(Args::try_parse_from(["lvs-controller", "--service-cidrs=192.0.2.0/33"]).is_err());
        assert!(Args::try_parse_from(["lvs-controller", "--pod-cidrs=10.244.0.0"]).is_err());
    }
}
