//! The `shikaku` binary: a thin wrapper over [`shikaku_cli::run`].

#[global_allocator]
static ALLOCATOR: shikaku_cli::alloc_counter::CountingAllocator =
    shikaku_cli::alloc_counter::CountingAllocator;

fn main() {
    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    let code = shikaku_cli::run(std::env::args_os(), &mut stdout.lock(), &mut stderr.lock());
    std::process::exit(code);
}
