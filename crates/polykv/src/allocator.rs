//! The global allocator: mimalloc, asked through its plain entry points where it can be.
//!
//! `mimalloc::MiMalloc` passes every request to `mi_malloc_aligned`, even those that need no
//! more than the alignment every mimalloc block has. When the page at hand has no free block,
//! that call takes a generic path which, for a size class that is not a power of two (24, 160
//! bytes…), over-allocates by the alignment and so lands in the next size class: loading a
//! million 100-byte items cost 30 MB more than it should. Every mimalloc size class is a
//! multiple of the word size and pages start at least 16-byte aligned, so every block is
//! word-aligned: requests aligned to a word or less go to `mi_malloc` and its siblings.

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys as mi;

/// mimalloc's `mi_option_purge_delay` (the crate does not name it). A test checks that this is
/// the option whose default is the linked mimalloc's (v3) 1 000 ms.
const PURGE_DELAY_OPTION: mi::mi_option_t = 15;

/// Makes mimalloc give freed memory back to the system at once rather than a second later. A
/// delayed purge runs only when a thread calls into the allocator after the delay, and threads
/// that then sleep (the checkpoint thread between checkpoints, an idle worker) never do: after
/// loading a million items, half the runs kept 50–70 MiB more resident for as long as they were
/// sampled (251–328 MiB against 243–265 MiB in eight runs each; CPU per request within about
/// 1 % in A/B runs). `MIMALLOC_PURGE_DELAY` in the environment still decides when it is set.
pub fn purge_at_once() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: setting an option only stores a value mimalloc reads when it purges.
        unsafe { mi::mi_option_set(PURGE_DELAY_OPTION, 0) };
    }
}

/// The alignment every mimalloc block has.
const BLOCK_ALIGN: usize = std::mem::size_of::<usize>();

pub struct Mimalloc;

/// Whether a plain mimalloc call already gives `layout`'s alignment.
#[inline(always)]
fn plain(layout: &Layout) -> bool {
    layout.align() <= BLOCK_ALIGN
}

// SAFETY: each method returns memory from mimalloc with at least the layout's size and
// alignment (plain calls only where `BLOCK_ALIGN` covers the alignment), or null on failure,
// and frees only pointers mimalloc returned.
unsafe impl GlobalAlloc for Mimalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match plain(&layout) {
            true => mi::mi_malloc(layout.size()),
            false => mi::mi_malloc_aligned(layout.size(), layout.align()),
        }
        .cast()
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        match plain(&layout) {
            true => mi::mi_zalloc(layout.size()),
            false => mi::mi_zalloc_aligned(layout.size(), layout.align()),
        }
        .cast()
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        mi::mi_free(ptr.cast::<c_void>());
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let ptr = ptr.cast::<c_void>();
        match plain(&layout) {
            true => mi::mi_realloc(ptr, new_size),
            false => mi::mi_realloc_aligned(ptr, new_size, layout.align()),
        }
        .cast()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_purge_delay_option_is_the_one_purge_at_once_sets() {
        // SAFETY: reading an option.
        let delay = unsafe { mi::mi_option_get(PURGE_DELAY_OPTION) };
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            assert_eq!(
                delay, 1000,
                "option {PURGE_DELAY_OPTION} is not mimalloc's purge_delay"
            );
        }
    }

    #[test]
    fn blocks_of_every_small_size_are_word_aligned_and_usable() {
        let allocator = Mimalloc;
        for size in 1..=2048usize {
            let layout = Layout::from_size_align(size, BLOCK_ALIGN.min(size.next_power_of_two()))
                .expect("a valid layout");
            // SAFETY: a non-zero size; the memory is written within its size, then freed once.
            unsafe {
                let p = allocator.alloc(layout);
                assert!(!p.is_null());
                assert_eq!(p as usize % layout.align(), 0, "size {size}");
                p.write_bytes(0xa5, size);
                let q = allocator.realloc(p, layout, size * 3);
                assert!(!q.is_null());
                assert_eq!(q as usize % layout.align(), 0);
                assert_eq!(*q.add(size - 1), 0xa5);
                allocator.dealloc(
                    q,
                    Layout::from_size_align(size * 3, layout.align()).unwrap(),
                );
            }
        }
        // Larger alignments still go through the aligned entry points.
        let layout = Layout::from_size_align(100, 64).expect("a valid layout");
        // SAFETY: as above.
        unsafe {
            let p = allocator.alloc_zeroed(layout);
            assert_eq!(p as usize % 64, 0);
            assert_eq!(*p.add(99), 0);
            allocator.dealloc(p, layout);
        }
    }
}
