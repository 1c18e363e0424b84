//! `borough kv get|put|del|batch|scan|info` and `borough cluster status`: a client of a
//! node's HTTP API for named partitions. Any node serves any partition (it routes to the
//! leader), so `--node` may name any member.

use crate::cli::{expect_status, url, CLIENT_TIMEOUT, DEFAULT_NODE_URL};
use crate::production::HttpClient;
use hyper::{Method, StatusCode};
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use serde_json::Value;
use std::io::{Read, Write};

#[derive(clap::Subcommand)]
pub enum KvCommand {
    /// Store VALUE (or standard input) under KEY in partition NAME.
    Put {
        #[arg(long, default_value = DEFAULT_NODE_URL)]
        node: String,
        name: String,
        key: String,
        value: Option<String>,
    },
    /// Print the value of KEY in partition NAME (its raw bytes).
    Get {
        #[arg(long, default_value = DEFAULT_NODE_URL)]
        node: String,
        name: String,
        key: String,
    },
    /// Delete KEY from partition NAME.
    Del {
        #[arg(long, default_value = DEFAULT_NODE_URL)]
        node: String,
        name: String,
        key: String,
    },
    /// Apply a batch atomically: a JSON list of {"type": "put"|"del", "key", "value"} from
    /// the argument or standard input.
    Batch {
        #[arg(long, default_value = DEFAULT_NODE_URL)]
        node: String,
        name: String,
        operations: Option<String>,
    },
    /// Print the pairs of a key range, one JSON object per line, reading page after page.
    Scan {
        #[arg(long, default_value = DEFAULT_NODE_URL)]
        node: String,
        name: String,
        /// First key (inclusive).
        #[arg(long)]
        start: Option<String>,
        /// End key (exclusive).
        #[arg(long)]
        end: Option<String>,
        /// Lower bound, exclusive (instead of --start).
        #[arg(long)]
        gt: Option<String>,
        /// Upper bound, inclusive (instead of --end).
        #[arg(long)]
        lte: Option<String>,
        /// Most pairs printed.
        #[arg(long)]
        limit: Option<u64>,
        /// Last key first.
        #[arg(long)]
        reverse: bool,
    },
    /// Print where partition NAME runs: its replicas, leader, term, indexes and size.
    Info {
        #[arg(long, default_value = DEFAULT_NODE_URL)]
        node: String,
        name: String,
    },
}

#[derive(clap::Subcommand)]
pub enum ClusterCommand {
    /// Print the cluster as a node sees it: members, zones, partitions and leaders.
    Status {
        #[arg(long, default_value = DEFAULT_NODE_URL)]
        node: String,
    },
}

fn segment(text: &str) -> String {
    utf8_percent_encode(text, NON_ALPHANUMERIC).to_string()
}

fn key_path(name: &str, key: &str) -> String {
    format!("/partitions/{}/keys/{}", segment(name), segment(key))
}

fn read_stdin(what: &str) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    std::io::stdin()
        .read_to_end(&mut body)
        .map_err(|error| format!("reading the {what} from stdin: {error}"))?;
    Ok(body)
}

async fn call(
    method: Method,
    node: &str,
    path: &str,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> Result<crate::production::http_client::HttpResponse, String> {
    HttpClient::new()
        .request(method, &url(node, path), content_type, body, CLIENT_TIMEOUT)
        .await
        .map_err(|error| error.to_string())
}

fn json(body: &[u8]) -> Result<Value, String> {
    serde_json::from_slice(body).map_err(|error| format!("the node answered {error}"))
}

/// `borough request`: sends `body` (standard input when absent) to partition `name`'s
/// handler through `node` and prints the reply.
pub async fn request(
    node: String,
    name: String,
    body: Option<String>,
    timeout_ms: u64,
) -> Result<(), String> {
    let body = match body {
        Some(body) => body.into_bytes(),
        None => read_stdin("request body")?,
    };
    let path = format!(
        "/partitions/{}/requests?timeout_ms={timeout_ms}",
        segment(&name)
    );
    let timeout = std::time::Duration::from_millis(timeout_ms) + CLIENT_TIMEOUT;
    let response = HttpClient::new()
        .request(
            Method::POST,
            &url(&node, &path),
            Some("application/octet-stream"),
            body,
            timeout,
        )
        .await
        .map_err(|error| error.to_string())?;
    expect_status(&response, StatusCode::OK)?;
    let mut out = std::io::stdout().lock();
    std::io::Write::write_all(&mut out, &response.body)
        .and_then(|()| std::io::Write::write_all(&mut out, b"\n"))
        .map_err(|error| format!("writing the reply: {error}"))
}

pub async fn kv(command: KvCommand) -> Result<(), String> {
    match command {
        KvCommand::Put {
            node,
            name,
            key,
            value,
        } => {
            let value = match value {
                Some(value) => value.into_bytes(),
                None => read_stdin("value")?,
            };
            let response = call(Method::PUT, &node, &key_path(&name, &key), None, value).await?;
            expect_status(&response, StatusCode::NO_CONTENT)
        }
        KvCommand::Get { node, name, key } => {
            let response =
                call(Method::GET, &node, &key_path(&name, &key), None, Vec::new()).await?;
            expect_status(&response, StatusCode::OK)?;
            let mut stdout = std::io::stdout();
            stdout
                .write_all(&response.body)
                .and_then(|()| {
                    if std::io::IsTerminal::is_terminal(&stdout) {
                        stdout.write_all(b"\n")
                    } else {
                        Ok(())
                    }
                })
                .map_err(|error| error.to_string())
        }
        KvCommand::Del { node, name, key } => {
            let response = call(
                Method::DELETE,
                &node,
                &key_path(&name, &key),
                None,
                Vec::new(),
            )
            .await?;
            expect_status(&response, StatusCode::OK)?;
            let answer = json(&response.body)?;
            if answer["deleted"] == Value::Bool(false) {
                eprintln!("borough: there was no such key");
            }
            Ok(())
        }
        KvCommand::Batch {
            node,
            name,
            operations,
        } => {
            let body = match operations {
                Some(operations) => operations.into_bytes(),
                None => read_stdin("batch")?,
            };
            let path = format!("/partitions/{}/batch", segment(&name));
            let response = call(Method::POST, &node, &path, Some("application/json"), body).await?;
            expect_status(&response, StatusCode::NO_CONTENT)
        }
        KvCommand::Scan {
            node,
            name,
            start,
            end,
            gt,
            lte,
            limit,
            reverse,
        } => {
            let mut query = Vec::new();
            for (field, value) in [("start", start), ("end", end), ("gt", gt), ("lte", lte)] {
                if let Some(value) = value {
                    query.push(format!("{field}={}", segment(&value)));
                }
            }
            if let Some(limit) = limit {
                query.push(format!("limit={limit}"));
            }
            if reverse {
                query.push("reverse=true".to_string());
            }
            let base = format!("/partitions/{}/keys", segment(&name));
            let mut path = format!("{base}?{}", query.join("&"));
            loop {
                let response = call(Method::GET, &node, &path, None, Vec::new()).await?;
                expect_status(&response, StatusCode::OK)?;
                let page = json(&response.body)?;
                for pair in page["pairs"].as_array().into_iter().flatten() {
                    println!("{pair}");
                }
                match page["next"].as_str() {
                    Some(token) => path = format!("{base}?continue={}", segment(token)),
                    None => return Ok(()),
                }
            }
        }
        KvCommand::Info { node, name } => {
            let path = format!("/partitions/{}", segment(&name));
            let response = call(Method::GET, &node, &path, None, Vec::new()).await?;
            expect_status(&response, StatusCode::OK)?;
            let info = json(&response.body)?;
            print_info(&info);
            Ok(())
        }
    }
}

fn text(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Null => "-".to_string(),
        other => other.to_string(),
    }
}

fn print_info(info: &Value) {
    let name = info
        .get("name")
        .or_else(|| info.get("name_base64"))
        .map(text)
        .unwrap_or_default();
    println!("partition   {name}");
    println!("leader      {}", text(&info["leader"]));
    println!("term        {}", text(&info["term"]));
    println!(
        "commit      {}   applied {}",
        text(&info["commit_index"]),
        text(&info["applied_index"])
    );
    match info.get("size") {
        Some(size) => println!(
            "size        {} keys, {} bytes",
            text(&size["keys"]),
            text(&size["bytes"])
        ),
        None => println!("size        unknown: {}", text(&info["size_error"])),
    }
    println!("generation  {}", text(&info["generation"]));
    println!("replicas");
    for replica in info["replicas"].as_array().into_iter().flatten() {
        println!(
            "  {:>4}  {:<22} zone {:<10} {:<9} applied {}{}",
            text(&replica["id"]),
            text(&replica["peer_address"]),
            text(&replica["zone"]),
            text(&replica["role"]),
            text(&replica["applied_index"]),
            replica
                .get("error")
                .map(|error| format!("  ({})", text(error)))
                .unwrap_or_default()
        );
    }
}

/// Drains a node out of its cluster and, unless told not to wait, follows it until it
/// stops: its replicas move to the other nodes first.
pub async fn leave(node: String, wait: bool) -> Result<(), String> {
    let response = call(Method::POST, &node, "/cluster/leave", None, Vec::new()).await?;
    expect_status(&response, StatusCode::ACCEPTED)?;
    println!("node {node} is leaving: its replicas move to the other nodes");
    if !wait {
        return Ok(());
    }
    let mut last = String::new();
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let Ok(response) = call(Method::GET, &node, "/cluster", None, Vec::new()).await else {
            println!("node {node} stopped: it left the cluster");
            return Ok(());
        };
        let Ok(view) = json(&response.body) else {
            continue;
        };
        let me = text(&view["node"]);
        let replicas = view["members"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|member| text(&member["id"]) == me)
            .map(|member| text(&member["replicas"]))
            .unwrap_or_default();
        let line = format!(
            "{}: {} replicas still placed here, {} partitions moving",
            text(&view["membership"]),
            replicas,
            text(&view["moving_count"])
        );
        if line != last {
            println!("{line}");
            last = line;
        }
    }
}

pub async fn cluster(command: ClusterCommand) -> Result<(), String> {
    let ClusterCommand::Status { node } = command;
    let response = call(Method::GET, &node, "/cluster", None, Vec::new()).await?;
    expect_status(&response, StatusCode::OK)?;
    let view = json(&response.body)?;
    println!(
        "cluster {}  (seen from node {}, {})",
        text(&view["cluster_name"]),
        text(&view["node"]),
        text(&view["membership"])
    );
    println!(
        "directory leader {}, voters {}",
        text(&view["directory_leader"]),
        text(&view["directory_voters"])
    );
    println!("members");
    for member in view["members"].as_array().into_iter().flatten() {
        println!(
            "  {:>4}  peer {:<22} http {:<22} {}/{}  {:<8} replicas {:>5}  leads {:>5}",
            text(&member["id"]),
            text(&member["peer_address"]),
            text(&member["http_address"]),
            text(&member["region"]),
            text(&member["zone"]),
            text(&member["state"]),
            text(&member["replicas"]),
            text(&member["leads"])
        );
    }
    println!(
        "partitions ({}, {} moving)",
        text(&view["partition_count"]),
        text(&view["moving_count"])
    );
    for partition in view["partitions"].as_array().into_iter().flatten() {
        let name = partition
            .get("name")
            .or_else(|| partition.get("name_base64"))
            .map(text)
            .unwrap_or_default();
        println!(
            "  {:<24} replicas {:<12} leader {}",
            name,
            text(&partition["replicas"]),
            text(&partition["leader"])
        );
    }
    Ok(())
}
