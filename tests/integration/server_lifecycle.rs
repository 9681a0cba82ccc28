//! The server's life at its edges, as a real `cairn serve` process: it refuses a listen
//! address another process holds (RELIABILITY.md, promise 9).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use cairn_server::client::{BlockingClient, ClientConfig};

use crate::support::server::{TestServer, serve_until_exit};

fn client_at(address: SocketAddr, shard_aware: bool) -> BlockingClient {
    let mut config = ClientConfig::new(address);
    config.shard_aware = shard_aware;
    // Bounded below the test's own bounds, so a hung server shows as a failed assertion
    // on the server, not as a client thread that never returns.
    config.request_timeout = Duration::from_secs(15);
    BlockingClient::connect(config).expect("client connects")
}

/// Asserts that a second server on an address the first one holds exits by itself, non-zero,
/// naming that address, and that the first server still serves everything afterwards.
fn assert_second_server_refused(first: &TestServer, taken: SocketAddr, extra_args: &[&str]) {
    let temp = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let second = serve_until_exit(
        &temp.path().join("data"),
        extra_args,
        Duration::from_secs(5),
    );
    let elapsed = started.elapsed();
    let status = second.status.unwrap_or_else(|| {
        panic!(
            "a second server with {extra_args:?} was still running after 5 s: it shares \
             {taken} with the first (stdout {:?})",
            second.stdout
        )
    });
    assert!(!status.success(), "second server exited {status:?}");
    assert!(
        second
            .stderr
            .contains(&format!("address {taken} is already in use")),
        "stderr names the address: {:?}",
        second.stderr
    );
    assert!(
        !second.stdout.contains("listening on"),
        "it never listened: {:?}",
        second.stdout
    );
    eprintln!(
        "second server refused in {elapsed:?}: {}",
        second.stderr.trim()
    );

    // The first server is untouched: new connections on the shared address, which the
    // kernel spreads over its shards' listeners, are all answered with its shard ports.
    for attempt in 0..16 {
        let mut client = client_at(first.address, false);
        client.ping().unwrap();
        let metadata = client.metadata().unwrap();
        assert_eq!(metadata.shard_ports, first.shard_ports, "attempt {attempt}");
    }
}

#[test]
fn a_second_server_on_a_listen_address_in_use_exits_naming_it() {
    let first = TestServer::start();
    client_at(first.address, true)
        .create_topic("mine", 2)
        .unwrap();

    let shared = first.address.to_string();
    assert_second_server_refused(&first, first.address, &["--listen", &shared]);

    // A fixed shard port (`--port-base`) that the first server's shard 0 holds.
    let shard_port = first.shard_ports[0];
    let taken = SocketAddr::new(first.address.ip(), shard_port);
    assert_second_server_refused(&first, taken, &["--port-base", &shard_port.to_string()]);

    let mut client = client_at(first.address, true);
    let metadata = client.metadata().unwrap();
    assert_eq!(metadata.topics.len(), 1, "the first server's catalog");
    assert_eq!(metadata.topics[0].name, "mine");
}
