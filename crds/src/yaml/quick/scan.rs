//! The quick reader's scanner: YAML as manifests are written, read line by
//! line into the events the parser would give. A line holds one key or one
//! sequence entry, with a scalar or a one-line flow collection for its value,
//! or nothing, when the value is the block that follows. That is most
//! manifests, and scanning it is a few times faster than the parser's
//! character-by-character state machine.
//!
//! Everything else is declined and left to the parser: multi-line scalars
//! (block scalars, and plain or quoted scalars that go on to the next line),
//! escapes in quotes, quoted or complex keys, anchors, aliases, tags,
//! directives, a document end marker, tabs, carriage returns, non-ASCII text
//! and plain scalars holding flow indicators or `: `. What it does not
//! decline it reads into exactly the parser's events: a property test in the
//! module holds the two to that.
use std::borrow::Cow;

use serde_saphyr::granit_parser::{Event, ScalarStyle, StructureStyle};

use super::{Declined, MAX_DEPTH};

/// `text`'s events, from StreamStart to StreamEnd, when the scanner reads it.
pub(super) fn events(text: &str) -> Result<Vec<Event<'_>>, Declined> {
    let mut scan = Scan { lines: Vec::new(), at: 0, events: Vec::new(), depth: 0 };
    let mut explicit = false;
    for line in text.split('\n') {
        // Tabs, carriage returns and other controls, non-ASCII text.
        if line.bytes().any(|b| !(b' '..=b'~').contains(&b)) {
            return Err(Declined);
        }
        let content = line.trim_start_matches(' ');
        if content.is_empty() || content.starts_with('#') {
            continue;
        }
        if line.starts_with("---") && scan.lines.is_empty() && !explicit && line.trim_end() == "---" {
            explicit = true;
            continue;
        }
        // A directive, a second document or a document end.
        if line.starts_with('%') || line.starts_with("---") || line.starts_with("...") {
            return Err(Declined);
        }
        scan.lines.push(Line { indent: line.len() - content.len(), content });
    }
    if scan.lines.is_empty() {
        return Err(Declined);
    }
    scan.events.extend([Event::StreamStart, Event::DocumentStart(explicit, None)]);
    scan.block()?;
    if scan.at < scan.lines.len() {
        return Err(Declined);
    }
    scan.events.extend([Event::DocumentEnd, Event::StreamEnd]);
    Ok(scan.events)
}

/// A line with content: not blank, not only a comment.
#[derive(Clone, Copy)]
struct Line<'a> {
    indent: usize,
    content: &'a str,
}

struct Scan<'a> {
    lines: Vec<Line<'a>>,
    /// The next line to read.
    at: usize,
    events: Vec<Event<'a>>,
    depth: usize,
}

/// A block sequence's entry: `- ` or a lone `-`.
fn is_entry(content: &str) -> bool {
    content == "-" || content.starts_with("- ")
}

/// A key as the scanner reads it: letters, digits, `_`, then also `-`, `.`
/// and `/` (`app.kubernetes.io/name`).
fn is_key(key: &str) -> bool {
    key.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-./".contains(&b))
}

/// `key: rest` or `key:`: the key and what follows the colon.
fn split_key(content: &str) -> Option<(&str, &str)> {
    let (key, rest) = content.split_once(':')?;
    (is_key(key) && (rest.is_empty() || rest.starts_with(' '))).then_some((key, rest))
}

/// What may not start a plain scalar here (YAML's indicators).
fn is_indicator(first: u8) -> bool {
    b"-?:,[]{}#&*!|>'\"%@`".contains(&first)
}

fn plain(text: &str) -> Event<'_> {
    Event::Scalar(Cow::Borrowed(text), ScalarStyle::Plain, 0, None)
}

/// After a value, the line holds nothing but spaces and a comment.
fn end_of_line(after: &str) -> Result<(), Declined> {
    let rest = after.trim_start_matches(' ');
    if rest.is_empty() || (rest.starts_with('#') && rest.len() < after.len()) {
        Ok(())
    } else {
        Err(Declined)
    }
}

impl<'a> Scan<'a> {
    fn current(&self) -> Option<Line<'a>> {
        self.lines.get(self.at).copied()
    }

    fn enter(&mut self) -> Result<(), Declined> {
        self.depth += 1;
        if self.depth > MAX_DEPTH { Err(Declined) } else { Ok(()) }
    }

    fn leave(&mut self, end: Event<'a>) {
        self.events.push(end);
        self.depth -= 1;
    }

    /// The block collection that starts at the current line.
    fn block(&mut self) -> Result<(), Declined> {
        let line = self.current().ok_or(Declined)?;
        if is_entry(line.content) { self.sequence(line.indent) } else { self.mapping(line.indent) }
    }

    fn mapping(&mut self, column: usize) -> Result<(), Declined> {
        self.enter()?;
        self.events.push(Event::MappingStart(StructureStyle::Block, 0, None));
        while let Some(line) = self.current()
            && line.indent == column
            && !is_entry(line.content)
        {
            let (key, rest) = split_key(line.content).ok_or(Declined)?;
            self.events.push(plain(key));
            self.value(column, rest, true)?;
        }
        self.leave(Event::MappingEnd);
        Ok(())
    }

    fn sequence(&mut self, column: usize) -> Result<(), Declined> {
        self.enter()?;
        self.events.push(Event::SequenceStart(StructureStyle::Block, 0, None));
        while let Some(line) = self.current()
            && line.indent == column
            && is_entry(line.content)
        {
            let rest = &line.content[1..];
            let entry = rest.trim_start_matches(' ');
            if is_entry(entry) {
                return Err(Declined);
            }
            if split_key(entry).is_some() {
                // `- key: value`: a mapping whose first line is the rest of
                // this one, at the column its key starts.
                let indent = column + 1 + rest.len() - entry.len();
                self.lines[self.at] = Line { indent, content: entry };
                self.mapping(indent)?;
            } else {
                self.value(column, rest, false)?;
            }
        }
        self.leave(Event::SequenceEnd);
        Ok(())
    }

    /// The value after a key or an entry's dash (`rest`, from the character
    /// after the colon or dash) of the collection at `column`. A key's value
    /// may be a sequence at the key's own column.
    fn value(&mut self, column: usize, rest: &'a str, of_key: bool) -> Result<(), Declined> {
        self.at += 1;
        let text = rest.trim_start_matches(' ');
        if text.is_empty() || text.starts_with('#') {
            return match self.current() {
                Some(next) if next.indent > column => self.block(),
                Some(next) if of_key && next.indent == column && is_entry(next.content) => {
                    self.sequence(column)
                }
                _ => {
                    self.events.push(plain("~"));
                    Ok(())
                }
            };
        }
        let after = match text.as_bytes()[0] {
            b'{' | b'[' => self.flow(text)?,
            b'"' | b'\'' => self.quoted(text)?,
            _ => self.block_plain(text)?,
        };
        end_of_line(after)?;
        // A more indented line would continue the scalar, or be an error.
        if self.current().is_some_and(|next| next.indent > column) {
            return Err(Declined);
        }
        Ok(())
    }

    /// A plain scalar to the line's end or its comment.
    fn block_plain(&mut self, text: &'a str) -> Result<&'a str, Declined> {
        if is_indicator(text.as_bytes()[0]) {
            return Err(Declined);
        }
        let end = text.find(" #").unwrap_or(text.len());
        let scalar = text[..end].trim_end_matches(' ');
        if scalar.contains(": ") || scalar.ends_with(':') || scalar.contains(['[', ']', '{', '}']) {
            return Err(Declined);
        }
        self.events.push(plain(scalar));
        Ok(&text[end..])
    }

    /// A quoted scalar without escapes, on one line; what follows it.
    fn quoted(&mut self, text: &'a str) -> Result<&'a str, Declined> {
        let quote = text.as_bytes()[0];
        let body = &text[1..];
        let close = body.find(quote as char).ok_or(Declined)?;
        let (content, after) = (&body[..close], &body[close + 1..]);
        let style = if quote == b'"' { ScalarStyle::DoubleQuoted } else { ScalarStyle::SingleQuoted };
        // `\` escapes in double quotes, `''` in single ones.
        if (quote == b'"' && content.contains('\\')) || (quote == b'\'' && after.starts_with('\'')) {
            return Err(Declined);
        }
        self.events.push(Event::Scalar(Cow::Borrowed(content), style, 0, None));
        Ok(after)
    }

    /// A flow node (`{…}`, `[…]`, a quoted or plain scalar) that ends on
    /// this line; what follows it.
    fn flow(&mut self, text: &'a str) -> Result<&'a str, Declined> {
        match *text.as_bytes().first().ok_or(Declined)? {
            b'{' | b'[' => self.flow_collection(text),
            b'"' | b'\'' => self.quoted(text),
            first if is_indicator(first) => Err(Declined),
            _ => {
                let end = text.find([',', '[', ']', '{', '}', '#', ':']).unwrap_or(text.len());
                // `:` and `#` inside a flow scalar are left to the parser.
                if text[end..].starts_with([':', '#', '[', '{']) {
                    return Err(Declined);
                }
                self.events.push(plain(text[..end].trim_end_matches(' ')));
                Ok(&text[end..])
            }
        }
    }

    fn flow_collection(&mut self, text: &'a str) -> Result<&'a str, Declined> {
        self.enter()?;
        let mapping = text.starts_with('{');
        let (start, close, end) = if mapping {
            (Event::MappingStart(StructureStyle::Flow, 0, None), '}', Event::MappingEnd)
        } else {
            (Event::SequenceStart(StructureStyle::Flow, 0, None), ']', Event::SequenceEnd)
        };
        self.events.push(start);
        let mut rest = text[1..].trim_start_matches(' ');
        if let Some(after) = rest.strip_prefix(close) {
            self.leave(end);
            return Ok(after);
        }
        loop {
            if mapping {
                let (key, after) = rest.split_once(':').ok_or(Declined)?;
                if !is_key(key) || !after.starts_with(' ') {
                    return Err(Declined);
                }
                self.events.push(plain(key));
                rest = after.trim_start_matches(' ');
            }
            rest = self.flow(rest)?.trim_start_matches(' ');
            if let Some(after) = rest.strip_prefix(',') {
                rest = after.trim_start_matches(' ');
                // A trailing comma is left to the parser.
                if rest.starts_with([']', '}']) {
                    return Err(Declined);
                }
            } else if let Some(after) = rest.strip_prefix(close) {
                self.leave(end);
                return Ok(after);
            } else {
                return Err(Declined);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::{collection::vec, prelude::*};
    use serde_saphyr::granit_parser::{Options, Parser};

    use super::*;

    /// The parser's events for `text`, or `None` when it refuses the text.
    fn parsed(text: &str) -> Option<Vec<Event<'_>>> {
        let mut options = Options::default();
        options.emit_comments = false;
        Parser::new_from_str_with_options(text, options)
            .map(|event| event.ok().map(|(event, _)| event))
            .collect()
    }

    /// What the scanner reads, it reads as the parser does.
    fn agrees(text: &str) -> Result<(), TestCaseError> {
        if let Ok(scanned) = events(text) {
            prop_assert_eq!(Some(scanned), parsed(text), "{:?}", text);
        }
        Ok(())
    }

    #[test]
    fn manifests_as_written_are_scanned_as_parsed() {
        for text in [
            "apiVersion: lvs.dev/v1alpha1\nkind: VirtualService\nmetadata: {name: web, namespace: shop}\n",
            "---\na: 1\n",
            "a:\n  b: c  # note\n  d: \"x y\"\n  e: 'z'\ne:\n- 1\n- {f: g, h: [1, 2, []]}\n-\n- k: l\n  m:\n  - n\n",
            "  a: 1\n  b:\n\n# a comment\n    c: d\n",
            "a: fd00::1\nb: http://x/y\nc: a#b\nd: it's\ne: x :y\nf: ~\ng:\n",
            "- - a\n",
            "- a\n-\n  b: 1\n- [x , y ]\n",
        ] {
            assert!(events(text).is_ok() || text.starts_with("- -"), "declined {text:?}");
            agrees(text).unwrap();
        }
    }

    #[test]
    fn what_it_does_not_read_it_declines() {
        for (what, text) in [
            ("a block scalar", "a: |\n  x\n"),
            ("a scalar on two lines", "a: x\n  y\n"),
            ("an escape", "a: \"x\\ty\"\n"),
            ("a quote in quotes", "a: 'it''s'\n"),
            ("a quoted key", "\"a\": 1\n"),
            ("an anchor", "a: &x 1\n"),
            ("an alias", "a: *x\n"),
            ("a tag", "a: !!str 1\n"),
            ("a directive", "%YAML 1.2\n---\na: 1\n"),
            ("a second document", "a: 1\n---\nb: 2\n"),
            ("a document end", "a: 1\n...\n"),
            ("a tab", "a:\t1\n"),
            ("a carriage return", "a: 1\r\n"),
            ("non-ASCII text", "a: é\n"),
            ("a key in a value", "a: b: c\n"),
            ("a flow indicator in a plain scalar", "a: b]\n"),
            ("an unclosed flow", "a: [1, 2\n"),
            ("a trailing comma", "a: [1, ]\n"),
            ("a scalar for a document", "a\n"),
            ("nothing", "# only a comment\n"),
            ("too deep", &format!("a: {}{}\n", "[".repeat(65), "]".repeat(65))),
        ] {
            assert_eq!(events(text), Err(Declined), "{what}");
        }
    }

    /// A value to write as YAML in one of its many spellings.
    #[derive(Debug, Clone)]
    enum Value {
        Scalar(&'static str),
        Mapping(Vec<(&'static str, Value)>),
        Sequence(Vec<Value>),
    }

    /// Scalars and keys the scanner reads, then ones it declines or reads with care.
    const SCALARS: &[&str] =
        &["a", "web", "80", "10.0.0.1", "fd00::1", "x y", "true", "~", "a#b", "http://x", "it's"];
    const HOSTILE_SCALARS: &[&str] = &[
        "",
        "1.5",
        "-1",
        "a:b",
        "\"q\"",
        "'s'",
        "\"a b\"",
        "'it''s'",
        "\"a\\\"b\"",
        "&x v",
        "*x",
        "!!str v",
        "|",
        ">",
        "? a",
        "k: v",
        "[]",
        "{}",
        "[1, 2]",
        "{a: 1}",
        "x # c",
        "- a",
        "'",
        "a:",
    ];
    const KEYS: &[&str] = &["a", "b", "name", "app.kubernetes.io/name", "k-1", "k_2"];
    const HOSTILE_KEYS: &[&str] = &["\"q\"", "true", "a b", "-a", "<<", "?", "a:"];
    /// Characters a mutation inserts.
    const NOISE: &[char] = &[' ', ' ', '\n', ':', '-', '#', '"', '\'', '{', '}', '[', ']', ',', 'x', '\t'];

    fn value() -> impl Strategy<Value = Value> {
        let leaf =
            prop_oneof![12 => prop::sample::select(SCALARS), 1 => prop::sample::select(HOSTILE_SCALARS)];
        let key = prop_oneof![24 => prop::sample::select(KEYS), 1 => prop::sample::select(HOSTILE_KEYS)];
        leaf.prop_map(Value::Scalar).prop_recursive(4, 24, 4, move |inner| {
            prop_oneof![
                vec((key.clone(), inner.clone()), 0..4).prop_map(Value::Mapping),
                vec(inner, 0..4).prop_map(Value::Sequence),
            ]
        })
    }

    /// Writes `value` as YAML, with its spelling choices taken from `choices`.
    struct Writer<'c> {
        choices: &'c [u8],
        at: usize,
        out: String,
    }

    impl Writer<'_> {
        fn choose(&mut self, n: u8) -> u8 {
            let choice = self.choices.get(self.at).copied().unwrap_or(0) % n;
            self.at += 1;
            choice
        }

        /// Writes one of `spellings`.
        fn pick(&mut self, spellings: &[&str]) {
            let choice = self.choose(spellings.len() as u8);
            self.out.push_str(spellings[choice as usize]);
        }

        fn flow(&mut self, value: &Value) {
            match value {
                Value::Scalar(text) => self.out.push_str(text),
                Value::Mapping(entries) => {
                    self.out.push('{');
                    for (i, (key, value)) in entries.iter().enumerate() {
                        self.out.push_str(if i > 0 { ", " } else { "" });
                        self.out.push_str(key);
                        self.out.push_str(": ");
                        self.flow(value);
                    }
                    self.out.push('}');
                }
                Value::Sequence(items) => {
                    self.out.push('[');
                    for (i, item) in items.iter().enumerate() {
                        self.out.push_str(if i > 0 { ", " } else { "" });
                        self.flow(item);
                    }
                    self.out.push(']');
                }
            }
        }

        /// The rest of a line that holds a key or a dash, and the value's lines.
        fn after(&mut self, value: &Value, indent: usize, of_key: bool) {
            let block = match value {
                Value::Mapping(entries) => !entries.is_empty(),
                Value::Sequence(items) => !items.is_empty(),
                Value::Scalar(_) => false,
            };
            if block && self.choose(3) > 0 {
                self.pick(&["", "  # c", " "]);
                self.out.push('\n');
                let same = of_key && matches!(value, Value::Sequence(_)) && self.choose(2) == 0;
                let child = if same { indent } else { indent + 1 + self.choose(3) as usize };
                self.block(value, child);
            } else {
                self.pick(&[" ", " ", " ", " ", " ", "  ", "  ", ""]);
                self.flow(value);
                self.pick(&["", "", "", "", " # c", " # c", "  ", "#c"]);
                self.out.push('\n');
            }
        }

        fn block(&mut self, value: &Value, indent: usize) {
            let pad = " ".repeat(indent);
            match value {
                Value::Mapping(entries) => {
                    for (key, value) in entries {
                        if self.choose(8) == 0 {
                            self.pick(&["\n", "# c\n", "  \n"]);
                        }
                        self.out.push_str(&pad);
                        self.out.push_str(key);
                        self.out.push(':');
                        self.after(value, indent, true);
                    }
                }
                Value::Sequence(items) => {
                    for item in items {
                        self.out.push_str(&pad);
                        self.out.push('-');
                        match item {
                            // `- key: value`, the mapping's next keys under its first.
                            Value::Mapping(entries) if !entries.is_empty() && self.choose(2) == 0 => {
                                let spaces = 1 + self.choose(2) as usize;
                                self.out.push_str(&" ".repeat(spaces));
                                let column = indent + 1 + spaces;
                                for (i, (key, value)) in entries.iter().enumerate() {
                                    if i > 0 {
                                        self.out.push_str(&" ".repeat(column));
                                    }
                                    self.out.push_str(key);
                                    self.out.push(':');
                                    self.after(value, column, true);
                                }
                            }
                            _ => self.after(item, indent, false),
                        }
                    }
                }
                Value::Scalar(_) => self.flow(value),
            }
        }
    }

    fn document() -> impl Strategy<Value = String> {
        let mutation = (any::<prop::sample::Index>(), prop::sample::select(NOISE), any::<bool>());
        let mutations = prop_oneof![2 => Just(Vec::new()), 1 => vec(mutation, 1..3)];
        let root = prop_oneof![
            vec((prop::sample::select(KEYS), value()), 1..6).prop_map(Value::Mapping),
            vec(value(), 1..4).prop_map(Value::Sequence),
        ];
        (root, vec(any::<u8>(), 64), any::<bool>(), mutations).prop_map(
            |(value, choices, explicit, mutations)| {
                let mut writer = Writer { choices: &choices, at: 0, out: String::new() };
                if explicit {
                    writer.out.push_str("---\n");
                }
                writer.block(&value, 0);
                let mut text = writer.out;
                for (at, noise, insert) in mutations {
                    let boundaries: Vec<usize> =
                        (0..=text.len()).filter(|&i| text.is_char_boundary(i)).collect();
                    let at = boundaries[at.index(boundaries.len())];
                    if insert {
                        text.insert(at, noise);
                    } else if at < text.len() {
                        text.remove(at);
                    }
                }
                text
            },
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]
        #[test]
        fn what_the_scanner_reads_it_reads_as_the_parser(text in document()) {
            agrees(&text)?;
        }
    }

    /// The property would hold vacuously if the scanner declined everything.
    #[test]
    fn the_scanner_reads_a_good_share_of_the_documents() {
        use proptest::{strategy::ValueTree, test_runner::TestRunner};
        let mut runner = TestRunner::deterministic();
        let read =
            (0..500).filter(|_| events(&document().new_tree(&mut runner).unwrap().current()).is_ok()).count();
        assert!(read > 100, "the scanner read only {read} of 500 documents");
    }
}
