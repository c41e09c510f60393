//! Command line flags, each with an environment variable as fallback.

use std::{net::SocketAddr, path::PathBuf};

use clap::{Parser, ValueEnum};
use ipnet::IpNet;

/// lvs-controller: resolves VirtualServices into per-node LvsNode objects
/// and reports their status.
#[derive(Parser, Debug, Clone)]
#[command(version, about)]
pub struct Args {
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

    /// Comma-separated CIDRs the VIPs must lie in; a VirtualService whose VIP
    /// lies outside is refused (Accepted=False, reason VipNotAllowed).
    /// Absent: any VIP.
    #[arg(long, env = "ALLOWED_VIP_CIDRS", value_delimiter = ',')]
    pub allowed_vip_cidrs: Vec<IpNet>,

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
            "--allowed-vip-cidrs=192.0.2.0/24,2001:db8::/64",
            "--identity=replica-1",
            "--log-format=json",
            "--default-load-balancer-class",
        ])
        .unwrap();
        assert!(args.default_load_balancer_class);
        assert_eq!(args.namespace.as_deref(), Some("web"));
        assert_eq!(args.metrics_address, "127.0.0.1:9090".parse().unwrap());
        assert_eq!(
            args.allowed_vip_cidrs,
            ["192.0.2.0/24".parse::<IpNet>().unwrap(), "2001:db8::/64".parse().unwrap()]
        );
        assert_eq!(args.identity(), "replica-1");
        assert_eq!(args.log_format, LogFormat::Json);
        assert_eq!(args.lease_namespace, "lvs-system");
    }

    #[test]
    fn bad_cidrs_are_refused() {
        assert!(Args::try_parse_from(["lvs-controller", "--allowed-vip-cidrs=192.0.2.0/33"]).is_err());
    }
}
