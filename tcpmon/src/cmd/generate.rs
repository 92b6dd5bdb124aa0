//! `tcpmon generate DIR`: man pages (one per command) and shell completions, from the
//! same clap definitions the binary parses with. clap_mangen renders what clap knows
//! (synopsis, options with their possible values); the sections it cannot know
//! (EXAMPLES, EXIT STATUS, SEE ALSO) are written here.
use std::{fs, io::Write as _, path::Path};

use anyhow::{Context as _, Result};
use clap::CommandFactory;
use roff::{bold, italic, roman, Roff};

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
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    write_man_pages(&cmd, &man)?;
    for shell in [
        clap_complete::Shell::Bash,
        clap_complete::Shell::Zsh,
        clap_complete::Shell::Fish,
    ] {
        clap_complete::generate_to(shell, &mut Cli::command(), "tcpmon", &completions)
            .with_context(|| format!("writing {shell} completions"))?;
    }
    Ok(Status::Clean)
}

fn write_man_pages(top: &clap::Command, dir: &Path) -> Result<()> {
    let visible: Vec<&clap::Command> = top.get_subcommands().filter(|c| !c.is_hide_set()).collect();
    let names: Vec<&str> = visible.iter().map(|c| c.get_name()).collect();
    write_page(top, None, &names, dir)?;
    for sub in visible {
        write_page(sub, Some(sub.get_name()), &names, dir)?;
    }
    Ok(())
}

fn write_page(
    cmd: &clap::Command,
    subcommand: Option<&str>,
    all: &[&str],
    dir: &Path,
) -> Result<()> {
    let man = clap_mangen::Man::new(cmd.clone());
    let path = dir.join(man.get_filename());
    let mut page = Vec::new();
    man.render_title(&mut page)?;
    man.render_name_section(&mut page)?;
    man.render_synopsis_section(&mut page)?;
    man.render_description_section(&mut page)?;
    if cmd.get_arguments().any(|a| !a.is_hide_set()) {
        man.render_options_section(&mut page)?;
    }
    if cmd.has_subcommands() {
        man.render_subcommands_section(&mut page)?;
    }
    let mut roff = Roff::new();
    if let Some(notes) = cmd.get_after_long_help().or(cmd.get_after_help()) {
        roff.control("SH", ["NOTES"]);
        for paragraph in notes.to_string().lines() {
            roff.control("PP", []).text([roman(paragraph)]);
        }
    }
    sections(&mut roff, subcommand, all);
    page.extend(roff.render().into_bytes());
    if cmd.get_version().is_some() {
        man.render_version_section(&mut page)?;
    }
    let mut file =
        fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    file.write_all(&page)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// EXAMPLES, EXIT STATUS and SEE ALSO for `tcpmon` (None) or one of its commands.
fn sections(roff: &mut Roff, subcommand: Option<&str>, all: &[&str]) {
    roff.control("SH", ["EXAMPLES"]);
    for (line, why) in examples(subcommand) {
        roff.control("TP", []);
        roff.text([bold(*line)]);
        roff.text([roman(*why)]);
    }
    roff.control("SH", ["EXIT STATUS"]);
    for (code, meaning) in exit_statuses(subcommand) {
        roff.control("TP", []);
        roff.text([bold(*code)]);
        roff.text([roman(*meaning)]);
    }
    roff.control("SH", ["SEE ALSO"]);
    let mut refs: Vec<(String, &str)> = all
        .iter()
        .filter(|name| Some(**name) != subcommand)
        .map(|name| (format!("tcpmon-{name}"), "1"))
        .collect();
    if subcommand.is_some() {
        refs.insert(0, ("tcpmon".to_owned(), "1"));
    }
    refs.extend(
        see_also(subcommand)
            .iter()
            .map(|(n, s)| ((*n).to_owned(), *s)),
    );
    let mut inlines = Vec::new();
    for (i, (name, section)) in refs.iter().enumerate() {
        let comma = if i + 1 < refs.len() { "), " } else { ")" };
        inlines.push(italic(name.as_str()));
        inlines.push(roman(format!("({section}{comma}")));
    }
    roff.text(inlines);
}

type Pairs = &'static [(&'static str, &'static str)];

fn examples(subcommand: Option<&str>) -> Pairs {
    match subcommand {
        None => &[
            (
                "tcpmon report",
                "What the host's TCP looks like now, with findings.",
            ),
            (
                "sudo tcpmon watch",
                "Every state transition as it happens, with tallies and alerts.",
            ),
            (
                "tcpmon audit --fail-on warning",
                "A check for scripts: exit 1 on a warning or worse.",
            ),
        ],
        Some("report") => &[
            (
                "tcpmon report",
                "Totals, states, listeners, top remote IPs and ports, findings.",
            ),
            (
                "sudo tcpmon report --all-netns",
                "The same for every network namespace, each named by its container or pod.",
            ),
            (
                "tcpmon report --info --json",
                "With tcp_info figures, as JSON (schema in docs/OUTPUT.md).",
            ),
        ],
        Some("states") => &[
            ("tcpmon states", "How many sockets are in each TCP state."),
            (
                "tcpmon states --port 443 -4",
                "Only IPv4 sockets with 443 at either end.",
            ),
        ],
        Some("listen") => &[
            (
                "tcpmon listen",
                "Listeners with backlog, accept queue, half-open requests and owner.",
            ),
            (
                "sudo tcpmon listen --netns web",
                "The listeners of the `ip netns` namespace web.",
            ),
        ],
        Some("established") => &[
            (
                "tcpmon established --sort rtt",
                "Connections, slowest first (reads tcp_info).",
            ),
            (
                "sudo tcpmon established -p --port 5432",
                "Who holds the connections to or from port 5432.",
            ),
            (
                "tcpmon established --ip 10.0.0.0/8 --info",
                "Connections with 10.0.0.0/8, with RTT, retransmits and bytes.",
            ),
        ],
        Some("per-ip") => &[
            (
                "tcpmon per-ip",
                "Remote IPs by live connections, with TIME_WAIT apart.",
            ),
            (
                "tcpmon per-ip --ip 10.0.0.0/8 --all",
                "Every remote IP inside 10.0.0.0/8.",
            ),
        ],
        Some("per-port") => &[
            (
                "tcpmon per-port",
                "Connections per service port, inbound and outbound.",
            ),
            (
                "tcpmon per-port --info",
                "With RTT and retransmits per port.",
            ),
        ],
        Some("timewait") => &[(
            "tcpmon timewait",
            "TIME_WAIT sockets, the destinations holding them, ephemeral-port pressure.",
        )],
        Some("audit") => &[
            ("tcpmon audit", "Findings; exit 1 on a critical one."),
            (
                "tcpmon audit --fail-on warning --json",
                "Exit 1 on a warning or worse; findings as JSON.",
            ),
            (
                "tcpmon audit --per-ip-warn 50",
                "Warn when one remote IP holds more than 50 live connections.",
            ),
        ],
        Some("watch") => &[
            (
                "sudo tcpmon watch",
                "Transitions, a tally every 5 s, alerts; Ctrl-C prints a summary.",
            ),
            (
                "sudo tcpmon watch --state time-wait --port 80",
                "Only sockets entering or leaving TIME_WAIT on port 80.",
            ),
            (
                "sudo tcpmon watch --json --duration 1m > events.ndjson",
                "One minute of typed records, one JSON object per line.",
            ),
        ],
        Some("serve") => &[
            (
                "sudo tcpmon serve",
                "Metrics on http://127.0.0.1:29827/metrics, alerts on /alerts, health on /healthz.",
            ),
            (
                "sudo tcpmon serve --all-netns",
                "Every network namespace, labelled by container or pod.",
            ),
        ],
        Some("top") => &[
            (
                "sudo tcpmon top",
                "The dashboard, redrawn every second; ? lists the keys, q quits.",
            ),
            (
                "sudo tcpmon top --all-netns",
                "With a pane of every network namespace; n picks one, Enter scopes every pane to it.",
            ),
            (
                "NO_COLOR=1 tcpmon top --mode poll",
                "Without privilege or colour: polling the socket table every second.",
            ),
        ],
        Some("trends") => &[
            (
                "tcpmon trends",
                "The last day from serve's history, hour by hour, with capacity findings.",
            ),
            (
                "tcpmon trends --since 30d --every 1d --compare 30d",
                "A month day by day, against the month before.",
            ),
            (
                "tcpmon trends --since 7d --listeners",
                "The listeners that appeared or went in the last week.",
            ),
            (
                "tcpmon trends --history ./h.db --json",
                "A history watch --history ./h.db recorded, as JSON.",
            ),
        ],
        Some(_) => &[],
    }
}

fn exit_statuses(subcommand: Option<&str>) -> Pairs {
    match subcommand {
        Some("audit") => &[
            ("0", "No finding reached --fail-on."),
            ("1", "A finding reached --fail-on (critical unless told)."),
            ("2", "A usage error, or the sockets could not be read."),
        ],
        Some("watch") => &[
            ("0", "Stopped by a signal or --duration, or the reader of the output went away."),
            ("2", "A usage error, or neither eBPF nor polling could start, or a failure while running."),
        ],
        Some("top") => &[
            ("0", "Quit with q or Ctrl-C, stopped by a signal or by --duration."),
            ("2", "Not on a terminal (stdin or stdout is a pipe or a file), a usage error, or the engine could not start or failed."),
        ],
        Some("trends") => &[
            ("0", "The history was read and printed (an empty period says so)."),
            ("2", "A usage error, or the history is missing, damaged or not tcpmon's."),
        ],
        Some("serve") => &[
            ("0", "Stopped by SIGINT or SIGTERM, or by --duration."),
            ("2", "A usage error, the address could not be bound, or the engine could not start or failed."),
        ],
        None => &[
            ("0", "Success."),
            ("1", "audit: a finding reached --fail-on."),
            ("2", "A usage error or a failure, said on stderr."),
        ],
        Some(_) => &[
            ("0", "The snapshot was read and printed."),
            ("2", "A usage error, or the sockets could not be read."),
        ],
    }
}

fn see_also(subcommand: Option<&str>) -> Pairs {
    match subcommand {
        Some("watch") => &[("bpftool", "8"), ("tcp", "7")],
        Some("top") => &[("ss", "8"), ("htop", "1"), ("tcp", "7")],
        Some("serve") => &[
            ("prometheus", "1"),
            ("bpftool", "8"),
            ("systemd.service", "5"),
        ],
        _ => &[("ss", "8"), ("tcp", "7"), ("proc", "5")],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_has_examples_and_its_own_exit_statuses() {
        let cmd = Cli::command();
        for sub in cmd.get_subcommands().filter(|c| !c.is_hide_set()) {
            let name = sub.get_name();
            assert!(!examples(Some(name)).is_empty(), "{name} has no examples");
            for (line, _) in examples(Some(name)) {
                let words: Vec<&str> = line.split_whitespace().collect();
                let at = words
                    .iter()
                    .position(|w| *w == "tcpmon")
                    .expect("a tcpmon line");
                // An example names its own command and parses.
                assert_eq!(words[at + 1], name, "{line}");
                let args: Vec<&str> = words[at..]
                    .iter()
                    .copied()
                    .take_while(|w| *w != ">")
                    .collect();
                let parsed = <Cli as clap::Parser>::try_parse_from(&args);
                assert!(parsed.is_ok(), "{line}: {:?}", parsed.err());
            }
        }
        assert!(exit_statuses(Some("audit")).iter().any(|(c, _)| *c == "1"));
        assert!(exit_statuses(Some("states")).iter().all(|(c, _)| *c != "1"));
    }
}
