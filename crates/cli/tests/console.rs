//! Runs the browser suite in `tests/console` (Debian's Chromium driven by `playwright-core`)
//! against the `outpost` binary built for this test run: the admin console at `/_outpost/ui/`,
//! and CouchDB's Fauxton proxied to Outpost. Screenshots go to `target/browser-artifacts/`.
//!
//! It needs Node.js 20 or later, npm, and Chromium at `/usr/bin/chromium` (or `CHROMIUM_BIN`).

#[path = "support/npm.rs"]
mod npm;

use std::time::Duration;

/// Far above the suite's normal running time, so only a hang trips it.
const SUITE_DEADLINE: Duration = Duration::from_secs(15 * 60);

#[test]
fn browser_suite() {
    let dir = npm::package_dir("tests/console");
    npm::install_dependencies(&dir);
    let node = npm::node_test(&dir, |_| {});
    let status = npm::run(node, "node --test (console suite)", SUITE_DEADLINE);
    assert!(
        status.success(),
        "the console suite failed ({status}); see the node output above and the screenshots in \
         target/browser-artifacts/"
    );
}
