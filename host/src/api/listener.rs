//! Serving the router on the API socket, with every connection bounded.
//!
//! - A client has [`Limits::header_timeout`] to send a request's headers; the same timer runs
//!   while a keep-alive connection waits for its next request, so a slow-loris connection
//!   and an idle one are both closed after it.
//! - A request body that stalls (no data for [`Limits::body_timeout`]) fails the request.
//! - At most [`Limits::max_connections`] connections are served at once, well below the
//!   open-file limit; further ones wait in the kernel's listen backlog until one closes, and
//!   the accepted ones keep working.
//! - On shutdown the listener closes, idle connections are closed, requests in flight finish;
//!   whatever still runs after [`Limits::shutdown_grace`] is cut off.

use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use axum::Router;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};
use tower::ServiceExt;

/// The most connections served at once, whatever the open-file limit allows (each costs
/// some memory even when idle).
pub const MAX_CONNECTIONS: usize = 4096;

/// What a connection may hold, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Time to send a request's headers, and the longest a keep-alive connection stays
    /// open waiting for its next request.
    pub header_timeout: Duration,
    /// Longest pause allowed inside a request body.
    pub body_timeout: Duration,
    /// Connections served at once.
    pub max_connections: usize,
    /// How long requests in flight may still run once shutdown begins.
    pub shutdown_grace: Duration,
}

impl Limits {
    /// The daemon's limits for a process allowed `open_files` descriptors: connections may
    /// use half of them (a restore holds two), at most [`MAX_CONNECTIONS`]; the rest stay
    /// for the state, plugins' commands, D-Bus and the journal.
    pub fn for_open_files(open_files: u64) -> Limits {
        let half = usize::try_from(open_files / 2).unwrap_or(usize::MAX);
        Limits {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(60),
            max_connections: half.clamp(1, MAX_CONNECTIONS),
            shutdown_grace: crate::lifecycle::DRAIN_DEADLINE,
        }
    }

    /// [`Limits::for_open_files`] with this process's current soft limit.
    pub fn for_this_process() -> Limits {
        Limits::for_open_files(crate::platform::limits::open_files())
    }
}

/// Pause after an accept error that is not about one connection (e.g. out of descriptors),
/// so that it is not retried in a busy loop.
const ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// Serves `router` on `listener` until `shutdown` completes, then shuts down gracefully
/// (see the module documentation). Accept errors are logged and retried, never fatal.
pub async fn serve(
    listener: UnixListener,
    router: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let (close_tx, close_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let mut shutdown = pin!(shutdown);
    loop {
        let permit = match permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                tracing::warn!(
                    limit = limits.max_connections,
                    "connection limit reached: new connections wait until one closes"
                );
                tokio::select! {
                    biased;
                    () = &mut shutdown => break,
                    p = permits.clone().acquire_owned() => p.expect("the semaphore is never closed"),
                }
            }
        };
        let stream = tokio::select! {
            biased;
            () = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok((stream, _)) => stream,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        while tasks.try_join_next().is_some() {}
        tasks.spawn(connection(
            stream,
            router.clone(),
            limits,
            permit,
            close_rx.clone(),
        ));
    }
    drop(listener);
    let _ = close_tx.send(true);
    let drained = tokio::time::timeout(limits.shutdown_grace, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            connections = tasks.len(),
            "requests still running {}s after shutdown began are cut off",
            limits.shutdown_grace.as_secs_f64()
        );
        tasks.shutdown().await;
    }
    Ok(())
}

fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset | Interrupted
    )
}

/// Serves one connection; `_permit` is its place under the connection cap.
async fn connection(
    stream: UnixStream,
    router: Router,
    limits: Limits,
    _permit: OwnedSemaphorePermit,
    mut close: watch::Receiver<bool>,
) {
    let body_timeout = limits.body_timeout;
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let req = req.map(|b| Body::new(StallTimeout::new(b, body_timeout)));
        router.clone().oneshot(req)
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    let mut conn = pin!(builder.serve_connection(TokioIo::new(stream), service));
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "connection closed");
            }
            return;
        }
        _ = close.wait_for(|c| *c) => {}
    }
    // Shutting down: an idle connection closes now, a request in flight finishes first.
    conn.as_mut().graceful_shutdown();
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, "connection closed");
    }
}

/// A request body that fails once no data arrived for `limit` while it was being read.
struct StallTimeout {
    inner: Incoming,
    limit: Duration,
    /// Made the first time a read finds no data (most requests have no body, or one that
    /// is already there: they never pay for a timer).
    timer: Option<Pin<Box<Sleep>>>,
    /// Whether `timer` runs: it starts when a read finds no data, and stops when data comes.
    armed: bool,
}

impl StallTimeout {
    fn new(inner: Incoming, limit: Duration) -> Self {
        StallTimeout {
            inner,
            limit,
            timer: None,
            armed: false,
        }
    }
}

/// The error a stalled body ends with.
#[derive(Debug, thiserror::Error)]
#[error("no data received for {0}s")]
struct Stalled(f64);

impl http_body::Body for StallTimeout {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.armed = false;
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                let deadline = Instant::now() + this.limit;
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if !this.armed {
                    this.armed = true;
                    timer.as_mut().reset(deadline);
                }
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        Poll::Ready(Some(Err(Stalled(this.limit.as_secs_f64()).into())))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_cap_stays_below_the_open_file_limit() {
        assert_eq!(Limits::for_open_files(1024).max_connections, 512);
        assert_eq!(
            Limits::for_open_files(65536).max_connections,
            MAX_CONNECTIONS
        );
        assert_eq!(Limits::for_open_files(1).max_connections, 1);
        assert!(Limits::for_open_files(1024).header_timeout < Duration::from_secs(30));
    }
}
