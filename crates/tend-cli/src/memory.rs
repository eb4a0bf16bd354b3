//! How `tend up` keeps its memory small with glibc's allocator, measured
//! at 1,000 daemons (see docs/PERFORMANCE.md, "Memory of `tend up`"):
//!
//! - One malloc arena instead of one per worker thread: each arena keeps
//!   its own free memory, and with daemons started from any worker the
//!   arenas held several MiB free between them.
//! - Free memory given back to the kernel at two moments: before the
//!   guard process is cloned (it would otherwise keep a private copy of
//!   every page this process reuses afterwards) and once every daemon has
//!   started (what the starts needed is not needed again).
//!
//! Elsewhere (musl, other allocators) these do nothing.

/// Keeps one malloc arena for the whole process. Call it before the
/// runtime starts its threads.
pub fn single_arena() {
    #[cfg(target_env = "gnu")]
    // SAFETY: `mallopt` only sets a tunable of the allocator; called
    // before any other thread exists, and M_ARENA_MAX is valid for it.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
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
