//! How `tend up` keeps its memory small with glibc's allocator, measured
//! at 1,000 daemons (see docs/PERFORMANCE.md, "Memory of `tend up`"):
//!
//! - One malloc arena instead of one per worker thread: each arena keeps
//!   its own free memory, and with daemons started from any worker the
//!   arenas held several MiB free between them.
//! - Blocks of 128 KiB and more always mapped on their own, so freeing
//!   them gives them back: glibc otherwise raises that threshold to the
//!   size of the largest block freed, and the next `status` of 1,000
//!   daemons (a response of several hundred KiB) stays in the heap.
//! - Free memory given back to the kernel at two moments: before the
//!   guard process is cloned (it would otherwise keep a private copy of
//!   every page this process reuses afterwards), once every daemon has
//!   started (what the starts needed is not needed again), and after each
//!   large response (a `status` of many daemons).
//!
//! Elsewhere (musl, other allocators) these do nothing.

/// Large blocks are mapped on their own from this size on.
#[cfg(target_env = "gnu")]
const MMAP_THRESHOLD: libc::c_int = 128 * 1024;

/// Tunes the allocator for a long-running supervisor: one arena, large
/// blocks mapped on their own. Call it before the runtime starts its
/// threads.
pub fn tune_allocator() {
    #[cfg(target_env = "gnu")]
    // SAFETY: `mallopt` only sets tunables of the allocator, with values
    // valid for them; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        // Setting it explicitly also turns off its dynamic raise.
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
    }
}

/// Returns the allocator's free pages to the kernel.
pub fn release_free_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: `malloc_trim` is thread-safe (it locks each arena) and only
    // releases memory that no allocation uses.
    unsafe {
        libc::malloc_trim(0);
    }
}
