//! glance-poller's native fast path (`poller._fastpath`).
//!
//! The backfill spent most of its CPU reading session records and writing them out again as
//! events, a few microseconds of Python per field. Here a listing is read, each record in the
//! documented shape checked, and its event value written, in Rust. Everything this module
//! declines (see `wire.rs`) takes the Python paths, which remain the definition of an event:
//! tests/unit/test_typed_records.py builds every generated record every way and compares.

mod batch;
mod dates;
mod partition;
mod render;
mod wire;

use std::sync::Arc;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDateTime, PyList, PyString, PyTuple, PyTzInfo};

use crate::render::Pii;

/// A session record in the documented shape, checked and rendered in Rust when its page was
/// read: building its event then only joins the parts.
#[pyclass(frozen, module = "poller._fastpath")]
struct Session {
    /// When it started, an aware UTC datetime.
    #[pyo3(get)]
    start: Py<PyDateTime>,
    rendered: Rendered,
    /// `,"userName":…,"partnerUserId":…`, shared by the user's records.
    owner: Arc<str>,
    /// The builder whose PII policy rendered it.
    builder: Py<Builder>,
    /// The listing its JSON text lies in.
    payload: Py<PyBytes>,
}

#[pymethods]
impl Session {
    #[getter]
    fn id(&self) -> i64 {
        self.rendered.id
    }

    /// The record's JSON text, as upstream sent it.
    #[getter]
    fn wire<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        let (from, to) = self.rendered.span;
        PyBytes::new(py, &self.payload.bind(py).as_bytes()[from..to])
    }
}

/// What the GIL-free pass makes of a record in the documented shape.
struct Rendered {
    id: i64,
    /// Its start, in seconds since the epoch and as written (the event form).
    start: i64,
    start_text: [u8; 20],
    /// When it ended, if it has a usable duration.
    end_text: Option<[u8; 20]>,
    /// Its completed event's value and id, built in advance: nearly every record read
    /// becomes one.
    completed: Option<Built>,
    /// The event's `session` object, without its closing brace.
    body: Box<str>,
    /// Where in the listing its JSON text lies.
    span: (usize, usize),
}

type UserRecords = (Py<PyAny>, Py<PyAny>, Vec<Py<PyAny>>);

/// An event's value and id.
struct Built {
    value: Box<[u8]>,
    ce_id: Box<str>,
}

/// A record as the GIL-free pass leaves it: rendered, or declined.
enum Prepared {
    Declined { span: (usize, usize) },
    Checked(Rendered),
}

struct PreparedUser {
    user_name: Option<String>,
    partner_user_id: Option<String>,
    owner: Arc<str>,
    records: Vec<Prepared>,
}

/// Everything that needs no Python object: the envelope, each record's check and its
/// rendering. Runs with the GIL released, so a page can be read beside the event loop.
fn prepare(bytes: &[u8], builder: &Builder) -> Option<(u64, Vec<PreparedUser>)> {
    let wire::Obj(answer) = serde_json::from_slice::<wire::Obj<wire::Answer<'_>>>(bytes).ok()?;
    let mut users = Vec::new();
    for wire::Obj(user) in answer.d.0.users.unwrap_or_default() {
        let Some(sessions) = user.sessions else {
            continue;
        };
        let owner: Arc<str> =
            render::render_owner(user.user_name.as_deref(), user.partner_user_id.as_deref()).into();
        let records = sessions
            .into_iter()
            .map(|raw| {
                let text = raw.get();
                let from = text.as_ptr() as usize - bytes.as_ptr() as usize;
                let span = (from, from + text.len());
                let Some(checked) = wire::check(text) else {
                    return Prepared::Declined { span };
                };
                let body: Box<str> = render::render_session(&checked.session, &builder.pii).into();
                let end_text = render::end_of(&checked.session, checked.start);
                let completed = end_text
                    .as_ref()
                    .map(|end| builder.build(checked.session.id, &owner, None, &body, Some(end)));
                Prepared::Checked(Rendered {
                    id: checked.session.id as i64,
                    start: checked.start,
                    start_text: checked.start_text,
                    end_text,
                    completed,
                    body,
                    span,
                })
            })
            .collect();
        users.push(PreparedUser {
            user_name: user.user_name,
            partner_user_id: user.partner_user_id,
            owner,
            records,
        });
    }
    Some((answer.d.0.next_id.unwrap_or(0), users))
}

/// A listing's `nextId` and, per user, its name, partner user id and records: a `Session`
/// (rendered under `builder`'s PII policy) for each record in the documented shape, the JSON
/// text (bytes) of any other. None when the envelope is not the plain documented one (the
/// Python reader then reads the page and says what is wrong with it). The reading itself
/// runs without the GIL.
#[pyfunction]
fn read_listing(
    py: Python<'_>,
    payload: Bound<'_, PyBytes>,
    builder: Bound<'_, Builder>,
) -> PyResult<Option<(u64, Vec<UserRecords>)>> {
    let bytes = payload.as_bytes();
    let this = builder.get();
    let Some((next_id, prepared)) = py.detach(|| prepare(bytes, this)) else {
        return Ok(None);
    };
    let utc = PyTzInfo::utc(py)?;
    let mut users = Vec::with_capacity(prepared.len());
    for user in prepared {
        let mut records = Vec::with_capacity(user.records.len());
        for record in user.records {
            match record {
                Prepared::Declined { span: (from, to) } => {
                    records.push(PyBytes::new(py, &bytes[from..to]).into_any().unbind());
                }
                Prepared::Checked(rendered) => {
                    let (year, month, day, hour, minute, second) =
                        dates::civil(rendered.start).expect("a parsed event-form date is in range");
                    let start = PyDateTime::new(
                        py,
                        year as i32,
                        month as u8,
                        day as u8,
                        hour as u8,
                        minute as u8,
                        second as u8,
                        0,
                        Some(&utc),
                    )?;
                    let session = Session {
                        start: start.unbind(),
                        rendered,
                        owner: Arc::clone(&user.owner),
                        builder: builder.clone().unbind(),
                        payload: payload.clone().unbind(),
                    };
                    records.push(Py::new(py, session)?.into_any());
                }
            }
        }
        users.push((
            optional_str(py, user.user_name.as_deref()),
            optional_str(py, user.partner_user_id.as_deref()),
            records,
        ));
    }
    Ok(Some((next_id, users)))
}

fn optional_str(py: Python<'_>, value: Option<&str>) -> Py<PyAny> {
    match value {
        Some(value) => PyString::new(py, value).into_any().unbind(),
        None => py.None(),
    }
}

/// One partner's PII policy and event ids: renders the records `read_listing` reads with
/// it, and joins their parts into events.
#[pyclass(frozen, module = "poller._fastpath")]
struct Builder {
    partner_id: i64,
    pii: Pii,
    namespace: Vec<u8>,
    shape: EventShape,
}

/// `Builder`'s `shape`: the `Event` class, the completed and started topics, then the
/// constant headers (spec version, source, completed type, started type, content type).
type ShapeArgument = (
    Py<PyAny>,
    Py<PyAny>,
    Py<PyAny>,
    Py<PyAny>,
    Py<PyAny>,
    Py<PyAny>,
    Py<PyAny>,
    Py<PyAny>,
);

/// What an `Event` is made of besides the record: its class, topics and constant headers,
/// given by `EventBuilder`. The headers' order is `EventBuilder._headers`'s, written again
/// here (tests/unit/test_typed_records.py compares the events).
struct EventShape {
    event_class: Py<PyAny>,
    tuple_new: Py<PyAny>,
    completed_topic: Py<PyAny>,
    started_topic: Py<PyAny>,
    spec_version: Py<PyAny>,
    source: Py<PyAny>,
    completed_type: Py<PyAny>,
    started_type: Py<PyAny>,
    content_type: Py<PyAny>,
    id_key: Py<PyString>,
    time_key: Py<PyString>,
    subject_key: Py<PyString>,
}

#[pymethods]
impl Builder {
    /// `shape`: the `Event` class, the completed and started topics, then the constant
    /// headers: spec version, source, completed type, started type, content type.
    #[new]
    fn new(
        py: Python<'_>,
        partner_id: i64,
        pii_mode: &str,
        salt: &[u8],
        namespace: &[u8],
        shape: ShapeArgument,
    ) -> PyResult<Self> {
        let pii = Pii::new(pii_mode, salt)
            .ok_or_else(|| PyValueError::new_err(format!("unknown PII policy {pii_mode:?}")))?;
        if namespace.len() != 16 {
            return Err(PyValueError::new_err(
                "the event id namespace is a 16-byte UUID",
            ));
        }
        let (
            event_class,
            completed_topic,
            started_topic,
            spec_version,
            source,
            completed_type,
            started_type,
            content_type,
        ) = shape;
        let shape = EventShape {
            event_class,
            tuple_new: py.get_type::<PyTuple>().getattr("__new__")?.unbind(),
            completed_topic,
            started_topic,
            spec_version,
            source,
            completed_type,
            started_type,
            content_type,
            id_key: PyString::intern(py, "ce_id").unbind(),
            time_key: PyString::intern(py, "ce_time").unbind(),
            subject_key: PyString::intern(py, "ce_subject").unbind(),
        };
        Ok(Builder {
            partner_id,
            pii,
            namespace: namespace.to_vec(),
            shape,
        })
    }

    /// The session's completed or started `Event`, or None when the Python paths must
    /// decide: the general path makes the dead letter of a completed session without a
    /// usable end, and a record read by another builder (another PII
    /// policy) is built again from its text.
    #[pyo3(signature = (session, completed, observed_active))]
    fn event<'py>(
        slf: &Bound<'py, Self>,
        session: &Session,
        completed: bool,
        observed_active: Option<bool>,
    ) -> PyResult<Option<Bound<'py, PyAny>>> {
        if !session.builder.is(slf) {
            return Ok(None);
        }
        let this = slf.get();
        let rendered = &session.rendered;
        let (end, occurred) = if completed {
            let Some(end) = rendered.end_text.as_ref() else {
                return Ok(None);
            };
            (Some(end), end)
        } else {
            (None, &rendered.start_text)
        };
        let built;
        let parts = match (&rendered.completed, observed_active, completed) {
            (Some(prebuilt), None, true) => prebuilt,
            _ => {
                let id = rendered.id as u64;
                built = this.build(id, &session.owner, observed_active, &rendered.body, end);
                &built
            }
        };
        this.shape
            .event(slf.py(), session, completed, parts, occurred)
            .map(Some)
    }
}

impl EventShape {
    /// `Event(topic, key, value, headers, session_id, start_time)`, the headers in
    /// `EventBuilder._headers`'s order.
    fn event<'py>(
        &self,
        py: Python<'py>,
        session: &Session,
        completed: bool,
        parts: &Built,
        occurred: &[u8; 20],
    ) -> PyResult<Bound<'py, PyAny>> {
        let id = session.rendered.id;
        let subject = PyBytes::new(py, itoa::Buffer::new().format(id).as_bytes());
        let pair = |key: &Py<PyString>, value: Bound<'py, PyBytes>| {
            PyTuple::new(py, [key.bind(py).clone().into_any(), value.into_any()])
        };
        let (topic, kind) = if completed {
            (&self.completed_topic, &self.completed_type)
        } else {
            (&self.started_topic, &self.started_type)
        };
        let headers = PyList::new(
            py,
            [
                self.spec_version.bind(py).clone(),
                pair(&self.id_key, PyBytes::new(py, parts.ce_id.as_bytes()))?.into_any(),
                self.source.bind(py).clone(),
                kind.bind(py).clone(),
                pair(&self.time_key, PyBytes::new(py, occurred))?.into_any(),
                pair(&self.subject_key, subject.clone())?.into_any(),
                self.content_type.bind(py).clone(),
            ],
        )?;
        let fields = PyTuple::new(
            py,
            [
                topic.bind(py).clone(),
                subject.into_any(),
                PyBytes::new(py, &parts.value).into_any(),
                headers.into_any(),
                id.into_pyobject(py)?.into_any(),
                session.start.bind(py).clone().into_any(),
            ],
        )?;
        // tuple.__new__(Event, fields): the named tuple without its Python-level __new__.
        self.tuple_new
            .bind(py)
            .call1((self.event_class.bind(py), fields))
    }
}

impl Builder {
    /// An event's value and id; `end` makes it the completed event.
    fn build(
        &self,
        session_id: u64,
        owner: &str,
        observed_active: Option<bool>,
        body: &str,
        end: Option<&[u8; 20]>,
    ) -> Built {
        let value = render::event_value(self.partner_id, owner, observed_active, body, end);
        let event_type = if end.is_some() {
            "completed"
        } else {
            "started"
        };
        let ce_id = render::event_id(&self.namespace, self.partner_id, session_id, event_type);
        Built {
            value: value.into(),
            ce_id: ce_id.into(),
        }
    }
}

#[pymodule]
fn _fastpath(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_class::<Session>()?;
    module.add_class::<Builder>()?;
    module.add_class::<batch::RecordBatch>()?;
    module.add_function(wrap_pyfunction!(partition::partition_index, module)?)?;
    module.add_function(wrap_pyfunction!(read_listing, module)?)?;
    // An unoptimised build is several times slower, and pip builds one for an editable
    // install unless told otherwise (pyproject.toml): a test checks this.
    module.add("DEBUG_BUILD", cfg!(debug_assertions))?;
    Ok(())
}
