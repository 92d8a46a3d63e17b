//! Memory accounting: a counting global allocator with an optional hard limit, and size parsing
//! for `--mem-limit`.
//!
//! The binary installs [`CountingAlloc`] as its global allocator. Every Rust allocation (tract's
//! weights and activations, planner buffers) is counted; [`peak_bytes`] is the high-water mark.
//! With a limit set ([`set_limit`]), an allocation that would cross it does not happen: the
//! process writes one line naming the limit and the request to stderr and exits with status 3.
//! That is the last line of defence; `qwm plan --mem-limit` first predicts the peak and picks a
//! CEM chunk that fits, so a run that starts normally stays under the limit.
//!
//! Memory allocated outside Rust's allocator (ONNX Runtime's C++ arena) is not counted here: the
//! ort backend is checked against the process RSS after each call instead.

use crate::error::{QwmError, Result};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static LIMIT: AtomicUsize = AtomicUsize::new(0);
static INSTALLED: AtomicUsize = AtomicUsize::new(0);

/// Exit status when the hard memory limit stops the process.
pub const EXIT_MEMORY_LIMIT: i32 = 3;

/// The system allocator, counted.
pub struct CountingAlloc;

fn over_limit(size: usize) -> ! {
    use std::io::Write;
    // No allocation from here on: the message is assembled in a fixed buffer.
    let mut buf = [0u8; 512];
    let mut w = &mut buf[..];
    let limit = LIMIT.load(Ordering::Relaxed);
    let cur = CURRENT.load(Ordering::Relaxed);
    let _ = writeln!(
        w,
        "error: memory limit exceeded: an allocation of {} KiB would bring qwm's heap to {} KiB, over --mem-limit {} KiB; raise --mem-limit or lower --chunk / --samples",
        size / 1024,
        (cur + size) / 1024,
        limit / 1024
    );
    let n = 512 - w.len();
    let _ = std::io::stderr().write_all(&buf[..n]);
    // SAFETY: _exit ends the process at once without running destructors or atexit handlers
    // (which could allocate); nothing here needs cleaning up.
    unsafe { libc::_exit(EXIT_MEMORY_LIMIT) }
}

/// Count `size` more bytes, or stop the process if that crosses the limit.
fn reserve(size: usize) {
    let cur = CURRENT.fetch_add(size, Ordering::Relaxed) + size;
    let limit = LIMIT.load(Ordering::Relaxed);
    if limit != 0 && cur > limit {
        CURRENT.fetch_sub(size, Ordering::Relaxed);
        over_limit(size);
    }
    PEAK.fetch_max(cur, Ordering::Relaxed);
}

/// Give back a reservation whose allocation failed (null), and pass the pointer on.
fn settle(p: *mut u8, size: usize) -> *mut u8 {
    if p.is_null() {
        CURRENT.fetch_sub(size, Ordering::Relaxed);
    }
    p
}

unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        reserve(layout.size());
        settle(System.alloc(layout), layout.size())
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        reserve(layout.size());
        settle(System.alloc_zeroed(layout), layout.size())
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let old = layout.size();
        if new_size > old {
            reserve(new_size - old);
            settle(System.realloc(ptr, layout, new_size), new_size - old)
        } else {
            let p = System.realloc(ptr, layout, new_size);
            if !p.is_null() {
                CURRENT.fetch_sub(old - new_size, Ordering::Relaxed);
            }
            p
        }
    }
}

/// Tell the library that [`CountingAlloc`] is the global allocator (the binary does), so that
/// [`counting`] is true and measurements read the counters.
pub fn mark_installed() {
    INSTALLED.store(1, Ordering::Relaxed);
}

/// Whether the counting allocator is installed in this process.
pub fn counting() -> bool {
    INSTALLED.load(Ordering::Relaxed) != 0
}

/// Bytes currently allocated through the counting allocator.
pub fn current_bytes() -> usize {
    CURRENT.load(Ordering::Relaxed)
}

/// High-water mark of [`current_bytes`] since the start or the last [`reset_peak`].
pub fn peak_bytes() -> usize {
    PEAK.load(Ordering::Relaxed)
}

/// Restart the high-water mark from the current level.
pub fn reset_peak() {
    PEAK.store(CURRENT.load(Ordering::Relaxed), Ordering::Relaxed);
}

/// The hard limit in force, if any.
pub fn limit() -> Option<usize> {
    match LIMIT.load(Ordering::Relaxed) {
        0 => None,
        b => Some(b),
    }
}

/// Set (or with 0 clear) the hard limit on counted bytes.
pub fn set_limit(bytes: usize) {
    LIMIT.store(bytes, Ordering::Relaxed);
}

/// Refuse, before allocating, a request of `bytes` (computed by the caller in u128, so that it
/// cannot overflow) that cannot be allocated: more than the memory limit in force, or than the
/// machine's physical memory. `what` names the flags or fields the size comes from.
pub fn ensure_fits(what: &str, bytes: u128) -> Result<()> {
    let (bound, of) = match limit() {
        Some(l) => (l as u128, "the memory limit"),
        None => (
            crate::util::proc::mem_total_bytes().unwrap_or(1 << 40) as u128,
            "this machine's memory",
        ),
    };
    if bytes > bound {
        let shown = u64::try_from(bytes)
            .map(crate::util::fmt::fmt_bytes)
            .unwrap_or_else(|_| format!("{bytes} bytes"));
        return Err(QwmError::Usage(format!(
            "{what}: needs {shown}, more than {of} ({})",
            crate::util::fmt::fmt_bytes(bound as u64)
        )));
    }
    Ok(())
}

/// Parse a size such as `512M`, `2G`, `1.5GiB`, `40000000` (binary multiples: K = 1024).
pub fn parse_size(text: &str, flag: &str) -> Result<u64> {
    let t = text.trim();
    let bad = || {
        QwmError::Usage(format!(
            "{flag} '{text}': expected a size such as 512M, 2G or 1.5GiB (K, M, G, T = powers of 1024)"
        ))
    };
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num.parse().map_err(|_| bad())?;
    let mult: f64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1.0,
        "K" | "KB" | "KIB" => 1024.0,
        "M" | "MB" | "MIB" => 1024.0 * 1024.0,
        "G" | "GB" | "GIB" => 1024.0 * 1024.0 * 1024.0,
        "T" | "TB" | "TIB" => 1024.0f64.powi(4),
        _ => return Err(bad()),
    };
    let bytes = value * mult;
    if !bytes.is_finite() || bytes < 1.0 || bytes > 1024.0f64.powi(5) {
        return Err(QwmError::Usage(format!(
            "{flag} '{text}': must be between 1 byte and 1 PiB"
        )));
    }
    Ok(bytes as u64)
}

/// Hand freed heap pages back to the operating system (glibc's `malloc_trim`; a no-op
/// elsewhere). Loading a graph decodes and copies its weights several times over; the copies are
/// freed, but glibc keeps the pages, so without this the process stays ~2x the weights resident
/// after loading (measured on the full-size predictor with tract: RSS +177 MiB for 80 MiB of
/// weights before, see `qwm bench`).
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns unused pages of the allocator's arenas to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Run `f` (a graph load) with every allocation of 128 KiB or more served by its own mapping, so
/// that freeing it hands the memory back to the kernel at once.
///
/// glibc otherwise raises its mapping threshold after the first large free and serves later
/// large blocks from the heap, where freed weights and temporaries linger as holes while the
/// next copy is being built: tract's optimizer grew RSS by 49 MiB on the full-size predictor with
/// its heap up by 4 MiB, so loading peaked at 1.65x the weights. Afterwards the thresholds are
/// where glibc's adaptive rule settles: mappings from 32 MiB, and the heap's free top trimmed only
/// beyond 64 MiB. Setting the mapping threshold by hand turns that rule off and leaves the trim
/// threshold at 128 KiB, so every freed activation at the heap's top went back to the kernel and
/// the next call faulted it in again (about a third of an int8 layer's time at batch 16).
/// No-op off glibc.
pub fn with_large_allocations_unmapped<T>(f: impl FnOnce() -> T) -> T {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes glibc's allocation policy; any value is valid.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
    let r = f();
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: as above.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 * 1024 * 1024);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 64 * 1024 * 1024);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("512M", "--mem-limit").unwrap(), 512 << 20);
        assert_eq!(parse_size("2G", "--mem-limit").unwrap(), 2 << 30);
        assert_eq!(parse_size("1.5GiB", "--mem-limit").unwrap(), 3 << 29);
        assert_eq!(parse_size("40000000", "--mem-limit").unwrap(), 40_000_000);
        assert_eq!(parse_size("64k", "--mem-limit").unwrap(), 64 << 10);
        for bad in ["", "-1G", "12Q", "G", "0", "1.2.3M", "nanM"] {
            let e = parse_size(bad, "--mem-limit").unwrap_err();
            assert!(e.to_string().contains("--mem-limit"), "{bad}: {e}");
        }
    }
}
