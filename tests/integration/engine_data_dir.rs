//! The data directory belongs to one process at a time, and shards agree on the topic
//! catalog whatever order they learn topics in.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cairn_client::{BlockingClient, ClientConfig};
use cairn_engine::{Engine, OpenError, PartitionId, RetentionPolicy, ShardId, Topic, TopicError};

use crate::support::engine::{open_engine, run_local, test_config};
use crate::support::server::{CAIRN_BIN, TestServer};

#[test]
fn a_second_engine_on_a_data_directory_in_use_is_refused_until_the_first_closes() {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path());
    let first = open_engine(config.clone());
    let error = Engine::open(config.clone()).expect_err("the directory is in use");
    assert!(
        matches!(error, OpenError::DataDirInUse { .. }),
        "a typed error: {error:?}"
    );
    let message = error.to_string();
    assert!(
        message.contains(&dir.path().display().to_string()) && message.contains("in use"),
        "the message names the directory: {message}"
    );
    // A clone shares the lock; only when every clone is gone is the directory free.
    let clone = first.clone();
    drop(first);
    assert!(
        Engine::open(config.clone()).is_err(),
        "a clone still holds it"
    );
    drop(clone);
    open_engine(config);
}

#[test]
fn a_second_server_on_a_data_directory_in_use_refuses_to_start_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let mut first = TestServer::start_on(&data_dir, &[]);
    let started = Instant::now();
    let second = Command::new(CAIRN_BIN)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--kafka-listen",
            "127.0.0.1:0",
            "--cores",
            "2",
            "--no-pin",
        ])
        .args(["--segment-size", &(2 * 1024 * 1024 + 4096).to_string()])
        .arg("--data-dir")
        .arg(&data_dir)
        .stdin(Stdio::null())
        .output()
        .expect("the second server runs");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "it refuses at once"
    );
    assert!(!second.status.success(), "{:?}", second.status);
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        stderr.contains("in use") && stderr.contains(&data_dir.display().to_string()),
        "stderr says the directory is in use: {stderr}"
    );
    assert!(
        !String::from_utf8_lossy(&second.stdout).contains("listening on"),
        "it never listened"
    );
    // The first one is untouched and still serving.
    assert!(
        first.try_exit_status().is_none(),
        "the first server runs on"
    );
    let mut client = BlockingClient::connect(ClientConfig::new(first.address)).expect("connects");
    client.create_topic("still-served", 1).expect("served");
}

#[test]
fn shards_mirror_topics_with_the_ids_they_were_given_in_any_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.shard_count = 2;
    let engine = open_engine(config);
    run_local(move || async move {
        let shard = engine.open_shard(ShardId(1)).await.unwrap();
        let first = Topic {
            name: "first".into(),
            partition_count: 3,
            first_partition_id: 0,
            retention: RetentionPolicy::FOREVER,
        };
        let second = Topic {
            name: "second".into(),
            partition_count: 2,
            first_partition_id: 3,
            retention: RetentionPolicy::FOREVER,
        };
        // Shard 0 created `first` then `second`; the announcements arrive the other way.
        shard.add_topic(&second).unwrap();
        shard.add_topic(&first).unwrap();
        assert_eq!(shard.topic("second"), Some(second.clone()));
        assert_eq!(shard.topic("first"), Some(first.clone()));
        let owned: Vec<PartitionId> = shard.partition_ids();
        let expected: Vec<PartitionId> = first
            .partition_ids()
            .chain(second.partition_ids())
            .filter(|id| ShardId::owner_of(*id, 2) == ShardId(1))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        assert_eq!(owned, expected);
        // Learning a topic twice is harmless; a contradicting announcement is refused.
        shard.add_topic(&second).unwrap();
        let contradiction = Topic {
            first_partition_id: 7,
            ..second
        };
        assert!(shard.add_topic(&contradiction).is_err());
        assert_eq!(shard.topic("second").unwrap().first_partition_id, 3);
        shard.close().await;
    });
}

#[test]
fn retention_reaches_every_owned_partition_when_created_announced_changed_and_reopened() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.shard_count = 2;
    let engine = open_engine(config.clone());
    let day = RetentionPolicy {
        ms: Some(86_400_000),
        bytes: None,
    };
    let small = RetentionPolicy {
        ms: None,
        bytes: Some(1 << 20),
    };
    run_local(move || async move {
        let shard0 = engine.open_shard(ShardId(0)).await.unwrap();
        let shard1 = engine.open_shard(ShardId(1)).await.unwrap();
        let topic = shard0.create_topic_with("events", 4, day).unwrap();
        assert_eq!(topic.retention, day);
        shard1.add_topic(&topic).unwrap();
        for shard in [&shard0, &shard1] {
            for id in shard.partition_ids() {
                assert_eq!(shard.partition_retention(id), Some(day), "{id:?}");
            }
        }
        // A change on shard 0 is persisted there; announced, the other shard takes it.
        let changed = shard0.set_topic_retention("events", small).unwrap();
        assert_eq!(changed.retention, small);
        assert_eq!(shard1.topic("events").unwrap().retention, day);
        shard1.add_topic(&changed).unwrap();
        assert_eq!(shard1.topic("events").unwrap().retention, small);
        for shard in [&shard0, &shard1] {
            for id in shard.partition_ids() {
                assert_eq!(shard.partition_retention(id), Some(small), "{id:?}");
            }
        }
        // Refused: a limit of 0, an unknown topic, a change on a shard without the catalog.
        let zero = RetentionPolicy {
            ms: Some(0),
            bytes: None,
        };
        assert!(matches!(
            shard0.set_topic_retention("events", zero),
            Err(TopicError::InvalidRetention { .. })
        ));
        assert!(matches!(
            shard0.create_topic_with("zero", 1, zero),
            Err(TopicError::InvalidRetention { .. })
        ));
        assert!(shard0.topic("zero").is_none());
        assert!(matches!(
            shard0.set_topic_retention("nope", small),
            Err(TopicError::Unknown(_))
        ));
        assert!(matches!(
            shard1.set_topic_retention("events", small),
            Err(TopicError::NotCatalogOwner)
        ));
        shard0.close().await;
        shard1.close().await;
    });
    // Reopened (the first engine, and its lock, went with the closure), each shard's
    // partitions get the policy from topics.meta.
    let engine = open_engine(config);
    assert_eq!(engine.catalog().topic("events").unwrap().retention, small);
    run_local(move || async move {
        for shard_id in [ShardId(0), ShardId(1)] {
            let shard = engine.open_shard(shard_id).await.unwrap();
            let owned = shard.partition_ids();
            assert_eq!(owned.len(), 2);
            for id in owned {
                assert_eq!(shard.partition_retention(id), Some(small), "{id:?}");
            }
            shard.close().await;
        }
    });
}
