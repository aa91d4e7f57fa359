//! Gives the heap's free memory back to the system (part of the binary,
//! not the library: the one place the gateway calls into libc itself).
//!
//! glibc's malloc returns freed memory to the system only from the top of
//! the heap. After a burst (thousands of connections each with a request
//! in flight) the freed chunks sit between the few that stay live (each
//! parked connection's state), and the process's resident size stays at
//! the burst's peak: 14.6 KB per held connection where 2.8 KB was live
//! (issue 24). Every `INTERVAL`, when more than `SLACK` lies free inside
//! the heap, `malloc_trim` hands the free pages back. Envoy does the same
//! with tcmalloc's release rate; haproxy trims when it flushes its pools.

use std::time::Duration;

/// How often the heap's free bytes are checked.
pub const INTERVAL: Duration = Duration::from_secs(2);
/// Free bytes inside the heap worth a trim.
pub const SLACK: usize = 8 * 1024 * 1024;

/// Starts the trimming thread (a thread, not a task: a trim holds the
/// allocator's locks for a few milliseconds and must not stall a worker).
pub fn trim_in_background() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let spawned = std::thread::Builder::new()
            .name("heap-trim".into())
            .spawn(|| {
                let mut floor = 0;
                loop {
                    std::thread::sleep(INTERVAL);
                    let free = free_in_heap();
                    if should_trim(&mut floor, free) {
                        let started = std::time::Instant::now();
                        trim();
                        tracing::debug!(
                            free_mib = free / (1024 * 1024),
                            took = ?started.elapsed(),
                            "heap trimmed"
                        );
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::warn!("heap trimming is off (cannot start its thread: {e})");
        }
    }
}

/// Whether to trim with `free` bytes free in the heap. Trimmed pages stay
/// free in the allocator's count, so what a trim would return is what was
/// freed since: `free` above its lowest since the last trim (`floor`,
/// updated here).
fn should_trim(floor: &mut usize, free: usize) -> bool {
    *floor = (*floor).min(free);
    if free - *floor > SLACK {
        *floor = free;
        true
    } else {
        false
    }
}

/// Bytes allocated from the system and free inside the heap, less what
/// the heap's top keeps anyway.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn free_in_heap() -> usize {
    // SAFETY: mallinfo2 takes no arguments and returns a plain struct; it
    // locks each arena while it reads it.
    #[allow(unsafe_code)] // the allocator's statistics have no safe binding
    let info = unsafe { libc::mallinfo2() };
    info.fordblks.saturating_sub(info.keepcost)
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    // SAFETY: malloc_trim only releases free pages of the allocator's own
    // arenas, under their locks; 0 keeps no padding at the top.
    #[allow(unsafe_code)] // glibc's malloc_trim has no safe binding
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_what_was_freed_since_the_last_trim() {
        const MIB: usize = 1024 * 1024;
        let mut floor = 0;
        assert!(!should_trim(&mut floor, 4 * MIB), "little free: no trim");
        assert!(should_trim(&mut floor, 60 * MIB), "a burst freed: trim");
        // Still 60 MiB free, all of it trimmed already.
        assert!(!should_trim(&mut floor, 60 * MIB));
        assert!(!should_trim(&mut floor, 61 * MIB));
        // Reused (resident again), then freed again: trim once more.
        assert!(!should_trim(&mut floor, 20 * MIB));
        assert!(should_trim(&mut floor, 55 * MIB));
        assert!(!should_trim(&mut floor, 55 * MIB));
    }
}
