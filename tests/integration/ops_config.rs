//! Running it for real, part one: the config file (`cairn serve --config`, every key, flags
//! over the file, unknown keys and wrong types refused), the logs (json lines, no colour
//! when piped) and the systemd unit in packaging/ (`systemd-analyze verify` where installed).

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::server::{CAIRN_BIN, TestServer};

fn packaging(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("packaging")
        .join(name)
}

/// Every long flag `cairn serve --help` lists, but `--config`, `--print-config`, `--help` and
/// the client commands' global `--addr` and `--json`.
fn serve_flags() -> BTreeSet<String> {
    let output = Command::new(CAIRN_BIN)
        .args(["serve", "--help"])
        .output()
        .expect("cairn runs");
    assert!(output.status.success());
    String::from_utf8(output.stdout)
        .expect("help is UTF-8")
        .split_whitespace()
        .filter_map(|word| word.strip_prefix("--"))
        .map(|flag| {
            flag.trim_end_matches(|c: char| !c.is_ascii_alphanumeric())
                .to_owned()
        })
        .filter(|flag| {
            !matches!(
                flag.as_str(),
                "config" | "print-config" | "help" | "addr" | "json" | ""
            )
        })
        .collect()
}

/// A file setting every key to a value other than its default.
const EVERY_KEY: &str = r#"
data-dir = "/srv/cairn/data"
listen = "0.0.0.0:7000"
port-base = 7100
cores = 3
segment-size = 8392704
checkpoint-interval = 1048576
retention-check-interval-ms = 5000
retention-bytes-per-second = 1048576
max-frame-bytes = 1048576
max-request-bytes-per-shard = 1000000
max-connections-per-shard = 77
kafka-listen = "0.0.0.0:9300"
no-kafka = true
kafka-advertised-host = "cairn-1.example.internal"
metrics-listen = "127.0.0.1:9555"
no-pin = true
log-level = "debug"
log-format = "json"
"#;

fn print_config(args: &[&str]) -> std::process::Output {
    Command::new(CAIRN_BIN)
        .arg("serve")
        .args(args)
        .arg("--print-config")
        .output()
        .expect("cairn runs")
}

fn write_config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("cairn.toml");
    std::fs::write(&path, text).expect("config written");
    path
}

#[test]
fn a_config_file_with_every_key_round_trips_through_print_config() {
    let temp = tempfile::tempdir().unwrap();
    let path = write_config(temp.path(), EVERY_KEY);
    let output = print_config(&["--config", path.to_str().unwrap()]);
    assert!(output.status.success(), "{output:?}");
    let printed: toml::Table = toml::from_str(&String::from_utf8(output.stdout).unwrap()).unwrap();
    let written: toml::Table = toml::from_str(EVERY_KEY).unwrap();
    assert_eq!(printed, written);

    // Every flag is a key: of this test's file, and of the annotated example, which itself
    // is a valid file (its optional keys are the commented `# key = ...` lines).
    let flags = serve_flags();
    assert!(
        flags.contains("data-dir") && flags.contains("log-format"),
        "{flags:?}"
    );
    let keys: BTreeSet<String> = written.keys().cloned().collect();
    assert_eq!(keys, flags, "EVERY_KEY lists every `cairn serve` flag");
    let example = std::fs::read_to_string(packaging("cairn.toml")).unwrap();
    for flag in &flags {
        let documented = example.lines().any(|line| {
            let line = line.trim_start_matches("# ");
            line.starts_with(&format!("{flag} = "))
        });
        assert!(documented, "packaging/cairn.toml documents `{flag}`");
    }
    let output = print_config(&["--config", packaging("cairn.toml").to_str().unwrap()]);
    assert!(output.status.success(), "{output:?}");
    let printed: toml::Table = toml::from_str(&String::from_utf8(output.stdout).unwrap()).unwrap();
    assert_eq!(printed["data-dir"].as_str(), Some("/var/lib/cairn/data"));
}

#[test]
fn an_unknown_key_or_a_wrong_type_fails_with_the_key_name() {
    let temp = tempfile::tempdir().unwrap();
    let path = write_config(
        temp.path(),
        "listen = \"127.0.0.1:7878\"\nshard-count = 4\n",
    );
    let output = print_config(&["--config", path.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "a usage error: {stderr}");
    assert!(stderr.contains("unknown field `shard-count`"), "{stderr}");

    let path = write_config(temp.path(), "port-base = \"high\"\n");
    let output = print_config(&["--config", path.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("key `port-base`") && stderr.contains("expected u16"),
        "{stderr}"
    );

    // Snake case is not the file's spelling: refused by name, not silently ignored.
    let path = write_config(temp.path(), "port_base = 1\n");
    let output = print_config(&["--config", path.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&output.stderr).contains("unknown field `port_base`"));
}

#[test]
fn a_flag_overrides_the_file_and_a_default_does_not() {
    let temp = tempfile::tempdir().unwrap();
    let path = write_config(temp.path(), "port-base = 7100\nlog-level = \"debug\"\n");
    let config = path.to_str().unwrap();
    let output = print_config(&["--config", config, "--port-base", "7200"]);
    let printed: toml::Table = toml::from_str(&String::from_utf8(output.stdout).unwrap()).unwrap();
    assert_eq!(
        printed["port-base"].as_integer(),
        Some(7200),
        "the flag wins"
    );
    assert_eq!(
        printed["log-level"].as_str(),
        Some("debug"),
        "the file beats the default"
    );

    // The real server: the file names one data directory and 1 core; the command line
    // (the test server's `--data-dir D --cores 2`) overrides both, while the file's key
    // that no flag gives (`max-connections-per-shard`, say) still applies. The shard count
    // a server records in its data directory shows which one it used.
    let from_file = temp.path().join("from-file");
    let from_flag = temp.path().join("from-flag");
    let path = write_config(
        temp.path(),
        &format!(
            "data-dir = {:?}\ncores = 1\nmax-connections-per-shard = 5\n",
            from_file.to_str().unwrap()
        ),
    );
    let server = TestServer::start_on(&from_flag, &["--config", path.to_str().unwrap()]);
    assert_eq!(server.shard_ports.len(), 2);
    let meta = std::fs::read_to_string(from_flag.join("cairn.meta")).unwrap();
    assert!(meta.contains("shard_count 2"), "{meta}");
    assert!(!from_file.exists(), "the file's data-dir was overridden");
    // Five connections per shard are served; the shared port spreads them over both
    // shards, so ten are accepted and beyond that some are refused (Overloaded + close).
    let mut clients = Vec::new();
    let mut refused_count = 0;
    for _ in 0..30 {
        match cairn_client::BlockingClient::connect(cairn_client::ClientConfig::new(server.address))
            .and_then(|mut client| client.metadata().map(|_| client))
        {
            Ok(client) => clients.push(client),
            Err(_) => refused_count += 1,
        }
    }
    assert!(clients.len() <= 10, "{} served", clients.len());
    assert!(refused_count >= 20, "{refused_count} refused");
}

/// Runs a one-shard server with `log_args`, sends it SIGTERM once it listens, and returns
/// everything it logged to stderr (a pipe, not a terminal).
fn server_logs(log_args: &[&str]) -> String {
    let temp = tempfile::tempdir().unwrap();
    let stderr_path = temp.path().join("stderr");
    let stderr = std::fs::File::create(&stderr_path).unwrap();
    let mut child = Command::new(CAIRN_BIN)
        .arg("serve")
        .arg("--data-dir")
        .arg(temp.path().join("data"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--no-kafka",
            "--cores",
            "1",
            "--no-pin",
        ])
        .args(["--segment-size", &(2 * 1024 * 1024 + 4096).to_string()])
        .args(log_args)
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let line = BufReader::new(stdout).lines().next().unwrap().unwrap();
    assert!(line.starts_with("listening on"), "{line}");
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "server did not stop");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(status.success(), "{status:?}");
    std::fs::read_to_string(&stderr_path).unwrap()
}

#[test]
fn json_logs_are_json_lines_and_piped_text_logs_have_no_escape_codes() {
    let logs = server_logs(&["--log-level", "info", "--log-format", "json"]);
    let lines: Vec<&str> = logs.lines().filter(|line| !line.is_empty()).collect();
    assert!(lines.len() >= 2, "{logs}");
    for line in &lines {
        let object: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|error| panic!("not a JSON line ({error}): {line}"));
        assert!(
            object["level"].is_string() && object["fields"].is_object(),
            "{line}"
        );
    }
    assert!(
        lines.iter().any(|line| line.contains("stopped cleanly")),
        "{logs}"
    );

    let logs = server_logs(&["--log-level", "info"]);
    assert!(
        logs.contains("INFO") && logs.contains("stopped cleanly"),
        "{logs}"
    );
    assert!(
        !logs.contains('\u{1b}'),
        "no ANSI escape codes in a pipe: {logs:?}"
    );
}

/// The `key=value` lines of a unit file's `[section]`.
fn unit_section(unit: &str, section: &str) -> Vec<(String, String)> {
    let mut current = String::new();
    let mut entries = Vec::new();
    for line in unit.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(name) = line
            .strip_prefix('[')
            .and_then(|rest| rest.strip_suffix(']'))
        {
            current = name.to_owned();
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("not key=value: {line}"));
        if current == section {
            entries.push((key.trim().to_owned(), value.trim().to_owned()));
        }
    }
    entries
}

#[test]
fn the_systemd_unit_fits_the_exit_statuses_and_passes_systemd_analyze_verify() {
    let unit = std::fs::read_to_string(packaging("cairn.service")).unwrap();
    let service = unit_section(&unit, "Service");
    let value = |key: &str| {
        service
            .iter()
            .find(|(name, _)| name == key)
            .map(|(_, value)| value.as_str())
            .unwrap_or_else(|| panic!("[Service] sets {key}"))
    };
    assert!(value("ExecStart").ends_with("cairn serve --config /etc/cairn/cairn.toml"));
    assert_eq!(value("User"), "cairn");
    assert_eq!(value("StateDirectory"), "cairn");
    assert_eq!(value("LimitMEMLOCK"), "infinity");
    assert!(value("LimitNOFILE").parse::<u64>().unwrap() >= 65536);
    // 74 (storage failure) and 70 (internal) restart; 2 (usage) must not loop.
    assert_eq!(value("Restart"), "on-failure");
    let prevented: Vec<&str> = value("RestartPreventExitStatus")
        .split_whitespace()
        .collect();
    assert!(prevented.contains(&"2"), "{prevented:?}");
    assert!(!prevented.contains(&"74") && !prevented.contains(&"70"));
    let unit_keys = unit_section(&unit, "Unit");
    assert!(unit_keys.iter().any(|(key, _)| key == "StartLimitBurst"));
    // The data directory the example config names is inside the StateDirectory.
    let example = std::fs::read_to_string(packaging("cairn.toml")).unwrap();
    assert!(example.contains("data-dir = \"/var/lib/cairn/data\""));

    let found = Command::new("sh")
        .args(["-c", "command -v systemd-analyze"])
        .output()
        .is_ok_and(|output| output.status.success());
    if !found {
        println!("systemd-analyze is not installed: only the unit's keys were checked");
        return;
    }
    // verify wants ExecStart's binary to exist: point it at the one under test.
    let temp = tempfile::tempdir().unwrap();
    let copy = temp.path().join("cairn.service");
    std::fs::write(&copy, unit.replace("/usr/local/bin/cairn", CAIRN_BIN)).unwrap();
    let output = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "systemd-analyze verify: {stderr}");
    // verify only warns about unknown keys and bad values: any line about the unit fails.
    assert!(
        !stderr.contains("cairn.service"),
        "systemd-analyze verify complains: {stderr}"
    );
}
