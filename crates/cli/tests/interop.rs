//! Runs the interop suite in `tests/interop` (the real PouchDB 9 client, npm) against the
//! `outpost` binary built for this test run, so `cargo test` covers what a PouchDB app sees.
//!
//! The suite needs Node.js 20 or later and npm on `PATH`; it installs its own npm dependencies
//! (from the committed lockfile) the first time, and again whenever the lockfile changes. Node's
//! output is streamed as it runs; the test fails when any interop test fails.

#[path = "support/npm.rs"]
mod npm;

use std::time::Duration;

/// Far above the suite's normal running time (about a minute and a half), so only a hang trips it.
const SUITE_DEADLINE: Duration = Duration::from_secs(15 * 60);

#[test]
fn pouchdb_interop_suite() {
    let dir = npm::package_dir("tests/interop");
    npm::install_dependencies(&dir);
    let node = npm::node_test(&dir, |node| {
        node.env("INTEROP_SERVER", "outpost");
    });
    let status = npm::run(node, "node --test", SUITE_DEADLINE);
    assert!(
        status.success(),
        "the PouchDB interop suite failed ({status}); see the node output above"
    );
}
