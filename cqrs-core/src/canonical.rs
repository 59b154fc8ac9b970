//! The canonical JSON text of attributes, written straight from any
//! [`Serialize`] value: object keys sorted, numbers in the form DynamoDB
//! gives back, strings escaped as serde_json escapes them, no spaces — the
//! text [`Attributes::json`](crate::Attributes::json) writes of the value
//! `serde_json::to_value` would build, without building it.
//!
//! A struct's fields are written in declaration order as they come, each
//! object's entries noted; at the end of the object they are put in key
//! order when they are not in it already (one copy of that object's text).

use std::cell::RefCell;
use std::fmt::Display;
use std::sync::Arc;

use serde::ser::{self, Impossible, Serialize};
use serde_json::Number;

use crate::numbers::Integral;

/// Why a value could not be written here. The caller then takes the
/// `serde_json::Value` path, whose error (naming the field of a number out
/// of range, say) is the one users get: errors cost nothing to be exact.
#[derive(Debug)]
pub(crate) struct Refused(String);

impl Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

impl ser::Error for Refused {
    fn custom<T: Display>(msg: T) -> Self {
        Refused(msg.to_string())
    }
}

fn refused(why: &str) -> Refused {
    Refused(why.to_owned())
}

/// The canonical text of `value`, or `Err` when `serde_json::to_value`
/// would refuse it, or its numbers are outside DynamoDB's range, or it
/// holds something this writer leaves to the `Value` path (a raw JSON
/// value, a float or an unusual map key).
pub(crate) fn to_canonical<T: Serialize + ?Sized>(value: &T) -> Result<Arc<str>, Refused> {
    thread_local! {
        static WRITER: RefCell<Writer> = RefCell::new(Writer::default());
    }
    WRITER.with(|writer| match writer.try_borrow_mut() {
        Ok(mut writer) => writer.write(value),
        // A `Serialize` impl that serializes attributes itself.
        Err(_) => Writer::default().write(value),
    })
}

/// The buffers, kept per thread between texts.
struct Writer {
    out: Vec<u8>,
    /// The entries of the objects being written, innermost last.
    entries: Vec<Entry>,
    /// Where an object's text is copied to be written again in key order.
    scratch: Vec<u8>,
    /// The key order of the structs written lately (see [`KeyOrders`]).
    orders: KeyOrders,
    /// Struct field names (address, length) known to need no escape.
    plain_fields: [(usize, usize); PLAIN_FIELDS],
}

/// How many field names [`Writer::plain_fields`] remembers.
const PLAIN_FIELDS: usize = 128;

impl Default for Writer {
    fn default() -> Self {
        Self {
            out: Vec::new(),
            entries: Vec::new(),
            scratch: Vec::new(),
            orders: KeyOrders::default(),
            plain_fields: [(0, 0); PLAIN_FIELDS],
        }
    }
}

/// One `"key":value` of an object, by its place in [`Writer::out`].
#[derive(Clone, Copy)]
struct Entry {
    /// Where the entry starts: its key's opening quote.
    start: usize,
    /// Where the key's text ends: its closing quote.
    key_end: usize,
    /// Just past the value.
    end: usize,
    /// Whether the key was written with escapes (its text then does not
    /// sort as the key does).
    escaped: bool,
    /// A struct field's name, which is the same `&'static str` every time
    /// the struct is written: what [`KeyOrders`] recognizes a struct by.
    field: Option<(usize, usize)>,
}

/// The order to write an object's entries in: the positions of the
/// entries kept (the last of equal keys), in key order; `None` when they
/// are written in order already.
type Order = Option<Box<[u8]>>;

/// The key order of the structs written lately, so that sorting a struct's
/// fields costs one look-up after its first time. A struct is recognized
/// by the addresses of its field names (`&'static str`s, the same each
/// time), all compared: fields skipped or renamed make another entry.
struct KeyOrders {
    slots: Vec<Option<KnownOrder>>,
}

/// A struct's field names (address and length) and their order.
type KnownOrder = (Box<[(usize, usize)]>, Order);

impl Default for KeyOrders {
    fn default() -> Self {
        Self {
            slots: (0..KeyOrders::SLOTS).map(|_| None).collect(),
        }
    }
}

impl KeyOrders {
    const SLOTS: usize = 64;

    fn slot(first: (usize, usize), last: (usize, usize), len: usize) -> usize {
        (first.0 >> 3 ^ last.0 >> 5 ^ len) % Self::SLOTS
    }

    /// The order known for a struct of these entries (all fields).
    fn get(&self, entries: &[Entry]) -> Option<&Order> {
        let (first, last) = (entries.first()?.field?, entries.last()?.field?);
        match &self.slots[Self::slot(first, last, entries.len())] {
            Some((known, order))
                if known.len() == entries.len()
                    && known.iter().zip(entries).all(|(k, e)| e.field == Some(*k)) =>
            {
                Some(order)
            }
            _ => None,
        }
    }

    fn insert(&mut self, fields: Box<[(usize, usize)]>, order: Order) {
        let (Some(&first), Some(&last)) = (fields.first(), fields.last()) else {
            return;
        };
        let slot = Self::slot(first, last, fields.len());
        self.slots[slot] = Some((fields, order));
    }
}

impl Writer {
    fn write<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<Arc<str>, Refused> {
        self.out.clear();
        self.entries.clear();
        let written = value.serialize(&mut *self);
        let text = written.map(|()| {
            // Only whole UTF-8 strings and ASCII are written.
            Arc::from(std::str::from_utf8(&self.out).unwrap_or("null"))
        });
        // A very large value should not keep its buffers alive.
        if self.out.capacity() > 64 * 1024 {
            self.out = Vec::new();
            self.scratch = Vec::new();
        }
        text
    }

    fn write_f64(&mut self, float: f64) -> Result<(), Refused> {
        // Most floats are small and with a fraction, or small and whole:
        // decided here without the general checks below. Below 2^53 a
        // whole float is an integer written the same way, and within
        // these bounds a float is inside DynamoDB's range.
        const EXACT: f64 = (1u64 << 53) as f64;
        let magnitude = float.abs();
        if (1e-100..EXACT).contains(&magnitude) {
            let whole = float as i64;
            if whole as f64 == float {
                self.write_integer(whole);
            } else {
                serde_json::to_writer(&mut self.out, &float).map_err(|e| Refused(e.to_string()))?;
            }
            return Ok(());
        }
        // As `Value::from(f64)`: not a number, or infinite, is `null`.
        let Some(number) = Number::from_f64(float) else {
            self.out.extend_from_slice(b"null");
            return Ok(());
        };
        if !crate::numbers::in_range(float) {
            return Err(refused("a number is outside DynamoDB's range"));
        }
        let mut digits = itoa::Buffer::new();
        match crate::numbers::integral(&number) {
            Some(Integral::Unsigned(n)) => self.out.extend_from_slice(digits.format(n).as_bytes()),
            Some(Integral::Signed(n)) => self.out.extend_from_slice(digits.format(n).as_bytes()),
            None => serde_json::to_writer(&mut self.out, &float).map_err(|e| Refused(e.to_string()))?,
        }
        Ok(())
    }

    fn write_integer(&mut self, n: impl itoa::Integer) {
        self.out
            .extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
    }

    /// Starts an object; its entries are those noted from the returned mark.
    fn begin_object(&mut self) -> usize {
        self.out.push(b'{');
        self.entries.len()
    }

    /// Writes `key` and notes the entry it starts; `field`: the key is a
    /// struct's field name.
    fn begin_entry(&mut self, mark: usize, key: &str, field: bool) {
        if self.entries.len() > mark {
            self.out.push(b',');
        }
        let start = self.out.len();
        let name = (key.as_ptr() as usize, key.len());
        // A field name seen plain before is written without looking at
        // its bytes again.
        let slot = &mut self.plain_fields[(name.0 >> 3 ^ name.1) % PLAIN_FIELDS];
        if field && *slot == name {
            self.out.reserve(key.len() + 3);
            self.out.push(b'"');
            self.out.extend_from_slice(key.as_bytes());
            self.out.extend_from_slice(b"\":");
        } else {
            write_string(key, &mut self.out);
            self.out.push(b':');
        }
        let key_end = self.out.len() - 2;
        let escaped = key_end - start - 1 != key.len();
        if field && !escaped {
            *slot = name;
        }
        self.entries.push(Entry {
            start,
            key_end,
            end: 0,
            escaped,
            field: field.then_some(name),
        });
    }

    fn end_entry(&mut self) {
        let end = self.out.len();
        if let Some(entry) = self.entries.last_mut() {
            entry.end = end;
        }
    }

    /// Ends the object whose entries start at `mark`: puts them in key
    /// order (the last of equal keys kept, as a map keeps it) if they are
    /// not in it.
    fn end_object(&mut self, mark: usize) {
        if self.entries.len() - mark > 1 {
            self.sort_entries(mark);
        }
        self.entries.truncate(mark);
        self.out.push(b'}');
    }

    fn sort_entries(&mut self, mark: usize) {
        let entries = &self.entries[mark..];
        if let Some(order) = self.orders.get(entries) {
            write_in_order(&mut self.out, &mut self.scratch, entries, order.as_deref());
            return;
        }
        let order = key_order(&self.out, entries);
        write_in_order(&mut self.out, &mut self.scratch, entries, order.as_deref());
        // A struct's fields: the same order next time. (A map's keys
        // change from one value to the next.)
        let fields: Option<Box<[(usize, usize)]>> = entries.iter().map(|e| e.field).collect();
        if let Some(fields) = fields {
            self.orders.insert(fields, order);
        }
    }
}

/// Writes `entries` (the last ones of `out`) again, those of `order` in
/// its order, through `scratch`.
fn write_in_order(out: &mut Vec<u8>, scratch: &mut Vec<u8>, entries: &[Entry], order: Option<&[u8]>) {
    let (Some(order), Some(first)) = (order, entries.first().map(|e| e.start)) else {
        return;
    };
    scratch.clear();
    scratch.extend_from_slice(&out[first..]);
    out.truncate(first);
    for (n, &i) in order.iter().enumerate() {
        if n > 0 {
            out.push(b',');
        }
        let entry = entries[usize::from(i)];
        out.extend_from_slice(&scratch[entry.start - first..entry.end - first]);
    }
}

/// The order to write `entries` in (see [`Order`]).
fn key_order(out: &[u8], entries: &[Entry]) -> Order {
    let in_order = entries.iter().all(|e| !e.escaped)
        && entries
            .windows(2)
            .all(|pair| key_of(out, &pair[0]) < key_of(out, &pair[1]));
    if in_order {
        return None;
    }
    // Keys with escapes compare by what they say, not by their text.
    let keys: Vec<std::borrow::Cow<'_, [u8]>> = entries
        .iter()
        .map(|entry| {
            if entry.escaped {
                let decoded: String =
                    serde_json::from_slice(&out[entry.start..=entry.key_end]).unwrap_or_default();
                std::borrow::Cow::Owned(decoded.into_bytes())
            } else {
                std::borrow::Cow::Borrowed(key_of(out, entry))
            }
        })
        .collect();
    // Objects of more than 256 entries are left to the `Value` path
    // (see `Object::entry`): positions fit in a byte.
    let mut order: Vec<u8> = (0..entries.len()).map(|i| i as u8).collect();
    // Stable: of equal keys, the last written comes last.
    order.sort_by(|&a, &b| keys[usize::from(a)].cmp(&keys[usize::from(b)]));
    let mut kept: Vec<u8> = Vec::with_capacity(order.len());
    for i in order {
        match kept.last_mut() {
            Some(last) if keys[usize::from(*last)] == keys[usize::from(i)] => *last = i,
            _ => kept.push(i),
        }
    }
    Some(kept.into_boxed_slice())
}

/// The text of an entry's key, between its quotes.
fn key_of<'a>(out: &'a [u8], entry: &Entry) -> &'a [u8] {
    &out[entry.start + 1..entry.key_end]
}

impl<'a> ser::Serializer for &'a mut Writer {
    type Ok = ();
    type Error = Refused;
    type SerializeSeq = Seq<'a>;
    type SerializeTuple = Seq<'a>;
    type SerializeTupleStruct = Seq<'a>;
    type SerializeTupleVariant = Seq<'a>;
    type SerializeMap = Object<'a>;
    type SerializeStruct = Object<'a>;
    type SerializeStructVariant = Object<'a>;

    fn serialize_bool(self, v: bool) -> Result<(), Refused> {
        self.out.extend_from_slice(if v { b"true" } else { b"false" });
        Ok(())
    }
    fn serialize_i8(self, v: i8) -> Result<(), Refused> {
        self.write_integer(v);
        Ok(())
    }
    fn serialize_i16(self, v: i16) -> Result<(), Refused> {
        self.write_integer(v);
        Ok(())
    }
    fn serialize_i32(self, v: i32) -> Result<(), Refused> {
        self.write_integer(v);
        Ok(())
    }
    fn serialize_i64(self, v: i64) -> Result<(), Refused> {
        self.write_integer(v);
        Ok(())
    }
    fn serialize_i128(self, v: i128) -> Result<(), Refused> {
        // As `serde_json::to_value`: what 64 bits hold, or refused.
        if u64::try_from(v).is_ok() || i64::try_from(v).is_ok() {
            self.write_integer(v);
            Ok(())
        } else {
            Err(refused("number out of range"))
        }
    }
    fn serialize_u8(self, v: u8) -> Result<(), Refused> {
        self.write_integer(v);
        Ok(())
    }
    fn serialize_u16(self, v: u16) -> Result<(), Refused> {
        self.write_integer(v);
        Ok(())
    }
    fn serialize_u32(self, v: u32) -> Result<(), Refused> {
        self.write_integer(v);
        Ok(())
    }
    fn serialize_u64(self, v: u64) -> Result<(), Refused> {
        self.write_integer(v);
        Ok(())
    }
    fn serialize_u128(self, v: u128) -> Result<(), Refused> {
        if u64::try_from(v).is_ok() {
            self.write_integer(v);
            Ok(())
        } else {
            Err(refused("number out of range"))
        }
    }
    fn serialize_f32(self, v: f32) -> Result<(), Refused> {
        self.write_f64(f64::from(v))
    }
    fn serialize_f64(self, v: f64) -> Result<(), Refused> {
        self.write_f64(v)
    }
    fn serialize_char(self, v: char) -> Result<(), Refused> {
        write_string(v.encode_utf8(&mut [0; 4]), &mut self.out);
        Ok(())
    }
    fn serialize_str(self, v: &str) -> Result<(), Refused> {
        write_string(v, &mut self.out);
        Ok(())
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<(), Refused> {
        // As `serde_json::to_value`: an array of numbers.
        self.out.push(b'[');
        for (i, byte) in v.iter().enumerate() {
            if i > 0 {
                self.out.push(b',');
            }
            self.write_integer(*byte);
        }
        self.out.push(b']');
        Ok(())
    }
    fn serialize_none(self) -> Result<(), Refused> {
        self.serialize_unit()
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), Refused> {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<(), Refused> {
        self.out.extend_from_slice(b"null");
        Ok(())
    }
    fn serialize_unit_struct(self, _name: &'static str) -> Result<(), Refused> {
        self.serialize_unit()
    }
    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<(), Refused> {
        self.serialize_str(variant)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<(), Refused> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<(), Refused> {
        // `{"variant":value}`: one key, in order by itself.
        self.out.push(b'{');
        write_string(variant, &mut self.out);
        self.out.push(b':');
        value.serialize(&mut *self)?;
        self.out.push(b'}');
        Ok(())
    }
    fn serialize_seq(self, _len: Option<usize>) -> Result<Seq<'a>, Refused> {
        self.out.push(b'[');
        Ok(Seq {
            writer: self,
            first: true,
            variant: false,
        })
    }
    fn serialize_tuple(self, len: usize) -> Result<Seq<'a>, Refused> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_struct(self, _name: &'static str, len: usize) -> Result<Seq<'a>, Refused> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Seq<'a>, Refused> {
        self.out.push(b'{');
        write_string(variant, &mut self.out);
        self.out.extend_from_slice(b":[");
        Ok(Seq {
            writer: self,
            first: true,
            variant: true,
        })
    }
    fn serialize_map(self, _len: Option<usize>) -> Result<Object<'a>, Refused> {
        let mark = self.begin_object();
        Ok(Object {
            writer: self,
            mark,
            variant: false,
        })
    }
    fn serialize_struct(self, name: &'static str, _len: usize) -> Result<Object<'a>, Refused> {
        // serde_json's raw values and arbitrary-precision numbers pass as
        // structs of this name: left to serde_json.
        if name.starts_with("$serde_json::private::") {
            return Err(refused("a raw JSON value"));
        }
        self.serialize_map(None)
    }
    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Object<'a>, Refused> {
        self.out.push(b'{');
        write_string(variant, &mut self.out);
        self.out.push(b':');
        let mark = self.begin_object();
        Ok(Object {
            writer: self,
            mark,
            variant: true,
        })
    }
}

/// An array being written (of a tuple variant: inside its one-key object).
pub(crate) struct Seq<'a> {
    writer: &'a mut Writer,
    first: bool,
    variant: bool,
}

impl Seq<'_> {
    fn element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Refused> {
        if !std::mem::take(&mut self.first) {
            self.writer.out.push(b',');
        }
        value.serialize(&mut *self.writer)
    }

    fn finish(self) -> Result<(), Refused> {
        self.writer.out.push(b']');
        if self.variant {
            self.writer.out.push(b'}');
        }
        Ok(())
    }
}

/// The four kinds of sequences serde tells apart are written alike.
macro_rules! sequence {
    ($trait:ident, $element:ident) => {
        impl ser::$trait for Seq<'_> {
            type Ok = ();
            type Error = Refused;
            fn $element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Refused> {
                self.element(value)
            }
            fn end(self) -> Result<(), Refused> {
                self.finish()
            }
        }
    };
}

sequence!(SerializeSeq, serialize_element);
sequence!(SerializeTuple, serialize_element);
sequence!(SerializeTupleStruct, serialize_field);
sequence!(SerializeTupleVariant, serialize_field);

/// An object being written (of a struct variant: inside its one-key object).
pub(crate) struct Object<'a> {
    writer: &'a mut Writer,
    /// Where its entries start in [`Writer::entries`].
    mark: usize,
    variant: bool,
}

impl Object<'_> {
    fn field<T: Serialize + ?Sized>(&mut self, key: &'static str, value: &T) -> Result<(), Refused> {
        self.entry(key, true, value)
    }

    fn entry<T: Serialize + ?Sized>(&mut self, key: &str, field: bool, value: &T) -> Result<(), Refused> {
        // Entries are ordered by one-byte positions (see `key_order`).
        if self.writer.entries.len() - self.mark >= 256 {
            return Err(refused("an object of more than 256 entries"));
        }
        self.writer.begin_entry(self.mark, key, field);
        value.serialize(&mut *self.writer)?;
        self.writer.end_entry();
        Ok(())
    }

    fn finish(self) -> Result<(), Refused> {
        self.writer.end_object(self.mark);
        if self.variant {
            self.writer.out.push(b'}');
        }
        Ok(())
    }
}

impl ser::SerializeMap for Object<'_> {
    type Ok = ();
    type Error = Refused;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), Refused> {
        let key = key.serialize(KeyText)?;
        if self.writer.entries.len() - self.mark >= 256 {
            return Err(refused("an object of more than 256 entries"));
        }
        self.writer.begin_entry(self.mark, &key, false);
        Ok(())
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Refused> {
        value.serialize(&mut *self.writer)?;
        self.writer.end_entry();
        Ok(())
    }
    fn end(self) -> Result<(), Refused> {
        self.finish()
    }
}

impl ser::SerializeStruct for Object<'_> {
    type Ok = ();
    type Error = Refused;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), Refused> {
        self.field(key, value)
    }
    fn end(self) -> Result<(), Refused> {
        self.finish()
    }
}

impl ser::SerializeStructVariant for Object<'_> {
    type Ok = ();
    type Error = Refused;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), Refused> {
        self.field(key, value)
    }
    fn end(self) -> Result<(), Refused> {
        self.finish()
    }
}

/// Integer map keys are written as their decimal text, as serde_json does.
macro_rules! integer_keys {
    ($($method:ident: $type:ty),*) => {
        $(fn $method(self, v: $type) -> Result<Self::Ok, Refused> {
            Ok(itoa::Buffer::new().format(v).to_owned().into())
        })*
    };
}

/// A map key as the text serde_json makes of it: strings, characters,
/// integers and booleans (anything else is left to the `Value` path).
struct KeyText;

impl ser::Serializer for KeyText {
    type Ok = std::borrow::Cow<'static, str>;
    type Error = Refused;
    type SerializeSeq = Impossible<Self::Ok, Refused>;
    type SerializeTuple = Impossible<Self::Ok, Refused>;
    type SerializeTupleStruct = Impossible<Self::Ok, Refused>;
    type SerializeTupleVariant = Impossible<Self::Ok, Refused>;
    type SerializeMap = Impossible<Self::Ok, Refused>;
    type SerializeStruct = Impossible<Self::Ok, Refused>;
    type SerializeStructVariant = Impossible<Self::Ok, Refused>;

    fn serialize_bool(self, v: bool) -> Result<Self::Ok, Refused> {
        Ok(if v { "true" } else { "false" }.into())
    }
    integer_keys!(
        serialize_i8: i8,
        serialize_i16: i16,
        serialize_i32: i32,
        serialize_i64: i64,
        serialize_i128: i128,
        serialize_u8: u8,
        serialize_u16: u16,
        serialize_u32: u32,
        serialize_u64: u64,
        serialize_u128: u128
    );
    fn serialize_f32(self, _v: f32) -> Result<Self::Ok, Refused> {
        Err(refused("a float map key"))
    }
    fn serialize_f64(self, _v: f64) -> Result<Self::Ok, Refused> {
        Err(refused("a float map key"))
    }
    fn serialize_char(self, v: char) -> Result<Self::Ok, Refused> {
        Ok(String::from(v).into())
    }
    fn serialize_str(self, v: &str) -> Result<Self::Ok, Refused> {
        Ok(v.to_owned().into())
    }
    fn serialize_bytes(self, _v: &[u8]) -> Result<Self::Ok, Refused> {
        Err(refused("key must be a string"))
    }
    fn serialize_none(self) -> Result<Self::Ok, Refused> {
        Err(refused("key must be a string"))
    }
    fn serialize_some<T: Serialize + ?Sized>(self, _value: &T) -> Result<Self::Ok, Refused> {
        Err(refused("key must be a string"))
    }
    fn serialize_unit(self) -> Result<Self::Ok, Refused> {
        Err(refused("key must be a string"))
    }
    fn serialize_unit_struct(self, _name: &'static str) -> Result<Self::Ok, Refused> {
        Err(refused("key must be a string"))
    }
    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<Self::Ok, Refused> {
        Ok(variant.into())
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<Self::Ok, Refused> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _value: &T,
    ) -> Result<Self::Ok, Refused> {
        Err(refused("key must be a string"))
    }
    fn serialize_seq(self, _len: Option<usize>) -> Result<Self::SerializeSeq, Refused> {
        Err(refused("key must be a string"))
    }
    fn serialize_tuple(self, _len: usize) -> Result<Self::SerializeTuple, Refused> {
        Err(refused("key must be a string"))
    }
    fn serialize_tuple_struct(
        self,
        _name: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeTupleStruct, Refused> {
        Err(refused("key must be a string"))
    }
    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeTupleVariant, Refused> {
        Err(refused("key must be a string"))
    }
    fn serialize_map(self, _len: Option<usize>) -> Result<Self::SerializeMap, Refused> {
        Err(refused("key must be a string"))
    }
    fn serialize_struct(self, _name: &'static str, _len: usize) -> Result<Self::SerializeStruct, Refused> {
        Err(refused("key must be a string"))
    }
    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeStructVariant, Refused> {
        Err(refused("key must be a string"))
    }
}

/// Which bytes a JSON string escapes: `"`, `\\` and the control characters.
static ESCAPED: [bool; 256] = {
    let mut table = [false; 256];
    let mut byte = 0;
    while byte < 0x20 {
        table[byte] = true;
        byte += 1;
    }
    table[b'"' as usize] = true;
    table[b'\\' as usize] = true;
    table
};

/// `text` as a JSON string, escaped as serde_json escapes: `"`, `\\` and
/// the control characters, nothing else.
pub(crate) fn write_string(text: &str, out: &mut Vec<u8>) {
    let bytes = text.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    // Most strings need no escape: one copy.
    match first_escaped(bytes) {
        None => out.extend_from_slice(bytes),
        Some(first) => write_escaped(bytes, first, out),
    }
    out.push(b'"');
}

/// The position of the first byte to escape, eight bytes at a time.
#[inline]
pub(crate) fn first_escaped(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    // A zero byte in `word` sets the high bit of its byte in the result
    // (the classic test: exact for "is there one", and the chunk is then
    // searched byte by byte, so a false position cannot mislead).
    let zero_in = |word: u64| word.wrapping_sub(ONES) & !word & HIGHS;
    let mut chunks = bytes.chunks_exact(8);
    let mut offset = 0;
    for chunk in &mut chunks {
        let word = u64::from_ne_bytes(chunk.try_into().unwrap_or([0; 8]));
        let control = word.wrapping_sub(ONES * 0x20) & !word & HIGHS;
        let quote = zero_in(word ^ (ONES * u64::from(b'"')));
        let backslash = zero_in(word ^ (ONES * u64::from(b'\\')));
        if control | quote | backslash != 0 {
            if let Some(i) = chunk.iter().position(|&b| ESCAPED[usize::from(b)]) {
                return Some(offset + i);
            }
        }
        offset += 8;
    }
    chunks
        .remainder()
        .iter()
        .position(|&b| ESCAPED[usize::from(b)])
        .map(|i| offset + i)
}

fn write_escaped(bytes: &[u8], first: usize, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.extend_from_slice(&bytes[..first]);
    for &byte in &bytes[first..] {
        if !ESCAPED[usize::from(byte)] {
            out.push(byte);
            continue;
        }
        match byte {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            _ => {
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(byte >> 4)]);
                out.push(HEX[usize::from(byte & 0xf)]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};

    use proptest::prelude::*;
    use serde::Serialize;
    use serde_json::{json, Value};

    use crate::Attributes;

    /// The text of the `Value` path: `to_value`, then a publish's normal
    /// form; `None` where it refuses.
    fn through_value<T: Serialize + ?Sized>(value: &T) -> Option<String> {
        let mut attributes = Attributes::from(serde_json::to_value(value).ok()?);
        attributes.normalize().ok()?;
        Some(attributes.json().to_owned())
    }

    fn direct<T: Serialize + ?Sized>(value: &T) -> Option<String> {
        super::to_canonical(value).ok().map(|text| text.to_string())
    }

    /// The same text both ways, or refused both ways (the direct writer
    /// also leaves a few accepted values to the `Value` path).
    fn assert_same<T: Serialize + ?Sized + std::fmt::Debug>(value: &T) -> bool {
        let via_value = through_value(value);
        match direct(value) {
            Some(text) => {
                assert_eq!(Some(&text), via_value.as_ref(), "{value:?}");
                true
            }
            None => {
                if let Some(text) = via_value {
                    // Left to the `Value` path: `from_serialize` then gives it.
                    let attributes = Attributes::from_serialize(value).unwrap();
                    let mut attributes = attributes;
                    attributes.normalize().unwrap();
                    assert_eq!(attributes.json(), text, "{value:?}");
                }
                false
            }
        }
    }

    /// How many values of each property were left to the `Value` path and
    /// how many written directly.
    static COUNTS: [[std::sync::atomic::AtomicU32; 2]; 2] =
        [const { [const { std::sync::atomic::AtomicU32::new(0) }; 2] }; 2];

    fn count(property: usize, written_directly: bool) {
        use std::sync::atomic::Ordering::Relaxed;
        let counts = &COUNTS[property];
        counts[usize::from(written_directly)].fetch_add(1, Relaxed);
        let (refused, direct) = (counts[0].load(Relaxed), counts[1].load(Relaxed));
        // The property is about the direct path: most cases must take it.
        if refused + direct >= 1_000 {
            assert!(direct > refused, "{direct} written directly, {refused} not");
        }
    }

    #[derive(Debug, Clone, Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Line {
        product_code: String,
        quantity: u32,
        price: f64,
    }

    #[derive(Debug, Clone, Serialize)]
    #[serde(rename_all = "lowercase")]
    enum Status {
        Pending,
        Shipped { tracking: String, at: i64 },
        Held(String),
        Moved(u8, Option<String>),
    }

    #[derive(Debug, Clone, Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Order {
        status: Status,
        customer_id: String,
        items: Vec<Line>,
        total: f64,
        tax: f32,
        #[serde(skip_serializing_if = "Option::is_none")]
        tracking_number: Option<String>,
        note: Option<String>,
        tags: HashMap<String, i64>,
        by_day: BTreeMap<u32, Vec<bool>>,
        big: i128,
        letter: char,
        raw: Vec<u8>,
        #[serde(rename = "\"quoted\\key\n")]
        quoted: (),
        #[serde(flatten)]
        extra: BTreeMap<String, Value>,
    }

    fn status() -> impl Strategy<Value = Status> {
        prop_oneof![
            Just(Status::Pending),
            (".{0,8}", any::<i64>()).prop_map(|(tracking, at)| Status::Shipped { tracking, at }),
            ".{0,8}".prop_map(Status::Held),
            (any::<u8>(), proptest::option::of(".{0,4}")).prop_map(|(a, b)| Status::Moved(a, b)),
        ]
    }

    /// Floats of every kind: with and without a fraction, huge, tiny, out
    /// of DynamoDB's range, not finite.
    fn float() -> impl Strategy<Value = f64> {
        prop_oneof![
            1 => any::<f64>(),
            4 => -1e30..1e30f64,
            4 => (-1_000_000i64..1_000_000).prop_map(|n| n as f64),
            4 => (-1_000_000i64..1_000_000).prop_map(|n| n as f64 / 100.0),
            1 => Just(1e126),
            1 => Just(1e-130),
            1 => Just(9.99e125),
            1 => Just(2f64.powi(60)),
            1 => Just(-0.0),
        ]
    }

    fn leaf() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            float().prop_map(Value::from),
            "\\PC{0,6}|[\"\\\\\u{1}\n é]{0,4}".prop_map(Value::from),
        ]
    }

    fn value() -> impl Strategy<Value = Value> {
        leaf().prop_recursive(4, 40, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
                proptest::collection::btree_map("[a-e\"\\\\_]{0,3}|zz\u{1}|é", inner, 0..6)
                    .prop_map(|map| Value::Object(map.into_iter().collect())),
            ]
        })
    }

    fn order() -> impl Strategy<Value = Order> {
        let line =
            ("[A-Z0-9-]{1,8}", any::<u32>(), float()).prop_map(|(product_code, quantity, price)| Line {
                product_code,
                quantity,
                price,
            });
        (
            status(),
            "\\PC{0,10}",
            proptest::collection::vec(line, 0..4),
            float(),
            any::<f32>(),
            proptest::option::of("[a-z]{0,5}"),
            proptest::option::of("\\PC{0,5}"),
            proptest::collection::hash_map("[a-z\"]{0,3}", any::<i64>(), 0..4),
            proptest::collection::btree_map(
                any::<u32>(),
                proptest::collection::vec(any::<bool>(), 0..3),
                0..3,
            ),
            prop_oneof![3 => i128::from(i64::MIN)..=i128::from(u64::MAX), 1 => any::<i128>()],
            (any::<char>(), proptest::collection::vec(any::<u8>(), 0..4)),
            // Flattened keys, some of them the struct's own (the last wins).
            proptest::collection::btree_map("[a-z]{1,3}|total|items|status", value(), 0..3),
        )
            .prop_map(
                |(
                    status,
                    customer_id,
                    items,
                    total,
                    tax,
                    tracking_number,
                    note,
                    tags,
                    by_day,
                    big,
                    (letter, raw),
                    extra,
                )| Order {
                    status,
                    customer_id,
                    items,
                    total,
                    tax,
                    tracking_number,
                    note,
                    tags,
                    by_day,
                    big,
                    letter,
                    raw,
                    quoted: (),
                    extra,
                },
            )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        #[test]
        fn a_typed_value_writes_the_text_of_its_json_value(order in order()) {
            count(0, assert_same(&order));
        }

        #[test]
        fn a_json_value_written_directly_is_its_canonical_text(value in value()) {
            count(1, assert_same(&value));
        }
    }

    #[test]
    fn numbers_out_of_range_are_left_to_the_value_path_which_names_them() {
        #[derive(Serialize)]
        struct Price {
            price: f64,
        }
        assert!(direct(&Price { price: 1e200 }).is_none());
        let mut attributes = Attributes::from_serialize(&Price { price: 1e200 }).unwrap();
        let error = attributes.normalize().unwrap_err();
        assert!(
            error.to_string().starts_with("invalid attributes.price: "),
            "{error}"
        );
        assert_eq!(direct(&Price { price: 6.0 }).unwrap(), r#"{"price":6}"#);
        assert_eq!(direct(&Price { price: f64::NAN }).unwrap(), r#"{"price":null}"#);
    }

    #[test]
    fn unsorted_fields_nested_anywhere_are_sorted() {
        let order = json!({"b": [{"z": 1, "a": {"y": 2.0, "x": [3]}}], "a": "first"});
        #[derive(Serialize)]
        struct Inner {
            z: u8,
            a: Deep,
        }
        #[derive(Serialize)]
        struct Deep {
            y: f64,
            x: [u8; 1],
        }
        #[derive(Serialize)]
        struct Outer {
            b: Vec<Inner>,
            a: &'static str,
        }
        let typed = Outer {
            b: vec![Inner {
                z: 1,
                a: Deep { y: 2.0, x: [3] },
            }],
            a: "first",
        };
        assert_eq!(direct(&typed), through_value(&order));
        assert_eq!(
            direct(&typed).unwrap(),
            r#"{"a":"first","b":[{"a":{"x":[3],"y":2},"z":1}]}"#
        );
    }
}
