//! tcpmon's command line: parse, dispatch, map errors to exit codes.
mod cli;
mod cmd;

use std::{
    io::{self, Write},
    process::ExitCode,
};

use clap::Parser;
use tcpmon::render::Style;

use crate::cli::{Cli, Command};

/// Exit status for errors (audit uses 1 for "a finding reached --fail-on").
const EXIT_ERROR: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format_timestamp(None)
        .init();
    let style = Style::detect();
    let stdout = io::stdout();
    let mut out = io::BufWriter::with_capacity(64 << 10, stdout.lock());
    let result = match &cli.command {
        Command::Report(a) => cmd::report::run(a, &mut out, style),
        Command::States(a) => cmd::states::run(a, &mut out, style),
        Command::Listen(a) => cmd::listen::run(a, &mut out, style),
        Command::Established(a) => cmd::established::run(a, &mut out, style),
        Command::PerIp(a) => cmd::per_ip::run(a, &mut out, style),
        Command::PerPort(a) => cmd::per_port::run(a, &mut out, style),
        Command::Timewait(a) => cmd::timewait::run(a, &mut out, style),
        Command::Audit(a) => cmd::audit::run(a, &mut out, style),
        Command::Watch(a) => {
            drop(out);
            return exit(cmd::watch::run(a, style));
        }
    };
    let flushed = out.flush().map_err(anyhow::Error::from);
    exit(result.and_then(|code| flushed.map(|()| code)))
}

fn exit(result: anyhow::Result<u8>) -> ExitCode {
    match result {
        Ok(code) => ExitCode::from(code),
        // `tcpmon report | head` is normal use, not an error.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tcpmon: {e:#}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
            || cause
                .downcast_ref::<serde_json::Error>()
                .and_then(|j| j.io_error_kind())
                .is_some_and(|k| k == io::ErrorKind::BrokenPipe)
    })
}
