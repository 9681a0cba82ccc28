//! Stand-in for the Kafka side of `TestServer` until the kafka-listener branch is merged:
//! that branch gives `TestServer` its own `kafka_ports` and `kafka_bootstrap()`, whose
//! inherent method then takes precedence over this trait's, and this file goes.

use super::server::TestServer;

pub trait KafkaListener {
    /// `host:port` a Kafka client bootstraps from.
    fn kafka_bootstrap(&self) -> String;
    /// Each shard's Kafka (broker) port, by shard.
    fn kafka_ports(&self) -> Vec<u16>;
}

impl KafkaListener for TestServer {
    fn kafka_bootstrap(&self) -> String {
        panic!("this cairn serve has no Kafka listener yet (the kafka-listener branch adds it)")
    }

    fn kafka_ports(&self) -> Vec<u16> {
        panic!("this cairn serve has no Kafka listener yet (the kafka-listener branch adds it)")
    }
}
