//! Serving HTTP (the client API, and the peer endpoints of the HTTP transport) within bounds
//! that a hostile or broken client cannot get around.
//!
//! Invariants:
//! - at most `connections_max` connections are open at once; one more is answered 503 and
//!   closed at once (it never waits, so a flood of idle connections cannot exhaust the
//!   process's file descriptors and stop it answering its peers and its data files);
//! - a connection must send a complete request head within `header_read_timeout` of being
//!   opened or of its previous response (a half-sent request is not held);
//! - a connection on which no byte moves, either way, for `idle_timeout` is closed (an idle
//!   keep-alive connection, a client that stopped reading its answer);
//! - a request (its body included) is answered within `request_timeout`, with 408 if the
//!   client or the handler took too long;
//! - on shutdown, connections finish their current request, then close.

use crate::production::metrics::Metrics;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper::StatusCode;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;

/// The bounds of one HTTP server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpLimits {
    pub connections_max: usize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub request_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            connections_max: 512,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(45),
        }
    }
}

/// How long shutdown waits for open connections to finish their request.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How long an accept error (out of file descriptors, say) pauses the accept loop.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);
/// Refused connections lingering at once to let their 503 reach the client, how long each
/// lingers, and how much of what the client sent it reads away meanwhile.
const REFUSALS_LINGERING_MAX: usize = 64;
const REFUSAL_LINGER: Duration = Duration::from_millis(200);
const REFUSAL_DRAIN_BYTES_MAX: usize = 64 * 1024;

/// Serves `router` on `listener` within `limits` until `shutdown` completes.
pub async fn serve_http(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let request_timeout = limits.request_timeout;
    let router = router.layer(axum::middleware::from_fn(
        move |request: Request, next: Next| async move {
            match tokio::time::timeout(request_timeout, next.run(request)).await {
                Ok(response) => response,
                Err(_) => timed_out(request_timeout),
            }
        },
    ));
    let permits = Arc::new(Semaphore::new(limits.connections_max));
    let lingering = Arc::new(Semaphore::new(REFUSALS_LINGERING_MAX));
    let (stop, stopping) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = &mut shutdown => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) => {
                // EMFILE and the like: pause rather than spin, and keep serving the open ones.
                tracing::warn!(%error, "accepting an HTTP connection failed");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            metrics.count_refused_connection();
            refuse(stream, limits.connections_max, &lingering);
            continue;
        };
        let router = router.clone();
        let stopping = stopping.clone();
        tokio::spawn(async move {
            serve_connection(stream, router, limits, stopping).await;
            drop(permit);
        });
    }
    let _ = stop.send(true);
    // Every permit back means every connection closed.
    let all = u32::try_from(limits.connections_max).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, permits.acquire_many(all)).await;
}

fn timed_out(limit: Duration) -> Response {
    let body = serde_json::json!({
        "error": format!("the request was not completed within {} s", limit.as_secs()),
    });
    (StatusCode::REQUEST_TIMEOUT, axum::Json(body)).into_response()
}

/// Answers 503 and closes. The answer is written at once (whatever the socket takes now);
/// then, for a bounded number of connections at a time, the write side is shut and what the
/// client already sent is read and dropped for a moment, since closing a socket with unread
/// input resets it and the client would see the reset instead of the 503.
fn refuse(stream: TcpStream, connections_max: usize, lingering: &Arc<Semaphore>) {
    let body = format!(
        "{{\"error\":\"the server has its maximum of {connections_max} connections open; retry later\"}}"
    );
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\nretry-after: 1\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.try_write(response.as_bytes());
    let Ok(permit) = Arc::clone(lingering).try_acquire_owned() else {
        return;
    };
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = stream;
        let _ = stream.shutdown().await;
        let mut drained = [0u8; 4096];
        let _ = tokio::time::timeout(REFUSAL_LINGER, async {
            let mut total = 0;
            while total < REFUSAL_DRAIN_BYTES_MAX {
                match stream.read(&mut drained).await {
                    Ok(0) | Err(_) => break,
                    Ok(read) => total += read,
                }
            }
        })
        .await;
        drop(permit);
    });
}

async fn serve_connection(
    stream: TcpStream,
    router: Router,
    limits: HttpLimits,
    mut stopping: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let started = Instant::now();
    let last_activity = Arc::new(AtomicU64::new(0));
    let io = ActivityIo {
        inner: stream,
        started,
        last_activity: Arc::clone(&last_activity),
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    let connection = builder
        .serve_connection(TokioIo::new(io), TowerToHyperService::new(router))
        .with_upgrades();
    tokio::pin!(connection);
    let mut shutting_down = false;
    loop {
        let idle_since = started + Duration::from_millis(last_activity.load(Ordering::Relaxed));
        let idle_deadline = idle_since + limits.idle_timeout;
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(%error, "HTTP connection ended with an error");
                }
                return;
            }
            _ = tokio::time::sleep_until(idle_deadline) => {
                let moved = started + Duration::from_millis(last_activity.load(Ordering::Relaxed));
                if moved + limits.idle_timeout <= Instant::now() {
                    tracing::debug!(idle_s = limits.idle_timeout.as_secs(), "idle HTTP connection closed");
                    return;
                }
            }
            changed = stopping.changed(), if !shutting_down => {
                if changed.is_err() || *stopping.borrow() {
                    shutting_down = true;
                    connection.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// A stream that records when a byte last moved either way.
struct ActivityIo {
    inner: TcpStream,
    started: Instant,
    /// Milliseconds after `started`.
    last_activity: Arc<AtomicU64>,
}

impl ActivityIo {
    fn touch(&self) {
        let elapsed = self.started.elapsed().as_millis();
        self.last_activity.store(
            u64::try_from(elapsed).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }
}

impl AsyncRead for ActivityIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buffer.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(context, buffer);
        if matches!(polled, Poll::Ready(Ok(()))) && buffer.filled().len() > before {
            self.touch();
        }
        polled
    }
}

impl AsyncWrite for ActivityIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        bytes: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(context, bytes);
        if matches!(polled, Poll::Ready(Ok(written)) if written > 0) {
            self.touch();
        }
        polled
    }

    fn poll_flush(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(context)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(context)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffers: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(context, buffers);
        if matches!(polled, Poll::Ready(Ok(written)) if written > 0) {
            self.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn server(limits: HttpLimits) -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let router = Router::new()
            .route("/", get(|| async { "ok" }))
            .route(
                "/body",
                axum::routing::post(|body: String| async move { body }),
            )
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    "late"
                }),
            );
        tokio::spawn(serve_http(
            listener,
            router,
            limits,
            Arc::new(Metrics::default()),
            std::future::pending(),
        ));
        address
    }

    async fn read_all(stream: &mut TcpStream) -> String {
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
        String::from_utf8_lossy(&answer).into_owned()
    }

    #[tokio::test]
    async fn over_the_cap_a_connection_gets_503_and_the_others_still_work() {
        let address = server(HttpLimits {
            connections_max: 4,
            ..HttpLimits::default()
        })
        .await;
        let mut idle = Vec::new();
        for _ in 0..4 {
            idle.push(TcpStream::connect(address).await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        // A client that sends its request at once still reads the 503, not a reset.
        let mut extra = TcpStream::connect(address).await.unwrap();
        extra
            .write_all(b"POST /body HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhello")
            .await
            .unwrap();
        let answer = read_all(&mut extra).await;
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        assert!(answer.contains("maximum of 4 connections"), "{answer}");
        // The held connections are served.
        let mut first = idle.remove(0);
        first
            .write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        assert!(read_all(&mut first).await.starts_with("HTTP/1.1 200"));
        // Its slot is free again (as soon as the server has seen it close).
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let mut next = TcpStream::connect(address).await.unwrap();
            next.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
                .await
                .unwrap();
            let answer = read_all(&mut next).await;
            if answer.starts_with("HTTP/1.1 200") {
                break;
            }
            assert!(Instant::now() < deadline, "no slot came free: {answer}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn a_half_sent_request_and_an_idle_connection_are_closed() {
        let address = server(HttpLimits {
            header_read_timeout: Duration::from_millis(300),
            idle_timeout: Duration::from_millis(600),
            ..HttpLimits::default()
        })
        .await;
        let mut half = TcpStream::connect(address).await.unwrap();
        half.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n")
            .await
            .unwrap();
        let started = Instant::now();
        let mut buffer = [0u8; 256];
        let read = tokio::time::timeout(Duration::from_secs(3), half.read(&mut buffer)).await;
        assert!(
            matches!(read, Ok(Ok(_))),
            "a half-sent request was held: {read:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(2));

        let mut silent = TcpStream::connect(address).await.unwrap();
        let started = Instant::now();
        let read = tokio::time::timeout(Duration::from_secs(3), silent.read(&mut buffer)).await;
        assert!(matches!(read, Ok(Ok(0))), "an idle connection stayed open");
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    /// The idle timeout, apart from the header-read one: a client that asks for a large
    /// answer and stops reading it is cut off once nothing has moved for the idle timeout.
    #[tokio::test]
    async fn a_client_that_stops_reading_is_cut_off_after_the_idle_timeout() {
        let address = server(HttpLimits {
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_millis(500),
            request_timeout: Duration::from_millis(400),
            ..HttpLimits::default()
        })
        .await;
        let mut stream = TcpStream::connect(address).await.unwrap();
        stream
            .write_all(b"GET /big HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
        // The socket buffers hold some of the answer; after them the connection is closed.
        let mut received = 0usize;
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            match tokio::time::timeout(Duration::from_secs(3), stream.read(&mut buffer)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(read)) => received += read,
                Err(_) => panic!("the stalled connection was kept open"),
            }
        }
        assert!(received < 16 << 20, "the whole answer arrived: {received}");
    }

    #[tokio::test]
    async fn a_request_that_takes_too_long_is_answered_408() {
        let address = server(HttpLimits {
            request_timeout: Duration::from_millis(200),
            ..HttpLimits::default()
        })
        .await;
        let mut stream = TcpStream::connect(address).await.unwrap();
        stream
            .write_all(b"GET /slow HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let answer = read_all(&mut stream).await;
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        // A body that never finishes arriving is cut the same way.
        let mut stream = TcpStream::connect(address).await.unwrap();
        stream
            .write_all(b"POST /body HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{\"a\"")
            .await
            .unwrap();
        let answer = read_all(&mut stream).await;
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    }
}
