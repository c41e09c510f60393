//! The lvs-operator node agent: programs IPVS on directors and the VIP/ARP
//! settings on real servers.

pub mod cluster;
pub mod convert;
pub mod desired;
pub mod dry_run;
pub mod endpoints;
pub mod engine;
pub mod failover;
pub mod host;
pub mod import;
pub mod listing;
pub mod reconcile;
pub mod seams;
pub mod standalone;
pub mod supervisor;
