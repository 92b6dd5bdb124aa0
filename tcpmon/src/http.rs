//! `serve`'s HTTP side, on its own thread and runtime so that scrapes never wait for the
//! engine nor the engine for them: `/metrics` (Prometheus text, or OpenMetrics when the
//! scraper asks), `/healthz`, `/alerts`. hyper serves each connection with a header
//! timeout and an overall deadline; connections beyond a bound wait in the accept queue.
//! An exposition is encoded once per published snapshot and served from that cache.
use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

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
    output::metrics::{encode, AlertsDocument, Format, Published},
};
use tokio::sync::{watch, Semaphore};

/// The longest a client may take to send its request headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest one connection is served (a scraper's keep-alive connection is then
/// re-opened; a client that reads its answer a byte at a time holds a slot no longer).
pub const CONNECTION_DEADLINE: Duration = Duration::from_secs(120);
/// Connections served at once; more wait to be accepted.
pub const MAX_CONNECTIONS: usize = 64;
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
}

impl ServerState {
    pub fn new(published: Arc<Published>, interval: Duration) -> Self {
        Self {
            published,
            cache: Mutex::new([None, None]),
            stale_after: interval * 3 + Duration::from_secs(2),
            started: Instant::now(),
        }
    }

    /// The exposition of the latest snapshot in `format`, encoded at most once per
    /// snapshot.
    fn exposition(&self, format: Format) -> Bytes {
        let slot = usize::from(format == Format::OpenMetrics);
        let (version, snapshot) = self.published.latest();
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((cached, body)) = &cache[slot] {
            if *cached == version {
                return body.clone();
            }
        }
        let usage = process::self_usage(&ProcRoot::host()).unwrap_or_default();
        let body = Bytes::from(encode(&snapshot, usage, format));
        cache[slot] = Some((version, body.clone()));
        body
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
            Some(t) => {
                let age = t.time.0.elapsed().unwrap_or_default();
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
/// at most [`DRAIN`].
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<ServerState>,
    mut stop: watch::Receiver<bool>,
) {
    let app = router(state);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let (done_tx, mut done_rx) = watch::channel(());
    loop {
        let permit = tokio::select! {
            permit = Arc::clone(&slots).acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = stop.wait_for(|s| *s) => break,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|s| *s) => break,
        };
        let Ok((stream, _peer)) = accepted else {
            // Out of fds, say: not a reason to stop serving.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let mut stop = stop.clone();
        let done = done_tx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _done = done;
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            let deadline = tokio::time::sleep(CONNECTION_DEADLINE);
            tokio::pin!(deadline);
            let stopping = async move {
                // The guard it returns is not Send: drop it here.
                let _ = stop.wait_for(|s| *s).await.map(|_| ());
            };
            tokio::select! {
                _ = connection.as_mut() => {}
                () = &mut deadline => {}
                () = stopping => {
                    // Finish what is in flight, take nothing new.
                    connection.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(DRAIN, connection).await;
                }
            }
        });
    }
    drop(done_tx);
    // Every connection task holds a sender: they are all gone when this returns.
    let _ = tokio::time::timeout(DRAIN, done_rx.changed()).await;
}

/// Binds `addr` (here, so that an address in use is an error before anything starts).
pub fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}
