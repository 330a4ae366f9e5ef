//! A smoke run of the fuzz targets in `fuzz/` (document parsing, `_revisions`, query parameters
//! and Mango selectors): each runs for a bounded number of inputs from a fixed seed, so
//! `cargo test` notices a target that no longer builds or that fails on the first inputs it
//! tries. The long search is run by hand (docs/testing.md).
//!
//! It needs `cargo fuzz` (`cargo install cargo-fuzz --locked`). CI installs it (`.ci/run`) and
//! treats its absence as a failure; on a machine without it the test says that it skipped.

use std::path::Path;
use std::process::{Command, Stdio};

const TARGETS: &[&str] = &["parse_doc", "revisions", "query", "selector"];

fn cargo_fuzz_installed() -> bool {
    Command::new("cargo")
        .args(["fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn fuzz_targets_survive_a_smoke_run() {
    if !cargo_fuzz_installed() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "cargo-fuzz is not installed, and CI must run the fuzz smoke test: \
             cargo install cargo-fuzz --locked"
        );
        eprintln!(
            "SKIPPED fuzz smoke run: cargo-fuzz is not installed \
             (cargo install cargo-fuzz --locked to run it)"
        );
        return;
    }
    let fuzz_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    for target in TARGETS {
        let dict = match *target {
            "query" => "dict/query.dict",
            _ => "dict/json.dict",
        };
        let status = Command::new("cargo")
            .current_dir(&fuzz_dir)
            // The fuzz workspace builds with its own flags into its own directory: sharing the
            // directory of the `cargo test` that runs this would wait on its lock.
            .env("CARGO_TARGET_DIR", fuzz_dir.join("target"))
            // cargo-fuzz passes `-Z` flags; this lets a stable toolchain accept them.
            .env("RUSTC_BOOTSTRAP", "1")
            .args(["fuzz", "run", "--sanitizer", "none", target, "--"])
            .args(["-runs=500000", "-max_total_time=15", "-seed=1"])
            .arg(format!("-dict={dict}"))
            .stdin(Stdio::null())
            .status()
            .expect("cargo fuzz runs");
        assert!(
            status.success(),
            "fuzz target {target} failed to build or found a failing input (kept in fuzz/artifacts/{target}/; \
             replay it with `cargo fuzz run {target} <file>`)"
        );
    }
}
