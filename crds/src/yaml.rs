//! YAML for the whole workspace: serde-saphyr (the library kube brings), read
//! with one set of rules by every binary.
//!
//! - YAML 1.2's core schema, as the API server reads manifests: only `true`
//!   and `false` are booleans (`yes`, `on` stay strings). A number with a
//!   leading zero, octal to YAML 1.1 and decimal to 1.2, is refused.
//! - Errors on one line, with their line and column: they go into logs,
//!   status conditions and the CLI's messages, not onto a terminal alone.
//! - Bounded work whatever the text: nesting stops at 64 levels, and aliases
//!   may replay no more events than the text has bytes, so an alias bomb costs
//!   what its size does. Counts of documents, nodes and scalar bytes are not
//!   limits of their own: the callers bound the text they read.
//! - Duplicate keys are errors; merge keys (`<<: *defaults`) are expanded.
//!
//! [`quick`] reads the plain subset manifests are made of at the parser's
//! speed, and declines the rest to these functions (the standalone agent's
//! cold start reads 10,000 documents).
pub mod quick;

use serde::{Serialize, de::DeserializeOwned};
pub use serde_saphyr::{Error, SerializeError};

/// One document's value. An error names the field and the value it is about,
/// then what is wrong and where (`spec.port: 70000: invalid u16 at line 3,
/// column 9`), as the validation's errors do.
pub fn from_str<T: DeserializeOwned>(text: &str) -> Result<T, Error> {
    with_deserializer(text, |document| {
        serde_path_to_error::deserialize(document).map_err(|error| {
            let path = Some(error.path().to_string()).filter(|path| path != ".");
            let error = error.into_inner();
            let value = source_of(text, &error);
            match path.into_iter().chain(value.map(str::to_owned)).collect::<Vec<_>>() {
                named if named.is_empty() => error,
                named => serde::de::Error::custom(format_args!("{}: {error}", named.join(": "))),
            }
        })
    })
}

/// The text an error points at, when it is short enough to quote.
fn source_of<'t>(text: &'t str, error: &Error) -> Option<&'t str> {
    let span = error.location()?.span();
    let start = usize::try_from(span.byte_offset()?).ok()?;
    let end = start.checked_add(usize::try_from(span.byte_len()?).ok()?)?;
    let source = text.get(start..end)?.trim();
    (!source.is_empty() && source.len() <= 64 && !source.contains('\n')).then_some(source)
}

/// Every document's value, in order; empty documents are skipped.
pub fn from_str_multiple<T: DeserializeOwned>(text: &str) -> Result<Vec<T>, Error> {
    serde_saphyr::from_multiple_with_options(text, options(text))
}

/// Runs `read` with a deserializer of `text`'s one document.
fn with_deserializer<R>(
    text: &str,
    read: impl for<'de, 'e> FnOnce(serde_saphyr::Deserializer<'de, 'e>) -> Result<R, Error>,
) -> Result<R, Error> {
    serde_saphyr::with_deserializer_from_str_with_options(text, options(text), read)
}

/// `value` as a YAML document. A long string stays on its line rather than
/// folded over several (a CEL rule reads as written); one with line breaks
/// is a literal block.
pub fn to_string<T: Serialize>(value: &T) -> Result<String, SerializeError> {
    let mut options = serde_saphyr::SerializerOptions::default();
    options.folded_wrap_chars = usize::MAX;
    serde_saphyr::to_string_with_options(value, options)
}

/// The reading rules above, for `text`.
fn options(text: &str) -> serde_saphyr::Options {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_documents = usize::MAX;
    budget.max_nodes = usize::MAX;
    budget.max_events = usize::MAX;
    budget.max_total_scalar_bytes = usize::MAX;
    budget.max_depth = 64;
    // The replay bound below is the defence against alias bombs; a ratio of
    // aliases to anchors would also refuse honest manifests that share one
    // anchor many times.
    budget.enforce_alias_anchor_ratio = false;
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    options.alias_limits.max_total_replayed_events = text.len().max(1024);
    options.strict_booleans = true;
    options.legacy_octal_numbers = false;
    options.with_snippet = false;
    options.emit_comments = false;
    options
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::Value;

    use super::*;

    #[test]
    fn booleans_and_numbers_follow_yaml_1_2() {
        let value: BTreeMap<String, Value> = from_str("a: yes\nb: on\nc: true").unwrap();
        assert_eq!(value["a"], "yes");
        assert_eq!(value["b"], "on");
        assert_eq!(value["c"], true);
        assert!(from_str::<bool>("yes").is_err());
        let ports: Vec<u16> = from_str("[10, 0o10, 0x10]").unwrap();
        assert_eq!(ports, [10, 8, 16]);
        // Octal to YAML 1.1 (and kubectl), decimal to 1.2: refused rather than guessed.
        assert!(from_str::<u16>("010").is_err());
    }

    #[test]
    fn an_error_is_one_line_with_its_place() {
        let error = from_str::<BTreeMap<String, u16>>("a: 1\nb: 70000\n").unwrap_err().to_string();
        assert!(!error.trim_end().contains('\n'), "{error}");
        assert!(error.starts_with("b: 70000: "), "{error}");
        assert!(error.contains("line 2"), "{error}");
    }

    #[test]
    fn an_error_names_the_field_the_value_and_the_line() {
        let text =
            "apiVersion: lvs.dev/v1alpha1\nkind: VirtualService\nspec: {vip: 192.0.2.1, port: 70000}\n";
        let error = from_str::<crate::VirtualService>(text).unwrap_err().to_string();
        assert!(error.starts_with("spec.port: 70000: "), "{error}");
        assert!(error.contains("line 3"), "{error}");
    }

    #[test]
    fn duplicate_keys_are_errors_and_merge_keys_are_expanded() {
        assert!(from_str::<Value>("a: 1\na: 2\n").is_err());
        let merged: BTreeMap<String, BTreeMap<String, u8>> =
            from_str("base: &base {x: 1, y: 2}\nmore:\n  <<: *base\n  y: 3\n").unwrap();
        assert_eq!(merged["more"], BTreeMap::from([("x".into(), 1), ("y".into(), 3)]));
    }

    #[test]
    fn nesting_stops_at_64_levels() {
        let deep = |levels: usize| "[".repeat(levels) + &"]".repeat(levels);
        assert!(from_str::<Value>(&deep(60)).is_ok());
        assert!(from_str::<Value>(&deep(65)).is_err());
    }

    /// A billion laughs: each level names the one before ten times. Refused
    /// once the replays exceed the text's size, long before it expands.
    #[test]
    fn an_alias_bomb_is_refused_by_the_text_size() {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for level in 1..10 {
            let before = format!("*a{}", level - 1);
            text += &format!("a{level}: &a{level} [{}]\n", vec![before; 10].join(", "));
        }
        let error = from_str::<Value>(&text).unwrap_err().to_string();
        assert!(error.contains("alias"), "{error}");
        // A few aliases in a honest manifest are fine.
        let shared = "defaults: &d {weight: 1}\nservers: [*d, *d, *d]\n";
        assert!(from_str::<Value>(shared).is_ok());
    }

    #[test]
    fn large_documents_and_many_documents_are_read() {
        let many = "a: 1\n---\n".repeat(5000);
        assert_eq!(from_str_multiple::<Value>(&many).unwrap().len(), 5000);
        let servers: Vec<String> =
            (0..100_000).map(|i| format!("- {{address: 10.0.{}.{}, weight: 1}}", i / 250, i % 250)).collect();
        let list: Vec<Value> = from_str(&servers.join("\n")).unwrap();
        assert_eq!(list.len(), 100_000);
    }
}
