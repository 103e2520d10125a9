//! A listing's envelope and its session records in exactly their documented shape.
//!
//! A record is accepted only when every field is a documented one with the documented type,
//! numbers are integers, and every date is already in the event form. Anything else (an
//! unknown or repeated field, a float, an ASMX or offset date, a missing id ...) is handed
//! back as its JSON text, and the Python paths judge it as they always did.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, IgnoredAny, Visitor};
use serde::{Deserialize, Deserializer, forward_to_deserialize_any};
use serde_json::value::RawValue;

use crate::dates::parse_event_form;

#[derive(Deserialize)]
pub struct Answer<'a> {
    #[serde(borrow)]
    pub d: Obj<Listing<'a>>,
}

/// A JSON object only: serde would also read a struct from an array of its fields in order,
/// which upstream never means.
pub struct Obj<T>(pub T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Obj<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        T::deserialize(ObjectsOnly(deserializer)).map(Obj)
    }
}

struct ObjectsOnly<D>(D);

impl<'de, D: Deserializer<'de>> Deserializer<'de> for ObjectsOnly<D> {
    type Error = D::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        self.0.deserialize_any(visitor)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0.deserialize_map(visitor)
    }

    forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

#[derive(Deserialize)]
pub struct Listing<'a> {
    #[serde(rename = "nextId", default)]
    pub next_id: Option<u64>,
    #[serde(borrow, default)]
    pub users: Option<Vec<Obj<User<'a>>>>,
}

#[derive(Deserialize)]
pub struct User<'a> {
    // Text or null only: any other value sends the whole page to the Python reader.
    #[serde(rename = "userName", default)]
    pub user_name: Option<String>,
    #[serde(rename = "partnerUserId", default)]
    pub partner_user_id: Option<String>,
    #[serde(borrow, default)]
    pub sessions: Option<Vec<&'a RawValue>>,
}

/// A field that may be missing (left out of the event), null (kept as null) or a value.
#[derive(Default)]
pub enum Field<T> {
    #[default]
    Missing,
    Null,
    Value(T),
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Field<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(match Option::<T>::deserialize(deserializer)? {
            None => Field::Null,
            Some(value) => Field::Value(value),
        })
    }
}

/// A JSON string, borrowed from the listing unless it had escapes.
pub struct Text<'a>(pub Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(TextVisitor)
    }
}

struct TextVisitor;

impl<'de> Visitor<'de> for TextVisitor {
    type Value = Text<'de>;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a string")
    }

    fn visit_borrowed_str<E: de::Error>(self, value: &'de str) -> Result<Text<'de>, E> {
        Ok(Text(Cow::Borrowed(value)))
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<Text<'de>, E> {
        Ok(Text(Cow::Owned(value.to_owned())))
    }
}

/// A session key or a guest's protocol version: text, or a 64-bit integer.
pub enum TextOrInteger<'a> {
    Text(Text<'a>),
    Integer(i64),
}

impl<'de: 'a, 'a> Deserialize<'de> for TextOrInteger<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(TextOrIntegerVisitor)
    }
}

struct TextOrIntegerVisitor;

impl<'de> Visitor<'de> for TextOrIntegerVisitor {
    type Value = TextOrInteger<'de>;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a string or a 64-bit integer")
    }

    fn visit_borrowed_str<E: de::Error>(self, value: &'de str) -> Result<Self::Value, E> {
        TextVisitor
            .visit_borrowed_str(value)
            .map(TextOrInteger::Text)
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<Self::Value, E> {
        TextVisitor.visit_str(value).map(TextOrInteger::Text)
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<Self::Value, E> {
        Ok(TextOrInteger::Integer(value))
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<Self::Value, E> {
        i64::try_from(value)
            .map(TextOrInteger::Integer)
            .map_err(|_| E::custom("an integer past 64 bits"))
    }
}

// `__type` is dropped from every event, whatever its value, as the general path drops it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Location<'a> {
    #[serde(rename = "__type", default)]
    pub _wire_type: Option<IgnoredAny>,
    #[serde(borrow, default)]
    pub city: Field<Text<'a>>,
    #[serde(borrow, default)]
    pub region: Field<Text<'a>>,
    #[serde(rename = "countryCode", borrow, default)]
    pub country_code: Field<Text<'a>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Guest<'a> {
    #[serde(rename = "__type", default)]
    pub _wire_type: Option<IgnoredAny>,
    #[serde(rename = "type", borrow, default)]
    pub kind: Field<Text<'a>>,
    #[serde(borrow, default)]
    pub status: Field<Text<'a>>,
    #[serde(rename = "startTime", borrow, default)]
    pub start_time: Field<Text<'a>>,
    #[serde(default)]
    pub duration: Field<i64>,
    #[serde(default)]
    pub kbytes: Field<i64>,
    #[serde(borrow, default)]
    pub ip: Field<Text<'a>>,
    #[serde(borrow, default)]
    pub location: Field<Obj<Location<'a>>>,
    #[serde(borrow, default)]
    pub name: Field<Text<'a>>,
    #[serde(borrow, default)]
    pub email: Field<Text<'a>>,
    #[serde(borrow, default)]
    pub phone: Field<Text<'a>>,
    #[serde(borrow, default)]
    pub error: Field<Text<'a>>,
    #[serde(rename = "clientVersion", borrow, default)]
    pub client_version: Field<Text<'a>>,
    #[serde(rename = "protocolVersion", borrow, default)]
    pub protocol_version: Field<TextOrInteger<'a>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Session<'a> {
    #[serde(rename = "__type", default)]
    pub _wire_type: Option<IgnoredAny>,
    pub id: u64,
    #[serde(rename = "type", borrow, default)]
    pub kind: Field<Text<'a>>,
    #[serde(borrow, default)]
    pub status: Field<Text<'a>>,
    #[serde(rename = "startTime", borrow)]
    pub start_time: Text<'a>,
    #[serde(borrow, default)]
    pub key: Field<TextOrInteger<'a>>,
    #[serde(default)]
    pub width: Field<i64>,
    #[serde(default)]
    pub height: Field<i64>,
    #[serde(default)]
    pub duration: Field<i64>,
    #[serde(default)]
    pub kbytes: Field<i64>,
    #[serde(rename = "isReverse", default)]
    pub is_reverse: Field<bool>,
    #[serde(borrow, default)]
    pub guests: Field<Vec<Obj<Guest<'a>>>>,
}

/// A record in the documented shape, with its start as seconds since the epoch and as
/// written (the event form).
pub struct Checked<'a> {
    pub session: Session<'a>,
    pub start: i64,
    pub start_text: [u8; 20],
}

/// The record, if it is in the documented shape with event-form dates and an id the state
/// can hold; None sends it to the Python paths.
pub fn check(text: &str) -> Option<Checked<'_>> {
    let Obj(session) = serde_json::from_str::<Obj<Session<'_>>>(text).ok()?;
    if session.id == 0 || session.id > i64::MAX as u64 {
        return None;
    }
    let start = parse_event_form(&session.start_time.0)?;
    // parse_event_form takes exactly 20 bytes.
    let start_text = session.start_time.0.as_bytes().try_into().ok()?;
    if let Field::Value(guests) = &session.guests {
        for Obj(guest) in guests {
            if let Field::Value(start) = &guest.start_time {
                parse_event_form(&start.0)?;
            }
        }
    }
    Some(Checked {
        session,
        start,
        start_text,
    })
}
