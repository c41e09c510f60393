//! lvs-operator API types, validation and the pure translation to per-node state.
