//! The `borough` command line, a library function so an application's own binary runs it
//! too, with its handlers ([`main_with`]): `borough start` runs a node; `borough event
//! put|get|scan`, `borough kv get|put|del|batch|scan|info`, `borough map
//! set|get|delete|keys|watch`, `borough request`, `borough
//! cluster status` and `borough status` are clients of a node's HTTP API; `borough bench` is
//! its load generator. Like the production shell, it may touch the OS (processes, sockets,
//! wall time).
//!
//! With no config at all, `borough start` runs one node with its data under
//! `./borough-data`, its client API on 127.0.0.1:7480 and its peer port on 127.0.0.1:7481.

pub mod bench;
pub mod feed_bench;
pub mod kv;
pub mod map;

use crate::cli::bench::{run_bench, BenchFlags};
use crate::production::config::{LogFormat, ShellConfig, StartFlags};
use crate::production::handlers::HandlerRegistry;
use crate::production::server::{serve_with, shutdown_signal, ServeOptions, Served};
use crate::production::HttpClient;
use clap::{Parser, Subcommand};
use hyper::StatusCode;
use std::io::{IsTerminal, Read};
use std::process::ExitCode;
use std::time::Duration;
use tracing_subscriber::EnvFilter;

pub(crate) const DEFAULT_NODE_URL: &str = "http://127.0.0.1:7480";
pub(crate) const CLIENT_TIMEOUT: Duration = Duration::from_secs(35);

#[derive(Parser)]
#[command(
    name = "borough",
    version,
    about = "Borough: a partitioned, Raft-replicated database node and its client"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node (config file, then flags, then defaults).
    Start(Box<StartFlags>),
    /// Store, read and scan events through a node's HTTP API.
    Event {
        #[command(subcommand)]
        command: EventCommand,
    },
    /// Read and write keys of named partitions through any node.
    Kv {
        #[command(subcommand)]
        command: crate::cli::kv::KvCommand,
    },
    /// Set, read, delete and watch keys of shared maps through any node.
    Map {
        #[command(subcommand)]
        command: crate::cli::map::MapCommand,
    },
    /// Send a request to a partition's handler (it runs on the partition's leader, with the
    /// handler the nodes were started with, `--handler`) and print its reply.
    Request {
        /// A node's client API, as HOST:PORT or http://HOST:PORT (any node routes it).
        #[arg(long, default_value = DEFAULT_NODE_URL)]
        node: String,
        /// Milliseconds to wait for the reply.
        #[arg(long, default_value_t = 5000)]
        timeout_ms: u64,
        /// The partition's name.
        partition: String,
        /// The request body (for `echo` and `kv`, JSON); read from standard input when absent.
        body: Option<String>,
    },
    /// The cluster: its members, zones and partitions.
    Cluster {
        #[command(subcommand)]
        command: crate::cli::kv::ClusterCommand,
    },
    /// Drain a node out of its cluster: its replicas and leaderships move to the other
    /// nodes, then it leaves the directory and stops. Waits until it stopped.
    Leave {
        /// The leaving node's client API, as HOST:PORT or http://HOST:PORT.
        #[arg(long, default_value = DEFAULT_NODE_URL)]
        node: String,
        /// Return once the node accepted, without following it.
        #[arg(long)]
        no_wait: bool,
    },
    /// Drive a cluster (or a throwaway local 3-node one) with a closed-loop HTTP write load and
    /// print events/s and latency percentiles per commit level; `--etcd` drives etcd instead.
    Bench(BenchFlags),
    /// Measure the fan-out of change feeds: one writer at a fixed rate, many subscribers
    /// over the nodes (or etcd watchers, `--etcd`); prints delivery latency and memory.
    BenchFeeds(crate::cli::feed_bench::FeedBenchFlags),
    /// Print a node's health: its id, place and peers.
    Status {
        /// The node's client API, as HOST:PORT or http://HOST:PORT.
        #[arg(long, default_value = DEFAULT_NODE_URL)]
        node: String,
    },
}

#[derive(Subcommand)]
enum EventCommand {
    /// Store an event (JSON from the argument, or standard input); prints its key.
    Put {
        /// The node's client API, as HOST:PORT or http://HOST:PORT.
        #[arg(long, default_value = DEFAULT_NODE_URL)]
        node: String,
        /// ONE, QUORUM or ALL; the node's default when absent.
        #[arg(long)]
        commit: Option<String>,
        /// The event as JSON; read from standard input when absent.
        event: Option<String>,
    },
    /// Print the event stored under KEY.
    Get {
        /// The node's client API, as HOST:PORT or http://HOST:PORT.
        #[arg(long, default_value = DEFAULT_NODE_URL)]
        node: String,
        key: String,
    },
    /// Print events in key order, one JSON object per line.
    Scan {
        /// The node's client API, as HOST:PORT or http://HOST:PORT.
        #[arg(long, default_value = DEFAULT_NODE_URL)]
        node: String,
        /// First key (inclusive).
        #[arg(long)]
        from: Option<String>,
        /// Exclusive upper bound.
        #[arg(long)]
        to: Option<String>,
        /// Most events printed, 1 to 10000.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
}

/// Runs the `borough` command line with `handlers` on offer to `borough start --handler`:
/// the `borough` binary offers the built-in ones; an application's binary adds its own.
pub fn main_with(handlers: HandlerRegistry) -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("borough: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = match cli.command {
        Command::Start(flags) => start(&runtime, *flags, handlers),
        Command::Event { command } => runtime.block_on(event(command)),
        Command::Kv { command } => runtime.block_on(crate::cli::kv::kv(command)),
        Command::Map { command } => runtime.block_on(crate::cli::map::map(command)),
        Command::Request {
            node,
            timeout_ms,
            partition,
            body,
        } => runtime.block_on(crate::cli::kv::request(node, partition, body, timeout_ms)),
        Command::Cluster { command } => runtime.block_on(crate::cli::kv::cluster(command)),
        Command::Leave { node, no_wait } => runtime.block_on(crate::cli::kv::leave(node, !no_wait)),
        Command::Bench(flags) => runtime.block_on(run_bench(flags)).map(|_| ()),
        Command::BenchFeeds(flags) => runtime.block_on(crate::cli::feed_bench::run(flags)),
        Command::Status { node } => runtime.block_on(status(node)),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("borough: {message}");
            ExitCode::FAILURE
        }
    }
}

fn start(
    runtime: &tokio::runtime::Runtime,
    flags: StartFlags,
    handlers: HandlerRegistry,
) -> Result<(), String> {
    let config = ShellConfig::resolve(&flags).map_err(|error| error.to_string())?;
    crate::production::fail_fast::exit_on_panic();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour only on a terminal: logs redirected to a file stay plain text.
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Human => subscriber.init(),
        LogFormat::Json => subscriber.json().init(),
    }
    let options = ServeOptions {
        handlers,
        started: None,
    };
    match runtime.block_on(serve_with(config, options, shutdown_signal()))? {
        Served::Stopped => Ok(()),
        Served::StartOver => start_over(),
    }
}

/// Replaces this process with a new run of the same command: it finds the data dir marked
/// to be emptied and joins as a new member. Exec keeps the pid, so a supervisor sees one
/// process throughout; every descriptor is close-on-exec, the ports and the lock with them.
fn start_over() -> Result<(), String> {
    use std::os::unix::process::CommandExt;
    let program =
        std::env::current_exe().map_err(|error| format!("cannot find this program: {error}"))?;
    let error = std::process::Command::new(program)
        .args(std::env::args_os().skip(1))
        .exec();
    Err(format!("cannot start over as a new member: {error}"))
}

/// The URL of `path` on `node`, which may be given as `HOST:PORT` or as an `http://` URL.
pub(crate) fn url(node: &str, path: &str) -> String {
    let node = node.trim_end_matches('/');
    if node.contains("://") {
        format!("{node}{path}")
    } else {
        format!("http://{node}{path}")
    }
}

/// Fails with the node's own error text unless the status is `expected`.
pub(crate) fn expect_status(
    response: &crate::production::http_client::HttpResponse,
    expected: StatusCode,
) -> Result<(), String> {
    if response.status == expected {
        return Ok(());
    }
    let detail = serde_json::from_slice::<serde_json::Value>(&response.body)
        .ok()
        .and_then(|body| {
            body.get("error")
                .and_then(|error| error.as_str().map(String::from))
        })
        .unwrap_or_else(|| response.body_text());
    Err(format!("{}: {detail}", response.status))
}

fn encode_query_value(value: &str) -> String {
    // Keys are digits, hex and '-', so only an unexpected character needs escaping.
    value
        .bytes()
        .map(|byte| match byte {
            b'0'..=b'9' | b'a'..=b'z' | b'A'..=b'Z' | b'-' | b'_' | b'.' => {
                (byte as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

async fn event(command: EventCommand) -> Result<(), String> {
    let client = HttpClient::new();
    match command {
        EventCommand::Put {
            node,
            commit,
            event,
        } => {
            let body = match event {
                Some(event) => event.into_bytes(),
                None => {
                    let mut body = Vec::new();
                    std::io::stdin()
                        .read_to_end(&mut body)
                        .map_err(|error| format!("reading the event from stdin: {error}"))?;
                    body
                }
            };
            let path = match commit {
                Some(level) => format!("/events?commit={}", encode_query_value(&level)),
                None => "/events".to_string(),
            };
            let response = client
                .post_json(&url(&node, &path), body, CLIENT_TIMEOUT)
                .await
                .map_err(|error| error.to_string())?;
            expect_status(&response, StatusCode::CREATED)?;
            let answer: serde_json::Value =
                serde_json::from_slice(&response.body).map_err(|error| error.to_string())?;
            println!("{}", answer["key"].as_str().unwrap_or_default());
        }
        EventCommand::Get { node, key } => {
            let response = client
                .get(
                    &url(&node, &format!("/events/{}", encode_query_value(&key))),
                    CLIENT_TIMEOUT,
                )
                .await
                .map_err(|error| error.to_string())?;
            expect_status(&response, StatusCode::OK)?;
            println!("{}", response.body_text());
        }
        EventCommand::Scan {
            node,
            from,
            to,
            limit,
        } => {
            let mut path = format!("/events?limit={limit}");
            if let Some(from) = from {
                path.push_str(&format!("&from={}", encode_query_value(&from)));
            }
            if let Some(to) = to {
                path.push_str(&format!("&to={}", encode_query_value(&to)));
            }
            let response = client
                .get(&url(&node, &path), CLIENT_TIMEOUT)
                .await
                .map_err(|error| error.to_string())?;
            expect_status(&response, StatusCode::OK)?;
            // Each event as the exact bytes stored: a parsed value would round numbers.
            #[derive(serde::Deserialize)]
            struct Scanned {
                key: String,
                event: Box<serde_json::value::RawValue>,
            }
            #[derive(serde::Deserialize)]
            struct Answer {
                events: Vec<Scanned>,
                #[serde(default)]
                unreachable_peers: Vec<u32>,
            }
            let answer: Answer =
                serde_json::from_slice(&response.body).map_err(|error| error.to_string())?;
            for scanned in answer.events {
                let key = serde_json::to_string(&scanned.key).map_err(|error| error.to_string())?;
                println!("{{\"key\":{key},\"event\":{}}}", scanned.event.get());
            }
            if !answer.unreachable_peers.is_empty() {
                eprintln!(
                    "borough: incomplete scan, unreachable peers: {:?}",
                    answer.unreachable_peers
                );
            }
        }
    }
    Ok(())
}

async fn status(node: String) -> Result<(), String> {
    let response = HttpClient::new()
        .get(&url(&node, "/health"), CLIENT_TIMEOUT)
        .await
        .map_err(|error| error.to_string())?;
    println!("{}", response.body_text());
    expect_status(&response, StatusCode::OK)
}
