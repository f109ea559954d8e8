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
use std::time::Duration;

use libmimalloc_sys as mi;

/// mimalloc's `mi_option_purge_delay` (the crate does not name it). A test checks that this is
/// the option whose default is the linked mimalloc's (v3) 1 000 ms.
const PURGE_DELAY_OPTION: mi::mi_option_t = 15;

/// How long freed memory stays with the allocator before it goes back to the system, unless the
/// server goes quiet first ([`start_trimmer`]). Longer than the time between two checkpoints
/// under load: records are freed in bursts when a checkpoint releases the memtable, and a
/// purge after each burst made the next writes fault in and zero those pages again (5 % of a
/// SET at depth 1). jemalloc's default decay is the same ten seconds.
const PURGE_DELAY_MS: std::ffi::c_long = 10_000;

/// How often the trimmer looks.
const TRIM_PERIOD: Duration = Duration::from_secs(1);

/// CPU the whole process may use in one [`TRIM_PERIOD`] and still count as quiet.
const QUIET_CPU: Duration = Duration::from_millis(20);

/// Sets mimalloc's purge delay to [`PURGE_DELAY_MS`]. `MIMALLOC_PURGE_DELAY` in the environment
/// still decides when it is set.
pub fn configure() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: setting an option only stores a value mimalloc reads when it purges.
        unsafe { mi::mi_option_set(PURGE_DELAY_OPTION, PURGE_DELAY_MS) };
    }
}

/// Starts the thread that gives freed memory back to the system: every second it lets mimalloc
/// purge what has waited out the delay (a delayed purge otherwise runs only when some thread
/// calls the allocator, and an idle server's threads do not), and once the process has gone
/// quiet it purges everything free at once, so that a server that loaded its data and went
/// idle holds only what its data needs.
pub fn start_trimmer() -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("alloc-trim".into())
        .spawn(trim)
        .map(drop)
}

fn trim() {
    let mut cpu_before = process_cpu();
    let mut trimmed = false;
    loop {
        std::thread::sleep(TRIM_PERIOD);
        let cpu = process_cpu();
        let quiet = cpu.saturating_sub(cpu_before) < QUIET_CPU;
        cpu_before = cpu;
        // SAFETY: a collection only works on mimalloc's own state, from a thread of its own.
        unsafe { mi::mi_collect(quiet && !trimmed) };
        trimmed = quiet;
    }
}

/// CPU time of every thread of the process.
fn process_cpu() -> Duration {
    cpu_clock(libc::CLOCK_PROCESS_CPUTIME_ID)
}

/// A CPU-time clock's reading (zero if the clock cannot be read).
fn cpu_clock(clock: libc::clockid_t) -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec for the call to fill.
    if unsafe { libc::clock_gettime(clock, &mut now) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
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
    fn the_purge_delay_option_is_the_one_configure_sets() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            return;
        }
        // SAFETY: reading and setting an option (no other test touches the allocator's options).
        unsafe {
            let default = mi::mi_option_get(PURGE_DELAY_OPTION);
            assert_eq!(
                default, 1000,
                "option {PURGE_DELAY_OPTION} is not mimalloc's purge_delay"
            );
            configure();
            assert_eq!(mi::mi_option_get(PURGE_DELAY_OPTION), PURGE_DELAY_MS);
            mi::mi_option_set(PURGE_DELAY_OPTION, default);
        }
    }

    #[test]
    fn the_process_cpu_clock_counts_this_thread_s_work() {
        let thread_cpu = || cpu_clock(libc::CLOCK_THREAD_CPUTIME_ID);
        let before = process_cpu();
        let thread_before = thread_cpu();
        assert!(
            thread_before > Duration::ZERO,
            "the thread's CPU clock reads"
        );
        let started = std::time::Instant::now();
        let mut spin = 0u64;
        while thread_cpu() - thread_before < Duration::from_millis(20)
            && started.elapsed() < Duration::from_secs(10)
        {
            spin = std::hint::black_box(spin.wrapping_add(1));
        }
        assert!(process_cpu().saturating_sub(before) >= Duration::from_millis(20));
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
