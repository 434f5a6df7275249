//! Reads the TOML text into the raw config, reporting every syntax slip, unknown key,
//! wrongly typed value and missing key it can find, located, in one run.
//!
//! serde's derived code stops at the first error, so a file with five mistakes took five
//! runs to fix. This deserializer, over toml's spanned tree, never fails on a mistake in
//! the file: it records the problem and hands the struct a placeholder of the type asked
//! for (an empty string, 0, false, an empty list or table), so the rest of the file is still
//! read and validated. Keys holding a placeholder are remembered, so the validator's
//! complaints about them ("must be from 1 to 10000000" about a 0 nobody wrote) are dropped.

use std::cell::RefCell;
use std::collections::HashSet;
use std::fmt;
use std::ops::Range;

use serde::Deserialize;
use serde::de::{
    self, DeserializeSeed, Deserializer as _, IntoDeserializer, MapAccess, SeqAccess, Visitor,
};
use serde_spanned::de::{SpannedDeserializer, is_spanned};
use toml::Spanned;
use toml::de::{DeString, DeTable, DeValue};

use super::error::{Locator, Problem};
use super::raw::RawConfig;

/// What reading a file produced: the raw config, unless the syntax is broken, and every
/// problem found on the way.
pub(super) struct Document {
    /// The raw config, with placeholders where values were wrong or missing.
    pub raw: Option<RawConfig>,
    /// Syntax, unknown-key, type and missing-key problems, in no particular order.
    pub problems: Vec<Problem>,
    /// Keys whose value is a placeholder, already reported as wrongly typed or missing.
    pub placeholders: Vec<String>,
}

/// The message toml gives a key written twice; it is named by us, toml does not.
const DUPLICATE_KEY: &str = "duplicate key";

/// Parses `loc.text` and reads it into a [`RawConfig`].
pub(super) fn read(loc: &Locator<'_>) -> Document {
    let (tree, errors) = DeTable::parse_recoverable(loc.text);
    let (mut problems, usable) = syntax_problems(loc, errors);
    if !usable {
        return Document {
            raw: None,
            problems,
            placeholders: Vec::new(),
        };
    }
    // A required key found missing can only be filled in on a second pass (serde reports it
    // after the struct's other keys are read), so passes repeat until none is new; each one
    // adds at least one key to `fill`, and a struct has finitely many.
    let mut fill = HashSet::new();
    loop {
        let walk = Walk {
            loc,
            fill: &fill,
            found: RefCell::default(),
        };
        let result = RawConfig::deserialize(ValueDe {
            value: DeValue::Table(tree.get_ref().clone()),
            span: tree.span(),
            key: String::new(),
            walk: &walk,
        });
        let mut found = walk.found.into_inner();
        match result {
            Ok(raw) => {
                problems.append(&mut found.problems);
                return Document {
                    raw: Some(raw),
                    problems,
                    placeholders: found.placeholders,
                };
            }
            Err(Error {
                missing: Some(field),
                at: Some((table, _)),
                ..
            }) if fill.insert((table.clone(), field)) => {}
            // Not a mistake in the file (those are recorded, not returned): reported as is.
            Err(e) => {
                problems.append(&mut found.problems);
                let (key, span) = e.at.unwrap_or_default();
                problems.push(loc.problem(span, key, e.message));
                return Document {
                    raw: None,
                    problems,
                    placeholders: found.placeholders,
                };
            }
        }
    }
}

/// Turns toml's parse errors into problems; `false` when the tree cannot be read further.
///
/// Only the first real syntax error is reported: after an unclosed bracket or quote every
/// later line may look wrong, and toml's recovery reports those too. Keys written twice
/// (before it) are all reported, and leave the tree usable: the first value counts.
fn syntax_problems(loc: &Locator<'_>, errors: Vec<toml::de::Error>) -> (Vec<Problem>, bool) {
    let mut errors: Vec<_> = errors
        .iter()
        .map(|e| (e.span().unwrap_or(0..0), e.message().trim().to_owned()))
        .collect();
    errors.sort_by_key(|(span, _)| span.start);
    let first_syntax = errors.iter().position(|(_, m)| m != DUPLICATE_KEY);
    if let Some(i) = first_syntax {
        errors.truncate(i + 1);
    }
    let problems = errors
        .into_iter()
        .map(|(span, message)| {
            let message = if message == DUPLICATE_KEY {
                duplicate(loc.text, span.clone())
            } else {
                message
            };
            loc.problem(span, "", message)
        })
        .collect();
    (problems, first_syntax.is_none())
}

/// Names what was written twice: ``duplicate key `allow` `` or `table [identity] is defined twice`.
fn duplicate(text: &str, span: Range<usize>) -> String {
    let before = text.get(..span.start).unwrap_or("");
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or("").trim();
    if line.starts_with('[') {
        let end = line.rfind(']').map_or(line.len(), |i| i + 1);
        return format!("table {} is defined twice", &line[..end]);
    }
    let key = text.get(span).unwrap_or("").trim();
    format!("duplicate key `{key}`; each key may be set once per table")
}

/// State shared by one pass over the tree.
struct Walk<'a> {
    loc: &'a Locator<'a>,
    /// `(table, key)`: required keys found missing by an earlier pass, filled in on this one.
    fill: &'a HashSet<(String, &'static str)>,
    found: RefCell<Found>,
}

/// What a pass found: problems, and the keys given placeholders.
#[derive(Default)]
struct Found {
    problems: Vec<Problem>,
    placeholders: Vec<String>,
}

impl Walk<'_> {
    /// Records a problem; `placeholder` when the key's value is replaced by one.
    fn report(&self, span: Range<usize>, key: &str, message: String, placeholder: bool) {
        let mut found = self.found.borrow_mut();
        found.problems.push(self.loc.problem(span, key, message));
        if placeholder {
            found.placeholders.push(key.to_owned());
        }
    }
}

/// `parent.child`, or `child` at the top level.
fn join(parent: &str, child: &str) -> String {
    if parent.is_empty() {
        child.to_owned()
    } else {
        format!("{parent}.{child}")
    }
}

/// Why reading stopped. Mistakes in the file never stop it; a required key that is missing
/// does, until the next pass fills it in.
#[derive(Debug)]
struct Error {
    message: String,
    /// The required key serde found missing.
    missing: Option<&'static str>,
    /// The innermost table (key path and span) the error passed through.
    at: Option<(String, Range<usize>)>,
}

impl Error {
    /// Locates the error at the table it came from, unless a deeper one did already.
    fn at(mut self, key: &str, span: Range<usize>) -> Self {
        self.at.get_or_insert_with(|| (key.to_owned(), span));
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

impl de::Error for Error {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Self {
            message: msg.to_string(),
            missing: None,
            at: None,
        }
    }

    fn missing_field(field: &'static str) -> Self {
        Self {
            missing: Some(field),
            ..Self::custom(format_args!("missing field `{field}`"))
        }
    }
}

/// Describes a value as a user wrote it: `the string "30"`, `the number 5`, `a table`.
fn found(value: &DeValue<'_>) -> String {
    match value {
        DeValue::String(s) if s.chars().count() > 40 => "a string".into(),
        DeValue::String(s) => format!("the string {s:?}"),
        DeValue::Integer(i) => format!("the number {i}"),
        DeValue::Float(f) => format!("the number {f}"),
        DeValue::Boolean(b) => b.to_string(),
        DeValue::Datetime(d) => format!("the date {d}"),
        DeValue::Array(_) => "an array".into(),
        DeValue::Table(_) => "a table".into(),
    }
}

/// The known key `name` is probably a typo of: at most two edits away.
fn closest(name: &str, known: &[&'static str]) -> Option<&'static str> {
    known
        .iter()
        .map(|k| (edit_distance(name, k), *k))
        .filter(|(d, k)| *d <= 2 && *d < k.len())
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// The message for an unknown key: the key it is probably a typo of, or every known key.
fn unknown_key(name: &str, suggestion: Option<&str>, known: &[&str]) -> String {
    match suggestion {
        Some(k) => format!("unknown field `{name}`; did you mean `{k}`?"),
        None => {
            let list: Vec<_> = known.iter().map(|k| format!("`{k}`")).collect();
            format!(
                "unknown field `{name}`; expected one of {}",
                list.join(", ")
            )
        }
    }
}

/// Levenshtein distance, for typo suggestions between short key names.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitute = diagonal + usize::from(ca != *cb);
            diagonal = row[j + 1];
            row[j + 1] = substitute.min(row[j] + 1).min(diagonal + 1);
        }
    }
    row[b.len()]
}

/// `deserialize_*` methods for every integer width, all read by `integer`.
macro_rules! forward_integers {
    ($($method:ident),* $(,)?) => {
        $(
            fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
                self.integer(visitor)
            }
        )*
    };
}

/// `deserialize_*` methods that hand the visitor a fixed empty value.
macro_rules! placeholders {
    ($($method:ident => $visit:ident($($value:expr)?)),* $(,)?) => {
        $(
            fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
                visitor.$visit($($value)?)
            }
        )*
    };
}

/// Deserializes one value of the tree, recording mistakes instead of failing on them.
struct ValueDe<'a, 'de> {
    value: DeValue<'de>,
    span: Range<usize>,
    /// Its key path, e.g. `inbound[0].allow[1]`.
    key: String,
    walk: &'a Walk<'a>,
}

impl<'a, 'de> ValueDe<'a, 'de> {
    /// Records that the value is not `expected` and returns the placeholder to use instead.
    fn mismatch(self, expected: &str) -> Placeholder {
        let mut message = format!("expected {expected}, found {}", found(&self.value));
        if let DeValue::String(s) = &self.value
            && expected == "a number"
            && s.trim().parse::<f64>().is_ok()
        {
            message.push_str("; write it without quotes");
        }
        self.walk
            .report(self.span.clone(), &self.key, message, true);
        Placeholder { span: self.span }
    }

    /// The value as an integer, for every integer type serde asks for.
    fn integer<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let DeValue::Integer(i) = &self.value else {
            let expected = match self.value {
                DeValue::Float(_) => "a whole number",
                _ => "a number",
            };
            return self.mismatch(expected).deserialize_i64(visitor);
        };
        if let Ok(n) = i64::from_str_radix(i.as_str(), i.radix()) {
            visitor.visit_i64(n)
        } else if let Ok(n) = u64::from_str_radix(i.as_str(), i.radix()) {
            visitor.visit_u64(n)
        } else {
            let message = format!("the number {i} is too large");
            self.walk
                .report(self.span.clone(), &self.key, message, true);
            Placeholder { span: self.span }.deserialize_i64(visitor)
        }
    }

    fn seq<V: Visitor<'de>>(self, len: Option<usize>, visitor: V) -> Result<V::Value, Error> {
        let expected = match len {
            Some(n) => format!("an array of {n} values"),
            None => "an array".to_owned(),
        };
        match self.value {
            DeValue::Array(items) if len.is_none_or(|n| n == items.len()) => {
                visitor.visit_seq(SeqDe {
                    items: items.into_iter().enumerate(),
                    key: self.key,
                    walk: self.walk,
                })
            }
            DeValue::Array(ref items) => {
                let message = format!("expected {expected}, found {}", items.len());
                self.walk
                    .report(self.span.clone(), &self.key, message, true);
                let placeholder = Placeholder { span: self.span };
                match len {
                    Some(n) => placeholder.deserialize_tuple(n, visitor),
                    None => placeholder.deserialize_seq(visitor),
                }
            }
            _ => match len {
                Some(n) => self.mismatch(&expected).deserialize_tuple(n, visitor),
                None => self.mismatch(&expected).deserialize_seq(visitor),
            },
        }
    }

    /// A table as a struct with `fields`: unknown keys are reported and skipped, required
    /// keys an earlier pass found missing are reported and filled with placeholders.
    fn table<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        let DeValue::Table(table) = self.value else {
            return self
                .mismatch("a table")
                .deserialize_struct("", fields, visitor);
        };
        let mut entries = Vec::new();
        let mut typos = Vec::new();
        for (name, value) in table {
            match fields.iter().find(|f| **f == name.get_ref().as_ref()) {
                Some(field) => entries.push((*field, Some(value))),
                None => {
                    let key = join(&self.key, name.get_ref());
                    let suggestion = closest(name.get_ref(), fields);
                    let message = unknown_key(name.get_ref(), suggestion, fields);
                    self.walk.report(name.span(), &key, message, false);
                    typos.extend(suggestion);
                }
            }
        }
        // `alow = [...]` leaves `allow` unset, and "did you mean `allow`?" says all there is to
        // say: that `allow` is missing or empty is not reported again.
        let meant: Vec<&str> = typos
            .into_iter()
            .filter(|f| !entries.iter().any(|(present, _)| present == f))
            .collect();
        for field in &meant {
            let mut found = self.walk.found.borrow_mut();
            found.placeholders.push(join(&self.key, field));
        }
        for field in fields {
            if self.walk.fill.contains(&(self.key.clone(), *field)) {
                if !meant.contains(field) {
                    // Every top-level key is a table ([identity]), so it is named as one.
                    let message = if self.key.is_empty() {
                        format!("missing [{field}] table")
                    } else {
                        format!("missing field `{field}`")
                    };
                    let key = join(&self.key, field);
                    self.walk.report(self.span.clone(), &key, message, true);
                }
                entries.push((*field, None));
            }
        }
        let (key, span) = (self.key, self.span);
        visitor
            .visit_map(MapDe {
                entries: entries.into_iter(),
                pending: None,
                key: key.clone(),
                span: span.clone(),
                walk: self.walk,
            })
            .map_err(|e| e.at(&key, span))
    }
}

impl<'de> IntoDeserializer<'de, Error> for ValueDe<'_, 'de> {
    type Deserializer = Self;

    fn into_deserializer(self) -> Self {
        self
    }
}

impl<'de> de::Deserializer<'de> for ValueDe<'_, 'de> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.value {
            DeValue::String(DeString::Borrowed(s)) => visitor.visit_borrowed_str(s),
            DeValue::String(DeString::Owned(s)) => visitor.visit_string(s),
            DeValue::Integer(_) => self.integer(visitor),
            DeValue::Float(_) => self.deserialize_f64(visitor),
            DeValue::Boolean(b) => visitor.visit_bool(b),
            DeValue::Datetime(d) => visitor.visit_string(d.to_string()),
            DeValue::Array(_) => self.seq(None, visitor),
            DeValue::Table(table) => {
                let entries: Vec<_> = table
                    .into_iter()
                    .map(|(k, v)| (k.into_inner(), v))
                    .collect();
                visitor.visit_map(AnyMapDe {
                    entries: entries.into_iter(),
                    pending: None,
                    key: self.key,
                    walk: self.walk,
                })
            }
        }
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.value {
            DeValue::Boolean(b) => visitor.visit_bool(b),
            _ => self.mismatch("true or false").deserialize_bool(visitor),
        }
    }

    // Integers of every width go through one check; the visitor narrows and says so.
    forward_integers!(
        deserialize_i8,
        deserialize_i16,
        deserialize_i32,
        deserialize_i64,
        deserialize_u8,
        deserialize_u16,
        deserialize_u32,
        deserialize_u64
    );

    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_f64(visitor)
    }

    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let parsed = match &self.value {
            DeValue::Float(f) => f.as_str().parse::<f64>().ok(),
            DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix())
                .ok()
                .map(|n| n as f64),
            _ => None,
        };
        match parsed {
            Some(n) => visitor.visit_f64(n),
            None => self.mismatch("a number").deserialize_f64(visitor),
        }
    }

    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_string(visitor)
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_string(visitor)
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.value {
            DeValue::String(DeString::Borrowed(s)) => visitor.visit_borrowed_str(s),
            DeValue::String(DeString::Owned(s)) => visitor.visit_string(s),
            _ => self.mismatch("a string").deserialize_string(visitor),
        }
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_any(visitor)
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_any(visitor)
    }

    // A key that is present is `Some`; absent keys never get here.
    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_some(self)
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_any(visitor)
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_any(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.seq(None, visitor)
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, Error> {
        self.seq(Some(len), visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.seq(Some(len), visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.value {
            DeValue::Table(_) => self.deserialize_any(visitor),
            _ => self.mismatch("a table").deserialize_map(visitor),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        if is_spanned(name) {
            let span = self.span.clone();
            return visitor.visit_map(SpannedDeserializer::new(self, span));
        }
        match self.value {
            DeValue::Table(_) => self.table(fields, visitor),
            _ => self
                .mismatch("a table")
                .deserialize_struct(name, fields, visitor),
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        match self.value {
            DeValue::String(s) => de::value::StringDeserializer::<Error>::new(s.into_owned())
                .deserialize_enum(name, variants, visitor),
            _ => self
                .mismatch("a string")
                .deserialize_enum(name, variants, visitor),
        }
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_string(visitor)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }
}

/// The elements of an array, each read with its own key path (`allow[1]`).
struct SeqDe<'a, 'de> {
    items: std::iter::Enumerate<std::vec::IntoIter<Spanned<DeValue<'de>>>>,
    key: String,
    walk: &'a Walk<'a>,
}

impl<'de> SeqAccess<'de> for SeqDe<'_, 'de> {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Error> {
        let Some((i, item)) = self.items.next() else {
            return Ok(None);
        };
        let span = item.span();
        seed.deserialize(ValueDe {
            value: item.into_inner(),
            span,
            key: format!("{}[{i}]", self.key),
            walk: self.walk,
        })
        .map(Some)
    }
}

/// The known keys of a table read as a struct; `None` values are placeholders for keys
/// found missing.
struct MapDe<'a, 'de> {
    entries: std::vec::IntoIter<(&'static str, Option<Spanned<DeValue<'de>>>)>,
    pending: Option<(&'static str, Option<Spanned<DeValue<'de>>>)>,
    key: String,
    span: Range<usize>,
    walk: &'a Walk<'a>,
}

impl<'de> MapAccess<'de> for MapDe<'_, 'de> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        let Some((name, value)) = self.entries.next() else {
            return Ok(None);
        };
        self.pending = Some((name, value));
        seed.deserialize(de::value::BorrowedStrDeserializer::<Error>::new(name))
            .map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        match self.pending.take() {
            Some((name, Some(value))) => {
                let span = value.span();
                seed.deserialize(ValueDe {
                    value: value.into_inner(),
                    span,
                    key: join(&self.key, name),
                    walk: self.walk,
                })
            }
            Some((_, None)) => seed.deserialize(Placeholder {
                span: self.span.clone(),
            }),
            None => Err(de::Error::custom("a value was asked for before its key")),
        }
    }
}

/// A table read as a map (by `deserialize_any`), every key passed on.
struct AnyMapDe<'a, 'de> {
    entries: std::vec::IntoIter<(DeString<'de>, Spanned<DeValue<'de>>)>,
    pending: Option<(String, Spanned<DeValue<'de>>)>,
    key: String,
    walk: &'a Walk<'a>,
}

impl<'de> MapAccess<'de> for AnyMapDe<'_, 'de> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        let Some((name, value)) = self.entries.next() else {
            return Ok(None);
        };
        let name = name.into_owned();
        let key = seed.deserialize(de::value::StrDeserializer::<Error>::new(&name))?;
        self.pending = Some((name, value));
        Ok(Some(key))
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        let Some((name, value)) = self.pending.take() else {
            return Err(de::Error::custom("a value was asked for before its key"));
        };
        let span = value.span();
        seed.deserialize(ValueDe {
            value: value.into_inner(),
            span,
            key: join(&self.key, &name),
            walk: self.walk,
        })
    }
}

/// Stands in for a missing or wrongly typed value: the empty value of whatever type is
/// asked for, so the struct holding it can still be built. Optional keys read as absent.
struct Placeholder {
    span: Range<usize>,
}

impl<'de> IntoDeserializer<'de, Error> for Placeholder {
    type Deserializer = Self;

    fn into_deserializer(self) -> Self {
        self
    }
}

impl<'de> de::Deserializer<'de> for Placeholder {
    type Error = Error;

    placeholders! {
        deserialize_any => visit_unit(),
        deserialize_bool => visit_bool(false),
        deserialize_i8 => visit_i64(0),
        deserialize_i16 => visit_i64(0),
        deserialize_i32 => visit_i64(0),
        deserialize_i64 => visit_i64(0),
        deserialize_u8 => visit_u64(0),
        deserialize_u16 => visit_u64(0),
        deserialize_u32 => visit_u64(0),
        deserialize_u64 => visit_u64(0),
        deserialize_f32 => visit_f64(0.0),
        deserialize_f64 => visit_f64(0.0),
        deserialize_char => visit_char(' '),
        deserialize_str => visit_borrowed_str(""),
        deserialize_string => visit_borrowed_str(""),
        deserialize_bytes => visit_borrowed_bytes(&[]),
        deserialize_byte_buf => visit_borrowed_bytes(&[]),
        deserialize_option => visit_none(),
        deserialize_unit => visit_unit(),
        deserialize_identifier => visit_borrowed_str(""),
        deserialize_ignored_any => visit_unit(),
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_seq(de::value::SeqDeserializer::new(std::iter::empty::<Self>()))
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, Error> {
        let span = self.span;
        let items = (0..len).map(move |_| Placeholder { span: span.clone() });
        visitor.visit_seq(de::value::SeqDeserializer::new(items))
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_tuple(len, visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_map(de::value::MapDeserializer::new(std::iter::empty::<(
            &'de str,
            Self,
        )>()))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        let span = self.span;
        if is_spanned(name) {
            return visitor.visit_map(SpannedDeserializer::new(
                Placeholder { span: span.clone() },
                span,
            ));
        }
        // Every field gets a placeholder: required ones need a value, optional ones read it
        // as absent, defaulted ones as empty, which is their default.
        let entries = fields
            .iter()
            .map(move |f| (*f, Placeholder { span: span.clone() }));
        visitor.visit_map(de::value::MapDeserializer::new(entries))
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Error> {
        Err(de::Error::custom("no placeholder for an enum"))
    }
}
