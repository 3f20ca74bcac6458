//! The CPU threads: their count fixed once at start-up, candle's spinning bounded, the pool the
//! host runs on, and independent batches run side by side on it.
//!
//! candle asks for its thread count on every matmul, and unless `RAYON_NUM_THREADS` is set that
//! means reading and parsing `/proc/cpuinfo` again: ~5% of a run on the default world, whose
//! matmuls are tiny. Setting the variable to the count candle would choose anyway makes every
//! later call a lookup.

/// How long candle's element-wise workers spin before sleeping, when the user has not set
/// `CANDLE_BARRIER_POOL_SPIN_LIMIT` (candle's default: 25,000). Those workers share the cores with
/// rayon's (gemm, the kernels): spinning between the many small ops of a tiny model took a core
/// from them (24% of a default-world run's samples; that run 11.2 s at 25,000, 9.9 s at 100).
const SPIN_LIMIT: &str = "100";

/// Sets `RAYON_NUM_THREADS` to candle's own choice, and candle's spin limit to [`SPIN_LIMIT`],
/// where the user has not set them. Call first thing in `main`, before any other thread starts
/// (environment writes race with readers).
pub fn fix_count() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let n = candle_core::utils::get_num_threads();
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", SPIN_LIMIT);
    }
}

/// Runs `f` on a worker of a new rayon pool (`RAYON_NUM_THREADS` threads, `stack_bytes` of stack
/// each) and returns its result; a panic in `f` resumes in the caller.
///
/// The kernels', gemm's and the optimizer's parallel loops then start from a worker thread and
/// split their work in place. Started from any other thread, each loop hands its work to the
/// pool and sleeps until it is done: two context switches per op, which on the default world's
/// tiny tensors cost more than the arithmetic.
pub fn on_pool<R: Send>(
    stack_bytes: usize,
    f: impl FnOnce() -> R + Send,
) -> Result<R, rayon::ThreadPoolBuildError> {
    let pool = rayon::ThreadPoolBuilder::new()
        .stack_size(stack_bytes)
        .thread_name(|i| format!("metaapo-{i}"))
        .build()?;
    Ok(pool.install(f))
}

/// `f(i, item)` for each of `items`, the results in order: on the pool's threads when
/// `side_by_side` (a small model's independent batches, `CausalLm::batches_side_by_side`), else
/// one after another. An error is the first one met.
pub fn map_batches<T: Sync, R: Send, E: Send>(
    items: &[T],
    side_by_side: bool,
    f: impl Fn(usize, &T) -> Result<R, E> + Sync,
) -> Result<Vec<R>, E> {
    use rayon::prelude::*;
    if side_by_side {
        items.par_iter().enumerate().map(|(i, t)| f(i, t)).collect()
    } else {
        items.iter().enumerate().map(|(i, t)| f(i, t)).collect()
    }
}
