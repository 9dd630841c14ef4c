//! The load generator and the probes: hyper 1 HTTP/1.1 client connections over
//! `tokio::net::UnixStream`, one task per connection.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::{self, Connection, SendRequest};
use hyper::header::{HeaderMap, HOST};
use hyper::{Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tokio::task::JoinSet;

use crate::procs::Proc;
use crate::stats::Latencies;

/// One complete response.
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A keep-alive HTTP/1.1 client connection, driven by the task that uses it: each request
/// polls the connection and the response together, so the client adds no cross-task
/// wake-ups of its own.
pub struct Conn {
    sender: SendRequest<Empty<Bytes>>,
    conn: Connection<TokioIo<UnixStream>, Empty<Bytes>>,
}

impl Conn {
    async fn handshake(stream: UnixStream) -> Result<Conn> {
        let (sender, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .context("HTTP/1.1 handshake failed")?;
        Ok(Conn { sender, conn })
    }

    /// `GET uri`, the body read whole.
    pub async fn get(&mut self, uri: &Uri) -> Result<Reply> {
        let Conn { sender, conn } = self;
        let exchange = async {
            sender
                .ready()
                .await
                .context("the server closed the connection")?;
            let req = Request::get(uri.clone())
                .header(HOST, "localhost")
                .body(Empty::new())
                .context("cannot build the request")?;
            let resp = sender.send_request(req).await.context("request failed")?;
            let (parts, body) = resp.into_parts();
            let body = body
                .collect()
                .await
                .context("cannot read the response body")?
                .to_bytes();
            Ok(Reply {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        tokio::select! {
            reply = exchange => reply,
            end = conn => match end {
                Ok(()) => bail!("the server closed the connection"),
                Err(e) => Err(anyhow::Error::new(e).context("connection failed")),
            },
        }
    }
}

/// A keep-alive connection to `socket`.
pub async fn connect(socket: &Path) -> Result<Conn> {
    let stream = UnixStream::connect(socket)
        .await
        .with_context(|| format!("cannot connect to {}", socket.display()))?;
    Conn::handshake(stream).await
}

/// `GET path` on a new connection.
pub async fn get_once(socket: &Path, path: &str) -> Result<Reply> {
    connect(socket).await?.get(&path.parse()?).await
}

/// The result of one fixed-duration load run.
pub struct LoadRun {
    pub requests_per_sec: f64,
    pub latencies: Latencies,
}

/// `conns` keep-alive connections each sending `GET path` back to back for `warmup` +
/// `duration`; only responses completed within the `duration` window count.
pub async fn load(
    socket: &Path,
    path: &str,
    conns: usize,
    warmup: Duration,
    duration: Duration,
) -> Result<LoadRun> {
    let uri: Uri = path.parse()?;
    let mut senders = Vec::with_capacity(conns);
    for _ in 0..conns {
        senders.push(connect(socket).await?);
    }
    let start = Instant::now() + warmup;
    let end = start + duration;
    let mut tasks = JoinSet::new();
    for mut conn in senders {
        let uri = uri.clone();
        tasks.spawn(async move {
            let mut lat = Vec::with_capacity(64 * 1024);
            loop {
                let t0 = Instant::now();
                if t0 >= end {
                    break;
                }
                let reply = conn.get(&uri).await?;
                let t1 = Instant::now();
                if reply.status != StatusCode::OK {
                    bail!("GET {uri} answered {} under load", reply.status);
                }
                if t1 >= start && t1 <= end {
                    lat.push(nanos(t1 - t0));
                }
            }
            Ok(lat)
        });
    }
    let mut all = Vec::new();
    while let Some(r) = tasks.join_next().await {
        all.extend(r.context("a load task crashed")??);
    }
    Ok(LoadRun {
        requests_per_sec: all.len() as f64 / duration.as_secs_f64(),
        latencies: Latencies::new(all),
    })
}

/// Sequential requests on one connection: `n` of each path, interleaved in blocks of
/// `block` (the order inside a round alternates), after a short warm-up.
pub async fn sequential(
    socket: &Path,
    paths: [&str; 2],
    n: usize,
    block: usize,
) -> Result<[Latencies; 2]> {
    let uris: [Uri; 2] = [paths[0].parse()?, paths[1].parse()?];
    let mut conn = connect(socket).await?;
    for _ in 0..(n / 10).clamp(50, 500) {
        for uri in &uris {
            expect_ok(&conn.get(uri).await?, uri)?;
        }
    }
    let mut lat = [Vec::with_capacity(n), Vec::with_capacity(n)];
    let mut done = [0usize; 2];
    let mut order = [0, 1];
    while done[0] < n || done[1] < n {
        for i in order {
            for _ in 0..block.min(n - done[i]) {
                let t0 = Instant::now();
                let reply = conn.get(&uris[i]).await?;
                lat[i].push(nanos(t0.elapsed()));
                expect_ok(&reply, &uris[i])?;
                done[i] += 1;
            }
        }
        order.reverse();
    }
    let [a, b] = lat;
    Ok([Latencies::new(a), Latencies::new(b)])
}

/// [`sequential`] on a thread of its own with a single-threaded runtime, so the client's
/// I/O and its requests share one thread: the client adds no thread hand-offs to the
/// latencies. Blocks the calling thread until done.
pub fn sequential_own_thread(
    socket: &Path,
    paths: [&'static str; 2],
    n: usize,
    block: usize,
) -> Result<[Latencies; 2]> {
    let socket = socket.to_path_buf();
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the client runtime")?
            .block_on(sequential(&socket, paths, n, block))
    })
    .join()
    .map_err(|_| anyhow!("the sequential client thread panicked"))?
}

fn expect_ok(reply: &Reply, uri: &Uri) -> Result<()> {
    if reply.status != StatusCode::OK {
        bail!(
            "GET {uri} answered {}: {}",
            reply.status,
            String::from_utf8_lossy(&reply.body)
        );
    }
    Ok(())
}

/// How long after `spawned` the process first served `GET /1.0` with 200 (`served`), and
/// first reported `system_is_ready: true` (`ready`; `None` when `want_ready` is false).
pub struct StartUp {
    pub served: Duration,
    pub ready: Option<Duration>,
}

/// Poll-connects the socket until it accepts, then GETs `/1.0` until it answers 200 (and,
/// with `want_ready`, until the daemon says it is ready).
pub async fn wait_served(
    proc: &mut Proc,
    socket: &Path,
    spawned: Instant,
    want_ready: bool,
    timeout: Duration,
) -> Result<StartUp> {
    let uri: Uri = "/1.0".parse()?;
    let poll = Duration::from_micros(200);
    let mut conn: Option<Conn> = None;
    let mut served = None;
    loop {
        if spawned.elapsed() > timeout {
            bail!(
                "{} did not serve GET /1.0 within {timeout:?}{}",
                proc.label,
                proc.log_tail()
            );
        }
        proc.check_running()?;
        let Some(c) = conn.as_mut() else {
            match UnixStream::connect(socket).await {
                Ok(s) => conn = Some(Conn::handshake(s).await?),
                // Not bound yet: the poll interval is below tokio's 1 ms timer tick, so a
                // short blocking sleep on this (the bench's) thread.
                Err(_) => std::thread::sleep(poll),
            }
            continue;
        };
        let reply = match c.get(&uri).await {
            Ok(r) => r,
            Err(e) => {
                proc.check_running()?;
                return Err(e.context(format!(
                    "{}: GET /1.0 failed{}",
                    proc.label,
                    proc.log_tail()
                )));
            }
        };
        if reply.status != StatusCode::OK {
            std::thread::sleep(poll);
            continue;
        }
        let now = spawned.elapsed();
        let served = *served.get_or_insert(now);
        if !want_ready {
            return Ok(StartUp {
                served,
                ready: None,
            });
        }
        let doc: serde_json::Value =
            serde_json::from_slice(&reply.body).context("GET /1.0 is not JSON")?;
        if doc["metadata"]["environment"]["system_is_ready"] == serde_json::Value::Bool(true) {
            return Ok(StartUp {
                served,
                ready: Some(now),
            });
        }
        std::thread::sleep(poll);
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}
