//! `tcpmon serve`: the live engine, its records published as Prometheus metrics over HTTP
//! (see crate::http), until a stop signal.
use std::{sync::Arc, thread};

use anyhow::{Context as _, Result};
use tcpmon::output::metrics::{MetricsSink, Published};
use tokio::sync::watch;

use super::live::{self, SayMode};
use crate::{
    cli::ServeArgs,
    exit::Status,
    http,
    signals::{self, Stop},
    stderr::stderr_line,
};

pub fn run(args: &ServeArgs) -> Result<Status> {
    let stop = Stop::new();
    signals::install(&stop).context("installing signal handlers")?;
    let recorder = live::open_history(
        &args.history,
        (!args.no_history).then(live::default_history_path),
    )?;
    let listener =
        http::bind(args.listen).with_context(|| format!("listening on {}", args.listen))?;
    let bound = listener.local_addr().unwrap_or(args.listen);
    if !args.listen.ip().is_loopback() {
        stderr_line(&format!(
            "tcpmon: note: serving metrics on {}, reachable from the network",
            args.listen
        ));
    }
    let published = Arc::new(Published::default());
    let state = Arc::new(http::ServerState::new(
        Arc::clone(&published),
        args.live.interval,
    ));
    // Scrapes get a bounded share of the fds; the engine keeps the rest.
    let fd_limit = tcpmon::host::limits::raise_open_files().unwrap_or(1024);
    let max_connections = http::max_connections(fd_limit);
    let (stop_http, stop_rx) = watch::channel(false);
    let server = thread::Builder::new()
        .name("tcpmon-http".into())
        .spawn(move || -> Result<()> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener)?;
                http::serve(listener, state, max_connections, stop_rx).await;
                Ok(())
            })
        })
        .context("starting the HTTP thread")?;
    stderr_line(&format!("tcpmon: serving http://{bound}/metrics"));

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let status = runtime.block_on(async {
        let sink = live::history_sink(
            recorder.as_ref(),
            &args.history,
            MetricsSink::new(published),
        );
        let Some(ended) = live::run(
            &args.live,
            args.engine_config(),
            sink,
            &stop,
            SayMode::Always,
        )
        .await?
        else {
            return Ok(Status::Error);
        };
        ended.seen.say(&Ok(()));
        ended.result?;
        Ok::<_, anyhow::Error>(Status::Clean)
    });
    live::finish_history(recorder);
    // In-flight scrapes finish (they see the engine stopped), then the server ends.
    let _ = stop_http.send(true);
    match server.join() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => stderr_line(&format!("tcpmon: the HTTP server failed: {e:#}")),
        Err(_) => stderr_line("tcpmon: the HTTP server panicked"),
    }
    status
}
