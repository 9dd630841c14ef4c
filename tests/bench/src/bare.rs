//! The reference: a bare hyper 1 HTTP/1.1 server (no axum, no tower) on a unix socket,
//! answering every request with one fixed response. It runs in its own process (the bench
//! re-executes itself with `--bare-server SOCKET BODYFILE`) on the same kind of runtime as
//! the daemon (tokio multi-thread, one worker per CPU), so both servers are measured
//! out-of-process by the same load generator.

use std::convert::Infallible;
use std::path::Path;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::UnixListener;

/// Serves `body` with `status` and `content_type` on `socket` until killed.
pub fn serve(socket: &Path, body_file: &Path, status: u16, content_type: &str) -> Result<()> {
    let body = Bytes::from(
        std::fs::read(body_file).with_context(|| format!("cannot read {}", body_file.display()))?,
    );
    let status = StatusCode::from_u16(status).context("invalid --bare-status")?;
    let content_type =
        HeaderValue::from_str(content_type).context("invalid --bare-content-type")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let _ = std::fs::remove_file(socket);
        let listener = UnixListener::bind(socket)
            .with_context(|| format!("cannot listen on {}", socket.display()))?;
        loop {
            let (stream, _) = listener.accept().await.context("accept failed")?;
            let (body, content_type) = (body.clone(), content_type.clone());
            tokio::spawn(async move {
                let service = service_fn(move |_req: Request<Incoming>| {
                    let mut resp = Response::new(Full::new(body.clone()));
                    *resp.status_mut() = status;
                    resp.headers_mut()
                        .insert(CONTENT_TYPE, content_type.clone());
                    async move { Ok::<_, Infallible>(resp) }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}
