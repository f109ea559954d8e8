//! The framing of one log record: a 16-byte header, then the payload.
//!
//! ```text
//! [payload length: u32 LE][crc32c of sequence and payload: u32 LE][sequence: u64 LE][payload]
//! ```
//!
//! The checksum covers the sequence number too, so a record copied to the wrong place (or a
//! stale block that happens to frame correctly) is caught.

/// Bytes before the payload.
pub const HEADER_LEN: usize = 16;

/// Longest payload accepted, checked before anything is allocated on read.
pub const MAX_PAYLOAD: usize = 64 << 20;

/// Appends one framed record to `out`; `write_payload` appends the payload itself.
pub fn encode(out: &mut Vec<u8>, seq: u64, write_payload: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0u8; HEADER_LEN]);
    write_payload(out);
    let payload_len = out.len() - start - HEADER_LEN;
    let seq_bytes = seq.to_le_bytes();
    let crc = crc32c::crc32c_append(crc32c::crc32c(&seq_bytes), &out[start + HEADER_LEN..]);
    let header = &mut out[start..start + HEADER_LEN];
    header[0..4].copy_from_slice(&(payload_len as u32).to_le_bytes());
    header[4..8].copy_from_slice(&crc.to_le_bytes());
    header[8..16].copy_from_slice(&seq_bytes);
}

/// What the bytes at an offset hold.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// A whole, intact record, and the bytes it took.
    Record {
        seq: u64,
        payload: &'a [u8],
        len: usize,
    },
    /// The bytes end inside a record (a write cut short).
    Truncated,
    /// A record whose length or checksum is wrong.
    Damaged(&'static str),
}

/// Reads the record at the start of `bytes` (which must not be empty).
pub fn decode(bytes: &[u8]) -> Decoded<'_> {
    let Some(header) = bytes.get(..HEADER_LEN) else {
        return Decoded::Truncated;
    };
    let field = |range: std::ops::Range<usize>| -> [u8; 4] {
        let mut out = [0u8; 4];
        out.copy_from_slice(&header[range]);
        out
    };
    let payload_len = u32::from_le_bytes(field(0..4)) as usize;
    let crc = u32::from_le_bytes(field(4..8));
    let mut seq_bytes = [0u8; 8];
    seq_bytes.copy_from_slice(&header[8..16]);
    if payload_len > MAX_PAYLOAD {
        return Decoded::Damaged("record length beyond the limit");
    }
    let Some(payload) = bytes.get(HEADER_LEN..HEADER_LEN + payload_len) else {
        return Decoded::Truncated;
    };
    if crc32c::crc32c_append(crc32c::crc32c(&seq_bytes), payload) != crc {
        return Decoded::Damaged("checksum mismatch");
    }
    Decoded::Record {
        seq: u64::from_le_bytes(seq_bytes),
        payload,
        len: HEADER_LEN + payload_len,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(seq: u64, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode(&mut out, seq, |buf| buf.extend_from_slice(payload));
        out
    }

    #[test]
    fn golden_bytes_of_a_record() {
        let bytes = framed(7, b"hi");
        assert_eq!(&bytes[0..4], &[2, 0, 0, 0]);
        assert_eq!(&bytes[8..16], &[7, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&bytes[16..], b"hi");
        let crc = crc32c::crc32c_append(crc32c::crc32c(&7u64.to_le_bytes()), b"hi");
        assert_eq!(&bytes[4..8], &crc.to_le_bytes());
    }

    #[test]
    fn round_trip_and_every_cut_is_truncated() {
        let bytes = framed(42, b"payload bytes");
        assert_eq!(
            decode(&bytes),
            Decoded::Record {
                seq: 42,
                payload: b"payload bytes",
                len: bytes.len()
            }
        );
        for cut in 1..bytes.len() {
            assert_eq!(decode(&bytes[..cut]), Decoded::Truncated, "cut at {cut}");
        }
    }

    #[test]
    fn every_flipped_bit_is_caught() {
        let bytes = framed(3, b"abc");
        for bit in 0..bytes.len() * 8 {
            let mut damaged = bytes.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            match decode(&damaged) {
                Decoded::Record { seq, payload, .. } => {
                    panic!("bit {bit} passed as record {seq} {payload:?}")
                }
                Decoded::Truncated | Decoded::Damaged(_) => {}
            }
        }
    }

    #[test]
    fn a_huge_length_is_refused_before_reading() {
        let mut bytes = framed(1, b"x");
        bytes[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(decode(&bytes), Decoded::Damaged(_)));
    }
}
