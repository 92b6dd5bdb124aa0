//! `tcpmon watch`: the library's live engine, with stdout as its sink (human lines or
//! NDJSON) and signals as its stop.
use anyhow::{Context as _, Result};
use tcpmon::{
    live::{self, record::Mode, EngineError, StartError},
    output::{
        human::loss_breakdown,
        live::{NdjsonSink, TextSink},
        table::Style,
    },
};

use crate::{
    cli::{Mode as ModeArg, WatchArgs},
    exit::Status,
    signals::{self, Stop},
    stdout::{stderr_line, QueuedStdout},
};

pub fn run(args: &WatchArgs, style: Style) -> Result<Status> {
    // Before anything is attached, so that a signal always finds its handler.
    let stop = Stop::new();
    signals::install(&stop).context("installing signal handlers")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let out = QueuedStdout::new(stop.clone()).context("starting the output thread")?;
    if args.json {
        runtime.block_on(watch(args, NdjsonSink::new(out), stop, |s| {
            s.into_inner().ok()
        }))
    } else {
        runtime.block_on(watch(args, TextSink::new(out, style), stop, |s| {
            Some(s.into_inner())
        }))
    }
}

async fn watch<K: live::Sink>(
    args: &WatchArgs,
    mut sink: K,
    stop: Stop,
    into_output: impl FnOnce(K) -> Option<QueuedStdout>,
) -> Result<Status> {
    let mut engine = match live::start(args.engine_config(), &args.live.source_options(), &mut sink)
    {
        Ok(engine) => engine,
        Err(StartError::Ebpf(e)) => {
            eprintln!("tcpmon: eBPF unavailable: {e}");
            return Ok(Status::Error);
        }
        Err(e) => return Err(e.into()),
    };
    let mode = engine.mode().clone();
    for note in &mode.notes {
        eprintln!("tcpmon: note: {note}");
    }
    if mode.fell_back && args.live.mode == ModeArg::Auto {
        eprintln!("tcpmon: {}", mode.reason);
    }
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
    // Whatever ended the run, the programs are detached and the final tally attempted.
    stop.enter_finish();
    let finished = engine.finish(&mut sink);
    let complete = into_output(sink).is_some_and(QueuedStdout::finish);
    let received = engine.received();
    stderr_line(&format!(
        "tcpmon: detached ({} mode): {} transitions, {} lost {}, {} reconciliation{}{}",
        mode.mode.name(),
        received.transitions,
        engine.lost(),
        if mode.mode == Mode::Ebpf {
            loss_breakdown(engine.kernel(), received)
        } else {
            "(polling)".to_owned()
        },
        engine.reconciliations(),
        if engine.reconciliations() == 1 {
            ""
        } else {
            "s"
        },
        if complete {
            ""
        } else {
            "; the output was not all written (its reader stopped reading)"
        }
    ));
    match ran.and(finished.map(|_| ())) {
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
