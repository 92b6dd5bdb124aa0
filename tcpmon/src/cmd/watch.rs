//! `tcpmon watch`: the live engine with stdout as its sink (human lines or NDJSON) and
//! signals as its stop.
use anyhow::{Context as _, Result};
use tcpmon::{
    live::{EngineError, Sink},
    output::{
        live::{NdjsonSink, TextSink},
        table::Style,
    },
};

use super::live::{self, SayMode};
use crate::{
    cli::WatchArgs,
    exit::Status,
    signals::{self, Stop},
    stdout::QueuedStdout,
};

pub fn run(args: &WatchArgs, style: Style) -> Result<Status> {
    // Before anything is attached, so that a signal always finds its handler.
    let stop = Stop::new();
    signals::install(&stop).context("installing signal handlers")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let recorder = live::open_history(&args.history, None)?;
    let out = QueuedStdout::new(stop.clone()).context("starting the output thread")?;
    let recording = recorder.as_ref();
    let status = if args.json {
        let sink = live::history_sink(recording, &args.history, NdjsonSink::new(out));
        runtime.block_on(watch(args, sink, &stop, |s| {
            s.into_inner().into_inner().ok()
        }))
    } else {
        let sink = live::history_sink(recording, &args.history, TextSink::new(out, style));
        runtime.block_on(watch(args, sink, &stop, |s| {
            Some(s.into_inner().into_inner())
        }))
    };
    live::finish_history(recorder);
    status
}

async fn watch<K: Sink>(
    args: &WatchArgs,
    sink: K,
    stop: &Stop,
    into_output: impl FnOnce(K) -> Option<QueuedStdout>,
) -> Result<Status> {
    // Text on a terminal already shows the fallback, where stderr shows too; elsewhere
    // (a file, a pipe, JSON) stderr must say it.
    let on_one_terminal = {
        use std::io::IsTerminal as _;
        !args.json && std::io::stdout().is_terminal() && std::io::stderr().is_terminal()
    };
    let say_mode = if on_one_terminal {
        SayMode::Never
    } else {
        SayMode::WhenFallenBack
    };
    let Some(ended) = live::run(&args.live, args.engine_config(), sink, stop, say_mode).await?
    else {
        return Ok(Status::Error);
    };
    let written = into_output(ended.sink).map_or_else(
        || Err(std::io::Error::other("the output could not be recovered")),
        QueuedStdout::finish,
    );
    ended.seen.say(&written);
    match ended.result {
        Ok(()) => Ok(Status::Clean),
        // The reader went away (`watch | head`), or stopped reading during a stop: the
        // watch itself went fine.
        Err(EngineError::Output(e))
            if matches!(
                e.kind(),
                std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::TimedOut
                    | std::io::ErrorKind::Interrupted
            ) =>
        {
            Ok(Status::Clean)
        }
        Err(e) => Err(e.into()),
    }
}
