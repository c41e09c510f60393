//! A quick reader for the YAML manifests are made of: mappings, sequences and
//! scalars, straight from the parser's events (granit-parser, the parser under
//! serde-saphyr) into the typed value. serde-saphyr's deserializer spends
//! more than the parser does on generality (anchors, merge keys, budgets,
//! tags, error locations); a host's first `apply` of 10,000 VirtualServices
//! would read at half speed through it. The events come from `scan`, a
//! line scanner for manifests as they are commonly written, or, for any
//! other text, from the parser itself, which is slower than serde_yaml was.
//!
//! It reads a subset and declines everything else, so that whatever it
//! returns is what [`super::from_str`] returns for the same text: an anchor,
//! alias, tag, directive, merge key, duplicate key, second document, float,
//! number other than a plain decimal, spelling of null or a boolean other
//! than `null`, `~` and `true`, `false`, or any error at all. The caller
//! then reads the text with serde-saphyr, which explains what is wrong, if
//! anything.
use std::{borrow::Cow, fmt};

use serde::de::{self, DeserializeSeed, IntoDeserializer, Visitor};
use serde_saphyr::granit_parser::{Event, Parser, ScalarStyle, StrInput};

mod scan;

/// Nesting the quick reader follows, as the full reader's budget.
const MAX_DEPTH: usize = 64;
/// Keys of one mapping: more is declined (the duplicate check is quadratic).
const MAX_KEYS: usize = 64;

/// The quick reader did not read the text; [`super::from_str`] will.
#[derive(Debug, PartialEq)]
pub struct Declined;

impl fmt::Display for Declined {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("declined by the quick YAML reader")
    }
}

impl std::error::Error for Declined {}

impl de::Error for Declined {
    fn custom<T: fmt::Display>(_: T) -> Self {
        Declined
    }
}

/// Reads `text`'s one document with `read` (`T::deserialize`, or a wrapper
/// of it such as serde_ignored's).
pub fn read<'de, T>(
    text: &'de str,
    read: impl FnOnce(&mut Reader<'de>) -> Result<T, Declined>,
) -> Result<T, Declined> {
    let mut reader = Reader::new(text)?;
    let value = read(&mut reader)?;
    reader.finish()?;
    Ok(value)
}

/// The deserializer: one document's events.
pub struct Reader<'de> {
    events: Events<'de>,
    peeked: Option<Event<'de>>,
    depth: usize,
}

/// Where the events come from: the scanner, which reads the commonest
/// manifests several times faster, or else the parser.
enum Events<'de> {
    Scanned(std::vec::IntoIter<Event<'de>>),
    Parsed(Box<Parser<'de, StrInput<'de>>>),
}

/// A node's first event, once checked: no anchor, tag or alias.
enum Node<'de> {
    Scalar(Cow<'de, str>, ScalarStyle),
    Sequence,
    Mapping,
}

/// What a plain scalar is, by YAML 1.2's core schema as the full reader
/// applies it; `Declined` for the spellings this reader leaves to it.
enum Plain {
    Null,
    Bool(bool),
    Unsigned(u64),
    Text,
}

fn plain(text: &str) -> Result<Plain, Declined> {
    match text {
        "" | "~" | "null" => return Ok(Plain::Null),
        "true" => return Ok(Plain::Bool(true)),
        "false" => return Ok(Plain::Bool(false)),
        _ => {}
    }
    // Signed numbers are declined: the full reader refuses `-0` for an
    // unsigned field, and no field of ours is signed.
    let decimal = text.bytes().all(|b| b.is_ascii_digit()) && (text == "0" || !text.starts_with('0'));
    if decimal {
        return text.parse().map(Plain::Unsigned).map_err(|_| Declined);
    }
    if null_or_boolean(text) || text.starts_with(|c: char| c.is_ascii_digit() || "+-.".contains(c)) {
        return Err(Declined);
    }
    Ok(Plain::Text)
}

/// Any spelling of null or a boolean in YAML 1.2's core schema.
fn null_or_boolean(text: &str) -> bool {
    text.is_empty()
        || text == "~"
        || ["null", "true", "false"].iter().any(|word| text.eq_ignore_ascii_case(word))
}

impl<'de> Reader<'de> {
    fn new(text: &'de str) -> Result<Self, Declined> {
        let events = match scan::events(text) {
            Ok(events) => Events::Scanned(events.into_iter()),
            Err(Declined) => {
                let mut options = serde_saphyr::granit_parser::Options::default();
                options.emit_comments = false;
                Events::Parsed(Box::new(Parser::new_from_str_with_options(text, options)))
            }
        };
        let mut reader = Reader { events, peeked: None, depth: 0 };
        if !matches!(reader.next()?, Event::StreamStart)
            || !matches!(reader.next()?, Event::DocumentStart(_, None))
        {
            return Err(Declined);
        }
        Ok(reader)
    }

    /// The document ended, and the text with it.
    fn finish(mut self) -> Result<(), Declined> {
        match (self.next()?, self.next()?) {
            (Event::DocumentEnd, Event::StreamEnd) => Ok(()),
            _ => Err(Declined),
        }
    }

    fn next(&mut self) -> Result<Event<'de>, Declined> {
        if let Some(event) = self.peeked.take() {
            return Ok(event);
        }
        match &mut self.events {
            Events::Scanned(events) => events.next().ok_or(Declined),
            Events::Parsed(parser) => Ok(parser.next().ok_or(Declined)?.map_err(|_| Declined)?.0),
        }
    }

    fn peek(&mut self) -> Result<&Event<'de>, Declined> {
        if self.peeked.is_none() {
            self.peeked = Some(self.next()?);
        }
        Ok(self.peeked.as_ref().expect("just filled"))
    }

    fn node(&mut self) -> Result<Node<'de>, Declined> {
        match self.next()? {
            Event::Scalar(text, style, 0, None) => Ok(Node::Scalar(text, style)),
            Event::SequenceStart(_, 0, None) => Ok(Node::Sequence),
            Event::MappingStart(_, 0, None) => Ok(Node::Mapping),
            _ => Err(Declined),
        }
    }

    /// A scalar as text, as the full reader gives it to a string: numbers
    /// and addresses as written. A plain null or boolean is declined.
    fn text(&mut self) -> Result<Cow<'de, str>, Declined> {
        match self.node()? {
            Node::Scalar(text, ScalarStyle::Plain) if null_or_boolean(&text) => Err(Declined),
            Node::Scalar(text, _) => Ok(text),
            _ => Err(Declined),
        }
    }

    fn plain_scalar(&mut self) -> Result<Plain, Declined> {
        match self.node()? {
            Node::Scalar(text, ScalarStyle::Plain) => match plain(&text)? {
                Plain::Text => Err(Declined),
                other => Ok(other),
            },
            _ => Err(Declined),
        }
    }

    fn enter(&mut self) -> Result<(), Declined> {
        self.depth += 1;
        if self.depth > MAX_DEPTH { Err(Declined) } else { Ok(()) }
    }

    fn sequence<V: Visitor<'de>>(&mut self, visitor: V) -> Result<V::Value, Declined> {
        self.enter()?;
        let mut access = Elements { reader: self, ended: false };
        let value = visitor.visit_seq(&mut access)?;
        // A visitor that stopped early leaves elements unread.
        if !access.ended {
            return Err(Declined);
        }
        self.depth -= 1;
        Ok(value)
    }

    fn mapping<V: Visitor<'de>>(&mut self, visitor: V) -> Result<V::Value, Declined> {
        self.enter()?;
        let mut access = Entries { reader: self, keys: Vec::new(), ended: false };
        let value = visitor.visit_map(&mut access)?;
        if !access.ended {
            return Err(Declined);
        }
        self.depth -= 1;
        Ok(value)
    }

    fn integer<V: Visitor<'de>>(&mut self, visitor: V) -> Result<V::Value, Declined> {
        match self.plain_scalar()? {
            Plain::Unsigned(n) => visitor.visit_u64(n),
            _ => Err(Declined),
        }
    }

    /// Skips a node, checking it as every other: the full reader resolves
    /// ignored scalars too (and refuses `.inf` there).
    fn skip(&mut self) -> Result<(), Declined> {
        match self.node()? {
            Node::Scalar(text, ScalarStyle::Plain) => plain(&text).map(drop),
            Node::Scalar(..) => Ok(()),
            Node::Sequence => self.sequence(de::IgnoredAny).map(drop),
            Node::Mapping => self.mapping(de::IgnoredAny).map(drop),
        }
    }
}

fn visit_text<'de, V: Visitor<'de>>(text: Cow<'de, str>, visitor: V) -> Result<V::Value, Declined> {
    match text {
        Cow::Borrowed(text) => visitor.visit_borrowed_str(text),
        Cow::Owned(text) => visitor.visit_string(text),
    }
}

impl<'de> de::Deserializer<'de> for &mut Reader<'de> {
    type Error = Declined;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Declined> {
        match self.node()? {
            Node::Scalar(text, ScalarStyle::Plain) => match plain(&text)? {
                Plain::Null => visitor.visit_unit(),
                Plain::Bool(b) => visitor.visit_bool(b),
                Plain::Unsigned(n) => visitor.visit_u64(n),
                Plain::Text => visit_text(text, visitor),
            },
            Node::Scalar(text, _) => visit_text(text, visitor),
            Node::Sequence => self.sequence(visitor),
            Node::Mapping => self.mapping(visitor),
        }
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Declined> {
        match self.plain_scalar()? {
            Plain::Bool(b) => visitor.visit_bool(b),
            _ => Err(Declined),
        }
    }

    fn deserialize_i8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Declined> {
        self.integer(visitor)
    }
    fn deserialize_i16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Declined> {
        self.integer(visitor)
    }
    fn deserialize_i32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Declined> {
        self.integer(visitor)
    }
    fn deserialize_i64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Declined> {
        self.integer(visitor)
    }
    fn deserialize_u8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Declined> {
        self.integer(visitor)
    }
    fn deserialize_u16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Declined> {
        self.integer(visitor)
    }
    fn deserialize_u32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Declined> {
        self.integer(visitor)
    }
    fn deserialize_u64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Declined> {
        self.integer(visitor)
    }

    fn deserialize_f32<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Declined> {
        Err(Declined)
    }
    fn deserialize_f64<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Declined> {
        Err(Declined)
    }
    fn deserialize_char<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Declined> {
        Err(Declined)
    }
    fn deserialize_bytes<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Declined> {
        Err(Declined)
    }
    fn deserialize_byte_buf<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Declined> {
        Err(Declined)
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Declined> {
        let text = self.text()?;
        visit_text(text, visitor)
    }
    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Declined> {
        self.deserialize_str(visitor)
    }
    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Declined> {
        self.deserialize_str(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Declined> {
        if let Event::Scalar(text, ScalarStyle::Plain, 0, None) = self.peek()?
            && matches!(plain(text), Ok(Plain::Null))
        {
            self.next()?;
            return visitor.visit_none();
        }
        visitor.visit_some(self)
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Declined> {
        match self.plain_scalar()? {
            Plain::Null => visitor.visit_unit(),
            _ => Err(Declined),
        }
    }
    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        visitor: V,
    ) -> Result<V::Value, Declined> {
        self.deserialize_unit(visitor)
    }
    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        visitor: V,
    ) -> Result<V::Value, Declined> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Declined> {
        match self.node()? {
            Node::Sequence => self.sequence(visitor),
            _ => Err(Declined),
        }
    }
    fn deserialize_tuple<V: Visitor<'de>>(self, _: usize, visitor: V) -> Result<V::Value, Declined> {
        self.deserialize_seq(visitor)
    }
    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: usize,
        visitor: V,
    ) -> Result<V::Value, Declined> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Declined> {
        match self.node()? {
            Node::Mapping => self.mapping(visitor),
            _ => Err(Declined),
        }
    }
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Declined> {
        self.deserialize_map(visitor)
    }

    /// A unit variant, by name; a variant with content is declined.
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Declined> {
        let name: String = self.text()?.into_owned();
        visitor.visit_enum(name.into_deserializer())
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Declined> {
        self.skip()?;
        visitor.visit_unit()
    }
}

struct Elements<'r, 'de> {
    reader: &'r mut Reader<'de>,
    ended: bool,
}

impl<'de> de::SeqAccess<'de> for Elements<'_, 'de> {
    type Error = Declined;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, Declined> {
        if self.ended {
            return Ok(None);
        }
        if matches!(self.reader.peek()?, Event::SequenceEnd) {
            self.reader.next()?;
            self.ended = true;
            return Ok(None);
        }
        seed.deserialize(&mut *self.reader).map(Some)
    }
}

struct Entries<'r, 'de> {
    reader: &'r mut Reader<'de>,
    keys: Vec<Cow<'de, str>>,
    ended: bool,
}

impl<'de> de::MapAccess<'de> for Entries<'_, 'de> {
    type Error = Declined;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, Declined> {
        if self.ended {
            return Ok(None);
        }
        let key = match self.reader.peek()? {
            Event::MappingEnd => {
                self.reader.next()?;
                self.ended = true;
                return Ok(None);
            }
            // `<<` is a merge key to the full reader.
            Event::Scalar(key, style, 0, None) if !(key == "<<" && *style == ScalarStyle::Plain) => {
                key.clone()
            }
            _ => return Err(Declined),
        };
        if self.keys.len() == MAX_KEYS || self.keys.contains(&key) {
            return Err(Declined);
        }
        self.keys.push(key);
        seed.deserialize(&mut *self.reader).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Declined> {
        seed.deserialize(&mut *self.reader)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde::Deserialize;

    use super::*;
    use crate::VirtualService;

    fn quick<T: for<'de> Deserialize<'de>>(text: &str) -> Result<T, Declined> {
        read(text, |reader| T::deserialize(reader))
    }

    const MANIFEST: &str = "apiVersion: lvs.dev/v1alpha1
kind: VirtualService
metadata:
  name: web
  namespace: shop
  labels: {team: web, tier: \"1\"}
spec:
  vip: 192.168.16.100
  port: 80
  scheduler: wrr
  persistence: {timeoutSeconds: 300}
  realServers:
    - {address: 192.168.16.21, weight: 3}
    - address: 192.168.16.22
      port: 80
      weight: 0
";

    #[test]
    fn a_plain_manifest_reads_as_the_full_reader_reads_it() {
        let quick: VirtualService = quick(MANIFEST).unwrap();
        let full: VirtualService = super::super::from_str(MANIFEST).unwrap();
        assert_eq!(quick, full);
        assert_eq!(quick.spec.real_servers.len(), 2);
    }

    /// Each of these the full reader reads differently, refuses, or reads
    /// with machinery the quick one does not have.
    #[test]
    fn what_it_does_not_read_it_declines() {
        for (what, text) in [
            ("an anchor", "a: &x 1\n"),
            ("an alias", "a: &x 1\nb: *x\n"),
            ("a tag", "a: !!str 1\n"),
            ("a directive", "%YAML 1.2\n---\na: 1\n"),
            ("a merge key", "<<: {a: 1}\n"),
            ("a duplicate key", "a: 1\na: 2\n"),
            ("a second document", "a: 1\n---\na: 2\n"),
            ("a float", "a: 1.5\n"),
            ("a leading zero", "a: 010\n"),
            ("hexadecimal", "a: 0x10\n"),
            ("a sign", "a: -0\n"),
            ("another null", "a: Null\n"),
            ("another boolean", "a: True\n"),
            ("a syntax error", "a: [1\n"),
            ("too deep", &format!("a: {}{}\n", "[".repeat(70), "]".repeat(70))),
            ("too many keys", &(0..65).map(|i| format!("k{i}: 1\n")).collect::<String>()),
        ] {
            assert_eq!(quick::<BTreeMap<String, serde_json::Value>>(text), Err(Declined), "{what}");
        }
        assert_eq!(quick::<BTreeMap<String, u16>>("a: \"80\"\n"), Err(Declined), "a quoted number");
        assert_eq!(quick::<BTreeMap<String, String>>("a: ~\n"), Err(Declined), "null as text");
        assert_eq!(quick::<BTreeMap<String, bool>>("a: yes\n"), Err(Declined), "a YAML 1.1 boolean");
    }

    #[test]
    fn scalars_resolve_as_the_full_reader_resolves_them() {
        let text = "a: yes\nb: \"true\"\nc: 0\nd: 18446744073709551615\ne: ''\nf: x y\n";
        let full: BTreeMap<String, serde_json::Value> = super::super::from_str(text).unwrap();
        assert_eq!(quick(text), Ok(full));
        let text = "a: 192.168.16.1\nb: 80\nc: ~\n";
        let full: BTreeMap<String, Option<String>> = super::super::from_str(text).unwrap();
        assert_eq!(quick(text), Ok(full));
    }
}
