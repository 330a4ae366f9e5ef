//! Runs the browser suite in `tests/console` (Playwright driving Debian's Chromium) against the
//! `outpost` binary built for this test run: the admin console at `/_outpost/ui/`, and CouchDB's
//! Fauxton proxied to Outpost. Screenshots go to `target/browser-artifacts/`.
//!
//! It needs Node.js 20 or later, npm, and Chromium at `/usr/bin/chromium` (or `CHROMIUM_PATH`);
//! npm dependencies are installed from the committed lockfile as for `tests/interop`
//! (`interop.rs`, whose installation steps this follows).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

/// Far above the suite's normal running time, so only a hang trips it.
const SUITE_DEADLINE: Duration = Duration::from_secs(15 * 60);

fn suite_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/console")
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Runs `cmd` with its output going straight to ours; panics unless it succeeds in time.
fn run(mut cmd: Command, what: &str, deadline: Duration) {
    let mut child = cmd
        .stdin(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {what} (is it installed and on PATH?): {e}"));
    let started = Instant::now();
    let status = loop {
        match child.try_wait().expect("waiting for a child") {
            Some(status) => break status,
            None if started.elapsed() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{what} did not finish within {deadline:?}");
            }
            None => std::thread::sleep(Duration::from_millis(200)),
        }
    };
    assert!(
        status.success(),
        "{what} failed ({status}); see its output above"
    );
}

#[test]
fn browser_suite() {
    let dir = suite_dir();
    // npm writes `node_modules/.package-lock.json` at the end of every successful install.
    let installed = modified(&dir.join("node_modules/.package-lock.json"));
    let current = installed.is_some_and(|at| {
        ["package.json", "package-lock.json"]
            .iter()
            .filter_map(|f| modified(&dir.join(f)))
            .all(|changed| changed <= at)
    });
    if !current {
        let mut npm = Command::new("npm");
        npm.current_dir(&dir)
            .args(["ci", "--no-audit", "--no-fund", "--prefer-offline"]);
        run(npm, "npm ci", Duration::from_secs(10 * 60));
    }
    let mut files: Vec<String> = std::fs::read_dir(dir.join("tests"))
        .expect("tests/console/tests exists")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| name.ends_with(".test.js"))
        .map(|name| format!("tests/{name}"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no browser test files found");
    let mut node = Command::new("node");
    node.current_dir(&dir)
        .args(["--test", "--test-concurrency=1", "--test-reporter=spec"])
        .args(&files)
        .env("OUTPOST_BIN", env!("CARGO_BIN_EXE_outpost"));
    run(node, "node --test (browser suite)", SUITE_DEADLINE);
}
