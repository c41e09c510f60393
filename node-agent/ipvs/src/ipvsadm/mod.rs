//! ipvsadm compatibility: its rule syntax (`-S` output, `-R` input) and its views.
//!
//! Operators know these formats; `lvs-agent save` must be a drop-in for
//! `ipvsadm -S -n`, and `--dry-run` shows plans as ipvsadm lines.

mod format;
mod rules;

pub use format::{ListView, TableEntry, daemons, list, op_rule, save, timeouts};
pub use rules::{RuleError, parse_rule, parse_rules};
