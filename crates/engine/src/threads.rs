//! The CPU thread count, fixed once at start-up.
//!
//! candle asks for its thread count on every matmul, and unless `RAYON_NUM_THREADS` is set that
//! means reading and parsing `/proc/cpuinfo` again: ~5% of a run on the default world, whose
//! matmuls are tiny. Setting the variable to the count candle would choose anyway makes every
//! later call a lookup.

/// Sets `RAYON_NUM_THREADS` to candle's own choice when the user has not set it. Call first
/// thing in `main`, before any other thread starts (environment writes race with readers).
pub fn fix_count() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let n = candle_core::utils::get_num_threads();
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
}
