//! An event's value (design.md §3) written straight from a checked record: the general
//! path's event, field for field (tests/unit/test_typed_records.py compares them).

use hmac::{Hmac, KeyInit, Mac};
use sha1::{Digest, Sha1};
use sha2::Sha256;

use crate::dates::format_event_form;
use crate::wire::{Field, Guest, Location, Session, Text, TextOrInteger};

pub enum Pii {
    Keep,
    Drop,
    Hash(Hmac<Sha256>),
}

impl Pii {
    pub fn new(mode: &str, salt: &[u8]) -> Option<Pii> {
        match mode {
            "keep" => Some(Pii::Keep),
            "drop" => Some(Pii::Drop),
            "hash" => Some(Pii::Hash(Hmac::<Sha256>::new_from_slice(salt).ok()?)),
            _ => None,
        }
    }
}

/// `,"userName":…,"partnerUserId":…`: the part of an event's value its user decides.
pub fn render_owner(user_name: Option<&str>, partner_user_id: Option<&str>) -> String {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(b",\"userName\":");
    optional_text(&mut out, user_name);
    out.extend_from_slice(b",\"partnerUserId\":");
    optional_text(&mut out, partner_user_id);
    String::from_utf8(out).expect("JSON written from strings is UTF-8")
}

/// The event's `session` object without its closing brace (a completed event adds its
/// `endTime` there), under the PII policy.
pub fn render_session(session: &Session<'_>, pii: &Pii) -> String {
    let mut out = Vec::with_capacity(1024);
    out.extend_from_slice(b"{\"id\":");
    integer(&mut out, session.id as i64);
    let mut object = Object {
        out: &mut out,
        first: false,
    };
    object.text("type", &session.kind);
    object.text("status", &session.status);
    object.key("startTime");
    text(object.out, &session.start_time.0);
    object.field("key", &session.key, text_or_integer_as_text);
    object.integer("width", &session.width);
    object.integer("height", &session.height);
    object.integer("duration", &session.duration);
    object.integer("kbytes", &session.kbytes);
    object.field("isReverse", &session.is_reverse, |out, reverse| {
        out.extend_from_slice(if *reverse { b"true" } else { b"false" });
    });
    object.field("guests", &session.guests, |out, guests| {
        out.push(b'[');
        for (index, guest) in guests.iter().enumerate() {
            if index > 0 {
                out.push(b',');
            }
            render_guest(out, &guest.0, pii);
        }
        out.push(b']');
    });
    String::from_utf8(out).expect("JSON written from strings is UTF-8")
}

/// When a completed session ended, or None when the general path must decide (no usable
/// duration, or an end after year 9999: a dead letter there).
pub fn end_of(session: &Session<'_>, start: i64) -> Option<[u8; 20]> {
    match session.duration {
        Field::Value(duration) if duration >= 0 => format_event_form(start.checked_add(duration)?),
        _ => None,
    }
}

/// An event's value (design.md §3) from its pre-rendered parts; `end` makes it completed.
pub fn event_value(
    partner_id: i64,
    owner: &str,
    observed_active: Option<bool>,
    session: &str,
    end: Option<&[u8; 20]>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(session.len() + owner.len() + 96);
    out.extend_from_slice(b"{\"partnerId\":");
    integer(&mut out, partner_id);
    out.extend_from_slice(owner.as_bytes());
    match observed_active {
        None => {}
        Some(true) => out.extend_from_slice(b",\"observedActive\":true"),
        Some(false) => out.extend_from_slice(b",\"observedActive\":false"),
    }
    out.extend_from_slice(b",\"session\":");
    out.extend_from_slice(session.as_bytes());
    if let Some(end) = end {
        out.extend_from_slice(b",\"endTime\":\"");
        out.extend_from_slice(end);
        out.push(b'"');
    }
    out.extend_from_slice(b"}}");
    out
}

fn render_guest(out: &mut Vec<u8>, guest: &Guest<'_>, pii: &Pii) {
    out.push(b'{');
    let mut object = Object { out, first: true };
    object.text("type", &guest.kind);
    object.text("status", &guest.status);
    object.text("startTime", &guest.start_time);
    object.integer("duration", &guest.duration);
    object.integer("kbytes", &guest.kbytes);
    object.personal("ip", &guest.ip, pii);
    object.field("location", &guest.location, |out, location| {
        render_location(out, &location.0);
    });
    object.personal("name", &guest.name, pii);
    object.personal("email", &guest.email, pii);
    object.personal("phone", &guest.phone, pii);
    object.text("error", &guest.error);
    object.text("clientVersion", &guest.client_version);
    object.field(
        "protocolVersion",
        &guest.protocol_version,
        |out, version| match version {
            TextOrInteger::Text(version) => text(out, &version.0),
            TextOrInteger::Integer(version) => integer(out, *version),
        },
    );
    out.push(b'}');
}

fn render_location(out: &mut Vec<u8>, location: &Location<'_>) {
    out.push(b'{');
    let mut object = Object { out, first: true };
    object.text("city", &location.city);
    object.text("region", &location.region);
    object.text("countryCode", &location.country_code);
    out.push(b'}');
}

/// Writes `"name":value` pairs with the commas between them.
struct Object<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
}

impl Object<'_> {
    fn key(&mut self, name: &str) {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        self.out.push(b'"');
        self.out.extend_from_slice(name.as_bytes());
        self.out.extend_from_slice(b"\":");
    }

    fn null(&mut self, name: &str) {
        self.key(name);
        self.out.extend_from_slice(b"null");
    }

    /// A field as upstream sent it: left out when missing, null when null, else `write`n.
    fn field<T>(&mut self, name: &str, field: &Field<T>, write: impl FnOnce(&mut Vec<u8>, &T)) {
        match field {
            Field::Missing => {}
            Field::Null => self.null(name),
            Field::Value(value) => {
                self.key(name);
                write(self.out, value);
            }
        }
    }

    fn text(&mut self, name: &str, field: &Field<Text<'_>>) {
        self.field(name, field, |out, value| text(out, &value.0));
    }

    fn integer(&mut self, name: &str, field: &Field<i64>) {
        self.field(name, field, |out, value| integer(out, *value));
    }

    /// A guest's name, email, phone or ip under the PII policy: kept, left out, or replaced
    /// by its keyed hash (null stays null).
    fn personal(&mut self, name: &str, field: &Field<Text<'_>>, pii: &Pii) {
        match (pii, field) {
            (Pii::Drop, _) | (_, Field::Missing) => {}
            (Pii::Hash(mac), Field::Value(value)) => {
                let mut mac = mac.clone();
                mac.update(value.0.as_bytes());
                let digest = mac.finalize().into_bytes();
                self.key(name);
                self.out.extend_from_slice(b"\"sha256:");
                hex(self.out, &digest);
                self.out.push(b'"');
            }
            _ => self.text(name, field),
        }
    }
}

fn integer(out: &mut Vec<u8>, value: i64) {
    out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
}

fn text(out: &mut Vec<u8>, value: &str) {
    serde_json::to_writer(&mut *out, value).expect("writing to a Vec cannot fail");
}

fn optional_text(out: &mut Vec<u8>, value: Option<&str>) {
    match value {
        Some(value) => text(out, value),
        None => out.extend_from_slice(b"null"),
    }
}

fn text_or_integer_as_text(out: &mut Vec<u8>, value: &TextOrInteger<'_>) {
    match value {
        TextOrInteger::Text(value) => text(out, &value.0),
        TextOrInteger::Integer(value) => {
            out.push(b'"');
            integer(out, *value);
            out.push(b'"');
        }
    }
}

fn hex(out: &mut Vec<u8>, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for byte in bytes {
        out.push(DIGITS[usize::from(byte >> 4)]);
        out.push(DIGITS[usize::from(byte & 0xf)]);
    }
}

/// `uuid5(namespace, "<partner>/<session>/<type>")`, as Python's uuid module writes it.
pub fn event_id(namespace: &[u8], partner_id: i64, session_id: u64, event_type: &str) -> String {
    let mut sha = Sha1::new();
    sha.update(namespace);
    sha.update(format!("{partner_id}/{session_id}/{event_type}").as_bytes());
    let digest = sha.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    bytes[6] = (bytes[6] & 0x0f) | 0x50;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let mut out = Vec::with_capacity(36);
    for (index, range) in [0..4, 4..6, 6..8, 8..10, 10..16].into_iter().enumerate() {
        if index > 0 {
            out.push(b'-');
        }
        hex(&mut out, &bytes[range]);
    }
    String::from_utf8(out).expect("hex digits are ASCII")
}
