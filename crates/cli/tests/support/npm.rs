//! Running a Node.js test package of this repository from `cargo test`: installing its npm
//! dependencies from the committed lockfile when they are missing or stale, and running
//! `node --test` over its test files with the output streamed as it runs. Shared by the
//! interop suite (`interop.rs`) and the browser suites (`browser.rs`, `console.rs`); each package's tests start
//! the `outpost` binary they are given in `OUTPOST_BIN` themselves (`tests/interop/lib/server.js`).

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime};

/// A package directory under the repository's `tests/` (or elsewhere, relative to the root).
pub fn package_dir(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(relative)
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

/// Runs `cmd` with the child's output going straight to ours, and waits at most `deadline`
/// for it.
pub fn run(mut cmd: Command, what: &str, deadline: Duration) -> ExitStatus {
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

/// Installs the package's npm dependencies unless they are current.
pub fn install_dependencies(dir: &Path) {
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

/// The package's `tests/*.test.js` files, listed explicitly: `node --test <dir>` is read as a
/// glob by newer Node versions.
pub fn test_files(dir: &Path) -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(dir.join("tests"))
        .unwrap_or_else(|e| panic!("{}/tests: {e}", dir.display()))
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
    assert!(
        !files.is_empty(),
        "no test files in {}/tests",
        dir.display()
    );
    files
}

/// `node --test` over the package's test files, one file at a time, against the `outpost`
/// binary of this build; `configure` adds the suite's own environment.
pub fn node_test(dir: &Path, configure: impl FnOnce(&mut Command)) -> Command {
    let mut node = Command::new("node");
    node.current_dir(dir)
        .args(["--test", "--test-concurrency=1", "--test-reporter=spec"])
        .args(test_files(dir))
        .env("OUTPOST_BIN", env!("CARGO_BIN_EXE_outpost"));
    configure(&mut node);
    node
}
