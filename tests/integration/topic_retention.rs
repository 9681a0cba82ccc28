//! A topic's retention settings, set and seen through every door: the native CLI and
//! client, Kafka's CreateTopics, DescribeConfigs, AlterConfigs and IncrementalAlterConfigs
//! from real admin clients (kafka-python, confluent-kafka). Each change must survive a
//! SIGKILL and restart (topics.meta is synced before the answer), and reach every shard
//! of the two-shard server: seen from a connection to shard 1 as from shard 0. What
//! retention then removes is the engine's (docs/DESIGN.md §1); these tests check the
//! settings.

use std::path::Path;
use std::process::{Command, Output};

use cairn_client::{BlockingClient, ClientConfig, RetentionChange, RetentionPolicy, TopicInfo};
use cairn_wire::ErrorCode;
use serde_json::{Value, json};

use crate::support::client_process::{
    CLIENT_STEP_TIMEOUT, ClientProcess, node, python, run_to_end,
};
use crate::support::server::{CAIRN_BIN, TestServer};

/// Kafka's INVALID_CONFIG.
const INVALID_CONFIG: i64 = 40;
/// Kafka's UNKNOWN_TOPIC_OR_PARTITION.
const UNKNOWN_TOPIC_OR_PARTITION: i64 = 3;

const DAY_MS: u64 = 86_400_000;

fn cli(server: &TestServer, args: &[&str]) -> Output {
    Command::new(CAIRN_BIN)
        .arg("--addr")
        .arg(server.address.to_string())
        .args(args)
        .output()
        .expect("cairn CLI runs")
}

fn cli_json(server: &TestServer, args: &[&str]) -> Value {
    let mut with_json = vec!["--json"];
    with_json.extend_from_slice(args);
    let output = cli(server, &with_json);
    assert!(output.status.success(), "{args:?}: {output:?}");
    serde_json::from_slice(&output.stdout).unwrap_or_else(|error| panic!("{output:?}: {error}"))
}

/// The topic as the shard listening on `port` knows it (its own catalog copy).
fn topic_seen_from(port: u16, name: &str) -> TopicInfo {
    let address = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut client = BlockingClient::connect(ClientConfig::new(address)).expect("connects");
    let metadata = client.metadata().expect("metadata");
    metadata
        .topics
        .into_iter()
        .find(|topic| topic.name == name)
        .unwrap_or_else(|| panic!("topic {name} is known on port {port}"))
}

/// Both shards report `expected` for `name`.
fn assert_every_shard_sees(server: &TestServer, name: &str, expected: RetentionPolicy) {
    assert_eq!(server.shard_ports.len(), 2, "a two-shard server");
    for &port in &server.shard_ports {
        assert_eq!(
            topic_seen_from(port, name).retention,
            expected,
            "{name} seen from port {port}"
        );
    }
}

fn restart(server: TestServer, data_dir: &Path) -> TestServer {
    // Dropping kills with SIGKILL: nothing but what was synced before each answer survives.
    drop(server);
    TestServer::start_on(data_dir, &[])
}

#[test]
fn the_cli_sets_retention_at_creation_alters_and_describes_it_across_a_restart() {
    let temp_dir = tempfile::tempdir().unwrap();
    let data_dir = temp_dir.path().join("data");
    let server = TestServer::start_on(&data_dir, &[]);

    let created = cli_json(
        &server,
        &[
            "topic",
            "create",
            "audit",
            "--partitions",
            "4",
            "--retention-ms",
            "604800000",
        ],
    );
    assert_eq!(created["retention_ms"], json!(604_800_000));
    assert_eq!(created["retention_bytes"], Value::Null);
    let plain = cli_json(&server, &["topic", "create", "ledger"]);
    assert_eq!(
        plain["retention_ms"],
        Value::Null,
        "the default keeps forever"
    );
    let described = cli(&server, &["topic", "describe", "ledger"]);
    let text = String::from_utf8_lossy(&described.stdout);
    assert!(
        text.contains("retention.ms     forever") && text.contains("retention.bytes  forever"),
        "{text}"
    );

    // Kafka's -1 and `forever` both remove a limit; a limit not given stays.
    let altered = cli_json(
        &server,
        &[
            "topic",
            "alter",
            "audit",
            "--retention-ms",
            "-1",
            "--retention-bytes",
            "1073741824",
        ],
    );
    assert_eq!(altered["retention_ms"], Value::Null);
    assert_eq!(altered["retention_bytes"], json!(1_073_741_824));
    let altered = cli_json(
        &server,
        &["topic", "alter", "audit", "--retention-ms", "3600000"],
    );
    assert_eq!(
        altered["retention_bytes"],
        json!(1_073_741_824),
        "untouched"
    );
    let expected = RetentionPolicy {
        ms: Some(3_600_000),
        bytes: Some(1 << 30),
    };
    assert_every_shard_sees(&server, "audit", expected);

    // Refused, and nothing changed: 0, junk, an unknown topic, nothing to change.
    for args in [
        &["topic", "alter", "audit", "--retention-ms", "0"][..],
        &["topic", "alter", "audit", "--retention-bytes", "lots"],
        &["topic", "create", "zero", "--retention-ms", "0"],
        &["topic", "alter", "nope", "--retention-ms", "5"],
        &["topic", "alter", "audit"],
        &["topic", "describe", "nope"],
    ] {
        let output = cli(&server, args);
        assert!(!output.status.success(), "{args:?} succeeded: {output:?}");
        assert!(!output.stderr.is_empty(), "{args:?} says why");
    }

    let server = restart(server, &data_dir);
    assert_every_shard_sees(&server, "audit", expected);
    assert_every_shard_sees(&server, "ledger", RetentionPolicy::FOREVER);
    let described = cli_json(&server, &["topic", "describe", "audit"]);
    assert_eq!(described["retention_ms"], json!(3_600_000));
    assert_eq!(described["partitions"].as_array().map(Vec::len), Some(4));
    let listed = cli(&server, &["topic", "list"]);
    let text = String::from_utf8_lossy(&listed.stdout);
    assert!(
        text.contains("audit\t4 partitions\tretention.ms 3600000 retention.bytes 1073741824")
            && text.contains("ledger\t1 partitions\n"),
        "{text}"
    );
}

#[test]
fn the_native_client_alters_through_shard_1_and_a_limit_of_0_is_invalid_config() {
    let server = TestServer::start();
    // Shard 1 forwards both to shard 0, which owns the catalog.
    let shard_1 = std::net::SocketAddr::from(([127, 0, 0, 1], server.shard_ports[1]));
    let mut client = BlockingClient::connect(ClientConfig::new(shard_1)).unwrap();
    let retention = RetentionPolicy {
        ms: None,
        bytes: Some(4096),
    };
    let topic = client.create_topic_with("events", 3, retention).unwrap();
    assert_eq!(topic.retention, retention);
    assert_every_shard_sees(&server, "events", retention);

    let change = RetentionChange {
        ms: Some(Some(DAY_MS)),
        bytes: Some(None),
    };
    let topic = client.alter_topic_retention("events", change).unwrap();
    let expected = RetentionPolicy {
        ms: Some(DAY_MS),
        bytes: None,
    };
    assert_eq!(topic.retention, expected);
    assert_every_shard_sees(&server, "events", expected);

    let zero = RetentionChange {
        ms: None,
        bytes: Some(Some(0)),
    };
    let error = client.alter_topic_retention("events", zero).unwrap_err();
    assert_eq!(
        error.server_code(),
        Some(ErrorCode::InvalidConfig),
        "{error}"
    );
    assert!(error.to_string().contains("retention.bytes"), "{error}");
    let error = client
        .alter_topic_retention("nope", RetentionChange::default())
        .unwrap_err();
    assert_eq!(
        error.server_code(),
        Some(ErrorCode::UnknownTopic),
        "{error}"
    );
    let error = client
        .create_topic_with(
            "zero",
            1,
            RetentionPolicy {
                ms: Some(0),
                bytes: None,
            },
        )
        .unwrap_err();
    assert_eq!(
        error.server_code(),
        Some(ErrorCode::InvalidConfig),
        "{error}"
    );
    assert_every_shard_sees(&server, "events", expected);
}

/// An admin client process (tests/kafka/python/admin_configs.py) on `bootstrap`.
struct Admin(ClientProcess);

impl Admin {
    fn start(client: &str, bootstrap: &str) -> Admin {
        Admin(ClientProcess::spawn(python(
            "admin_configs.py",
            &[client, bootstrap],
        )))
    }

    fn run(&mut self, request: Value) -> Value {
        self.0.send(&request);
        self.0.next_within(CLIENT_STEP_TIMEOUT)
    }

    fn ok(&mut self, request: Value) -> Value {
        let answer = self.run(request.clone());
        assert_eq!(answer["ok"], json!(true), "{request}: {answer}");
        answer
    }

    fn refused(&mut self, request: Value, error_code: i64) -> String {
        let answer = self.run(request.clone());
        assert_eq!(answer["ok"], json!(false), "{request}: {answer}");
        assert_eq!(
            answer["error_code"],
            json!(error_code),
            "{request}: {answer}"
        );
        answer["error"].as_str().unwrap_or_default().to_owned()
    }

    /// (value, read_only) of each retention config and cleanup.policy.
    fn retention(&mut self, topic: &str) -> Vec<(String, bool)> {
        let answer = self.ok(json!({"op": "describe", "topic": topic}));
        ["retention.ms", "retention.bytes", "cleanup.policy"]
            .iter()
            .map(|name| {
                let config = &answer["configs"][name];
                let value = config["value"].as_str().unwrap_or("?").to_owned();
                (value, config["read_only"].as_bool().unwrap_or(true))
            })
            .collect()
    }
}

fn described(ms: &str, bytes: &str) -> Vec<(String, bool)> {
    vec![
        (ms.to_owned(), false),
        (bytes.to_owned(), false),
        ("delete".to_owned(), true),
    ]
}

#[test]
fn kafka_python_creates_with_retention_describes_and_replaces_it_with_alter_configs() {
    let temp_dir = tempfile::tempdir().unwrap();
    let data_dir = temp_dir.path().join("data");
    let server = TestServer::start_on(&data_dir, &[]);
    let mut admin = Admin::start("kafka-python", &server.kafka_bootstrap());

    admin.ok(json!({"op": "create", "topic": "orders", "partitions": 2,
        "configs": {"retention.ms": "86400000", "cleanup.policy": "delete"}}));
    assert_eq!(admin.retention("orders"), described("86400000", "-1"));
    assert_every_shard_sees(
        &server,
        "orders",
        RetentionPolicy {
            ms: Some(DAY_MS),
            bytes: None,
        },
    );

    // What Cairn does not do, or cannot read, is refused with INVALID_CONFIG and a message;
    // no topic is created.
    for (configs, says) in [
        (json!({"cleanup.policy": "compact"}), "does not compact"),
        (json!({"retention.ms": "a week"}), "retention.ms"),
        (json!({"retention.bytes": "0"}), "retention.bytes=0"),
        (json!({"segment.ms": "1000"}), "segment.ms"),
    ] {
        let message = admin.refused(
            json!({"op": "create", "topic": "refused", "configs": configs}),
            INVALID_CONFIG,
        );
        assert!(message.contains(says), "{configs}: {message}");
    }
    let mut native = BlockingClient::connect(ClientConfig::new(server.address)).unwrap();
    let metadata = native.metadata().unwrap();
    assert!(
        metadata.topics.iter().all(|topic| topic.name != "refused"),
        "a refused topic is not created"
    );

    // AlterConfigs replaces the whole config; kafka-python first reads the topic's set
    // keys and sends them along (its docs say so), so retention.ms stays. Without them it
    // would return to -1 (kafka_protocol::kafka_alter_configs_replaces_the_whole_config).
    admin.ok(json!({"op": "alter", "topic": "orders",
        "configs": {"retention.bytes": "1048576"}}));
    assert_eq!(admin.retention("orders"), described("86400000", "1048576"));
    admin.ok(json!({"op": "alter", "topic": "orders",
        "configs": {"retention.ms": "-1", "retention.bytes": "1048576"}}));
    assert_eq!(admin.retention("orders"), described("-1", "1048576"));
    // validate_only checks and changes nothing.
    admin.ok(
        json!({"op": "alter", "topic": "orders", "validate_only": true,
        "configs": {"retention.bytes": "2048"}}),
    );
    admin.refused(
        json!({"op": "alter", "topic": "orders", "validate_only": true,
            "configs": {"retention.bytes": "-5"}}),
        INVALID_CONFIG,
    );
    admin.refused(
        json!({"op": "alter", "topic": "orders", "configs": {"cleanup.policy": "compact"}}),
        INVALID_CONFIG,
    );
    assert_eq!(admin.retention("orders"), described("-1", "1048576"));
    admin.refused(
        json!({"op": "alter", "topic": "nope", "configs": {"retention.ms": "5"}}),
        UNKNOWN_TOPIC_OR_PARTITION,
    );
    drop(admin);

    let server = restart(server, &data_dir);
    let expected = RetentionPolicy {
        ms: None,
        bytes: Some(1 << 20),
    };
    assert_every_shard_sees(&server, "orders", expected);
    let mut admin = Admin::start("kafka-python", &server.kafka_bootstrap());
    assert_eq!(admin.retention("orders"), described("-1", "1048576"));
}

#[test]
fn confluent_incremental_alter_configs_sets_and_deletes_retention_on_every_shard() {
    let temp_dir = tempfile::tempdir().unwrap();
    let data_dir = temp_dir.path().join("data");
    let server = TestServer::start_on(&data_dir, &[]);
    // Bootstrapped from shard 1's broker: librdkafka sends admin requests to any broker,
    // and shard 1 forwards the changes to shard 0.
    let bootstrap_1 = format!("127.0.0.1:{}", server.kafka_ports[1]);
    let mut admin = Admin::start("confluent", &bootstrap_1);

    admin.ok(json!({"op": "create", "topic": "payments", "partitions": 4,
        "configs": {"retention.bytes": "10485760", "retention.ms": "-1"}}));
    assert_eq!(admin.retention("payments"), described("-1", "10485760"));

    admin.ok(json!({"op": "incremental", "topic": "payments",
        "set": {"retention.ms": "3600000"}}));
    assert_eq!(
        admin.retention("payments"),
        described("3600000", "10485760")
    );
    assert_every_shard_sees(
        &server,
        "payments",
        RetentionPolicy {
            ms: Some(3_600_000),
            bytes: Some(10 << 20),
        },
    );

    // DELETE returns a limit to its default: forever.
    admin.ok(json!({"op": "incremental", "topic": "payments",
        "delete": ["retention.bytes"]}));
    assert_eq!(admin.retention("payments"), described("3600000", "-1"));

    admin.ok(
        json!({"op": "incremental", "topic": "payments", "validate_only": true,
        "set": {"retention.ms": "1"}}),
    );
    for set in [
        json!({"retention.ms": "0"}),
        json!({"retention.ms": "-2"}),
        json!({"cleanup.policy": "compact"}),
        json!({"max.compaction.lag.ms": "1"}),
    ] {
        admin.refused(
            json!({"op": "incremental", "topic": "payments", "set": set}),
            INVALID_CONFIG,
        );
    }
    assert_eq!(admin.retention("payments"), described("3600000", "-1"));
    drop(admin);

    let server = restart(server, &data_dir);
    let expected = RetentionPolicy {
        ms: Some(3_600_000),
        bytes: None,
    };
    assert_every_shard_sees(&server, "payments", expected);
    let mut admin = Admin::start("confluent", &server.kafka_bootstrap());
    assert_eq!(admin.retention("payments"), described("3600000", "-1"));
}

/// kafkajs, a third admin client: createTopics with a retention config, describeConfigs,
/// alterConfigs (Kafka's whole-config replace: the limit not named returns to forever),
/// and a compacted topic refused with INVALID_CONFIG.
#[test]
fn kafkajs_creates_describes_and_replaces_retention_and_compaction_is_refused() {
    let server = TestServer::start();
    let output = run_to_end(
        node(
            "kafkajs_client.js",
            &["retention", &server.kafka_bootstrap(), "kafkajs-retained"],
        ),
        "",
    );
    let answer: Value = serde_json::from_str(output.trim()).unwrap();
    assert_eq!(answer["created"]["retention.ms"], "3600000", "{answer}");
    assert_eq!(answer["created"]["retention.bytes"], "-1", "{answer}");
    assert_eq!(answer["altered"]["retention.ms"], "-1", "{answer}");
    assert_eq!(answer["altered"]["retention.bytes"], "1048576", "{answer}");
    assert_eq!(answer["compact"]["type"], "INVALID_CONFIG", "{answer}");
    assert_every_shard_sees(
        &server,
        "kafkajs-retained",
        RetentionPolicy {
            ms: None,
            bytes: Some(1_048_576),
        },
    );
}
