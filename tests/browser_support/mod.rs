//! Support for the browser tests (`tests/browser.rs`): a `chromedriver` child process on a
//! free loopback port, headless Chromium sessions opened through it with `fantoccini`, and
//! blocking wrappers for what the tests do with a page (run a script, wait for a condition,
//! count elements, take a screenshot).
//!
//! Everything is killed when dropped: each session is closed, then `chromedriver` and every
//! browser it started (they share the process group it was given) get SIGKILL. A test that
//! fails prints the tail of chromedriver's log.
//!
//! WebDriver client: `fantoccini` (no default features: no TLS stack), which runs on the
//! hyper 1 / hyper-util / tokio the crate has already; `thirtyfour` would bring reqwest and
//! more to build.
//!
//! `chromedriver` must be on PATH: without it the tests fail and say how to install it
//! (Debian's `chromium` and `chromium-driver`; `.ci/run` installs them), rather than skip.

// Tests measure wall time and look up PATH; the disallowed-methods lint guards the
// deterministic core, not the tests.
#![allow(clippy::disallowed_methods)]
#![allow(dead_code)]

use fantoccini::wd::Capabilities;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{json, Value};
use std::future::Future;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// Chromium's flags: new headless mode, no sandbox (CI runs as root), no GPU, /tmp instead of
/// a small /dev/shm, and a window large enough for the console's two panels.
pub const CHROMIUM_ARGUMENTS: [&str; 5] = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--window-size=1400,900",
];
/// Where Debian's `chromium` package puts the browser; chromedriver's own default otherwise.
const DEBIAN_CHROMIUM: &str = "/usr/bin/chromium";
/// How long chromedriver may take to answer `/status` after it starts.
const DRIVER_START_TIMEOUT: Duration = Duration::from_secs(20);
/// A WebDriver script (sync or async) ends within this; also the page-load bound.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(30);
const POLL_INTERVAL: Duration = Duration::from_millis(50);
const LOG_TAIL_LINES: usize = 30;
const DRIVER_START_ATTEMPTS: u32 = 3;

/// What to tell a developer whose machine has no chromedriver.
const INSTALL_HINT: &str =
    "the browser tests drive a real headless Chromium through chromedriver, \
     which is not on PATH: install Debian's `chromium chromium-driver` (apt-get install -y \
     chromium chromium-driver); CI's .ci/run installs them when missing";

/// A running `chromedriver`, and the runtime its WebDriver clients run on.
pub struct Browser {
    runtime: tokio::runtime::Runtime,
    driver: Option<Child>,
    pub port: u16,
    log_directory: TempDir,
}

impl std::fmt::Debug for Browser {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Browser")
            .field("port", &self.port)
            .finish()
    }
}

impl Browser {
    /// Starts `chromedriver --port=<free port>` and waits until it is ready. Panics (with the
    /// install hint) when there is no chromedriver on PATH.
    pub fn start() -> Browser {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a tokio runtime for the WebDriver clients");
        let log_directory = tempfile::Builder::new()
            .prefix("borough-browser-test-")
            .tempdir()
            .expect("a temporary directory for chromedriver's log");
        let log_path = log_directory.path().join("chromedriver.log");
        let mut last_failure = String::new();
        for attempt in 1..=DRIVER_START_ATTEMPTS {
            let port = super::cluster_support::free_ports(1)[0];
            let mut driver = spawn_driver(port, &log_path);
            match wait_until_ready(&mut driver, port) {
                Ok(()) => {
                    return Browser {
                        runtime,
                        driver: Some(driver),
                        port,
                        log_directory,
                    }
                }
                Err(failure) => {
                    kill_group(driver);
                    last_failure = format!("{failure}\n{}", log_tail(&log_path));
                    eprintln!("chromedriver start attempt {attempt} failed: {last_failure}");
                }
            }
        }
        panic!("chromedriver did not start: {last_failure}");
    }

    fn capabilities() -> Capabilities {
        let mut options = json!({ "args": CHROMIUM_ARGUMENTS });
        if Path::new(DEBIAN_CHROMIUM).exists() {
            options["binary"] = json!(DEBIAN_CHROMIUM);
        }
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": options,
            "timeouts": {
                "script": SCRIPT_TIMEOUT.as_millis() as u64,
                "pageLoad": SCRIPT_TIMEOUT.as_millis() as u64,
                "implicit": 0,
            },
        });
        match capabilities {
            Value::Object(map) => map,
            _ => unreachable!("an object literal"),
        }
    }

    fn block_on<F: Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }

    /// Opens a new browser (its own WebDriver session, so its own Chromium) at `url`.
    pub fn open(&self, label: &str, url: &str) -> Page<'_> {
        let webdriver = format!("http://127.0.0.1:{}", self.port);
        let client = self
            .block_on(async {
                ClientBuilder::new(HttpConnector::new())
                    .capabilities(Browser::capabilities())
                    .connect(&webdriver)
                    .await
            })
            .unwrap_or_else(|error| {
                panic!(
                    "page {label}: no WebDriver session: {error}\n{}",
                    self.log_tail()
                )
            });
        let page = Page {
            browser: self,
            client: Some(client),
            label: label.to_string(),
        };
        page.block(|client| async move { client.goto(url).await })
            .unwrap_or_else(|error| panic!("page {label}: cannot open {url}: {error}"));
        page
    }

    /// The last lines of chromedriver's log, for failure messages.
    pub fn log_tail(&self) -> String {
        log_tail(&self.log_directory.path().join("chromedriver.log"))
    }
}

fn spawn_driver(port: u16, log_path: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .expect("open chromedriver's log");
    let log_for_stderr = log.try_clone().expect("clone the log handle");
    let spawned = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_for_stderr)
        // Its own process group: the browsers it starts join it, and drop kills the group.
        .process_group(0)
        .spawn();
    match spawned {
        Ok(child) => child,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => panic!("{INSTALL_HINT}"),
        Err(error) => panic!("cannot start chromedriver: {error}. {INSTALL_HINT}"),
    }
}

fn wait_until_ready(driver: &mut Child, port: u16) -> Result<(), String> {
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + DRIVER_START_TIMEOUT;
    loop {
        if let Ok(Some(status)) = driver.try_wait() {
            return Err(format!("chromedriver exited with {status}"));
        }
        let status = super::cluster_support::http_request(
            address,
            "GET",
            "/status",
            None,
            Duration::from_secs(2),
        );
        if let Ok(response) = status {
            if response.status == 200
                && response
                    .json()
                    .is_ok_and(|status| status["value"]["ready"] == true)
            {
                return Ok(());
            }
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "chromedriver on port {port} not ready within {DRIVER_START_TIMEOUT:?}"
            ));
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// SIGKILL to chromedriver's process group (it and the browsers it started), then reaps it.
fn kill_group(mut driver: Child) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", driver.id())])
        .stderr(Stdio::null())
        .status();
    let _ = driver.kill();
    let _ = driver.wait();
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    format!(
        "---- chromedriver log tail ({}) ----\n{}",
        path.display(),
        lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
    )
}

impl Drop for Browser {
    fn drop(&mut self) {
        if self.driver.is_some() && std::thread::panicking() {
            eprintln!("browser test failed; {}", self.log_tail());
        }
        if let Some(driver) = self.driver.take() {
            kill_group(driver);
        }
    }
}

/// One browser session showing one page.
pub struct Page<'browser> {
    browser: &'browser Browser,
    client: Option<Client>,
    pub label: String,
}

impl Page<'_> {
    fn block<T, F, Fut>(&self, action: F) -> T
    where
        F: FnOnce(Client) -> Fut,
        Fut: Future<Output = T>,
    {
        let client = self.client.clone().expect("the session is open");
        self.browser.block_on(action(client))
    }

    /// Runs `script` (a function body; `arguments` holds `args`) and returns what it returns.
    pub fn execute(&self, script: &str, args: Vec<Value>) -> Value {
        let script_owned = script.to_string();
        self.block(|client| async move { client.execute(&script_owned, args).await })
            .unwrap_or_else(|error| {
                panic!(
                    "page {}: script failed: {error}\n--- script ---\n{script}",
                    self.label
                )
            })
    }

    /// Runs `script` asynchronously: it ends by calling `arguments[arguments.length - 1]`
    /// with its answer.
    pub fn execute_async(&self, script: &str, args: Vec<Value>) -> Value {
        let script_owned = script.to_string();
        self.block(|client| async move { client.execute_async(&script_owned, args).await })
            .unwrap_or_else(|error| {
                panic!(
                    "page {}: async script failed: {error}\n--- script ---\n{script}",
                    self.label
                )
            })
    }

    /// Polls `script` until it returns `true`, for at most `timeout`; the failure says `what`
    /// and what `describe` (a script) returned last.
    pub fn wait_for(&self, what: &str, script: &str, describe: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.execute(script, Vec::new()) == Value::Bool(true) {
                return;
            }
            if Instant::now() >= deadline {
                let state = self.execute(describe, Vec::new());
                panic!(
                    "page {}: not within {timeout:?}: {what}; the page shows {state}",
                    self.label
                );
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// How many elements match the CSS `selector` (found through WebDriver).
    pub fn count(&self, selector: &str) -> usize {
        let selector_owned = selector.to_string();
        self.block(|client| async move { client.find_all(Locator::Css(&selector_owned)).await })
            .unwrap_or_else(|error| panic!("page {}: find {selector}: {error}", self.label))
            .len()
    }

    /// Saves a PNG screenshot of the page to `path` (creating its directory) and returns
    /// its size in bytes.
    pub fn screenshot(&self, path: &Path) -> usize {
        let png = self
            .block(|client| async move { client.screenshot().await })
            .unwrap_or_else(|error| panic!("page {}: screenshot: {error}", self.label));
        if let Some(directory) = path.parent() {
            std::fs::create_dir_all(directory)
                .unwrap_or_else(|error| panic!("create {}: {error}", directory.display()));
        }
        std::fs::write(path, &png)
            .unwrap_or_else(|error| panic!("write {}: {error}", path.display()));
        png.len()
    }

    /// Ends the session (its browser exits).
    pub fn close(mut self) {
        if let Some(client) = self.client.take() {
            let _ = self.browser.block_on(client.close());
        }
    }
}

impl Drop for Page<'_> {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            // Bounded: a wedged browser must not hang the test; the driver's drop kills it.
            let _ = self.browser.block_on(async {
                tokio::time::timeout(Duration::from_secs(5), client.close()).await
            });
        }
    }
}

/// Where the tests leave their screenshots: `target/browser-artifacts/`.
pub fn artifacts_directory() -> PathBuf {
    // CARGO_TARGET_TMPDIR is `<target>/tmp`; the artefacts go beside it.
    let target_tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    target_tmp
        .parent()
        .unwrap_or(target_tmp)
        .join("browser-artifacts")
}
