//! `tcpmon generate DIR`: man pages (one per command) and shell completions, from the
//! same clap definitions the binary parses with.
use std::fs;

use anyhow::{Context as _, Result};
use clap::CommandFactory;

use crate::{
    cli::{Cli, GenerateArgs},
    exit::Status,
};

pub fn run(args: &GenerateArgs) -> Result<Status> {
    let man = args.dir.join("man");
    let completions = args.dir.join("completions");
    fs::create_dir_all(&man).with_context(|| format!("creating {}", man.display()))?;
    fs::create_dir_all(&completions)
        .with_context(|| format!("creating {}", completions.display()))?;
    let cmd = Cli::command();
    clap_mangen::generate_to(cmd.clone(), &man)
        .with_context(|| format!("writing man pages into {}", man.display()))?;
    for shell in [
        clap_complete::Shell::Bash,
        clap_complete::Shell::Zsh,
        clap_complete::Shell::Fish,
    ] {
        clap_complete::generate_to(shell, &mut cmd.clone(), "tcpmon", &completions)
            .with_context(|| format!("writing {shell} completions"))?;
    }
    Ok(Status::Clean)
}
