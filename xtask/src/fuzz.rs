//! `cargo xtask fuzz`: every cargo-fuzz target of tcpmon/fuzz for a while, starting from
//! its committed seeds (tcpmon/fuzz/seeds/TARGET) and what earlier runs found
//! (tcpmon/fuzz/corpus/TARGET, not committed), with a summary of executions and crashes
//! per target.
use std::{
    path::Path,
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{bail, Context as _, Result};

use crate::setup;

/// The targets in tcpmon/fuzz/fuzz_targets.
pub const TARGETS: [&str; 6] = [
    "proc_line",
    "decode",
    "ringbuf_walk",
    "slot_walk",
    "kstats",
    "duration",
];

pub fn run(root: &Path, seconds: u64, only: &[String]) -> Result<()> {
    setup::ensure_ebpf_toolchain()?;
    setup::ensure_cargo_fuzz()?;
    let fuzz_dir = root.join("tcpmon/fuzz");
    let targets: Vec<&str> = if only.is_empty() {
        TARGETS.to_vec()
    } else {
        for t in only {
            if !TARGETS.contains(&t.as_str()) {
                bail!("no fuzz target {t} (targets: {})", TARGETS.join(", "));
            }
        }
        only.iter().map(String::as_str).collect()
    };
    let mut results = Vec::new();
    for target in &targets {
        let corpus = fuzz_dir.join("corpus").join(target);
        std::fs::create_dir_all(&corpus)?;
        // libFuzzer writes what it finds into the first directory and reads the others.
        let seeds = fuzz_dir.join("seeds").join(target);
        let started = Instant::now();
        eprintln!("xtask: fuzzing {target} for {seconds} s");
        let out = Command::new("rustup")
            .args(["run", "nightly", "cargo", "fuzz", "run", target])
            .arg("--fuzz-dir")
            .arg(&fuzz_dir)
            .arg(&corpus)
            .args(seeds.is_dir().then_some(&seeds))
            .args([
                "--",
                &format!("-max_total_time={seconds}"),
                "-print_final_stats=1",
            ])
            .env_remove("RUSTUP_TOOLCHAIN")
            .env_remove("CARGO_TARGET_DIR")
            // The targets need no kernel object.
            .env("AYA_BUILD_SKIP", "1")
            .current_dir(root)
            .stdout(Stdio::inherit())
            .output()
            .with_context(|| format!("running cargo fuzz for {target}"))?;
        let log = String::from_utf8_lossy(&out.stderr);
        let executions = log
            .lines()
            .find_map(|l| l.strip_prefix("stat::number_of_executed_units:"))
            .and_then(|n| n.trim().parse::<u64>().ok());
        if !out.status.success() || executions.is_none() {
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            eprintln!("{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
            if log.contains("Test unit written to") {
                bail!("fuzz target {target} found a crash (saved under tcpmon/fuzz/artifacts/{target})");
            }
            bail!("fuzz target {target} did not run (see the output above)");
        }
        let executions = executions.unwrap_or(0);
        eprintln!("xtask: {target}: {executions} executions, no crash");
        results.push((*target, executions, started.elapsed().as_secs()));
    }
    println!(
        "{:<14} {:>14} {:>8} {:>8}",
        "target", "executions", "seconds", "crashes"
    );
    for (target, executions, secs) in results {
        println!("{target:<14} {executions:>14} {secs:>8} {:>8}", 0);
    }
    Ok(())
}
