//! The engine keys of minority's (dataId, datanumId) pairs: the server's mapping, not the wire
//! format's.

use std::borrow::Cow;

use bytes::{BufMut, Bytes, BytesMut};

/// The engine key of (dataId, datanumId): `dataId`, or `dataId ‖ 00 ‖ datanumId`. A key that is
/// the dataId alone shares its bytes.
pub fn engine_key(data_id: &Bytes, datanum_id: &[u8]) -> Bytes {
    if datanum_id.is_empty() {
        return data_id.clone();
    }
    let mut key = BytesMut::with_capacity(data_id.len() + 1 + datanum_id.len());
    key.put_slice(data_id);
    key.put_u8(0);
    key.put_slice(datanum_id);
    key.freeze()
}

/// [`engine_key`] for a lookup: borrowed when it is the dataId alone (the common case: a read
/// then allocates nothing for its key).
pub fn lookup_key<'a>(data_id: &'a [u8], datanum_id: &[u8]) -> Cow<'a, [u8]> {
    if datanum_id.is_empty() {
        return Cow::Borrowed(data_id);
    }
    let mut key = Vec::with_capacity(data_id.len() + 1 + datanum_id.len());
    key.extend_from_slice(data_id);
    key.push(0);
    key.extend_from_slice(datanum_id);
    Cow::Owned(key)
}

/// (dataId, datanumId) of an engine key, or `None` when minority cannot express it (empty, starts
/// with `00`, or nothing after its first `00`).
pub fn split_key(key: &[u8]) -> Option<(Bytes, Bytes)> {
    match key.iter().position(|b| *b == 0) {
        None if !key.is_empty() => Some((Bytes::copy_from_slice(key), Bytes::new())),
        Some(at) if at > 0 && at + 1 < key.len() => Some((
            Bytes::copy_from_slice(&key[..at]),
            Bytes::copy_from_slice(&key[at + 1..]),
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_mapping() {
        let app = Bytes::from("app");
        assert_eq!(engine_key(&app, b""), Bytes::from("app"));
        assert_eq!(engine_key(&app, b"db"), Bytes::from("app\0db"));
        assert!(matches!(lookup_key(b"app", b""), Cow::Borrowed(b"app")));
        assert_eq!(&lookup_key(b"app", b"db")[..], b"app\0db");
        assert_eq!(split_key(b"app"), Some(("app".into(), Bytes::new())));
        assert_eq!(split_key(b"app\0db"), Some(("app".into(), "db".into())));
        assert_eq!(split_key(b"app\0d\0b"), Some(("app".into(), "d\0b".into())));
        assert_eq!(split_key(b""), None);
        assert_eq!(split_key(b"\0x"), None);
        assert_eq!(split_key(b"app\0"), None);
    }
}
