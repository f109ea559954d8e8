//! Reading written records back by sequence, for a Raft log that keeps only its newest
//! entries in memory: a follower that lags behind that window is sent the older ones from the
//! segment files.
//!
//! A read scans its segment from the start unless it continues where the last read stopped
//! (a [`ReadCursor`]), which is how replication reads: one range after the next.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use super::{io_error, record, Log, Position};
use crate::error::StoreError;

/// Bytes read from a segment at a time (more when one record is longer).
const CHUNK: usize = 256 << 10;

/// Where a read stopped: the next record's sequence and position, so that a read from there
/// starts at once rather than scanning its segment. A stale cursor (the log was cut back or
/// restarted since) is noticed by the record it points at and ignored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadCursor {
    next: Option<(u64, Position)>,
}

/// One segment to read: its first record, the file, and where its written records end at
/// most (the active segment's write position; a sealed segment's file length).
struct Source {
    first_seq: u64,
    file: Arc<File>,
    end: u64,
    name: String,
}

impl Log {
    /// Calls `visit(seq, payload)` for every record with a sequence in `from..to` that is
    /// written to the segment files, in order. Records only buffered are not read
    /// ([`Log::flush`] first), nor purged ones: the read then yields fewer records, from the
    /// first one it finds. `cursor` carries where this read stops to the next one.
    pub fn read_range(
        &self,
        from: u64,
        to: u64,
        cursor: &mut ReadCursor,
        mut visit: impl FnMut(u64, &[u8]) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        if from >= to {
            return Ok(());
        }
        for source in self.sources_from(from)? {
            let start = match cursor.next {
                Some((seq, (segment, offset))) if seq == from && segment == source.first_seq => {
                    Some(offset)
                }
                _ => None,
            };
            let mut outcome = match start {
                Some(offset) => {
                    read_segment(&source, offset, from, true, from, to, cursor, &mut visit)?
                }
                None => Outcome::More,
            };
            if start.is_none() || outcome == Outcome::Stale {
                outcome = read_segment(
                    &source,
                    0,
                    source.first_seq,
                    false,
                    from,
                    to,
                    cursor,
                    &mut visit,
                )?;
            }
            let done = outcome == Outcome::Done;
            if done {
                break;
            }
        }
        Ok(())
    }

    /// The segments that may hold records from `from` on, oldest first.
    fn sources_from(&self, from: u64) -> Result<Vec<Source>, StoreError> {
        let active = self.active.lock();
        let Some(first) = active.segments.iter().rposition(|s| s.first_seq <= from) else {
            // Purged, or below the first record: start at the oldest segment kept.
            return self.sources(&active, 0);
        };
        self.sources(&active, first)
    }

    fn sources(&self, active: &super::Active, first: usize) -> Result<Vec<Source>, StoreError> {
        let count = active.segments.len();
        let mut sources = Vec::with_capacity(count.saturating_sub(first));
        for (index, segment) in active.segments.iter().enumerate().skip(first) {
            let name = segment.path.display().to_string();
            if index + 1 == count {
                // The segment being written may still be under its temporary name: its open
                // file is read instead.
                sources.push(Source {
                    first_seq: segment.first_seq,
                    file: active.file.clone(),
                    end: active.len,
                    name,
                });
                continue;
            }
            let file = match File::open(&segment.path) {
                Ok(file) => file,
                // Purged since the list was read.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_error("open", &segment.path, e)),
            };
            let end = file
                .metadata()
                .map_err(|e| io_error("stat", &segment.path, e))?
                .len();
            sources.push(Source {
                first_seq: segment.first_seq,
                file: Arc::new(file),
                end,
                name,
            });
        }
        Ok(sources)
    }
}

/// How reading a segment ended.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// Every record up to `to` was visited.
    Done,
    /// The segment ended first: the next one holds the rest.
    More,
    /// Started from a cursor, the first record was not the one expected: nothing visited.
    Stale,
}

/// Reads `source` from `offset` (where record `seq` starts), visiting the records in
/// `from..to`. A record that is not the one expected, or damaged, is an error naming the file
/// and offset, except the first one read from a cursor (`from_cursor`): that is
/// [`Outcome::Stale`].
#[allow(clippy::too_many_arguments)]
fn read_segment(
    source: &Source,
    mut offset: u64,
    mut seq: u64,
    from_cursor: bool,
    from: u64,
    to: u64,
    cursor: &mut ReadCursor,
    visit: &mut impl FnMut(u64, &[u8]) -> Result<(), StoreError>,
) -> Result<Outcome, StoreError> {
    let start = offset;
    let mut buf: Vec<u8> = Vec::new();
    // File offset of buf[0].
    let mut buf_at = offset;
    loop {
        let stale = from_cursor && offset == start;
        let Some(header) = fill(source, &mut buf, &mut buf_at, offset, record::HEADER_LEN)? else {
            return Ok(if stale { Outcome::Stale } else { Outcome::More });
        };
        if header.iter().all(|b| *b == 0) {
            // The unused, zeroed rest of a preallocated segment.
            return Ok(if stale { Outcome::Stale } else { Outcome::More });
        }
        let payload_len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        if payload_len > record::MAX_PAYLOAD {
            if stale {
                return Ok(Outcome::Stale);
            }
            return Err(damaged(source, offset, "record length beyond the limit"));
        }
        let whole = fill(
            source,
            &mut buf,
            &mut buf_at,
            offset,
            record::HEADER_LEN + payload_len,
        )?;
        let Some(bytes) = whole else {
            if stale {
                return Ok(Outcome::Stale);
            }
            return Err(damaged(source, offset, "record cut short"));
        };
        let decoded = record::decode(bytes);
        if stale && !matches!(decoded, record::Decoded::Record { seq: found, .. } if found == seq) {
            return Ok(Outcome::Stale);
        }
        match decoded {
            record::Decoded::Record {
                seq: found,
                payload,
                len,
            } => {
                if found != seq {
                    return Err(StoreError::Corrupt(format!(
                        "log {} at offset {offset}: record {found} where {seq} was expected",
                        source.name
                    )));
                }
                if seq >= from {
                    visit(seq, payload)?;
                }
                offset += len as u64;
                seq += 1;
                cursor.next = Some((seq, (source.first_seq, offset)));
                if seq >= to {
                    return Ok(Outcome::Done);
                }
            }
            record::Decoded::Truncated => return Err(damaged(source, offset, "record cut short")),
            record::Decoded::Damaged(why) => return Err(damaged(source, offset, why)),
        }
    }
}

fn damaged(source: &Source, offset: u64, why: &str) -> StoreError {
    StoreError::Corrupt(format!("log {} at offset {offset}: {why}", source.name))
}

/// The `len` bytes at file offset `offset`, reading more of the file into `buf` when they are
/// not there yet; `None` when the segment's written part ends before them.
fn fill<'a>(
    source: &Source,
    buf: &'a mut Vec<u8>,
    buf_at: &mut u64,
    offset: u64,
    len: usize,
) -> Result<Option<&'a [u8]>, StoreError> {
    if offset + len as u64 > source.end {
        return Ok(None);
    }
    let have = (*buf_at + buf.len() as u64).saturating_sub(offset) as usize;
    if offset < *buf_at || have < len {
        // Read from `offset` on: at least `len`, a chunk when the segment has it.
        let want = len.max(CHUNK).min((source.end - offset) as usize);
        buf.clear();
        buf.resize(want, 0);
        let mut read = 0;
        while read < len {
            let n = source
                .file
                .read_at(&mut buf[read..], offset + read as u64)
                .map_err(|e| StoreError::io(format!("read {}", source.name), e))?;
            if n == 0 {
                break;
            }
            read += n;
        }
        buf.truncate(read);
        *buf_at = offset;
        if read < len {
            return Ok(None);
        }
    }
    let start = (offset - *buf_at) as usize;
    Ok(Some(&buf[start..start + len]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::SegmentWrites;

    /// A log of small (4 KiB) segments holding records 1..=n, "record i", flushed.
    fn log_of(dir: &std::path::Path, n: u64, writes: SegmentWrites) -> Log {
        let log = Log::open_with(dir, 4096, 0, writes, |_, _| Ok(())).unwrap();
        for i in 1..=n {
            log.append(|buf| buf.extend_from_slice(format!("record {i}").as_bytes()));
            if i % 7 == 0 {
                log.flush().unwrap();
            }
        }
        log.flush().unwrap();
        log
    }

    fn read(log: &Log, from: u64, to: u64, cursor: &mut ReadCursor) -> Vec<u64> {
        let mut seen = Vec::new();
        log.read_range(from, to, cursor, |seq, payload| {
            let plain = format!("record {seq}");
            let rewritten = format!("record {seq}, written again");
            assert!(payload == plain.as_bytes() || payload == rewritten.as_bytes());
            seen.push(seq);
            Ok(())
        })
        .unwrap();
        seen
    }

    #[test]
    fn ranges_are_read_across_segments_in_order_with_and_without_a_cursor() {
        for writes in [SegmentWrites::Calls, SegmentWrites::Mapped] {
            let dir = tempfile::tempdir().unwrap();
            let log = log_of(dir.path(), 1000, writes);
            assert!(
                log.active.lock().segments.len() > 3,
                "spans several segments"
            );
            let mut cursor = ReadCursor::default();
            // One range after the next, as replication reads: each continues from the cursor.
            let mut all = Vec::new();
            for from in (1..=1000).step_by(97) {
                all.extend(read(&log, from, from + 97, &mut cursor));
            }
            assert_eq!(all, (1..=1000).collect::<Vec<_>>());
            // Anywhere, without the cursor's help; past the end, only what is written.
            let mut fresh = ReadCursor::default();
            assert_eq!(
                read(&log, 500, 510, &mut fresh),
                (500..510).collect::<Vec<_>>()
            );
            assert_eq!(
                read(&log, 995, 2000, &mut fresh),
                (995..=1000).collect::<Vec<_>>()
            );
            assert!(read(&log, 10, 10, &mut fresh).is_empty());
        }
    }

    #[test]
    fn buffered_records_are_not_read_and_purged_ones_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let log = log_of(dir.path(), 300, SegmentWrites::Calls);
        log.append(|buf| buf.extend_from_slice(b"record 301"));
        let mut cursor = ReadCursor::default();
        assert_eq!(
            read(&log, 295, 302, &mut cursor),
            (295..=300).collect::<Vec<_>>()
        );
        log.flush().unwrap();
        assert_eq!(read(&log, 301, 302, &mut cursor), vec![301]);
        log.purge_upto(200).unwrap();
        let first = read(&log, 1, 302, &mut ReadCursor::default());
        assert!(
            first[0] > 1 && first[0] <= 201,
            "starts at the oldest kept: {}",
            first[0]
        );
        assert_eq!(first, (first[0]..=301).collect::<Vec<_>>());
    }

    #[test]
    fn a_stale_cursor_is_noticed_after_the_log_is_cut_back() {
        let dir = tempfile::tempdir().unwrap();
        let log = log_of(dir.path(), 300, SegmentWrites::Calls);
        let mut cursor = ReadCursor::default();
        assert_eq!(
            read(&log, 250, 280, &mut cursor),
            (250..280).collect::<Vec<_>>()
        );
        // Cut back below the cursor and written again with longer records: the cursor's
        // offset no longer starts record 280.
        log.truncate_from(260).unwrap();
        for i in 260..=300 {
            log.append(|buf| {
                buf.extend_from_slice(format!("record {i}, written again").as_bytes())
            });
        }
        log.flush().unwrap();
        assert_eq!(
            read(&log, 280, 301, &mut cursor),
            (280..=300).collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_damaged_record_is_an_error_naming_the_file_and_offset() {
        let dir = tempfile::tempdir().unwrap();
        let log = log_of(dir.path(), 300, SegmentWrites::Calls);
        let first = log.active.lock().segments[0].path.clone();
        let mut bytes = std::fs::read(&first).unwrap();
        bytes[record::HEADER_LEN + 2] ^= 0xff;
        std::fs::write(&first, &bytes).unwrap();
        let error = log
            .read_range(1, 10, &mut ReadCursor::default(), |_, _| Ok(()))
            .unwrap_err()
            .to_string();
        assert!(error.contains(&first.display().to_string()), "{error}");
        assert!(error.contains("offset 0"), "{error}");
    }
}
