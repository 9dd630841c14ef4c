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

/// A request body for [`upload`]: sent in frames of at most 64 KiB, with a
/// `Content-Length` when `declared`, else chunked.
#[derive(Clone)]
pub struct Upload {
    frames: Vec<Bytes>,
    len: usize,
    declared: bool,
}

impl Upload {
    pub fn new(data: Bytes, declared: bool) -> Upload {
        const FRAME: usize = 64 * 1024;
        let frames = (0..data.len())
            .step_by(FRAME)
            .map(|at| data.slice(at..(at + FRAME).min(data.len())))
            .collect();
        Upload {
            frames,
            len: data.len(),
            declared,
        }
    }

    /// A JSON document, with its length declared.
    pub fn json(doc: &serde_json::Value) -> Upload {
        Upload::new(Bytes::from(doc.to_string()), true)
    }
}

/// How an upload ended: the server's answer (status and the start of its body), or the
/// error that ended the exchange before an answer came.
#[derive(Debug, Clone)]
pub enum Outcome {
    Answered { status: u16, body: String },
    Failed(String),
}

impl Outcome {
    /// The status as text (`413`), or `no answer`.
    pub fn label(&self) -> String {
        match self {
            Outcome::Answered { status, .. } => status.to_string(),
            Outcome::Failed(_) => "no answer".into(),
        }
    }

    /// The error text of the answer's JSON envelope (empty for a success), or what went
    /// wrong.
    pub fn detail(&self) -> String {
        match self {
            Outcome::Answered { body, .. } => {
                match serde_json::from_str::<serde_json::Value>(body) {
                    Ok(v) => v["error"].as_str().unwrap_or_default().to_string(),
                    Err(_) => body.trim().chars().take(120).collect(),
                }
            }
            Outcome::Failed(e) => e.clone(),
        }
    }
}

/// `method path` with `body` on a new connection, written by hand (HTTP/1.1, `connection:
/// close`) so that an answer the server gives before it read the whole body (a 413) is
/// seen even when it then stops reading. The write side stays open until the answer is
/// read: a half-closed connection could end the request early.
pub async fn upload(
    socket: &Path,
    method: &str,
    path: &str,
    body: &Upload,
    timeout: Duration,
) -> Outcome {
    match tokio::time::timeout(timeout, exchange(socket, method, path, body)).await {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(e)) => Outcome::Failed(format!("{e:#}")),
        Err(_) => Outcome::Failed(format!("no answer within {timeout:?}")),
    }
}

async fn exchange(socket: &Path, method: &str, path: &str, body: &Upload) -> Result<Outcome> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let stream = UnixStream::connect(socket)
        .await
        .with_context(|| format!("cannot connect to {}", socket.display()))?;
    let (mut rd, mut wr) = stream.into_split();
    let length = if body.declared {
        format!("content-length: {}\r\n", body.len)
    } else {
        "transfer-encoding: chunked\r\n".into()
    };
    let head = format!(
        "{method} {path} HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n\
         connection: close\r\n{length}\r\n"
    );
    let (frames, declared) = (body.frames.clone(), body.declared);
    let writer = tokio::spawn(async move {
        let sent = async {
            wr.write_all(head.as_bytes()).await?;
            for f in &frames {
                if declared {
                    wr.write_all(f).await?;
                } else {
                    wr.write_all(format!("{:x}\r\n", f.len()).as_bytes())
                        .await?;
                    wr.write_all(f).await?;
                    wr.write_all(b"\r\n").await?;
                }
            }
            if !declared {
                wr.write_all(b"0\r\n\r\n").await?;
            }
            wr.flush().await
        }
        .await;
        // Kept open (see above); a write error means the server stopped reading.
        (wr, sent)
    });
    let mut answer = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match rd.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            // A server that closes with our data unread resets the connection after its
            // answer: what came before the reset is the answer.
            Err(_) if !answer.is_empty() => break,
            Err(e) => {
                writer.abort();
                return Ok(Outcome::Failed(format!("reading the answer: {e}")));
            }
        }
    }
    writer.abort();
    let text = String::from_utf8_lossy(&answer);
    let Some((head, rest)) = text.split_once("\r\n\r\n") else {
        return Ok(Outcome::Failed(if text.is_empty() {
            "the server closed the connection without an answer".into()
        } else {
            format!(
                "a truncated answer: {:?}",
                text.chars().take(80).collect::<String>()
            )
        }));
    };
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("a bad status line: {head:?}"))?;
    // A chunked answer starts with its first chunk's size.
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        rest.split_once("\r\n").map_or(rest, |(_, b)| b)
    } else {
        rest
    };
    let body = body.split("\r\n").next().unwrap_or_default().to_string();
    Ok(Outcome::Answered { status, body })
}
