//! The `shikaku` binary: a thin wrapper over [`shikaku_cli::run`].

/// Heap counting for `shikaku bench` (a `bench` build only; the released binary uses the
/// system allocator as it is).
#[cfg(feature = "bench")]
#[global_allocator]
static ALLOCATOR: shikaku_bench::alloc_counter::CountingAllocator =
    shikaku_bench::alloc_counter::CountingAllocator;

fn main() {
    shikaku_cli::init_logging();
    // Unlocked handles: the running services' tasks log to standard error from other threads,
    // so the main thread must not hold its lock for the process's lifetime.
    let code =
        shikaku_cli::run(std::env::args_os(), &mut std::io::stdout(), &mut std::io::stderr());
    std::process::exit(code);
}
