//! Keeps the daemon's resident memory to what it uses: it lives on every instance for
//! the whole lease and does little, so memory that start-up used and freed, or that
//! sits in per-thread allocator arenas, would otherwise stay resident for hours.
#![allow(unsafe_code)]

/// One allocator arena for every thread. glibc gives each thread that allocates an
/// arena of its own; for a process of a few mostly idle threads that is a few hundred
/// KiB resident for nothing. Call before any thread starts.
pub fn single_arena() {
    // SAFETY: mallopt only sets an allocator parameter; called from `main` before the
    // runtime's threads exist, so no allocation races with it.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Returns the pages of freed heap memory to the system (start-up parses config,
/// metadata and SDK settings, then frees most of it).
pub fn release_free_memory() {
    // SAFETY: malloc_trim is thread-safe (it takes the arenas' locks) and frees only
    // memory the allocator holds unused.
    unsafe {
        libc::malloc_trim(0);
    }
}
