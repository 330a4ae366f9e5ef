//! Configuration from a TOML file, the environment and flags: precedence, error messages that
//! name the bad key, masked secrets in `outpost config show`, and a documented key for every
//! setting.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_outpost");

/// Runs `outpost` with `args` and exactly the `OUTPOST_*` variables in `env`.
fn outpost(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args);
    for (name, _) in std::env::vars() {
        if name.starts_with("OUTPOST_") || name == "RUST_LOG" {
            cmd.env_remove(name);
        }
    }
    cmd.envs(env.iter().copied()).output().unwrap()
}

fn write(dir: &Path, text: &str) -> String {
    let path = dir.join("outpost.toml");
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The line of `config show` for `key` in table `section`.
fn shown(show: &str, section: &str, key: &str) -> String {
    let table = show
        .split(&format!("[{section}]\n"))
        .nth(1)
        .unwrap_or_else(|| panic!("no [{section}] in:\n{show}"));
    table
        .lines()
        .find(|l| l.starts_with(&format!("{key} = ")))
        .unwrap_or_else(|| panic!("no {section}.{key} in:\n{show}"))
        .to_owned()
}

#[test]
fn the_file_yields_to_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        r#"
log_format = "json"
[serve]
listen = "127.0.0.1:7001"
max-body-bytes = 1000
cors_origin = ["https://a.example", "https://b.example"]
attachments_compressible_types = "text/*, image/svg+xml"
attachments_compression_level = 1
[gateway]
upstream = "http://127.0.0.1:8080"
probe_path = "/from-file"
probe_interval = "5s"
stale_reads = true
"#,
    );
    let env = [
        ("OUTPOST_LISTEN", "127.0.0.1:7002"),
        ("OUTPOST_GATEWAY_PROBE_INTERVAL", "9s"),
        ("OUTPOST_ATTACHMENTS_COMPRESSION_LEVEL", "3"),
    ];
    let out = outpost(&["config", "show", "--config", &file], &env);
    assert!(out.status.success(), "{}", stderr(&out));
    let show = stdout(&out);
    let cases = [
        ("serve", "listen", r#"listen = "127.0.0.1:7002"  # env"#),
        ("serve", "max_body_bytes", "max_body_bytes = 1000  # file"),
        (
            "serve",
            "cors_origin",
            r#"cors_origin = ["https://a.example", "https://b.example"]  # file"#,
        ),
        ("serve", "data", r#"data = "./outpost-data"  # default"#),
        (
            "serve",
            "attachments_compressible_types",
            r#"attachments_compressible_types = "text/*, image/svg+xml"  # file"#,
        ),
        (
            "serve",
            "attachments_compression_level",
            "attachments_compression_level = 3  # env",
        ),
        (
            "gateway",
            "probe_path",
            r#"probe_path = "/from-file"  # file"#,
        ),
        (
            "gateway",
            "probe_interval",
            r#"probe_interval = "9s"  # env"#,
        ),
        ("gateway", "stale_reads", "stale_reads = true  # file"),
    ];
    for (section, key, expected) in cases {
        assert_eq!(shown(&show, section, key), expected, "{show}");
    }
    assert!(show.starts_with("log_format = \"json\""), "{show}");
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts `outpost serve` and returns the port it answers on, among `ports`.
fn serving_port(args: &[&str], env: &[(&str, &str)], ports: &[u16]) -> u16 {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_remove("OUTPOST_LISTEN")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let found = loop {
        if let Some(port) = ports
            .iter()
            .copied()
            .find(|p| std::net::TcpStream::connect(("127.0.0.1", *p)).is_ok())
        {
            break port;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("outpost serve exited with {status}");
        }
        assert!(Instant::now() < deadline, "outpost serve never listened");
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = child.kill();
    let _ = child.wait();
    found
}

#[test]
fn flags_beat_the_environment_which_beats_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (file_port, env_port, flag_port) = (free_port(), free_port(), free_port());
    let data = dir.path().join("data");
    let file = write(
        dir.path(),
        &format!(
            "[serve]\nlisten = \"127.0.0.1:{file_port}\"\ndata = {:?}\n",
            data.to_str().unwrap()
        ),
    );
    let ports = [file_port, env_port, flag_port];
    let env_listen = format!("127.0.0.1:{env_port}");
    let flag_listen = format!("127.0.0.1:{flag_port}");
    let base = ["serve", "--config", file.as_str()];
    assert_eq!(serving_port(&base, &[], &ports), file_port);
    let env = [("OUTPOST_LISTEN", env_listen.as_str())];
    assert_eq!(serving_port(&base, &env, &ports), env_port);
    let with_flag = [&base[..], &["--listen", &flag_listen]].concat();
    assert_eq!(serving_port(&with_flag, &env, &ports), flag_port);
}

#[test]
fn errors_name_the_bad_key() {
    // (file, environment, what the error says)
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        (
            "[serve]\nlisten = \"localhost\"\n",
            &[],
            "`serve.listen`: invalid value 'localhost' for '--listen <LISTEN>'",
        ),
        (
            "[serve]\nlisen = \"127.0.0.1:1\"\n",
            &[],
            "unknown key `serve.lisen`",
        ),
        ("[servr]\n", &[], "unknown key `servr`"),
        (
            "[serve]\nmax_body_bytes = \"lots\"\n",
            &[],
            "`serve.max_body_bytes`: invalid value 'lots'",
        ),
        (
            "[serve]\nattachments_compression_level = 10\n",
            &[],
            "`serve.attachments_compression_level`: invalid value '10'",
        ),
        (
            "[serve]\ninsecure_open = \"yes\"\n",
            &[],
            "`serve.insecure_open`: expected true or false",
        ),
        (
            "[serve]\nlisten = [\"127.0.0.1:1\"]\n",
            &[],
            "`serve.listen`: expected a single value, not a list",
        ),
        (
            "[gateway]\nlisten = \"127.0.0.1:1\"\n",
            &[],
            "missing `gateway.upstream` (or OUTPOST_GATEWAY_UPSTREAM, or --upstream)",
        ),
        (
            "[gateway]\nupstream = \"http://127.0.0.1:1\"\n",
            &[("OUTPOST_GATEWAY_PROBE_INTERVAL", "forever")],
            "OUTPOST_GATEWAY_PROBE_INTERVAL: invalid value 'forever'",
        ),
        ("[serve\n", &[], "outpost.toml: "),
    ];
    for (text, env, expected) in cases {
        let dir = tempfile::tempdir().unwrap();
        let file = write(dir.path(), text);
        let out = outpost(&["config", "check", "--config", &file], env);
        assert_eq!(out.status.code(), Some(1), "{text}");
        let err = stderr(&out);
        assert!(err.starts_with("outpost: "), "{err}");
        assert!(err.contains(expected), "{text}: `{err}` lacks `{expected}`");
        // The running command reports the same error before doing anything.
        let command = if text.contains("gateway") {
            "gateway"
        } else {
            "serve"
        };
        if !text.starts_with("[servr") && !text.starts_with("[serve\n") {
            let out = outpost(&[command, "--config", &file], env);
            assert_eq!(out.status.code(), Some(1), "{command} {text}");
            assert!(stderr(&out).contains(expected), "{}", stderr(&out));
        }
    }
}

#[test]
fn a_good_file_checks_ok() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "[serve]\nlisten = \"127.0.0.1:5984\"\n[gateway]\nupstream = \"http://127.0.0.1:8080\"\n",
    );
    let out = outpost(&["config", "check", "--config", &file], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).ends_with(": ok\n"), "{}", stdout(&out));
}

#[test]
fn show_masks_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "[gateway]\nupstream = \"http://127.0.0.1:8080\"\nadmin_token = \"file-token-1234\"\n",
    );
    let key = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
    let out = outpost(
        &["config", "show", "--config", &file],
        &[("OUTPOST_GATEWAY_KEY", key)],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let show = stdout(&out);
    assert!(
        !show.contains("file-token-1234") && !show.contains(key),
        "{show}"
    );
    assert_eq!(
        shown(&show, "gateway", "admin_token"),
        r#"admin_token = "********"  # file"#
    );
    assert_eq!(shown(&show, "gateway", "key"), r#"key = "********"  # env"#);
}

#[test]
fn every_key_is_documented() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "[serve]\n[gateway]\nupstream = \"http://127.0.0.1:8080\"\n",
    );
    let out = outpost(&["config", "show", "--config", &file], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let docs = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/configuration.md"),
    )
    .unwrap();
    let show = stdout(&out);
    let mut keys = 0;
    for section in ["serve", "gateway"] {
        let table = docs
            .split(&format!("### `[{section}]`"))
            .nth(1)
            .unwrap_or_else(|| panic!("docs/configuration.md has no [{section}] table"))
            .split("\n### ")
            .next()
            .unwrap();
        let body = show.split(&format!("[{section}]\n")).nth(1).unwrap();
        for line in body.lines().take_while(|l| !l.is_empty()) {
            let key = line.split(" = ").next().unwrap();
            keys += 1;
            assert!(
                table.contains(&format!("| `{key}` |")),
                "{section}.{key} is not documented in docs/configuration.md"
            );
        }
    }
    assert!(keys > 30, "{show}");
}

#[test]
fn admin_passwords_are_masked_and_an_admin_allows_any_address() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "[serve]\nadmins = [\"alice=file-pass-1234\"]\njwt_hs256_secret = \"jwt-secret-5678\"\n",
    );
    let out = outpost(
        &["config", "show", "--config", &file],
        &[
            ("OUTPOST_ADMIN_USER", "root"),
            ("OUTPOST_ADMIN_PASSWORD", "env-pass-9012"),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let show = stdout(&out);
    for secret in ["file-pass-1234", "jwt-secret-5678", "env-pass-9012"] {
        assert!(!show.contains(secret), "{show}");
    }
    assert_eq!(
        shown(&show, "serve", "admins"),
        r#"admins = "********"  # file"#
    );
    // Without an admin a non-loopback address is refused; with one it is served.
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let out = outpost(&["serve", "--data", data, "--listen", "0.0.0.0:0"], &[]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no server admin is configured"),
        "{}",
        stderr(&out)
    );
    let port = free_port();
    let listen = format!("0.0.0.0:{port}");
    let served = serving_port(
        &["serve", "--data", data, "--listen", &listen],
        &[
            ("OUTPOST_ADMIN_USER", "root"),
            ("OUTPOST_ADMIN_PASSWORD", "pw"),
            ("OUTPOST_PASSWORD_ITERATIONS", "1000"),
        ],
        &[port],
    );
    assert_eq!(served, port);
    // The cookie secret was made once, for the owner only.
    let secret = std::path::Path::new(data).join("cookie-secret");
    assert_eq!(std::fs::read_to_string(&secret).unwrap().trim().len(), 64);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&secret).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

#[test]
fn a_jwt_key_that_is_not_a_public_key_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key.pem");
    std::fs::write(
        &key,
        "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
    )
    .unwrap();
    let data = dir.path().join("data");
    let out = outpost(
        &[
            "serve",
            "--data",
            data.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--jwt-keys",
            &format!("k1={}", key.display()),
        ],
        &[],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("is not a PEM RSA or EC public key"),
        "{}",
        stderr(&out)
    );
}

/// Issue 15, defect 12: `--key` on the command line is readable by every local user in
/// /proc/PID/cmdline. It is refused there; the environment and the file still work.
#[test]
fn a_key_on_the_command_line_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let key = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    let out = outpost(
        &[
            "queue",
            "--data",
            data.to_str().unwrap(),
            "--key",
            key,
            "ls",
        ],
        &[],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("readable by every local user"),
        "{}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains(key));
    let out = outpost(
        &["queue", "--data", data.to_str().unwrap(), "ls"],
        &[("OUTPOST_GATEWAY_KEY", key)],
    );
    // Past the check (there is no queue in this directory yet).
    assert!(
        stderr(&out).contains("no gateway queue"),
        "{}",
        stderr(&out)
    );
}
