//! The production shell: the only part of the library allowed to touch the OS (clock, files,
//! sockets, threads, OS randomness). It gives the seams their real halves and runs the same
//! sans-IO `Node` the simulator runs, behind a TCP or HTTP peer transport and an HTTP API.

pub mod config;
pub mod console;
pub mod driver;
pub mod embedded;
pub mod fail_fast;
pub mod feed_sink;
mod file_disk;
pub mod handlers;
pub mod http_api;
pub mod http_client;
pub mod http_server;
pub mod http_transport;
pub mod kv_api;
pub mod map_api;
pub mod membership;
pub mod metrics;
mod os_rng;
pub mod peer_frame;
pub mod rejoin;
pub mod request_api;
pub mod server;
mod system_clock;
pub mod tcp_transport;

pub use file_disk::FileDisk;
pub use http_client::HttpClient;
pub use os_rng::os_seeded_rng;
pub use system_clock::SystemClock;
