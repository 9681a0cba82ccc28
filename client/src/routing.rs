//! Where a request goes: the topic cache and shard-aware routing both clients share.
//!
//! A request about a partition goes to the port of the shard that owns it, on the host of
//! the configured address: the partition named, or the one the first key routes to
//! ([`wire::route`], the hash every client must share). Everything else, and everything when
//! the client is not shard-aware, goes to the configured address. When the cache cannot
//! place a request (a partition the topic lacks, metadata that is not self-consistent), it
//! goes to the configured address too, and the server, which forwards or answers with the
//! right error, decides; metadata comes from the network, so it is never asserted on.

use std::collections::HashMap;
use std::net::SocketAddr;

use cairn_wire as wire;

use super::{ClientConfig, Metadata, TopicInfo};

/// What a request is about, as far as routing cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Destination<'a> {
    /// Not a partition (Ping, Metadata, CreateTopic): the configured address.
    Bootstrap,
    /// A partition of `topic`: `partition` if given, else `key`'s.
    Partition {
        topic: &'a str,
        partition: Option<u32>,
        key: &'a [u8],
    },
}

/// Where a destination resolved to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Resolution<'a> {
    /// Send it here.
    Address(SocketAddr),
    /// The cache has no topic of this name: refresh the metadata once, then give up.
    UnknownTopic(&'a str),
}

/// The topics a client knows, by name: a copy of the server's metadata.
#[derive(Debug, Default)]
pub(super) struct TopicTable {
    topics: HashMap<String, TopicInfo>,
}

impl TopicTable {
    /// Replaces every topic with those in `metadata`.
    pub(super) fn replace(&mut self, metadata: &Metadata) {
        self.topics = metadata
            .topics
            .iter()
            .map(|topic| (topic.name.clone(), topic.clone()))
            .collect();
    }

    /// Adds or replaces one topic, e.g. one just created.
    pub(super) fn insert(&mut self, topic: TopicInfo) {
        self.topics.insert(topic.name.clone(), topic);
    }

    /// The partition count of `topic`, if the cache knows the topic.
    pub(super) fn partition_count(&self, topic: &str) -> Option<u32> {
        self.topics.get(topic).map(TopicInfo::partition_count)
    }

    /// Where a request about `destination` goes.
    pub(super) fn resolve<'a>(
        &self,
        config: &ClientConfig,
        destination: Destination<'a>,
    ) -> Resolution<'a> {
        let Destination::Partition {
            topic,
            partition,
            key,
        } = destination
        else {
            return Resolution::Address(config.address);
        };
        if !config.shard_aware {
            return Resolution::Address(config.address);
        }
        let Some(info) = self.topics.get(topic) else {
            return Resolution::UnknownTopic(topic);
        };
        let partition_count = info.partition_count();
        // `route` asserts a topic has partitions; metadata that says otherwise is the
        // server's to explain.
        if partition_count == 0 {
            return Resolution::Address(config.address);
        }
        let Ok(partition) = wire::route(partition, key, partition_count) else {
            return Resolution::Address(config.address);
        };
        let owner = usize::try_from(partition)
            .ok()
            .and_then(|index| info.partitions.get(index))
            .filter(|owner| owner.partition == partition && owner.port != 0);
        match owner {
            Some(owner) => Resolution::Address(SocketAddr::new(config.address.ip(), owner.port)),
            None => Resolution::Address(config.address),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PartitionInfo;

    const BOOTSTRAP: SocketAddr =
        SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9000);

    fn table() -> TopicTable {
        let partitions = (0..10)
            .map(|partition| PartitionInfo {
                partition,
                partition_id: 100 + partition,
                shard: u16::try_from(partition % 2).unwrap(),
                port: 9000 + u16::try_from(partition).unwrap(),
            })
            .collect();
        let mut table = TopicTable::default();
        table.replace(&Metadata {
            shard_ports: vec![9000, 9001],
            topics: vec![TopicInfo {
                name: "seats".to_owned(),
                partitions,
                retention: crate::RetentionPolicy::FOREVER,
            }],
        });
        table
    }

    fn address(port: u16) -> Resolution<'static> {
        Resolution::Address(SocketAddr::new(BOOTSTRAP.ip(), port))
    }

    fn partition(partition: Option<u32>, key: &[u8]) -> Destination<'_> {
        Destination::Partition {
            topic: "seats",
            partition,
            key,
        }
    }

    #[test]
    fn partitions_go_to_their_owners_port() {
        let config = ClientConfig::new(BOOTSTRAP);
        let table = table();
        // "123456789" routes to partition 6 of 10, as the schema documents.
        assert_eq!(
            table.resolve(&config, partition(None, b"123456789")),
            address(9006)
        );
        assert_eq!(
            table.resolve(&config, partition(Some(7), b"123456789")),
            address(9007)
        );
        assert_eq!(
            table.resolve(&config, Destination::Bootstrap),
            address(9000)
        );
    }

    #[test]
    fn what_the_cache_cannot_place_goes_to_the_configured_address() {
        let config = ClientConfig::new(BOOTSTRAP);
        let table = table();
        assert_eq!(
            table.resolve(&config, partition(Some(10), b"k")),
            address(9000)
        );
        let unsharded = ClientConfig {
            shard_aware: false,
            ..ClientConfig::new(BOOTSTRAP)
        };
        assert_eq!(
            table.resolve(&unsharded, partition(Some(7), b"k")),
            address(9000)
        );
        let mut empty = TopicTable::default();
        empty.insert(TopicInfo {
            name: "seats".to_owned(),
            partitions: Vec::new(),
            retention: crate::RetentionPolicy::FOREVER,
        });
        assert_eq!(empty.resolve(&config, partition(None, b"k")), address(9000));
    }

    #[test]
    fn unknown_topic_is_reported_only_when_shard_aware() {
        let table = table();
        let other = Destination::Partition {
            topic: "other",
            partition: None,
            key: b"k",
        };
        let config = ClientConfig::new(BOOTSTRAP);
        assert_eq!(
            table.resolve(&config, other),
            Resolution::UnknownTopic("other")
        );
        let unsharded = ClientConfig {
            shard_aware: false,
            ..config
        };
        assert_eq!(table.resolve(&unsharded, other), address(9000));
    }
}
