//! Configuration from a TOML file (`--config`), `OUTPOST_*` environment variables and flags, in
//! that order of precedence, and `outpost config check|show`.
//!
//! The flags stay the single definition of every setting: a file key is a flag's name (`listen`,
//! `max_body_bytes`; `-` and `_` alike) in the table of its command (`[serve]`, `[gateway]`), and
//! its value is handed to clap as if given on the command line, so it goes through the same
//! parser and validation. A key is only applied when neither a flag nor an environment variable
//! set it. Every key also has an environment variable: the one named in `--help`, or else
//! `OUTPOST_<COMMAND>_<KEY>` (`OUTPOST_GATEWAY_PROBE_INTERVAL`).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};
use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command, CommandFactory, FromArgMatches};

use crate::Cli;

/// The commands a configuration file can hold settings for, each in its own table.
const SECTIONS: &[&str] = &["serve", "gateway"];

/// Keys whose values `config show` masks.
const SECRETS: &[&str] = &[
    "admin_token",
    "key",
    "admin_password",
    "admins",
    "jwt_hs256_secret",
    "cookie_secret",
    // A PostgreSQL URL may hold a password.
    "store",
];

/// Arguments of `outpost config`.
#[derive(Debug, clap::Args)]
pub struct ConfigArgs {
    #[command(subcommand)]
    pub action: ConfigAction,
}

/// What `outpost config` does with the configuration named by `--config`.
#[derive(Debug, clap::Subcommand)]
pub enum ConfigAction {
    /// Validates the file, the environment and the flags for every command the file configures;
    /// exits 1 naming the first bad key.
    Check,
    /// Prints the effective settings of each configured command and where each comes from
    /// (default, env, file, flag); secrets are masked.
    Show,
}

/// Where a setting's value comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Default,
    Env,
    File,
    Flag,
}

impl Source {
    fn name(self) -> &'static str {
        match self {
            Source::Default => "default",
            Source::Env => "env",
            Source::File => "file",
            Source::Flag => "flag",
        }
    }
}

/// A parsed configuration file.
#[derive(Debug)]
struct File {
    path: PathBuf,
    table: toml::Table,
}

impl File {
    fn read(path: &Path) -> anyhow::Result<File> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the configuration file {}", path.display()))?;
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| anyhow!("{}: {}", path.display(), e.message()))?;
        for (key, value) in &table {
            match (key.as_str(), value) {
                ("log_format" | "log-format", toml::Value::String(_)) => {}
                (section, toml::Value::Table(_)) if SECTIONS.contains(&section) => {}
                _ => bail!(
                    "{}: unknown key `{key}` (expected `log_format` or the tables {})",
                    path.display(),
                    SECTIONS
                        .iter()
                        .map(|s| format!("[{s}]"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }
        }
        Ok(File {
            path: path.to_owned(),
            table,
        })
    }

    fn section(&self, name: &str) -> Option<&toml::Table> {
        self.table.get(name).and_then(toml::Value::as_table)
    }
}

/// Parses the command line with the configuration file and the environment applied. Errors on
/// the command line itself are clap's (usage and exit code 2); errors in the file or in an
/// environment variable name the key.
pub fn parse() -> anyhow::Result<Cli> {
    let argv: Vec<OsString> = std::env::args_os().collect();
    let command = Cli::command();
    // A first look, errors ignored, only to find the command and `--config`: a required flag
    // may well be in the file.
    let first = command.clone().ignore_errors(true).get_matches_from(&argv);
    // A key on the command line is readable by every local user in /proc/PID/cmdline; it is
    // taken from the environment or the file only (which reach clap through its own argv).
    if let Some((name, matches)) = first.subcommand()
        && matches!(name, "gateway" | "queue")
        && matches.value_source("key_base64") == Some(ValueSource::CommandLine)
    {
        bail!(
            "--key on the command line is readable by every local user; give the key in \
             OUTPOST_GATEWAY_KEY, the configuration file or a --key-file"
        );
    }
    let file = match first.get_one::<PathBuf>("config") {
        Some(path) => Some(File::read(path)?),
        None => None,
    };
    let (argv, sources) = match first.subcommand() {
        Some((name, matches)) if SECTIONS.contains(&name) => {
            let resolved = resolve(&command, file.as_ref(), name, argv.clone(), matches)?;
            (resolved.argv, Some((name.to_owned(), resolved.sources)))
        }
        _ => (with_log_format(file.as_ref(), &first, argv), None),
    };
    let matches = match command.clone().try_get_matches_from(argv) {
        Ok(matches) => matches,
        Err(e) => match &sources {
            Some((section, sources))
                if e.kind() == clap::error::ErrorKind::MissingRequiredArgument =>
            {
                bail!("{}", missing(&command, section, sources, file.as_ref())?)
            }
            // Usage errors, --help and --version: clap's own output and exit code.
            _ => e.exit(),
        },
    };
    let mut cli = Cli::from_arg_matches(&matches)?;
    if let crate::Command::Serve(serve) = &mut cli.command {
        serve.gateway = cohosted_gateway(&command, file.as_ref(), serve)?;
    }
    Ok(cli)
}

/// The gateway `outpost serve` runs alongside the sync server: configured when the file has a
/// `[gateway]` table or `--gateway-upstream`/`--gateway-listen` is given, and then resolved like
/// `outpost gateway` (its flags, its variables, its table), those two serve flags taking the
/// place of the gateway's `--upstream` and `--listen`.
fn cohosted_gateway(
    command: &Command,
    file: Option<&File>,
    serve: &crate::cmd::serve::ServeArgs,
) -> anyhow::Result<Option<crate::cmd::gateway::GatewayArgs>> {
    let in_file = file.is_some_and(|f| f.section("gateway").is_some());
    if !in_file && serve.gateway_upstream.is_none() && serve.gateway_listen.is_none() {
        return Ok(None);
    }
    let mut argv: Vec<OsString> = vec!["outpost".into(), "gateway".into()];
    if let Some(upstream) = &serve.gateway_upstream {
        argv.extend(["--upstream".into(), upstream.into()]);
    }
    if let Some(listen) = serve.gateway_listen {
        argv.extend(["--listen".into(), listen.to_string().into()]);
    }
    let first = command.clone().ignore_errors(true).get_matches_from(&argv);
    let given = first
        .subcommand_matches("gateway")
        .ok_or_else(|| anyhow!("no command gateway"))?;
    let resolved = resolve(command, file, "gateway", argv, given)?;
    let matches = match command.clone().try_get_matches_from(&resolved.argv) {
        Ok(m) => m,
        Err(e) if e.kind() == clap::error::ErrorKind::MissingRequiredArgument => {
            bail!("{}", missing(command, "gateway", &resolved.sources, file)?)
        }
        Err(e) => bail!("[gateway]: {}", first_line(&e.to_string())),
    };
    match Cli::from_arg_matches(&matches)?.command {
        crate::Command::Gateway(gateway) => Ok(Some(gateway)),
        _ => bail!("no command gateway"),
    }
}

/// The message for required settings given nowhere, naming each with its variable.
fn missing(
    command: &Command,
    section: &str,
    sources: &BTreeMap<String, Source>,
    file: Option<&File>,
) -> anyhow::Result<String> {
    let cmd = find_subcommand(command, section)?;
    let names: Vec<String> = settings(cmd)
        .filter(|a| a.is_required_set())
        .filter(|a| !sources.contains_key(a.get_id().as_str()))
        .map(|a| {
            let key = key_of(a);
            let env = a
                .get_env()
                .map(|e| e.to_string_lossy().into_owned())
                .unwrap_or_else(|| env_name(section, &key));
            format!(
                "`{section}.{key}` (or {env}, or --{})",
                a.get_long().unwrap_or("")
            )
        })
        .collect();
    let place = file.map_or_else(String::new, |f| format!("{}: ", f.path.display()));
    Ok(format!("{place}missing {}", names.join(", ")))
}

/// `outpost config check` and `outpost config show`.
pub fn run(args: ConfigArgs, path: Option<&Path>) -> anyhow::Result<()> {
    let Some(path) = path else {
        bail!("no configuration file: pass --config FILE (or set OUTPOST_CONFIG)");
    };
    let file = File::read(path)?;
    let command = Cli::command();
    let configured: Vec<&str> = SECTIONS
        .iter()
        .copied()
        .filter(|s| file.section(s).is_some())
        .collect();
    if configured.is_empty() {
        bail!(
            "{}: configures no command (add a [serve] or [gateway] table)",
            path.display()
        );
    }
    let mut shown = String::new();
    if let Some(format) = file
        .table
        .get("log_format")
        .or(file.table.get("log-format"))
    {
        shown.push_str(&format!("log_format = {format}\n"));
    }
    for section in configured {
        let argv: Vec<OsString> = vec!["outpost".into(), section.into()];
        let first = command.clone().ignore_errors(true).get_matches_from(&argv);
        let sub = first
            .subcommand_matches(section)
            .ok_or_else(|| anyhow!("no command {section}"))?;
        let resolved = resolve(&command, Some(&file), section, argv, sub)?;
        let matches = match command.clone().try_get_matches_from(&resolved.argv) {
            Ok(m) => m,
            Err(e) if e.kind() == clap::error::ErrorKind::MissingRequiredArgument => {
                bail!(
                    "{}",
                    missing(&command, section, &resolved.sources, Some(&file))?
                )
            }
            Err(e) => bail!("[{section}]: {}", first_line(&e.to_string())),
        };
        let sub = matches
            .subcommand_matches(section)
            .ok_or_else(|| anyhow!("no command {section}"))?;
        shown.push_str(&format!("\n[{section}]\n"));
        let cmd = find_subcommand(&command, section)?;
        for arg in settings(cmd) {
            let id = arg.get_id().as_str();
            let source =
                resolved
                    .sources
                    .get(id)
                    .copied()
                    .unwrap_or_else(|| match sub.value_source(id) {
                        Some(ValueSource::EnvVariable) => Source::Env,
                        Some(ValueSource::CommandLine) => Source::Flag,
                        _ => Source::Default,
                    });
            let Some(raw) = sub.get_raw(id) else {
                continue;
            };
            let values: Vec<String> = raw.map(|v| v.to_string_lossy().into_owned()).collect();
            let key = key_of(arg);
            let value = if SECRETS.contains(&key.as_str()) || arg.is_hide_env_values_set() {
                "\"********\"".to_owned()
            } else if is_flag(arg) {
                values.first().cloned().unwrap_or_else(|| "false".into())
            } else if values.len() == 1 && arg.get_value_delimiter().is_none() {
                match values[0].parse::<i64>() {
                    Ok(n) => n.to_string(),
                    Err(_) => toml::Value::String(values[0].clone()).to_string(),
                }
            } else {
                toml::Value::Array(values.into_iter().map(toml::Value::String).collect())
                    .to_string()
            };
            shown.push_str(&format!("{key} = {value}  # {}\n", source.name()));
        }
    }
    match args.action {
        ConfigAction::Check => println!("{}: ok", path.display()),
        ConfigAction::Show => print!("{shown}"),
    }
    Ok(())
}

/// A command line with the file's and the environment's settings added, and where each added
/// setting came from.
struct Resolved {
    argv: Vec<OsString>,
    sources: BTreeMap<String, Source>,
}

/// Adds to `argv` every setting of command `section` that the command line does not give: from
/// the environment first, then from the file. Each added value is checked on its own, so an
/// error names its key.
fn resolve(
    command: &Command,
    file: Option<&File>,
    section: &str,
    argv: Vec<OsString>,
    given: &ArgMatches,
) -> anyhow::Result<Resolved> {
    let cmd = find_subcommand(command, section)?;
    let table = file.and_then(|f| f.section(section));
    let mut added: Vec<(String, Vec<OsString>, Source, String)> = Vec::new();
    if let (Some(file), Some(table)) = (file, table) {
        for key in table.keys() {
            if !settings(cmd).any(|a| key_of(a) == key.replace('-', "_")) {
                bail!(
                    "{}: unknown key `{section}.{key}` (the keys are the flags of `outpost {section} --help`)",
                    file.path.display()
                );
            }
        }
    }
    for arg in settings(cmd) {
        let id = arg.get_id().as_str();
        let key = key_of(arg);
        let long = arg.get_long().unwrap_or(id);
        if matches!(
            given.value_source(id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        ) {
            continue;
        }
        // The clap-declared variable was read by clap already; the generic one is read here.
        if arg.get_env().is_none() {
            let name = env_name(section, &key);
            if let Some(value) = std::env::var_os(&name) {
                let args = if is_flag(arg) {
                    match value.to_str() {
                        Some("1" | "true") => vec![format!("--{long}").into()],
                        Some("0" | "false" | "") => vec![],
                        _ => bail!("{name}: expected true or false"),
                    }
                } else {
                    vec![format!("--{long}").into(), value]
                };
                added.push((id.to_owned(), args, Source::Env, name));
                continue;
            }
        }
        let Some(value) = table.and_then(|t| t.get(&key).or(t.get(&key.replace('_', "-")))) else {
            continue;
        };
        let path = file
            .map(|f| f.path.display().to_string())
            .unwrap_or_default();
        let place = format!("{path}: `{section}.{key}`");
        added.push((
            id.to_owned(),
            file_args(arg, long, value).map_err(|e| anyhow!("{place}: {e}"))?,
            Source::File,
            place,
        ));
    }
    // Each addition on its own first, so a bad value is reported under its own name.
    for (_, args, _, place) in &added {
        let mut trial = argv.clone();
        trial.extend(args.iter().cloned());
        if let Err(e) = command.clone().try_get_matches_from(&trial) {
            let message = e.to_string();
            if !message.contains("required") {
                bail!("{place}: {}", first_line(&message));
            }
        }
    }
    let mut argv = with_log_format(file, given, argv);
    let mut sources = BTreeMap::new();
    for (id, args, source, _) in added {
        argv.extend(args);
        sources.insert(id, source);
    }
    Ok(Resolved { argv, sources })
}

/// Adds the file's `log_format` unless the command line or `OUTPOST_LOG_FORMAT` set one.
fn with_log_format(
    file: Option<&File>,
    given: &ArgMatches,
    mut argv: Vec<OsString>,
) -> Vec<OsString> {
    let from_file = file.and_then(|f| {
        f.table
            .get("log_format")
            .or(f.table.get("log-format"))
            .and_then(toml::Value::as_str)
    });
    let set = matches!(
        given.value_source("log_format"),
        Some(ValueSource::CommandLine | ValueSource::EnvVariable)
    );
    if let (Some(format), false) = (from_file, set) {
        argv.push("--log-format".into());
        argv.push(format.into());
    }
    argv
}

/// The arguments a file value stands for.
fn file_args(arg: &Arg, long: &str, value: &toml::Value) -> Result<Vec<OsString>, String> {
    let flag = format!("--{long}");
    let scalar = |v: &toml::Value| match v {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(i) => Ok(i.to_string()),
        toml::Value::Float(f) => Ok(f.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        _ => Err("expected a string, a number or a boolean".to_owned()),
    };
    match value {
        toml::Value::Boolean(b) if is_flag(arg) => Ok(if *b { vec![flag.into()] } else { vec![] }),
        _ if is_flag(arg) => Err("expected true or false".into()),
        toml::Value::Array(items) => {
            if !matches!(arg.get_action(), ArgAction::Append) {
                return Err("expected a single value, not a list".into());
            }
            let mut args = Vec::new();
            for item in items {
                args.push(OsString::from(&flag));
                args.push(scalar(item)?.into());
            }
            Ok(args)
        }
        other => Ok(vec![flag.into(), scalar(other)?.into()]),
    }
}

/// The settings of a command: its flags and options, without help and version.
fn settings(cmd: &Command) -> impl Iterator<Item = &Arg> {
    cmd.get_arguments().filter(|a| {
        let id = a.get_id().as_str();
        !a.is_positional()
            && !a.is_global_set()
            && !matches!(id, "help" | "version" | "config")
            && id != "log_format"
    })
}

/// A setting's key in the file and in `config show`: its flag's name with `_` for `-`.
fn key_of(arg: &Arg) -> String {
    arg.get_long()
        .unwrap_or(arg.get_id().as_str())
        .replace('-', "_")
}

fn is_flag(arg: &Arg) -> bool {
    matches!(arg.get_action(), ArgAction::SetTrue | ArgAction::SetFalse)
}

fn find_subcommand<'a>(command: &'a Command, name: &str) -> anyhow::Result<&'a Command> {
    command
        .find_subcommand(name)
        .ok_or_else(|| anyhow!("no command {name}"))
}

/// The environment variable of a setting that declares none: `OUTPOST_GATEWAY_PROBE_PATH`.
fn env_name(section: &str, key: &str) -> String {
    format!("OUTPOST_{}_{}", section.to_uppercase(), key.to_uppercase())
}

fn first_line(message: &str) -> String {
    message
        .lines()
        .next()
        .unwrap_or("")
        .trim_start_matches("error: ")
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generic_variables_are_named_after_command_and_key() {
        assert_eq!(
            env_name("gateway", "probe_interval"),
            "OUTPOST_GATEWAY_PROBE_INTERVAL"
        );
    }

    #[test]
    fn clap_error_lines_lose_their_prefix() {
        assert_eq!(
            first_line("error: invalid value 'x' for '--listen'\n\nFor more information"),
            "invalid value 'x' for '--listen'"
        );
    }
}
