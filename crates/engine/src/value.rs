//! Values and entries, and their stored encoding.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use crate::error::StoreError;

/// A typed value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Value {
    Bytes(Bytes),
    I32(i32),
    I64(i64),
    Str(Arc<str>),
}

impl Value {
    /// The value as bytes, as a byte-oriented protocol sees it: integers as their big-endian
    /// encoding, strings as UTF-8.
    pub fn to_bytes(&self) -> Bytes {
        match self {
            Value::Bytes(b) => b.clone(),
            Value::I32(v) => Bytes::copy_from_slice(&v.to_be_bytes()),
            Value::I64(v) => Bytes::copy_from_slice(&v.to_be_bytes()),
            Value::Str(s) => Bytes::copy_from_slice(s.as_bytes()),
        }
    }

    /// The payload as bytes, taking it (no reference count touched for a byte value).
    pub fn into_bytes(self) -> Bytes {
        match self {
            Value::Bytes(b) => b,
            other => other.to_bytes(),
        }
    }

    /// Size of the payload in bytes (for cache accounting and limits).
    pub fn len(&self) -> usize {
        match self {
            Value::Bytes(b) => b.len(),
            Value::I32(_) => 4,
            Value::I64(_) => 8,
            Value::Str(s) => s.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn type_tag(&self) -> u8 {
        match self {
            Value::Bytes(_) => 0,
            Value::I32(_) => 1,
            Value::I64(_) => 2,
            Value::Str(_) => 3,
        }
    }
}

impl From<&[u8]> for Value {
    fn from(b: &[u8]) -> Self {
        Value::Bytes(Bytes::copy_from_slice(b))
    }
}

impl From<Bytes> for Value {
    fn from(b: Bytes) -> Self {
        Value::Bytes(b)
    }
}

/// One key's state: value plus metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub value: Value,
    /// Version of the write that produced this state (strictly increasing per keyspace).
    pub version: u64,
    /// Absolute expiry, milliseconds since the Unix epoch.
    pub expires_at: Option<u64>,
    /// Owning session, for ephemeral entries.
    pub owner: Option<u64>,
    /// Free-form label kept with the entry (OpenCluster keeps the item name here).
    pub label: Option<Bytes>,
}

impl Entry {
    pub fn is_expired(&self, now_ms: u64) -> bool {
        matches!(self.expires_at, Some(at) if at <= now_ms)
    }

    /// Approximate memory held by this entry and its key, for the cache budget.
    pub fn footprint(&self, key_len: usize) -> usize {
        const OVERHEAD: usize = 96;
        OVERHEAD + key_len + self.value.len() + self.label.as_ref().map_or(0, Bytes::len)
    }

    /// Encodes the entry as stored in the store.
    ///
    /// Layout: `format(1) flags(1) type(1) version(8) [expires_at(8)] [owner(8)]
    /// [label_len(4) label] value`. The leading format byte lets later versions change the
    /// layout and still read old data.
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(self.encoded_len());
        self.encode_into(&mut out);
        out.freeze()
    }

    /// The key and the entry's encoding in one allocation, with the entry's byte value pointed
    /// at the encoding's tail: the cache keeps the record whole, the log's overlay keeps slices
    /// of it, and neither holds on to the buffer the request arrived in.
    pub fn encode_keyed(&mut self, key: &[u8]) -> KeyedEntry {
        // Exactly sized, with its reference count in the same allocation: the cache keeps it
        // for as long as the key is cached.
        let bytes = crate::record::build(key.len() + self.encoded_len(), |mut out| {
            out.put_slice(key);
            self.encode_into(&mut out);
            debug_assert!(out.is_empty(), "encoded_len disagrees with encode_into");
        });
        let record = KeyedEntry {
            bytes,
            key_len: key.len() as u32,
        };
        if let Value::Bytes(value) = &mut self.value {
            *value = record.bytes.slice(record.bytes.len() - value.len()..);
        }
        record
    }

    /// The length of [`Entry::encode`]'s output.
    pub fn encoded_len(&self) -> usize {
        let fixed = 3 + 8;
        let expiry = if self.expires_at.is_some() { 8 } else { 0 };
        let owner = if self.owner.is_some() { 8 } else { 0 };
        let label = self.label.as_ref().map_or(0, |label| 4 + label.len());
        fixed + expiry + owner + label + self.value.len()
    }

    fn encode_into(&self, out: &mut impl BufMut) {
        out.put_u8(ENTRY_FORMAT);
        let mut flags = 0u8;
        if self.expires_at.is_some() {
            flags |= FLAG_EXPIRY;
        }
        if self.owner.is_some() {
            flags |= FLAG_OWNER;
        }
        if self.label.is_some() {
            flags |= FLAG_LABEL;
        }
        out.put_u8(flags);
        out.put_u8(self.value.type_tag());
        out.put_u64(self.version);
        if let Some(at) = self.expires_at {
            out.put_u64(at);
        }
        if let Some(owner) = self.owner {
            out.put_u64(owner);
        }
        if let Some(label) = &self.label {
            out.put_u32(label.len() as u32);
            out.put_slice(label);
        }
        match &self.value {
            Value::Bytes(b) => out.put_slice(b),
            Value::I32(v) => out.put_i32(*v),
            Value::I64(v) => out.put_i64(*v),
            Value::Str(s) => out.put_slice(s.as_bytes()),
        }
    }

    /// [`Entry::decode`] whose byte value and label are slices of `raw` instead of copies.
    pub fn decode_shared(raw: &Bytes) -> Result<Entry, StoreError> {
        Entry::decode_from(raw, Some((raw, 0)))
    }

    /// Decodes an entry written by [`Entry::encode`].
    pub fn decode(raw: &[u8]) -> Result<Entry, StoreError> {
        Entry::decode_from(raw, None)
    }

    /// Decodes `raw`; with `shared = (buffer, offset)`, `raw` lies in `buffer` at `offset` and
    /// byte fields of [`SHARE_FROM`] bytes or more become slices of `buffer` (no copy).
    fn decode_from(raw: &[u8], shared: Option<(&Bytes, usize)>) -> Result<Entry, StoreError> {
        let piece = |at: usize, len: usize| match shared {
            Some((buffer, offset)) if len >= SHARE_FROM => {
                buffer.slice(offset + at..offset + at + len)
            }
            _ => Bytes::copy_from_slice(&raw[at..at + len]),
        };
        let corrupt = |what: &str| StoreError::Corrupt(format!("entry: {what}"));
        let mut reader = Reader { buf: raw, at: 0 };
        let format = reader.u8().ok_or_else(|| corrupt("empty"))?;
        if format != ENTRY_FORMAT {
            return Err(corrupt("unknown format"));
        }
        let flags = reader.u8().ok_or_else(|| corrupt("truncated flags"))?;
        let tag = reader.u8().ok_or_else(|| corrupt("truncated type"))?;
        let version = reader.u64().ok_or_else(|| corrupt("truncated version"))?;
        let expires_at = if flags & FLAG_EXPIRY != 0 {
            Some(reader.u64().ok_or_else(|| corrupt("truncated expiry"))?)
        } else {
            None
        };
        let owner = if flags & FLAG_OWNER != 0 {
            Some(reader.u64().ok_or_else(|| corrupt("truncated owner"))?)
        } else {
            None
        };
        let label = if flags & FLAG_LABEL != 0 {
            let len = reader.u32().ok_or_else(|| corrupt("truncated label"))? as usize;
            let at = reader.at;
            reader.take(len).ok_or_else(|| corrupt("truncated label"))?;
            Some(piece(at, len))
        } else {
            None
        };
        let rest_at = reader.at;
        let rest = reader.rest();
        let value = match tag {
            0 => Value::Bytes(piece(rest_at, rest.len())),
            1 => Value::I32(i32::from_be_bytes(
                rest.try_into().map_err(|_| corrupt("bad i32"))?,
            )),
            2 => Value::I64(i64::from_be_bytes(
                rest.try_into().map_err(|_| corrupt("bad i64"))?,
            )),
            3 => Value::Str(Arc::from(
                std::str::from_utf8(rest).map_err(|_| corrupt("bad utf-8"))?,
            )),
            _ => return Err(corrupt("unknown type")),
        };
        Ok(Entry {
            value,
            version,
            expires_at,
            owner,
            label,
        })
    }
}

/// Most cache lines of one record [`KeyedEntry::prefetch`] asks for: small records whole, the
/// head of larger ones (whose value is sliced, not copied).
const PREFETCH_LINES: usize = 4;

/// Byte fields shorter than this are copied out of a shared record rather than sliced: the
/// copy reads lines the lookup has just loaded, while a slice bumps a reference count kept in
/// another allocation (a likely cache miss, and an atomic operation) and releases it later.
const SHARE_FROM: usize = 1024;

const ENTRY_FORMAT: u8 = 1;
const FLAG_EXPIRY: u8 = 1;
const FLAG_OWNER: u8 = 2;
const FLAG_LABEL: u8 = 4;

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n)?;
        let slice = self.buf.get(self.at..end)?;
        self.at = end;
        Some(slice)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Option<u64> {
        let mut word = [0u8; 8];
        word.copy_from_slice(self.take(8)?);
        Some(u64::from_be_bytes(word))
    }
    fn rest(&self) -> &'a [u8] {
        self.buf.get(self.at..).unwrap_or_default()
    }
}

/// A key followed by an entry's encoding ([`Entry::encode`]) in one allocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyedEntry {
    bytes: Bytes,
    /// Keys are at most [`crate::MAX_KEY_LEN`] bytes (checked before any write), so 32 bits
    /// hold the length; it keeps a cache slot at 48 bytes.
    key_len: u32,
}

impl KeyedEntry {
    /// Copies a key and an encoding into one record.
    pub fn new(key: &[u8], encoded: &[u8]) -> KeyedEntry {
        let bytes = crate::record::build(key.len() + encoded.len(), |out| {
            out[..key.len()].copy_from_slice(key);
            out[key.len()..].copy_from_slice(encoded);
        });
        KeyedEntry {
            bytes,
            key_len: key.len() as u32,
        }
    }

    pub fn key(&self) -> &[u8] {
        &self.bytes[..self.key_len as usize]
    }

    pub fn encoded(&self) -> &[u8] {
        &self.bytes[self.key_len as usize..]
    }

    /// The key, sharing the record's allocation.
    pub fn key_bytes(&self) -> Bytes {
        self.bytes.slice(..self.key_len as usize)
    }

    /// The encoding, sharing the record's allocation.
    pub fn encoded_bytes(&self) -> Bytes {
        self.bytes.slice(self.key_len as usize..)
    }

    /// Starts loading every cache line the record spans, up to [`PREFETCH_LINES`]: a lookup
    /// compares the key at its start and a get copies the value at its end, and an allocation
    /// is not line-aligned (a 127-byte record in a 128-byte block can span three lines).
    pub(crate) fn prefetch(&self) {
        let start = self.bytes.as_ptr();
        let first_line = start.wrapping_sub(start as usize % 64);
        let spanned = (start as usize % 64 + self.bytes.len()).div_ceil(64);
        for line in 0..spanned.min(PREFETCH_LINES) {
            crate::cache::prefetch(first_line.wrapping_add(line * 64));
        }
    }

    /// Key and encoding together.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Decodes the entry, its byte fields slices of the record.
    pub fn entry(&self) -> Result<Entry, StoreError> {
        Entry::decode_from(self.encoded(), Some((&self.bytes, self.key_len as usize)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn value_strategy() -> impl Strategy<Value = Value> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..64).prop_map(|v| Value::Bytes(v.into())),
            any::<i32>().prop_map(Value::I32),
            any::<i64>().prop_map(Value::I64),
            ".{0,16}".prop_map(|s: String| Value::Str(s.into())),
        ]
    }

    proptest! {
        #[test]
        fn entry_round_trips(
            value in value_strategy(),
            version in any::<u64>(),
            expires_at in proptest::option::of(any::<u64>()),
            owner in proptest::option::of(any::<u64>()),
            label in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..16)),
        ) {
            let entry = Entry { value, version, expires_at, owner, label: label.map(Bytes::from) };
            let encoded = entry.encode();
            prop_assert_eq!(encoded.len(), entry.encoded_len());
            prop_assert_eq!(&Entry::decode(&encoded).unwrap(), &entry);
            prop_assert_eq!(&Entry::decode_shared(&encoded).unwrap(), &entry);
            // Keyed: the key, then the same encoding, and the same entry back.
            let mut keyed = entry.clone();
            let record = keyed.encode_keyed(b"the key");
            prop_assert_eq!(&keyed, &entry);
            prop_assert_eq!(record.key(), b"the key");
            prop_assert_eq!(record.encoded(), encoded.as_ref());
            prop_assert_eq!(&record.entry().unwrap(), &entry);
            prop_assert_eq!(&KeyedEntry::new(b"the key", &encoded), &record);
        }

        #[test]
        fn a_truncated_record_is_an_error_not_a_panic(cut in 0usize..40) {
            let mut entry = Entry {
                value: Value::from(&b"value"[..]),
                version: 9,
                expires_at: Some(1),
                owner: None,
                label: Some(Bytes::from_static(b"label")),
            };
            let record = entry.encode_keyed(b"k");
            let encoded = record.encoded();
            let short = KeyedEntry::new(b"k", &encoded[..cut.min(encoded.len() - 1)]);
            // Only the value may be cut without the decoder noticing: it is the tail.
            if let Ok(decoded) = short.entry() {
                prop_assert!(cut >= encoded.len() - 5, "decoded {decoded:?} from {cut} bytes");
            }
        }

        #[test]
        fn decode_never_panics(raw in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = Entry::decode(&raw);
        }
    }

    #[test]
    fn golden_encoding() {
        let entry = Entry {
            value: Value::I32(7),
            version: 2,
            expires_at: Some(1),
            owner: None,
            label: None,
        };
        assert_eq!(
            entry.encode().as_ref(),
            &[1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 7]
        );
        assert!(Entry::decode(&[2]).is_err());
        assert!(Entry::decode(&[1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1]).is_err());
    }

    #[test]
    fn integers_read_as_big_endian_bytes() {
        assert_eq!(Value::I32(1).to_bytes().as_ref(), &[0, 0, 0, 1]);
        assert_eq!(Value::I64(-1).to_bytes().as_ref(), &[0xff; 8]);
    }
}
