//! Kafka record batches (message format v2, uncompressed) for the producer.
//!
//! aiokafka's `BatchBuilder.append` costs a few microseconds of Python per record (keyword
//! arguments, type checks, a temporary buffer per record), more than the rest of the native
//! path makes an event in. `RecordBatch` writes the same bytes, a page of events per call,
//! and is handed to aiokafka's `send_batch` in place of its own builder. aiokafka's
//! `DefaultRecordBatchBuilder` is the definition: tests/unit/test_record_batch.py compares
//! the two byte for byte.

use std::time::{SystemTime, UNIX_EPOCH};

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyString, PyTuple};

// The batch header: base offset (8), length (4), partition leader epoch (4), magic (1),
// CRC (4), attributes (2), last offset delta (4), first and max timestamps (8 + 8),
// producer id (8), producer epoch (2), base sequence (4), record count (4).
const HEADER_SIZE: usize = 61;
const LENGTH_OFFSET: usize = 8;
const CRC_OFFSET: usize = 17;
const ATTRIBUTES_OFFSET: usize = 21;
const NO_PARTITION_LEADER_EPOCH: i32 = -1;
const MAGIC: u8 = 2;

/// A record batch being filled: the `BatchBuilder` interface aiokafka's sender uses
/// (`record_count`, `closed`, `close`, `size`, `_set_producer_state`, `_build`), and
/// `extend` to append events.
#[pyclass(module = "poller._fastpath")]
pub struct RecordBatch {
    /// The header's room, then the records as written.
    buffer: Vec<u8>,
    batch_size: usize,
    records: i32,
    first_timestamp: Option<i64>,
    max_timestamp: i64,
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
    closed: bool,
    /// The batch as sent, once built; the producer state may still change it (a retry).
    built: Option<Py<PyBytes>>,
    /// One record's body, before its length can be written.
    record: Vec<u8>,
}

#[pymethods]
impl RecordBatch {
    #[new]
    fn new(batch_size: usize) -> Self {
        let mut buffer = Vec::with_capacity(batch_size.max(HEADER_SIZE) + 1024);
        buffer.resize(HEADER_SIZE, 0);
        RecordBatch {
            buffer,
            batch_size,
            records: 0,
            first_timestamp: None,
            max_timestamp: 0,
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: 0,
            closed: false,
            built: None,
            record: Vec::with_capacity(2048),
        }
    }

    /// Appends `events[start:]` (`Event` tuples: topic, key, value, headers, …) until one
    /// does not fit, which closes the batch; returns the index of the first event left out
    /// (`len(events)` when all fit). An empty batch takes any one event, however large.
    /// `timestamp` (epoch milliseconds) defaults to now.
    #[pyo3(signature = (events, start=0, timestamp=None))]
    fn extend(
        &mut self,
        events: &Bound<'_, PyList>,
        start: usize,
        timestamp: Option<i64>,
    ) -> PyResult<usize> {
        let timestamp = timestamp.unwrap_or_else(now_ms);
        let mut index = start;
        while index < events.len() && !self.closed {
            let event = events.get_item(index)?;
            let event = event.cast::<PyTuple>()?;
            if event.len() < 4 {
                return Err(PyTypeError::new_err(
                    "an event is (topic, key, value, headers, …)",
                ));
            }
            let fitted = self.append_record(
                timestamp,
                &event.get_item(1)?,
                &event.get_item(2)?,
                &event.get_item(3)?,
            )?;
            if !fitted {
                self.closed = true;
                break;
            }
            index += 1;
        }
        Ok(index)
    }

    /// aiokafka's `BatchBuilder.append`: true once added, None when closed or full (which
    /// closes it).
    #[pyo3(signature = (*, timestamp, key, value, headers))]
    fn append(
        &mut self,
        timestamp: Option<i64>,
        key: &Bound<'_, PyAny>,
        value: &Bound<'_, PyAny>,
        headers: &Bound<'_, PyAny>,
    ) -> PyResult<Option<bool>> {
        if self.closed {
            return Ok(None);
        }
        if self.append_record(timestamp.unwrap_or_else(now_ms), key, value, headers)? {
            Ok(Some(true))
        } else {
            self.closed = true;
            Ok(None)
        }
    }

    fn close(&mut self) {
        self.closed = true;
    }

    fn closed(&self) -> bool {
        self.closed
    }

    fn record_count(&self) -> i32 {
        self.records
    }

    /// Bytes written so far, header included.
    fn size(&self) -> usize {
        self.buffer.len()
    }

    fn _set_producer_state(&mut self, producer_id: i64, producer_epoch: i16, base_sequence: i32) {
        self.producer_id = producer_id;
        self.producer_epoch = producer_epoch;
        self.base_sequence = base_sequence;
        self.built = None;
    }

    /// The batch as it goes on the wire; closes it.
    fn _build<'py>(&mut self, py: Python<'py>) -> Bound<'py, PyBytes> {
        self.closed = true;
        if let Some(built) = &self.built {
            return built.bind(py).clone();
        }
        self.write_header();
        let built = PyBytes::new(py, &self.buffer);
        self.built = Some(built.clone().unbind());
        built
    }
}

impl RecordBatch {
    /// Writes one record if it fits (or the batch is empty); false otherwise.
    fn append_record(
        &mut self,
        timestamp: i64,
        key: &Bound<'_, PyAny>,
        value: &Bound<'_, PyAny>,
        headers: &Bound<'_, PyAny>,
    ) -> PyResult<bool> {
        let record = &mut self.record;
        record.clear();
        record.push(0); // attributes
        put_varint(
            record,
            timestamp - self.first_timestamp.unwrap_or(timestamp),
        );
        put_varint(record, i64::from(self.records)); // offset delta
        put_bytes(record, key)?;
        put_bytes(record, value)?;
        let count = headers.len()?;
        put_varint(record, count as i64);
        for header in headers.try_iter()? {
            let header = header?;
            let header = header.cast::<PyTuple>()?;
            if header.len() != 2 {
                return Err(PyTypeError::new_err("a header is (name, value)"));
            }
            let name = header.get_item(0)?;
            let name = name.cast::<PyString>()?.to_str()?;
            put_varint(record, name.len() as i64);
            record.extend_from_slice(name.as_bytes());
            put_bytes(record, &header.get_item(1)?)?;
        }
        let length = record.len();
        let required = length + varint_size(length as i64);
        // At the limit is full: aiokafka's C builder's rule (its pure-Python one differs).
        if self.records > 0 && self.buffer.len() + required >= self.batch_size {
            return Ok(false);
        }
        let first = *self.first_timestamp.get_or_insert(timestamp);
        self.max_timestamp = if self.records == 0 {
            first
        } else {
            self.max_timestamp.max(timestamp)
        };
        self.records += 1;
        put_varint(&mut self.buffer, length as i64);
        self.buffer.extend_from_slice(&self.record);
        self.built = None;
        Ok(true)
    }

    fn write_header(&mut self) {
        let length = (self.buffer.len() - LENGTH_OFFSET - 4) as i32;
        let header = &mut self.buffer[..HEADER_SIZE];
        header[..8].copy_from_slice(&0i64.to_be_bytes()); // base offset: the broker's
        header[8..12].copy_from_slice(&length.to_be_bytes());
        header[12..16].copy_from_slice(&NO_PARTITION_LEADER_EPOCH.to_be_bytes());
        header[16] = MAGIC;
        header[21..23].copy_from_slice(&0i16.to_be_bytes()); // no compression, no transaction
        let last_offset_delta = (self.records - 1).max(0);
        header[23..27].copy_from_slice(&last_offset_delta.to_be_bytes());
        let first = self.first_timestamp.unwrap_or(0);
        header[27..35].copy_from_slice(&first.to_be_bytes());
        let max = if self.records == 0 {
            0
        } else {
            self.max_timestamp
        };
        header[35..43].copy_from_slice(&max.to_be_bytes());
        header[43..51].copy_from_slice(&self.producer_id.to_be_bytes());
        header[51..53].copy_from_slice(&self.producer_epoch.to_be_bytes());
        header[53..57].copy_from_slice(&self.base_sequence.to_be_bytes());
        header[57..61].copy_from_slice(&self.records.to_be_bytes());
        let crc = crc32c::crc32c(&self.buffer[ATTRIBUTES_OFFSET..]);
        self.buffer[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_be_bytes());
    }
}

/// None as length -1, bytes as their length and themselves.
fn put_bytes(out: &mut Vec<u8>, value: &Bound<'_, PyAny>) -> PyResult<()> {
    if value.is_none() {
        put_varint(out, -1);
        return Ok(());
    }
    let bytes = value
        .cast::<PyBytes>()
        .map_err(|_| PyTypeError::new_err("keys, values and header values are bytes or None"))?
        .as_bytes();
    put_varint(out, bytes.len() as i64);
    out.extend_from_slice(bytes);
    Ok(())
}

/// Kafka's variable-length zig-zag integer.
fn put_varint(out: &mut Vec<u8>, value: i64) {
    let mut rest = ((value << 1) ^ (value >> 63)) as u64;
    while rest >= 0x80 {
        out.push((rest as u8) | 0x80);
        rest >>= 7;
    }
    out.push(rest as u8);
}

fn varint_size(value: i64) -> usize {
    let zigzag = ((value << 1) ^ (value >> 63)) as u64;
    (64 - zigzag.leading_zeros() as usize).max(1).div_ceil(7)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_are_zigzag_leb128() {
        for (value, expected) in [
            (0i64, vec![0u8]),
            (-1, vec![1]),
            (1, vec![2]),
            (63, vec![126]),
            (64, vec![0x80, 1]),
            (-65, vec![0x81, 1]),
            (300, vec![0xd8, 4]),
        ] {
            let mut out = Vec::new();
            put_varint(&mut out, value);
            assert_eq!(out, expected, "{value}");
            assert_eq!(varint_size(value), expected.len(), "{value}");
        }
        for value in [i64::MIN, i64::MAX, 1 << 35, -(1 << 40)] {
            let mut out = Vec::new();
            put_varint(&mut out, value);
            assert_eq!(varint_size(value), out.len(), "{value}");
        }
    }
}
