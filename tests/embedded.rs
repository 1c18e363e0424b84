//! The library API: a node started inside this process with an application's handler
//! (`borough::production::embedded`), used through its own calls and through its HTTP API,
//! then stopped.

use borough::application::{handler_fn, HandlerError};
use borough::partition::command::BatchOperation;
use borough::partition::kv_store::RangeQuery;
use borough::production::config::StartFlags;
use borough::production::embedded::NodeBuilder;
use borough::production::HttpClient;
use std::net::SocketAddr;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedded_node_runs_its_application_handler_and_serves_its_partitions() {
    let directory = tempfile::tempdir().unwrap();
    // Two distinct free ports (both held while picked).
    let (first, second) = (
        std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
        std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
    );
    let (http, peer): (SocketAddr, SocketAddr) =
        (first.local_addr().unwrap(), second.local_addr().unwrap());
    drop((first, second));
    // Counts its requests in the partition: a read, then a write, one request at a time.
    let counter = handler_fn(|_, context| async move {
        let partition = context.partition();
        let count: u64 = match partition.get("count").await? {
            Some(bytes) => String::from_utf8_lossy(&bytes)
                .parse()
                .map_err(|_| HandlerError::refused("a damaged count"))?,
            None => 0,
        };
        partition.put("count", (count + 1).to_string()).await?;
        Ok((count + 1).to_string().into_bytes())
    })
    .one_at_a_time();
    let node = NodeBuilder::new(StartFlags::default())
        .node_id(1)
        .http(http)
        .listen(peer)
        .data_dir(directory.path())
        .zone("zone-1")
        .handler(counter)
        .start()
        .await
        .unwrap();
    let whoami = node.whoami();
    assert_eq!(whoami.id.0, 1);
    assert_eq!((whoami.http, whoami.peer), (http, peer));

    for expected in ["1", "2", "3"] {
        let reply = loop {
            // A new single-node cluster elects its directory's leader first.
            match node.request("counters", b"{}".to_vec(), TIMEOUT).await {
                Ok(reply) => break reply,
                Err(error) if error.to_string().contains("no leader") => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Err(error) => panic!("{error}"),
            }
        };
        assert_eq!(reply, expected.as_bytes());
    }

    let counters = node.partition("counters").unwrap();
    assert_eq!(counters.get("count").await.unwrap(), Some(b"3".to_vec()));
    counters.put("colour", "blue").await.unwrap();
    counters
        .batch(vec![
            BatchOperation::Put {
                key: b"shape".to_vec(),
                value: b"round".to_vec(),
            },
            BatchOperation::Delete {
                key: b"colour".to_vec(),
            },
        ])
        .await
        .unwrap();
    assert_eq!(counters.get("colour").await.unwrap(), None);
    assert!(!counters.del("colour").await.unwrap());
    let page = counters.range(RangeQuery::default()).await.unwrap();
    let keys: Vec<&[u8]> = page.pairs.iter().map(|(key, _)| key.as_slice()).collect();
    assert_eq!(keys, [b"count".as_slice(), b"shape".as_slice()]);
    let info = counters
        .info()
        .await
        .unwrap()
        .expect("the partition is placed");
    assert_eq!(info.replicas.len(), 1);
    assert!(node.partition("").is_err(), "an empty name is refused");

    // Its HTTP API serves the same handler.
    let response = HttpClient::new()
        .post_json(
            &format!("http://{}/partitions/counters/requests", whoami.http),
            b"{}".to_vec(),
            TIMEOUT,
        )
        .await
        .unwrap();
    assert_eq!(response.status, 200, "{}", response.body_text());
    assert_eq!(response.body_text(), "4");

    node.stop().await.unwrap();
    assert!(
        std::net::TcpStream::connect(whoami.http).is_err(),
        "the client API closed"
    );
}
