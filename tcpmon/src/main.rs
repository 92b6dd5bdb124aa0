//! tcpmon's command line: parse, dispatch, map errors to exit codes.
mod cli;
mod cmd;
mod exit;
mod http;
mod render;
mod signals;
mod stderr;
mod stdout;

use std::{io::Write, process::ExitCode};

use clap::{CommandFactory, Parser};
use tcpmon::output::table::Style;

use crate::{
    cli::{Cli, Command},
    exit::Status,
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format_timestamp(None)
        .init();
    if let Err(usage) = cmd::check(&cli.command) {
        Cli::command()
            .error(clap::error::ErrorKind::ValueValidation, usage)
            .exit();
    }
    let style = Style::detect();
    match &cli.command {
        Command::Watch(args) => return exit(cmd::watch::run(args, style)),
        Command::Serve(args) => return exit(cmd::serve::run(args)),
        Command::Top(args) => return exit(cmd::top::run(args)),
        Command::Generate(args) => return exit(cmd::generate::run(args)),
        _ => {}
    }
    let mut out = stdout::SnapshotOut::stdout();
    let result = match &cli.command {
        Command::Report(a) => cmd::report::run(a, &mut out, style),
        Command::States(a) => cmd::states::run(a, &mut out, style),
        Command::Listen(a) => cmd::listen::run(a, &mut out, style),
        Command::Established(a) => cmd::established::run(a, &mut out, style),
        Command::PerIp(a) => cmd::per_ip::run(a, &mut out, style),
        Command::PerPort(a) => cmd::per_port::run(a, &mut out, style),
        Command::Timewait(a) => cmd::timewait::run(a, &mut out, style),
        Command::Audit(a) => cmd::audit::run(a, &mut out, style),
        Command::Trends(a) => cmd::trends::run(a, &mut out, style),
        Command::Watch(_) | Command::Serve(_) | Command::Top(_) | Command::Generate(_) => {
            unreachable!("handled above")
        }
    };
    let flushed = out.flush().map_err(anyhow::Error::from);
    exit(result.and_then(|status| flushed.map(|()| status)))
}

fn exit(result: anyhow::Result<Status>) -> ExitCode {
    match result {
        Ok(status) => status.into(),
        Err(e) => {
            stderr::line(&format!("tcpmon: {}", stderr::error_chain(&e)));
            Status::Error.into()
        }
    }
}
