//! The `cairn serve` settings: its flags, and the TOML file (`--config`) that can set each
//! of them under the same name in kebab-case (`--data-dir` is `data-dir = "..."`).
//!
//! One list, `serve_settings!`, declares every setting once: the macro makes the clap
//! flags (`ServeArgs`) and the file's keys (`ServeFile`) from it, so a new flag is a new
//! key without anything else to keep in step. Precedence: a flag given on the command line,
//! then the file, then the flag's default. clap's `ValueSource` tells a flag the operator
//! typed from a default, so that a default never overrides the file.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use cairn_wire as wire;
use clap::ArgMatches;
use clap::parser::ValueSource;
use serde::{Deserialize, Serialize};

/// How `cairn serve` writes its logs (to stderr).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines; coloured only when stderr is a terminal.
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Declares every `cairn serve` setting once: `ServeArgs` (the flags, with `--config` and
/// `--print-config`), `ServeFile` (the config file: each key optional, unknown keys
/// refused), and the merge between them. A setting's type is its flag's type; an
/// `Option<T>` flag (no default) is a key of type `T`.
macro_rules! serve_settings {
    ($($(#[$meta:meta])* $name:ident: $ty:ty,)*) => {
        #[derive(clap::Args, Debug)]
        pub struct ServeArgs {
            $($(#[$meta])* pub $name: $ty,)*
            /// TOML file setting any of these flags (same names, kebab-case); flags given
            /// here override it.
            #[arg(long)]
            pub config: Option<PathBuf>,
            /// Print the effective settings (command line over file over defaults) as TOML
            /// and exit.
            #[arg(long)]
            pub print_config: bool,
        }

        /// The config file. A key absent from it leaves the flag's value alone.
        #[derive(Debug, Default, Serialize, Deserialize)]
        #[serde(deny_unknown_fields, rename_all = "kebab-case")]
        struct ServeFile {
            $(
                #[serde(default, skip_serializing_if = "Setting::is_unset")]
                $name: Option<$ty>,
            )*
        }

        impl ServeFile {
            /// Sets each flag the command line did not give to the file's value, if any.
            fn apply(self, args: &mut ServeArgs, matches: &ArgMatches) {
                $(
                    if let Some(value) = self.$name
                        && matches.value_source(stringify!($name))
                            != Some(ValueSource::CommandLine)
                    {
                        args.$name = value;
                    }
                )*
            }

            /// The file that sets every flag to its value in `args`.
            fn of(args: &ServeArgs) -> ServeFile {
                ServeFile {
                    $($name: Some(args.$name.clone()),)*
                }
            }
        }
    };
}

serve_settings! {
    /// Data directory (created if missing).
    #[arg(long, default_value = "cairn-data")]
    data_dir: PathBuf,
    /// Shared listening address; every shard accepts on it.
    #[arg(long, default_value = "127.0.0.1:7878")]
    listen: SocketAddr,
    /// Shard i also listens on port-base + i; 0 picks free ports at each start (metadata
    /// tells clients). Default: the --listen port + 1 + i (7879, 7880, ...), so restarts
    /// keep them; free ports when the --listen port is 0.
    #[arg(long)]
    port_base: Option<u16>,
    /// Shards (one executor per core); fixed when the data directory is created.
    #[arg(long)]
    cores: Option<u16>,
    /// Segment file size in bytes.
    #[arg(long, default_value_t = 256 * 1024 * 1024)]
    segment_size: u64,
    /// Log bytes between two checkpoints of a shard's state: a restart loads the newest
    /// and scans at most this much log after it. 0 turns checkpoints off.
    #[arg(long, default_value_t = 128 * 1024 * 1024)]
    checkpoint_interval: u64,
    /// How often each shard looks for records its topics' retention lets go, in ms.
    #[arg(long, default_value_t = 30_000)]
    retention_check_interval_ms: u64,
    /// Most bytes per second each shard's retention copies while it rewrites segments
    /// (so appends do not wait behind it); 0: no limit.
    #[arg(long, default_value_t = 64 * 1024 * 1024)]
    retention_bytes_per_second: u64,
    /// Largest request frame accepted, in bytes (appends; other requests: 64 KiB).
    #[arg(long, default_value_t = wire::FRAME_SIZE_BYTES_MAX_DEFAULT)]
    max_frame_bytes: u32,
    /// Most bytes of requests each shard holds at once; beyond it connections wait.
    #[arg(long)]
    max_request_bytes_per_shard: Option<usize>,
    /// Most connections each shard serves at once; beyond it they are refused.
    #[arg(long)]
    max_connections_per_shard: Option<usize>,
    /// Kafka listener of shard 0; shard i listens on its port + i (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:9092")]
    kafka_listen: SocketAddr,
    /// Do not serve the Kafka protocol.
    #[arg(long, conflicts_with_all = ["kafka_listen", "kafka_advertised_host"])]
    no_kafka: bool,
    /// Host that Kafka Metadata names for every broker (default: the --kafka-listen IP;
    /// required when that is 0.0.0.0 or ::).
    #[arg(long)]
    kafka_advertised_host: Option<String>,
    /// Serve Prometheus metrics (GET /metrics) and health (GET /health/live,
    /// /health/ready) over HTTP on this address (port 0: any free port); off if not given.
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
    /// Do not pin shards to CPUs.
    #[arg(long)]
    no_pin: bool,
    /// Log level: error, warn, info, debug, trace (RUST_LOG overrides).
    #[arg(long, default_value = "info")]
    log_level: String,
    /// Log format: text (coloured only on a terminal) or json (one object per line).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

/// Whether a setting's value leaves its key out of a printed file: only an `Option` flag
/// that is unset (TOML has no null).
trait Setting {
    fn is_unset(&self) -> bool;
}

impl<T: SettingValue> Setting for Option<T> {
    fn is_unset(&self) -> bool {
        self.as_ref().is_none_or(SettingValue::is_none)
    }
}

/// A flag's value type; only `Option` has a "none".
trait SettingValue {
    fn is_none(&self) -> bool {
        false
    }
}

impl<T> SettingValue for Option<T> {
    fn is_none(&self) -> bool {
        Option::is_none(self)
    }
}

macro_rules! plain_setting_values {
    ($($ty:ty),*) => { $(impl SettingValue for $ty {})* };
}
plain_setting_values!(PathBuf, SocketAddr, u16, u32, u64, bool, String, LogFormat);

impl ServeArgs {
    /// Applies `--config` (if given) under the flags of `matches` (the `serve` subcommand's).
    pub fn with_file(mut self, matches: &ArgMatches) -> anyhow::Result<ServeArgs> {
        if let Some(path) = self.config.clone() {
            let file = read_file(&path)?;
            file.apply(&mut self, matches);
        }
        Ok(self)
    }

    /// The effective settings as a config file that sets every one of them.
    pub fn to_toml(&self) -> anyhow::Result<String> {
        toml::to_string(&ServeFile::of(self)).context("printing the settings")
    }
}

/// A config file or setting that cannot be used: `cairn` exits with the usage status (2),
/// as clap does for a bad flag, so that a service manager does not restart into the same
/// mistake (packaging/cairn.service).
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

fn read_file(path: &Path) -> Result<ServeFile, UsageError> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| UsageError(format!("reading config file {}: {error}", path.display())))?;
    toml::from_str(&text).map_err(|error| {
        let key = error.span().and_then(|span| key_at(&text, span.start));
        let place = key.map_or_else(String::new, |key| format!(" key `{key}`:"));
        UsageError(format!(
            "config file {}:{place} {}",
            path.display(),
            error.message().trim_end()
        ))
    })
}

/// The key of the `key = value` line holding byte `position` of `text`, if it has one.
fn key_at(text: &str, position: usize) -> Option<&str> {
    let line_start = text.get(..position)?.rfind('\n').map_or(0, |at| at + 1);
    let line = text.get(line_start..)?.lines().next()?;
    let (key, _) = line.split_once('=')?;
    let key = key.trim().trim_matches('"');
    (!key.is_empty()).then_some(key)
}

/// Installs the log subscriber: `level` (RUST_LOG overrides it) in `format`, on stderr,
/// with colour only when stderr is a terminal (a journal or a file gets plain text).
pub fn init_logs(level: &str, format: LogFormat) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .map_err(|error| UsageError(format!("log level {level:?}: {error}")))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        // Escape codes inside JSON strings would reach the shipper even from a terminal.
        LogFormat::Json => builder.with_ansi(false).json().init(),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_type_error_names_the_key_of_its_line() {
        let text = "listen = \"127.0.0.1:1\"\nport-base = \"x\"\n";
        let position = text.find("\"x\"").unwrap();
        assert_eq!(key_at(text, position), Some("port-base"));
        assert_eq!(key_at("[table]\n", 1), None);
    }
}
