//! `borough map set|get|delete|keys|watch`: a client of a node's HTTP API for shared maps.
//! Any node serves any map. `watch` follows the map's change feed (Server-Sent Events) and
//! resumes from its last revision when the connection drops, so it prints every change once.

use crate::cli::{expect_status, url, CLIENT_TIMEOUT, DEFAULT_NODE_URL};
use crate::production::HttpClient;
use http_body_util::BodyExt;
use hyper::{Method, StatusCode};
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use serde_json::Value;
use std::io::Write;
use std::time::Duration;

/// A watch whose stream brings nothing (not even the node's keep-alive) this long reconnects.
const WATCH_SILENCE_MAX: Duration = Duration::from_secs(45);
/// Pause before a watch reconnects.
const WATCH_RECONNECT_PAUSE: Duration = Duration::from_millis(500);

#[derive(clap::Subcommand)]
pub enum MapCommand {
    /// Set KEY of map NAME to VALUE: JSON (`42`, `'{"a": 1}'`, `'"text"'`), or any other text,
    /// which is stored as a JSON string. Prints the change's revision.
    Set {
        #[arg(long, default_value = DEFAULT_NODE_URL)]
        node: String,
        name: String,
        key: String,
        value: String,
    },
    /// Print the value of KEY in map NAME, as JSON.
    Get {
        #[arg(long, default_value = DEFAULT_NODE_URL)]
        node: String,
        name: String,
        key: String,
    },
    /// Delete KEY from map NAME. Prints the change's revision.
    Delete {
        #[arg(long, default_value = DEFAULT_NODE_URL)]
        node: String,
        name: String,
        key: String,
    },
    /// Print the keys of map NAME, one a line (`--values`: with their values, as JSON).
    Keys {
        #[arg(long, default_value = DEFAULT_NODE_URL)]
        node: String,
        name: String,
        #[arg(long)]
        values: bool,
    },
    /// Follow map NAME: print the whole map, then every change as it is committed, until
    /// interrupted. Reconnects by itself and resumes where it was.
    Watch {
        #[arg(long, default_value = DEFAULT_NODE_URL)]
        node: String,
        name: String,
        /// Start after this revision instead of with the whole map.
        #[arg(long)]
        from_revision: Option<u64>,
        /// Print the feed's messages as they come, one JSON object a line.
        #[arg(long)]
        json: bool,
    },
}

fn segment(text: &str) -> String {
    utf8_percent_encode(text, NON_ALPHANUMERIC).to_string()
}

fn key_path(name: &str, key: &str) -> String {
    format!("/maps/{}/keys/{}", segment(name), segment(key))
}

/// VALUE as JSON text: itself when it is JSON, else the JSON string of it.
fn value_json(value: &str) -> String {
    match serde_json::from_str::<serde::de::IgnoredAny>(value) {
        Ok(_) => value.to_string(),
        Err(_) => Value::String(value.to_string()).to_string(),
    }
}

async fn call(
    method: Method,
    node: &str,
    path: &str,
    body: Vec<u8>,
) -> Result<crate::production::http_client::HttpResponse, String> {
    HttpClient::new()
        .request(
            method,
            &url(node, path),
            Some("application/json"),
            body,
            CLIENT_TIMEOUT,
        )
        .await
        .map_err(|error| error.to_string())
}

fn json(body: &[u8]) -> Result<Value, String> {
    serde_json::from_slice(body).map_err(|error| format!("the node answered {error}"))
}

pub async fn map(command: MapCommand) -> Result<(), String> {
    match command {
        MapCommand::Set {
            node,
            name,
            key,
            value,
        } => {
            let body = value_json(&value).into_bytes();
            let response = call(Method::PUT, &node, &key_path(&name, &key), body).await?;
            expect_status(&response, StatusCode::OK)?;
            println!("revision {}", json(&response.body)?["revision"]);
            Ok(())
        }
        MapCommand::Get { node, name, key } => {
            let response = call(Method::GET, &node, &key_path(&name, &key), Vec::new()).await?;
            expect_status(&response, StatusCode::OK)?;
            println!("{}", response.body_text());
            Ok(())
        }
        MapCommand::Delete { node, name, key } => {
            let response = call(Method::DELETE, &node, &key_path(&name, &key), Vec::new()).await?;
            expect_status(&response, StatusCode::OK)?;
            println!("revision {}", json(&response.body)?["revision"]);
            Ok(())
        }
        MapCommand::Keys { node, name, values } => {
            let path = format!("/maps/{}", segment(&name));
            let response = call(Method::GET, &node, &path, Vec::new()).await?;
            expect_status(&response, StatusCode::OK)?;
            let answer = json(&response.body)?;
            let mut out = std::io::stdout().lock();
            if let Some(entries) = answer["entries"].as_object() {
                for (key, value) in entries {
                    let line = if values {
                        format!("{key}\t{value}")
                    } else {
                        key.clone()
                    };
                    writeln!(out, "{line}").map_err(|error| error.to_string())?;
                }
            }
            Ok(())
        }
        MapCommand::Watch {
            node,
            name,
            from_revision,
            json,
        } => watch(&node, &name, from_revision, json).await,
    }
}

/// One feed message, for a person.
fn describe(message: &Value) -> String {
    let revision = &message["revision"];
    match message["type"].as_str() {
        Some("ready") => {
            let entries = message["entries"].as_object().cloned().unwrap_or_default();
            let mut text = format!("r{revision} ready: {} keys", entries.len());
            for (key, value) in entries {
                text.push_str(&format!("\n  {key} = {value}"));
            }
            text
        }
        Some("resumed") => format!("r{revision} resumed"),
        Some("set") => format!(
            "r{revision} set {} = {}",
            message["key"].as_str().unwrap_or("?"),
            message["value"]
        ),
        Some("delete") => format!(
            "r{revision} delete {} (was {})",
            message["key"].as_str().unwrap_or("?"),
            message["old_value"]
        ),
        Some("resync") => format!("cut off at r{revision}: {}", message["reason"]),
        _ => message.to_string(),
    }
}

async fn watch(node: &str, name: &str, from: Option<u64>, as_json: bool) -> Result<(), String> {
    let client = HttpClient::new();
    let mut revision = from;
    let mut failures = 0u32;
    loop {
        let path = match revision {
            Some(revision) => format!("/maps/{}/events?from_revision={revision}", segment(name)),
            None => format!("/maps/{}/events", segment(name)),
        };
        let opened = client.open_stream(&url(node, &path), CLIENT_TIMEOUT).await;
        let mut body = match opened {
            Ok((StatusCode::OK, body)) => {
                failures = 0;
                body
            }
            Ok((status, body)) => {
                let text = body
                    .collect()
                    .await
                    .map(|collected| String::from_utf8_lossy(&collected.to_bytes()).into_owned())
                    .unwrap_or_default();
                return Err(format!("{status}: {text}"));
            }
            Err(error) => {
                failures += 1;
                if failures > 20 {
                    return Err(error.to_string());
                }
                eprintln!("borough: {error}; reconnecting");
                tokio::time::sleep(WATCH_RECONNECT_PAUSE).await;
                continue;
            }
        };
        let mut pending = String::new();
        loop {
            let frame = match tokio::time::timeout(WATCH_SILENCE_MAX, body.frame()).await {
                Ok(Some(Ok(frame))) => frame,
                Ok(Some(Err(error))) => {
                    eprintln!("borough: the feed broke off ({error}); resuming");
                    break;
                }
                Ok(None) => {
                    eprintln!("borough: the node ended the feed; resuming");
                    break;
                }
                Err(_) => {
                    eprintln!("borough: the feed went silent; resuming");
                    break;
                }
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            pending.push_str(&String::from_utf8_lossy(&data));
            // An event ends with a blank line; its data line is the message.
            while let Some(end) = pending.find("\n\n") {
                let event: String = pending.drain(..end + 2).collect();
                let Some(data) = event.lines().find_map(|line| line.strip_prefix("data:")) else {
                    continue;
                };
                let Ok(message) = serde_json::from_str::<Value>(data.trim()) else {
                    continue;
                };
                if let Some(at) = message["revision"].as_u64() {
                    revision = Some(at);
                }
                let line = if as_json {
                    message.to_string()
                } else {
                    describe(&message)
                };
                let mut out = std::io::stdout().lock();
                writeln!(out, "{line}")
                    .and_then(|()| out.flush())
                    .map_err(|error| error.to_string())?;
            }
        }
        tokio::time::sleep(WATCH_RECONNECT_PAUSE).await;
    }
}
