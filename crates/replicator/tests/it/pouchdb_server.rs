//! A real pouchdb-server on a free port, started once per test binary and shared by its tests
//! (each uses its own databases), because it takes seconds to start. Used by the replicator's
//! tests and, through `#[path]`, by the command line's.
//!
//! pouchdb-server comes from `tests/interop` (`npm ci` there installs it); set
//! `OUTPOST_POUCHDB_SERVER` to use another copy.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::json;

/// A running pouchdb-server.
pub struct PouchServer {
    pub url: String,
    /// The wrapper shell kills the server and removes its directory when this pipe closes,
    /// which happens when the test process exits however it exits.
    _lifeline: Mutex<ChildStdin>,
    _child: Mutex<Child>,
}

fn server_script() -> PathBuf {
    if let Ok(path) = std::env::var("OUTPOST_POUCHDB_SERVER") {
        return PathBuf::from(path);
    }
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/interop/node_modules/pouchdb-server/bin/pouchdb-server");
    assert!(
        path.exists(),
        "pouchdb-server not found at {}: run `npm ci` in tests/interop (or set OUTPOST_POUCHDB_SERVER)",
        path.display()
    );
    path
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The shared server, started on first use.
pub fn pouchdb_server() -> &'static PouchServer {
    static SERVER: OnceLock<PouchServer> = OnceLock::new();
    SERVER.get_or_init(start)
}

fn start() -> PouchServer {
    let script = server_script();
    let dir = tempfile::Builder::new()
        .prefix("outpost-repl-pouch-")
        .tempdir()
        .unwrap()
        .keep();
    // The server uuid lives in config.json; a log file there keeps stdout quiet.
    std::fs::write(
        dir.join("config.json"),
        json!({"log": {"file": dir.join("log.txt")}}).to_string(),
    )
    .unwrap();
    let port = free_port();
    let wrapper = r#"node "$0" --port "$1" --host 127.0.0.1 --dir "$2/data" --config "$2/config.json" -n --no-color >"$2/out" 2>&1 &
pid=$!
read _ignored
exec 2>/dev/null
kill "$pid"
wait "$pid"
rm -rf "$2""#;
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(wrapper)
        .arg(&script)
        .arg(port.to_string())
        .arg(&dir)
        .stdin(Stdio::piped())
        .spawn()
        .expect("spawn pouchdb-server");
    let lifeline = child.stdin.take().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.write_all(b"GET / HTTP/1.0\r\n\r\n");
            let mut answer = String::new();
            let _ = s.read_to_string(&mut answer);
            if answer.contains("Welcome") {
                break;
            }
        }
        let out = std::fs::read_to_string(dir.join("out")).unwrap_or_default();
        assert!(
            Instant::now() < deadline,
            "pouchdb-server did not start:\n{out}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    PouchServer {
        url: format!("http://127.0.0.1:{port}"),
        _lifeline: Mutex::new(lifeline),
        _child: Mutex::new(child),
    }
}
