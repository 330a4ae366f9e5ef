//! Runs the browser suite in `tests/browser` (Debian's Chromium driven by `playwright-core`)
//! against the `outpost` binary built for this test run: the multiplexed feed followed by a
//! page, and the example app in `examples/field-notes` used as a person would.
//!
//! Needs Node.js 20 or later, npm, and Chromium at `/usr/bin/chromium` (or `CHROMIUM_BIN`);
//! without Chromium the tests skip with a message, except under `CI=true`, where they fail.
//! Screenshots go to `target/tmp/browser-artifacts/`.

#[path = "support/npm.rs"]
mod npm;

use std::path::Path;
use std::time::Duration;

/// Far above the suite's normal running time, so only a hang trips it.
const SUITE_DEADLINE: Duration = Duration::from_secs(15 * 60);

#[test]
fn browser_suite() {
    let dir = npm::package_dir("tests/browser");
    npm::install_dependencies(&dir);
    // The example app's own dependencies (PouchDB's browser build, which it serves).
    npm::install_dependencies(&npm::package_dir("examples/field-notes"));
    let artifacts = Path::new(env!("CARGO_TARGET_TMPDIR")).join("browser-artifacts");
    let node = npm::node_test(&dir, |node| {
        node.env("BROWSER_ARTIFACTS", &artifacts);
    });
    let status = npm::run(node, "node --test", SUITE_DEADLINE);
    assert!(
        status.success(),
        "the browser suite failed ({status}); see the node output above and the screenshots in {}",
        artifacts.display()
    );
}
