//! Real Kafka clients (kcat, Python and Node scripts in tests/kafka/) as child processes the
//! tests talk to through JSON lines: requests on stdin, results on stdout. Every wait is
//! bounded; a client that exits early or prints something else fails the test with its
//! stderr, and dropping one kills it.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Longest a client may take for one step (a line, an exit) before the test fails: generous
/// for a loaded 2-core machine, short enough to keep a hung client from stalling CI.
pub const CLIENT_STEP_TIMEOUT: Duration = Duration::from_secs(20);

/// `tests/kafka/<relative>`.
pub fn kafka_script(relative: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/kafka")
        .join(relative)
}

/// `python3 tests/kafka/python/<script> args...`.
pub fn python(script: &str, args: &[&str]) -> Command {
    let mut command = Command::new("python3");
    command
        .arg(kafka_script(&format!("python/{script}")))
        .args(args);
    command
}

/// `node tests/kafka/js/<script> args...`; its node_modules come from `npm ci` (.ci/run).
pub fn node(script: &str, args: &[&str]) -> Command {
    let modules = kafka_script("js/node_modules/kafkajs");
    assert!(
        modules.exists(),
        "{} is missing: run `npm ci` in tests/kafka/js (.ci/run does)",
        modules.display()
    );
    let mut command = Command::new("node");
    command
        .arg(kafka_script(&format!("js/{script}")))
        .args(args);
    command
}

/// A running client whose stdout is a stream of JSON lines.
pub struct ClientProcess {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    stderr: Option<JoinHandle<String>>,
}

impl ClientProcess {
    pub fn spawn(mut command: Command) -> ClientProcess {
        let name = format!("{command:?}");
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|error| panic!("{name} starts: {error}"));
        let stdout = child.stdout.take().expect("stdout is piped");
        let (sender, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let mut stderr_pipe = child.stderr.take().expect("stderr is piped");
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr_pipe.read_to_string(&mut text);
            text
        });
        ClientProcess {
            name,
            stdin: child.stdin.take(),
            child,
            lines,
            stderr: Some(stderr),
        }
    }

    /// Writes one JSON line to the client's stdin.
    pub fn send(&mut self, request: &Value) {
        let stdin = self.stdin.as_mut().expect("stdin is open");
        if let Err(error) = writeln!(stdin, "{request}").and_then(|()| stdin.flush()) {
            self.fail(&format!("stdin closed ({error})"));
        }
    }

    /// Closes stdin: the client's signal that there is no more input.
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// The next JSON line, waiting at most `timeout`.
    pub fn next_within(&mut self, timeout: Duration) -> Value {
        match self.lines.recv_timeout(timeout) {
            Ok(line) => serde_json::from_str(&line)
                .unwrap_or_else(|error| self.fail(&format!("printed {line:?}: {error}"))),
            Err(RecvTimeoutError::Timeout) => self.fail(&format!("no line within {timeout:?}")),
            Err(RecvTimeoutError::Disconnected) => self.fail("exited before its next line"),
        }
    }

    /// The next JSON line if one comes within `timeout` (for a test that watches several
    /// clients in turn); a client that exits or prints something else fails the test.
    pub fn try_next_within(&mut self, timeout: Duration) -> Option<Value> {
        match self.lines.recv_timeout(timeout) {
            Ok(line) => Some(
                serde_json::from_str(&line)
                    .unwrap_or_else(|error| self.fail(&format!("printed {line:?}: {error}"))),
            ),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => self.fail("exited before its next line"),
        }
    }

    /// The next JSON line, within [`CLIENT_STEP_TIMEOUT`].
    pub fn next(&mut self) -> Value {
        self.next_within(CLIENT_STEP_TIMEOUT)
    }

    /// The next line, which must be `{"event": event, ...}`.
    pub fn expect_event(&mut self, event: &str) -> Value {
        let line = self.next();
        if line["event"] != event {
            self.fail(&format!("printed {line} where {event:?} was expected"));
        }
        line
    }

    /// Waits (bounded) for the client to exit successfully after its last line; returns
    /// what it printed to stderr.
    pub fn finish(mut self) -> String {
        self.close_stdin();
        let status = self.wait_bounded(CLIENT_STEP_TIMEOUT);
        if let Ok(extra) = self.lines.try_recv() {
            self.fail(&format!("printed more than expected: {extra}"));
        }
        match status {
            Some(status) if status.success() => self.stderr_text(),
            Some(status) => self.fail(&format!("exited with {status}")),
            None => self.fail(&format!(
                "still running {CLIENT_STEP_TIMEOUT:?} after its input ended"
            )),
        }
    }

    fn wait_bounded(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn stderr_text(&mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.stderr
            .take()
            .map(|reader| reader.join().unwrap_or_default())
            .unwrap_or_default()
    }

    fn fail(&mut self, what: &str) -> ! {
        let stderr = self.stderr_text();
        panic!("{}: {what}; its stderr:\n{stderr}", self.name)
    }
}

impl Drop for ClientProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a client to completion with `stdin` as input and returns its stdout; fails the test
/// with its stderr if it does not exit successfully within [`CLIENT_STEP_TIMEOUT`].
pub fn run_to_end(mut command: Command, stdin: &str) -> String {
    let name = format!("{command:?}");
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| panic!("{name} starts: {error}"));
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("stdout is piped")));
    let stderr = drain(Box::new(child.stderr.take().expect("stderr is piped")));
    let mut input = child.stdin.take().expect("stdin is piped");
    input
        .write_all(stdin.as_bytes())
        .expect("client reads its stdin");
    drop(input);
    let deadline = Instant::now() + CLIENT_STEP_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    match status {
        Some(status) if status.success() => stdout,
        Some(status) => panic!("{name} exited with {status}; stderr:\n{stderr}"),
        None => panic!("{name} did not exit within {CLIENT_STEP_TIMEOUT:?}; stderr:\n{stderr}"),
    }
}

/// Every line of `stdout` as JSON.
pub fn json_lines(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| serde_json::from_str(line).unwrap_or_else(|error| panic!("{line:?}: {error}")))
        .collect()
}
