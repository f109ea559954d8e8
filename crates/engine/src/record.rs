//! Shared byte buffers with their reference count in the same allocation.
//!
//! A `Bytes` made from a `Vec` keeps its reference count in a second allocation, made on the
//! first clone. A record is cloned as soon as it is made (the cache and the log's memtable both
//! hold it), so every write paid for two allocations, and dropping an overwritten record
//! touched two cold lines. [`build`] makes records of up to 1 012 bytes in a
//! fixed-size buffer that [`Bytes::from_owner`] boxes beside its count: one allocation. The
//! buffer sizes follow the allocator's size classes (four per doubling), so a record wastes no
//! more room than the allocator's own rounding of an exact-sized `Vec` would.

use bytes::Bytes;

/// A record's bytes in a fixed-size buffer. With the count `from_owner` puts in front (8
/// bytes) and the length (4), every `N` below fills an allocator size class exactly.
struct Inline<const N: usize> {
    len: u32,
    data: [u8; N],
}

impl<const N: usize> AsRef<[u8]> for Inline<N> {
    fn as_ref(&self) -> &[u8] {
        &self.data[..self.len as usize]
    }
}

fn inline<const N: usize>(len: usize, fill: impl FnOnce(&mut [u8])) -> Bytes {
    let mut owner = Inline {
        len: len as u32,
        data: [0u8; N],
    };
    fill(&mut owner.data[..len]);
    Bytes::from_owner(owner)
}

/// A shared buffer of `len` bytes, written by `fill` (which gets exactly `len` zeroed bytes).
/// Past the largest size below it is a `Vec`, whose second allocation is then small beside it.
pub fn build(len: usize, fill: impl FnOnce(&mut [u8])) -> Bytes {
    macro_rules! smallest_fitting {
        ($($n:literal),*) => {
            $(if len <= $n {
                return inline::<$n>(len, fill);
            })*
        };
    }
    smallest_fitting!(
        20, 36, 52, 68, 84, 100, 116, 148, 180, 212, 244, 308, 372, 436, 500, 628, 756, 884, 1012
    );
    let mut out = vec![0u8; len];
    fill(&mut out);
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `Bytes::from_owner` allocates: its count, then the owner.
    #[allow(dead_code)]
    struct Owned<T> {
        count: std::sync::atomic::AtomicUsize,
        owner: T,
    }

    #[test]
    fn every_buffer_fills_an_allocator_size_class() {
        let sizes = [
            std::mem::size_of::<Owned<Inline<20>>>(),
            std::mem::size_of::<Owned<Inline<148>>>(),
            std::mem::size_of::<Owned<Inline<1012>>>(),
        ];
        assert_eq!(sizes, [32, 160, 1024]);
    }

    #[test]
    fn contents_and_length_survive_for_every_size() {
        for len in [0, 1, 20, 21, 127, 148, 149, 1011, 1012, 1013, 5000] {
            let bytes = build(len, |out| {
                assert_eq!(out.len(), len);
                for (i, b) in out.iter_mut().enumerate() {
                    *b = (i % 251) as u8;
                }
            });
            assert_eq!(bytes.len(), len);
            assert!(bytes.iter().enumerate().all(|(i, b)| *b == (i % 251) as u8));
            // Slices and clones share the buffer and outlive the original.
            let tail = bytes.slice(len / 2..);
            let copy = bytes.clone();
            drop(bytes);
            assert_eq!(copy.len(), len);
            assert_eq!(tail.len(), len - len / 2);
            assert!(tail
                .iter()
                .enumerate()
                .all(|(i, b)| *b == ((i + len / 2) % 251) as u8));
        }
    }
}
