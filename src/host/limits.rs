//! The script engine's limits: deep recursion, deep expressions and huge values end the script
//! with an error naming the limit, instead of overflowing the stack or aborting on allocation.
//! Each default is stated once, here; `metaapo script --help` shows them, and each can be
//! raised from the command line. The size checks have a cost: the engine re-measures a value
//! after each change to it, so growing one array or map of n entries element by element costs
//! O(n^2) (100,000 pushes: 2.8 s instead of 0.06 s); 0 turns a size check off.

use rhai::Engine;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::Args)]
pub struct Limits {
    /// Deepest nesting of script function calls.
    #[arg(long, default_value_t = Limits::DEFAULT.max_call_depth)]
    pub max_call_depth: usize,
    /// Deepest nesting of an expression (parentheses, operators, blocks).
    #[arg(long, default_value_t = Limits::DEFAULT.max_expr_depth)]
    pub max_expr_depth: usize,
    /// Most elements of one array.
    #[arg(long, default_value_t = Limits::DEFAULT.max_array)]
    pub max_array: usize,
    /// Longest string, in bytes.
    #[arg(long, default_value_t = Limits::DEFAULT.max_string)]
    pub max_string: usize,
    /// Most entries of one map.
    #[arg(long, default_value_t = Limits::DEFAULT.max_map)]
    pub max_map: usize,
    /// Deepest nesting of `run_script` sub-runs.
    #[arg(long, default_value_t = Limits::DEFAULT.max_sub_runs)]
    pub max_sub_runs: usize,
}

impl Limits {
    /// Generous for any real script (a 10-million-number array is 160 MB), small enough that
    /// no value outgrows memory and no recursion outgrows the stack the host runs on.
    pub const DEFAULT: Limits = Limits {
        max_call_depth: 256,
        max_expr_depth: 128,
        max_array: 10_000_000,
        max_string: 256 << 20,
        max_map: 1_000_000,
        max_sub_runs: 4,
    };

    pub fn apply(&self, engine: &mut Engine) {
        engine
            .set_max_call_levels(self.max_call_depth)
            // Function bodies get the same depth as top-level code.
            .set_max_expr_depths(self.max_expr_depth, self.max_expr_depth)
            .set_max_array_size(self.max_array)
            .set_max_string_size(self.max_string)
            .set_max_map_size(self.max_map);
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self::DEFAULT
    }
}
