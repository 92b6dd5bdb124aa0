//! `serve`'s HTTP side, on its own thread and runtime so that scrapes never wait for the
//! engine nor the engine for them: `/metrics` (Prometheus text, or OpenMetrics when the
//! scraper asks), `/healthz`, `/alerts`. hyper serves each connection with a header
//! timeout, a stall timeout and an overall deadline; how many connections are kept, and
//! which give way to newcomers, is [`admission`]'s. An exposition is encoded once per
//! published snapshot and served from that cache.
mod admission;

use std::{
    collections::HashMap,
    net::SocketAddr,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use self::admission::{Activity, Admission, Decision};

use axum::{
    extract::State,
    http::{header, HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
    Router,
};
use bytes::Bytes;
use hyper_util::rt::{TokioIo, TokioTimer};
use tcpmon::{
    host::{process, ProcRoot},
    output::metrics::{
        encode, with_scrape_figures, AlertsDocument, Format, HttpFigures, Published, ScrapeFigures,
    },
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    sync::{oneshot, watch},
};

/// The longest a client may take to send its request headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(3);
/// A connection that moves no byte for this long (a request never finished, an answer
/// never read, keep-alive idle) is closed.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest one connection is served (a scraper's keep-alive connection is then
/// re-opened; a client that reads its answer a byte at a time holds a slot no longer).
pub const CONNECTION_DEADLINE: Duration = Duration::from_secs(120);
/// Connections open at once from one address.
pub const MAX_PER_PEER: usize = 8;
/// After a stop, the longest in-flight requests are given to finish.
pub const DRAIN: Duration = Duration::from_secs(1);

/// What the handlers share.
pub struct ServerState {
    published: Arc<Published>,
    /// The last encoding of each format, with the snapshot version it encodes.
    cache: Mutex<[Option<(u64, Bytes)>; 2]>,
    /// A tally older than this means the engine is stuck.
    stale_after: Duration,
    started: Instant,
    pub counters: HttpCounters,
}

/// What the HTTP side did with connections it did not serve to the end, exported so that
/// a flood shows.
#[derive(Default)]
pub struct HttpCounters {
    /// Refused at once: every connection of the peer, or of the server, was busy.
    pub refused: AtomicU64,
    /// Closed to make room for a newcomer (idle, or stalled).
    pub evicted: AtomicU64,
    /// Closed after moving no byte for [`STALL_TIMEOUT`].
    pub stalled: AtomicU64,
    /// accept() failures (out of fds, most likely).
    pub accept_errors: AtomicU64,
    /// Open now.
    pub open: AtomicU64,
}

impl HttpCounters {
    fn figures(&self) -> HttpFigures {
        HttpFigures {
            open: self.open.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            evicted: self.evicted.load(Ordering::Relaxed),
            stalled: self.stalled.load(Ordering::Relaxed),
            accept_errors: self.accept_errors.load(Ordering::Relaxed),
        }
    }
}

impl ServerState {
    pub fn new(published: Arc<Published>, interval: Duration) -> Self {
        Self {
            published,
            cache: Mutex::new([None, None]),
            stale_after: interval * 3 + Duration::from_secs(2),
            started: Instant::now(),
            counters: HttpCounters::default(),
        }
    }

    /// The exposition of the latest snapshot in `format` (encoded at most once per
    /// snapshot), with the figures read at each scrape.
    fn exposition(&self, format: Format) -> Bytes {
        let slot = usize::from(format == Format::OpenMetrics);
        let (version, snapshot) = self.published.latest();
        let published = {
            let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            match &cache[slot] {
                Some((cached, body)) if *cached == version => body.clone(),
                _ => {
                    let usage = process::self_usage(&ProcRoot::host()).unwrap_or_default();
                    let body = Bytes::from(encode(&snapshot, usage, format));
                    cache[slot] = Some((version, body.clone()));
                    body
                }
            }
        };
        let figures = ScrapeFigures {
            tally_age: snapshot
                .tally_age(Instant::now())
                .unwrap_or_else(|| self.started.elapsed()),
            http: self.counters.figures(),
        };
        // The exposition is text that tcpmon wrote.
        let text = std::str::from_utf8(&published).unwrap_or_default();
        Bytes::from(with_scrape_figures(text, &figures, format))
    }
}

pub fn router(state: Arc<ServerState>) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/alerts", get(alerts))
        .with_state(state)
}

async fn index() -> &'static str {
    "tcpmon: /metrics (Prometheus text; OpenMetrics when asked), /healthz, /alerts\n"
}

async fn metrics(State(state): State<Arc<ServerState>>, headers: HeaderMap) -> Response {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let format = Format::negotiate(accept);
    let body = state.exposition(format);
    ([(header::CONTENT_TYPE, format.content_type())], body).into_response()
}

async fn healthz(State(state): State<Arc<ServerState>>) -> Response {
    let (_, snapshot) = state.published.latest();
    let problem = if let Some(why) = &snapshot.stopped {
        Some(why.clone())
    } else {
        match &snapshot.tally {
            None if state.started.elapsed() > state.stale_after => {
                Some("no tally yet: the engine has not finished starting".into())
            }
            None => Some("starting: the baseline is being read".into()),
            Some(_) => {
                // The monotonic clock: a step of the wall clock says nothing of the engine.
                let age = snapshot.tally_age(Instant::now()).unwrap_or_default();
                (age > state.stale_after).then(|| {
                    format!(
                        "the last tally is {:.0} s old: the engine is stuck",
                        age.as_secs_f64()
                    )
                })
            }
        }
    };
    match problem {
        None => {
            let mode = snapshot.mode.as_ref().map_or("?", |m| m.mode.name());
            (StatusCode::OK, format!("ok: {mode} mode\n")).into_response()
        }
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("unavailable: {why}\n"),
        )
            .into_response(),
    }
}

async fn alerts(State(state): State<Arc<ServerState>>) -> Response {
    let (_, snapshot) = state.published.latest();
    axum::Json(AlertsDocument::of(&snapshot)).into_response()
}

/// Serves `listener` until `stop` turns true, then lets in-flight requests finish for
/// at most [`DRAIN`]. At most `max_connections` are open at once, [`MAX_PER_PEER`] from
/// one address; beyond, the oldest idle or stalled one gives way (see [`admission`]).
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<ServerState>,
    max_connections: usize,
    mut stop: watch::Receiver<bool>,
) {
    let app = router(Arc::clone(&state));
    let clock = Instant::now();
    let open = Arc::new(Mutex::new(Open {
        admission: Admission::new(max_connections, MAX_PER_PEER),
        connections: HashMap::new(),
    }));
    let (done_tx, mut done_rx) = watch::channel(());
    loop {
        // Every connection task runs once before the next is admitted: a scraper's
        // request, already in its socket, is read and counted before a flood of newcomers
        // could make its connection give way.
        tokio::task::yield_now().await;
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|s| *s) => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of fds, say: not a reason to stop serving.
                state.counters.accept_errors.fetch_add(1, Ordering::Relaxed);
                log::debug!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let progress = Arc::new(Progress::new(clock, &stream));
        let (evict_tx, evict_rx) = oneshot::channel::<()>();
        let id = {
            let mut guard = open.lock().unwrap_or_else(|p| p.into_inner());
            let Open {
                admission,
                connections,
            } = &mut *guard;
            let now = millis_since(clock);
            let decision = admission.admit(peer.ip(), now, |id| {
                connections.get(&id).map_or(
                    Activity {
                        requests: 0,
                        last_progress_ms: 0,
                        waiting_input: false,
                    },
                    |(p, _)| p.activity(),
                )
            });
            match decision {
                Decision::Refuse => {
                    state.counters.refused.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                Decision::Admit { id, evict } => {
                    if let Some((_, close)) = evict.and_then(|e| connections.remove(&e)) {
                        state.counters.evicted.fetch_add(1, Ordering::Relaxed);
                        let _ = close.send(());
                    }
                    connections.insert(id, (Arc::clone(&progress), evict_tx));
                    state
                        .counters
                        .open
                        .store(connections.len() as u64, Ordering::Relaxed);
                    id
                }
            }
        };
        let counted = Arc::clone(&progress);
        let service = hyper_util::service::TowerToHyperService::new(
            tower::ServiceExt::map_request(app.clone(), move |request| {
                counted.requests.fetch_add(1, Ordering::Relaxed);
                request
            }),
        );
        let mut stop = stop.clone();
        let done = done_tx.clone();
        let open = Arc::clone(&open);
        let task_state = Arc::clone(&state);
        tokio::spawn(async move {
            let _done = done;
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(
                    TokioIo::new(Tracked {
                        inner: stream,
                        progress: Arc::clone(&progress),
                    }),
                    service,
                );
            tokio::pin!(connection);
            let deadline = tokio::time::sleep(CONNECTION_DEADLINE);
            tokio::pin!(deadline);
            let stalled = async {
                let mut tick = tokio::time::interval(Duration::from_millis(500));
                loop {
                    tick.tick().await;
                    let idle =
                        millis_since(clock).saturating_sub(progress.activity().last_progress_ms);
                    if idle >= STALL_TIMEOUT.as_millis() as u64 {
                        break;
                    }
                }
            };
            let stopping = async move {
                // The guard it returns is not Send: drop it here.
                let _ = stop.wait_for(|s| *s).await.map(|_| ());
            };
            tokio::select! {
                _ = connection.as_mut() => {}
                () = &mut deadline => {}
                _ = evict_rx => {}
                () = stalled => {
                    task_state.counters.stalled.fetch_add(1, Ordering::Relaxed);
                }
                () = stopping => {
                    // Finish what is in flight, take nothing new.
                    connection.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(DRAIN, connection).await;
                }
            }
            let mut guard = open.lock().unwrap_or_else(|p| p.into_inner());
            guard.admission.closed(id);
            guard.connections.remove(&id);
            task_state
                .counters
                .open
                .store(guard.connections.len() as u64, Ordering::Relaxed);
        });
    }
    drop(done_tx);
    // Every connection task holds a sender: they are all gone when this returns.
    let _ = tokio::time::timeout(DRAIN, done_rx.changed()).await;
}

/// The open connections: who they are and how to close each.
struct Open {
    admission: Admission,
    connections: HashMap<u64, (Arc<Progress>, oneshot::Sender<()>)>,
}

fn millis_since(clock: Instant) -> u64 {
    u64::try_from(clock.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// A connection's progress: requests received whole, and the last byte moved.
struct Progress {
    clock: Instant,
    requests: AtomicU64,
    last_progress_ms: AtomicU64,
    /// Its socket, to ask whether input waits unread (the connection's task owns it; the
    /// entry goes when the task ends, so a late ask at worst finds nothing waiting).
    fd: std::os::fd::RawFd,
}

impl Progress {
    fn new(clock: Instant, stream: &tokio::net::TcpStream) -> Self {
        use std::os::fd::AsRawFd as _;
        Self {
            clock,
            requests: AtomicU64::new(0),
            last_progress_ms: AtomicU64::new(millis_since(clock)),
            fd: stream.as_raw_fd(),
        }
    }

    /// Whether the peer's bytes wait in the socket (FIONREAD), unread.
    fn waiting_input(&self) -> bool {
        let mut waiting: libc::c_int = 0;
        // SAFETY: FIONREAD writes one int; on a closed or reused descriptor it fails or
        // answers for that socket, which only changes whom an eviction picks.
        let ok = unsafe { libc::ioctl(self.fd, libc::FIONREAD, &mut waiting) } == 0;
        ok && waiting > 0
    }

    fn moved(&self) {
        self.last_progress_ms
            .store(millis_since(self.clock), Ordering::Relaxed);
    }

    fn activity(&self) -> Activity {
        let requests = self.requests.load(Ordering::Relaxed);
        Activity {
            requests,
            last_progress_ms: self.last_progress_ms.load(Ordering::Relaxed),
            // Asked only where it decides: a connection with a request is judged by its
            // progress.
            waiting_input: requests == 0 && self.waiting_input(),
        }
    }
}

/// A socket that notes every byte it moves.
struct Tracked {
    inner: tokio::net::TcpStream,
    progress: Arc<Progress>,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.progress.moved();
        }
        polled
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.progress.moved();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.progress.moved();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// File descriptors kept for the engine whatever the HTTP side holds: its rings, netlink
/// sockets, the files of a socket-table read, other namespaces' reads.
pub const ENGINE_FDS: u64 = 64;

/// HTTP connections at most, from the process's fd limit: half of what the engine's share
/// leaves (each connection may briefly need a second fd while a newer one is accepted),
/// at least 4 and at most 256.
pub fn max_connections(fd_limit: u64) -> usize {
    usize::try_from((fd_limit.saturating_sub(ENGINE_FDS) / 2).clamp(4, 256)).unwrap_or(256)
}

/// Binds `addr` (here, so that an address in use is an error before anything starts).
pub fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    // A deep accept queue: under a connection flood the server accepts (and evicts) as
    // fast as it can, and a scraper's SYN must not be dropped meanwhile (a drop costs it
    // a second-long retransmit).
    socket.listen(LISTEN_BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// The accept queue asked for (the kernel caps it at net.core.somaxconn).
const LISTEN_BACKLOG: i32 = 4096;
