//! Runs the interop suite in `tests/interop` (the real PouchDB 9 client, npm) against the
//! `outpost` binary built for this test run, so `cargo test` covers what a PouchDB app sees.
//!
//! The suite needs Node.js 20 or later and npm on `PATH`; it installs its own npm dependencies
//! (from the committed lockfile) the first time, and again whenever the lockfile changes. Node's
//! output is streamed as it runs; the test fails when any interop test fails.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime};

/// Far above the suite's normal running time (about a minute and a half), so only a hang trips it.
const SUITE_DEADLINE: Duration = Duration::from_secs(15 * 60);

fn interop_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/interop")
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Whether `node_modules` was installed after the last change to the manifest and the lockfile.
/// npm writes `node_modules/.package-lock.json` at the end of every successful install.
fn dependencies_current(dir: &Path) -> bool {
    let Some(installed) = modified(&dir.join("node_modules/.package-lock.json")) else {
        return false;
    };
    ["package.json", "package-lock.json"]
        .iter()
        .filter_map(|f| modified(&dir.join(f)))
        .all(|changed| changed <= installed)
}

/// Runs `cmd` in `dir` with the child's output going straight to ours, and waits at most
/// `deadline` for it.
fn run(mut cmd: Command, what: &str, deadline: Duration) -> ExitStatus {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {what} (is it installed and on PATH?): {e}"));
    let started = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return status,
            Ok(None) if started.elapsed() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{what} did not finish within {deadline:?}");
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(200)),
            Err(e) => panic!("waiting for {what}: {e}"),
        }
    }
}

fn install_dependencies(dir: &Path) {
    if dependencies_current(dir) {
        return;
    }
    // `npm ci` installs exactly the lockfile; without one (a fresh checkout of a branch that
    // dropped it) fall back to `npm install`. `--prefer-offline` lets a warm npm cache work
    // without network access.
    let subcommand = if dir.join("package-lock.json").exists() {
        "ci"
    } else {
        "install"
    };
    let mut npm = Command::new("npm");
    npm.current_dir(dir)
        .args([subcommand, "--no-audit", "--no-fund", "--prefer-offline"]);
    let status = run(
        npm,
        &format!("npm {subcommand}"),
        Duration::from_secs(10 * 60),
    );
    assert!(
        status.success(),
        "npm {subcommand} in {} failed: {status}",
        dir.display()
    );
}

/// The test files, listed explicitly: `node --test <dir>` is read as a glob by newer Node versions.
fn test_files(dir: &Path) -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(dir.join("tests"))
        .expect("tests/interop/tests exists")
        .map(|entry| {
            entry
                .expect("readable directory entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|name| name.ends_with(".test.js"))
        .map(|name| format!("tests/{name}"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no interop test files found");
    files
}

#[test]
fn pouchdb_interop_suite() {
    let dir = interop_dir();
    install_dependencies(&dir);

    let mut node = Command::new("node");
    node.current_dir(&dir)
        .args(["--test", "--test-concurrency=1", "--test-reporter=spec"])
        .args(test_files(&dir))
        .env("INTEROP_SERVER", "outpost")
        .env("OUTPOST_BIN", env!("CARGO_BIN_EXE_outpost"));
    let status = run(node, "node --test", SUITE_DEADLINE);
    assert!(
        status.success(),
        "the PouchDB interop suite failed ({status}); see the node output above"
    );
}
