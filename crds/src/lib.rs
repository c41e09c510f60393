//! lvs-operator's API: the `VirtualService` users write and the `LvsNode`
//! per-node desired state the controller hands to the agents (group
//! `lvs.dev`, version `v1alpha1`), plus the rules both are validated with.
//!
//! Pure: no IO, no clients. The CRDs need Kubernetes 1.31 or newer (their CEL
//! rules use the IP library).
//!
//! ```
//! use lvs_crds::VirtualService;
//!
//! let service: VirtualService = lvs_crds::yaml::from_str(
//!     "apiVersion: lvs.dev/v1alpha1
//! kind: VirtualService
//! metadata: {name: web, namespace: default}
//! spec:
//!   vip: 192.168.16.100
//!   port: 80
//!   realServers: [{address: 192.168.16.21}, {address: 192.168.16.22, port: 8080}]",
//! )?;
//! let errors = service.spec.validate().unwrap_err();
//! assert_eq!(
//!     errors[0].to_string(),
//!     "spec.realServers[1].port: 8080: DirectRouting cannot map ports (must equal spec.port 80)"
//! );
//! # Ok::<(), lvs_crds::yaml::Error>(())
//! ```

pub mod allocation;
pub mod lvs_node;
pub mod service_lb;
pub mod translate;
pub mod validation;
pub mod vip_pool;
pub mod virtual_service;
pub mod yaml;

pub use lvs_node::{LvsNode, LvsNodeSpec, LvsNodeStatus, NODE_LABEL};
pub use translate::{ClusterState, TranslateOptions, Translation, Verdict, assemble, translate};
pub use validation::{ValidationError, validate};
pub use vip_pool::{VipPool, VipPoolSpec, VipPoolStatus};
pub use virtual_service::{VirtualService, VirtualServiceSpec, VirtualServiceStatus};

/// API group of every kind in this crate.
pub const GROUP: &str = "lvs.dev";

/// The CRD files of `deploy/crds/`: file name and YAML text, as `crdgen`
/// writes them.
pub fn crd_files() -> [(&'static str, String); 3] {
    use kube::CustomResourceExt;
    const HEADER: &str = "# Generated from crds/ by `cargo run -p lvs-crds --bin crdgen -- --write`; do not edit.\n\
                          # Needs Kubernetes 1.31 or newer: the CEL rules use the IP library (isIP).\n";
    let yaml = |crd| HEADER.to_owned() + &yaml::to_string(&crd).expect("a CRD serializes to YAML");
    [
        ("virtualservices.lvs.dev.yaml", yaml(VirtualService::crd())),
        ("lvsnodes.lvs.dev.yaml", yaml(LvsNode::crd())),
        ("vippools.lvs.dev.yaml", yaml(VipPool::crd())),
    ]
}
