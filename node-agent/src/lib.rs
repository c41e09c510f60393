//! The lvs-operator node agent.
pub mod ipvs;
