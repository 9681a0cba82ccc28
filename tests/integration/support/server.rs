//! `TestServer`: the real `cairn serve` binary as a child process on a temp data directory,
//! listening on 127.0.0.1 with free ports. Readiness is the "listening on" line it prints,
//! never a sleep. Dropping it kills the process. [`serve_until_exit`] runs one that is
//! expected to refuse to start, and returns what it said.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Path of the `cairn` binary cargo built for these tests.
pub const CAIRN_BIN: &str = env!("CARGO_BIN_EXE_cairn");

/// A running `cairn serve`.
pub struct TestServer {
    child: Option<Child>,
    pub address: SocketAddr,
    pub shard_ports: Vec<u16>,
    /// Each shard's Kafka broker port; empty when started with `--no-kafka`.
    pub kafka_ports: Vec<u16>,
    /// The metrics and health endpoint; `None` unless started with `--metrics-listen`.
    pub metrics_address: Option<SocketAddr>,
    _temp_dir: Option<tempfile::TempDir>,
}

impl TestServer {
    /// A two-shard server on a fresh temp data directory.
    pub fn start() -> TestServer {
        let temp_dir = tempfile::tempdir().expect("temp dir");
        let data_dir = temp_dir.path().join("data");
        let mut server = TestServer::start_on(&data_dir, &[]);
        server._temp_dir = Some(temp_dir);
        server
    }

    /// A two-shard server on `data_dir` (kept when the server is dropped), with extra flags
    /// (`--segment-size` among them replaces the default of 2 MiB + 4 KiB).
    pub fn start_on(data_dir: &Path, extra_args: &[&str]) -> TestServer {
        TestServer::start_with_env(data_dir, extra_args, &[])
    }

    /// Like [`TestServer::start_on`], with extra environment variables for the server
    /// (e.g. the test-only `CAIRN_FAULT_INJECT`).
    pub fn start_with_env(
        data_dir: &Path,
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> TestServer {
        let mut child = serve_command(data_dir, extra_args)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("cairn serve starts");
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut lines = BufReader::new(stdout).lines();
        let line = lines
            .next()
            .expect("the server prints its listening line before anything else")
            .expect("stdout is readable");
        let rest = line
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected line {line:?}"));
        let (address, ports) = rest
            .split_once(" shard_ports=")
            .expect("line names shard ports");
        let (ports, metrics_address) = match ports.split_once(" metrics=") {
            Some((ports, address)) => (ports, Some(address.parse().expect("metrics address"))),
            None => (ports, None),
        };
        let (ports, kafka_ports) = ports.split_once(" kafka_ports=").unwrap_or((ports, ""));
        let parse_ports = |ports: &str| -> Vec<u16> {
            ports
                .split(',')
                .filter(|port| !port.is_empty())
                .map(|port| port.parse().expect("port"))
                .collect()
        };
        TestServer {
            child: Some(child),
            address: address.parse().expect("address"),
            shard_ports: parse_ports(ports),
            kafka_ports: parse_ports(kafka_ports),
            metrics_address,
            _temp_dir: None,
        }
    }

    /// Starts `cairn serve` on `data_dir` and kills it with SIGKILL `after` the spawn,
    /// without waiting for it to listen: a crash during recovery or start-up.
    pub fn kill_while_starting(data_dir: &Path, extra_args: &[&str], after: Duration) {
        let mut child = serve_command(data_dir, extra_args)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("cairn serve starts");
        std::thread::sleep(after);
        let _ = child.kill();
        child.wait().expect("killed server is reaped");
    }

    /// Shard 0's Kafka address, "127.0.0.1:PORT": what a Kafka client bootstraps from.
    pub fn kafka_bootstrap(&self) -> String {
        let port = self
            .kafka_ports
            .first()
            .expect("the server serves Kafka (not started with --no-kafka)");
        format!("127.0.0.1:{port}")
    }

    /// The process id, for /proc.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server is running").id()
    }

    /// Resident memory of the server process (VmRSS in /proc), in bytes.
    pub fn resident_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("/proc/PID/status of a running server is readable");
        let line = status
            .lines()
            .find(|line| line.starts_with("VmRSS:"))
            .expect("status has VmRSS");
        let kib: u64 = line
            .split_whitespace()
            .nth(1)
            .and_then(|kib| kib.parse().ok())
            .expect("VmRSS is a number of kB");
        kib * 1024
    }

    /// The exit status if the process has exited by itself; `None` while it runs.
    pub fn try_exit_status(&mut self) -> Option<ExitStatus> {
        let child = self.child.as_mut().expect("server was not stopped before");
        let status = child.try_wait().expect("try_wait")?;
        self.child = None;
        Some(status)
    }

    /// Waits (bounded) for the process to exit by itself, e.g. on a storage failure.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit_status() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "server did not exit within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends `signal` and waits (bounded) for the process to exit.
    pub fn stop_with(&mut self, signal: i32, timeout: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("server is running");
        let pid = i32::try_from(child.id()).expect("pid fits i32");
        // std can only send SIGKILL (`Child::kill`); other signals go through kill(1).
        let status = Command::new("kill")
            .args([format!("-{signal}"), pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{signal} {pid}");
        match wait_bounded(&mut child, timeout) {
            Some(status) => status,
            None => {
                // Do not leave a hung server behind for the next test.
                let _ = child.kill();
                let _ = child.wait();
                panic!("server did not exit within {timeout:?} of signal {signal}");
            }
        }
    }
}

/// Waits at most `timeout` for `child` to exit; `None` if it still runs.
fn wait_bounded(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// How a `cairn serve` that was expected to stop by itself ended.
#[derive(Debug)]
pub struct ServeOutcome {
    /// `None`: it was still running after the timeout (and was then killed).
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `cairn serve` on `data_dir` (test defaults as for [`TestServer::start_on`]) and waits
/// at most `timeout` for it to exit by itself, e.g. because it refuses to start; kills it
/// after that. Returns its status and everything it printed.
pub fn serve_until_exit(data_dir: &Path, extra_args: &[&str], timeout: Duration) -> ServeOutcome {
    let mut child = serve_command(data_dir, extra_args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cairn serve starts");
    // Drained by threads, so a chatty child never blocks on a full pipe.
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("stdout is piped")));
    let stderr = drain(Box::new(child.stderr.take().expect("stderr is piped")));
    let status = wait_bounded(&mut child, timeout);
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    ServeOutcome {
        status,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

/// `cairn serve` with the test defaults: loopback and free ports (unless `extra_args` names
/// `--listen`), Kafka on loopback and free ports (unless it names `--kafka-listen` or
/// `--no-kafka`), two unpinned shards, small segments (unless `extra_args` names
/// `--segment-size`), warnings only.
fn serve_command(data_dir: &Path, extra_args: &[&str]) -> Command {
    let mut command = Command::new(CAIRN_BIN);
    command.arg("serve");
    if !extra_args.contains(&"--listen") {
        command.args(["--listen", "127.0.0.1:0"]);
    }
    if !extra_args.contains(&"--kafka-listen") && !extra_args.contains(&"--no-kafka") {
        command.args(["--kafka-listen", "127.0.0.1:0"]);
    }
    command.args(["--cores", "2", "--no-pin"]);
    if !extra_args.contains(&"--segment-size") {
        command.args(["--segment-size", &(2 * 1024 * 1024 + 4096).to_string()]);
    }
    command
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--log-level", "warn"])
        .args(extra_args);
    command
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
