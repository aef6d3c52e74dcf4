use clap::Parser;
use tracing_subscriber::EnvFilter;

use entrovid::cli::Cli;
use entrovid::commands;

/// A UNet pass on the CPU allocates and frees a few hundred tensors of 1 KiB to 1 MiB; glibc's
/// malloc spent ~8% of a pass in `_int_free`, `malloc_consolidate` and page faults for them.
/// With mimalloc a pass took 12.4 ms against 13.7 (one thread) and a default generate 0.39-0.43 s
/// against 0.45-0.46 (BENCHMARKS.md). (jemalloc, tried the same way, was twice as slow.)
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    keep_candle_element_wise_ops_on_their_thread();
    fix_the_thread_count_once();
    let cli = Cli::parse();
    // The log filter is the one setting read outside `Settings`: logging must work before
    // settings can be parsed (and report why they could not be).
    let filter = EnvFilter::try_from_env("ENTROVID_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let settings = match commands::load_settings(&cli, std::env::vars()) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("entrovid: {error:#}");
            return std::process::ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("entrovid: cannot start the async runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(commands::run(cli, settings)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("entrovid: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// candle runs large element-wise operations on one global pool of helper threads
/// (`CANDLE_NUM_THREADS`, else `RAYON_NUM_THREADS`, else one per core), entered under a lock. On
/// the CPU a guided run computes its two guidance branches on two threads at once
/// (`crates/model/src/pipeline/sampling.rs`), which then queue for that pool while its helper
/// spins on a core they need: a default generate on 2 cores took 2.29-2.35 s with it and
/// 1.64-1.69 s without (same bytes; BENCHMARKS.md). Unless the operator sets
/// `CANDLE_NUM_THREADS`, the pool gets no helpers and each operation runs on its caller's thread.
/// Called before any other thread exists (the variable is read when candle first needs the pool).
fn keep_candle_element_wise_ops_on_their_thread() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
}

/// candle's CPU matrix product asks how many threads to use on every call; unless
/// `RAYON_NUM_THREADS` is set, the answer is counted afresh from `/proc/cpuinfo` (physical cores),
/// which `strace` showed opened 10 304 times in one default generate and `perf` put at ~13% of its
/// time. Setting the variable once, to that same count, makes each call an environment lookup;
/// rayon's pool reads the same variable, so both agree on one number. Called before any other
/// thread exists, like the function above.
fn fix_the_thread_count_once() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let threads = candle_core::utils::get_num_threads();
        std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    }
}
