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

/// glibc gives the top of the heap back to the system as soon as more than
/// 128 KiB is free there, and maps allocations of 128 KiB and more on their
/// own. A tunnel moving bulk data allocates and frees chunks of up to 256
/// KiB all the time (`crate::splice`'s reads; 64 KiB copies when this was
/// measured): the top was returned and faulted back in every few chunks, and
/// the page faults took 30 % of a sidecar pair's CPU (`perf` on iperf3
/// through the pair). With these bounds: 2.63 -> 3.84 Gbit/s, one stream
/// (BENCHMARKS.md). The heap keeps up to `KEEP` free at its top (4 MiB: 64
/// MiB left a held connection at 4.1 KB instead of 3.5), allocations below
/// `MAP_ABOVE` come from the heap, and the trimming thread returns what a
/// burst freed.
pub const KEEP: usize = 4 * 1024 * 1024;
/// Allocations this large or larger are mapped on their own.
pub const MAP_ABOVE: usize = 4 * 1024 * 1024;

/// Sets the allocator's bounds (`KEEP`, `MAP_ABOVE`); call before any
/// thread starts.
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only sets the allocator's parameters; called
        // before other threads allocate.
        #[allow(unsafe_code)] // glibc's mallopt has no safe binding
        let ok = unsafe {
            libc::mallopt(libc::M_TRIM_THRESHOLD, KEEP as libc::c_int) == 1
                && libc::mallopt(libc::M_MMAP_THRESHOLD, MAP_ABOVE as libc::c_int) == 1
        };
        if !ok {
            tracing::warn!("the allocator's bounds could not be set; bulk tunnels will be slower");
        }
    }
}

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
