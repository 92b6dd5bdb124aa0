//! `tcpmon serve`: the live engine, its records published as Prometheus metrics over HTTP
//! (see crate::http), until a stop signal.
use std::{sync::Arc, thread};

use anyhow::{Context as _, Result};
use tcpmon::{
    live::{self, StartError},
    output::metrics::{MetricsSink, Published},
};
use tokio::sync::watch;

use crate::{
    cli::ServeArgs,
    exit::Status,
    http,
    signals::{self, Stop},
    stdout::stderr_line,
};

pub fn run(args: &ServeArgs) -> Result<Status> {
    let stop = Stop::new();
    signals::install(&stop).context("installing signal handlers")?;
    let listener =
        http::bind(args.listen).with_context(|| format!("listening on {}", args.listen))?;
    let bound = listener.local_addr().unwrap_or(args.listen);
    if !args.listen.ip().is_loopback() {
        eprintln!(
            "tcpmon: note: serving metrics on {}, reachable from the network",
            args.listen
        );
    }
    let published = Arc::new(Published::default());
    let state = Arc::new(http::ServerState::new(
        Arc::clone(&published),
        args.live.interval,
    ));
    let (stop_http, stop_rx) = watch::channel(false);
    let server = thread::Builder::new()
        .name("tcpmon-http".into())
        .spawn(move || -> Result<()> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener)?;
                http::serve(listener, state, stop_rx).await;
                Ok(())
            })
        })
        .context("starting the HTTP thread")?;
    eprintln!("tcpmon: serving http://{bound}/metrics");

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let status = runtime.block_on(async {
        let mut sink = MetricsSink::new(published);
        let config = args.engine_config();
        let mut engine = match live::start(config, &args.live.source_options(), &mut sink) {
            Ok(engine) => engine,
            Err(StartError::Ebpf(e)) => {
                eprintln!("tcpmon: eBPF unavailable: {e}");
                return Ok(Status::Error);
            }
            Err(e) => return Err(anyhow::Error::from(e)),
        };
        let mode = engine.mode().clone();
        for note in &mode.notes {
            eprintln!("tcpmon: note: {note}");
        }
        eprintln!("tcpmon: {}", mode.reason);
        let deadline = args.live.duration;
        let stopped = {
            let stop = stop.clone();
            async move {
                match deadline {
                    Some(d) => tokio::select! {
                        () = tokio::time::sleep(d) => {}
                        () = stop.wait() => {}
                    },
                    None => stop.wait().await,
                }
            }
        };
        let ran = engine.run(&mut sink, stopped).await;
        stop.enter_finish();
        let finished = engine.finish(&mut sink);
        stderr_line(&format!(
            "tcpmon: detached ({} mode): {} transitions, {} lost, {} reconciliation{}",
            mode.mode.name(),
            engine.received().transitions,
            engine.lost(),
            engine.reconciliations(),
            if engine.reconciliations() == 1 {
                ""
            } else {
                "s"
            }
        ));
        ran.and(finished.map(|_| ())).map_err(anyhow::Error::from)?;
        Ok(Status::Clean)
    });
    // In-flight scrapes finish (they see the engine stopped), then the server ends.
    let _ = stop_http.send(true);
    match server.join() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => eprintln!("tcpmon: the HTTP server failed: {e:#}"),
        Err(_) => eprintln!("tcpmon: the HTTP server panicked"),
    }
    status
}
