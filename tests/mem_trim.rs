//! After a graph load, freed activations stay in the allocator's heap instead of going back to
//! the kernel (glibc's trim threshold raised to 64 MiB): the next call reuses them without page
//! faults. With the 128 KiB default that a hand-set mapping threshold leaves in place, tract's
//! float predictor ran a fifth slower at batch 16 (issue 8). A test without the harness
//! (`harness = false`): it runs on the main thread, whose heap is the one glibc trims, in its own
//! process, so no other test's allocations move the resident size.

fn main() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    freed_activations_stay_resident_after_loading();
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn freed_activations_stay_resident_after_loading() {
    use qwm::util::proc::rss_bytes;
    qwm::util::mem::with_large_allocations_unmapped(|| ());
    const MIB: u64 = 1 << 20;
    // 24 MiB: under the 32 MiB mapping threshold, so it comes from the heap, like a batch-16
    // activation of the full-size predictor.
    let before = rss_bytes();
    let v = std::hint::black_box(vec![1u8; 24 << 20]);
    let during = rss_bytes();
    drop(v);
    let after = rss_bytes();
    assert!(
        during >= before + 20 * MIB,
        "the buffer should be resident: {before} -> {during}"
    );
    assert!(
        after + 4 * MIB >= during,
        "freeing it handed it back to the kernel: {during} -> {after}"
    );
    println!("test freed_activations_stay_resident_after_loading ... ok");
}
