// `scripts/` and `stdlib/` are embedded with include_dir, which does not notice added files.
fn main() {
    println!("cargo:rerun-if-changed=scripts");
    println!("cargo:rerun-if-changed=stdlib");
}
