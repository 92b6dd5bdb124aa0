//! `cargo xtask <task>`: the developer entry points. Everything a fresh machine needs is
//! installed here, idempotently, so `cargo xtask run` and `cargo xtask test` are the only
//! two commands a newcomer has to know.
mod fuzz;
mod image;
mod package;
mod setup;

use std::{
    env,
    ffi::OsString,
    fs,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    time::Instant,
};

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "tcpmon developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what is missing: nightly rust-src, bpf-linker, and (as root) test tools.
    Setup,
    /// Build the kernel object and copy it to target/bpf/tcpmon.bpf.o.
    BuildEbpf,
    /// Set up, build tcpmon (release) and run it with the given arguments.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// cargo fmt --check, clippy -D warnings for user space and (separately) the eBPF crate.
    Lint,
    /// Set up, lint, run every test; the root eBPF tests too (they fail instead of
    /// skipping when CI=true).
    Test,
    /// Time whole commands against cat, ss and netstat on generated socket populations.
    Bench {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Build the Debian package (target/debian/): binary, man pages, completions, the
    /// systemd unit, the Prometheus rules.
    Package,
    /// Build the container image the DaemonSet runs (buildah, deploy/container/), check
    /// it runs, and write it as an OCI archive to target/dist/.
    Image,
    /// Fuzz the parsers, the decoder and the ring walkers (cargo-fuzz, nightly), each
    /// target for --seconds, from its committed corpus; reports executions and crashes.
    Fuzz {
        /// How long each target runs.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Targets to run (default: all).
        targets: Vec<String>,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("xtask: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    let root = workspace_root();
    env::set_current_dir(&root)?;
    match cli.task {
        Task::Setup => setup::ensure_all(true)?,
        Task::BuildEbpf => {
            setup::ensure_ebpf_toolchain()?;
            build_ebpf(&root)?;
        }
        Task::Run { args } => {
            setup::ensure_ebpf_toolchain()?;
            cargo(&["build", "--release", "-p", "tcpmon"])?;
            let status = Command::new(root.join("target/release/tcpmon"))
                .args(args)
                .status()
                .context("running target/release/tcpmon")?;
            return Ok(ExitCode::from(status.code().unwrap_or(1) as u8));
        }
        Task::Lint => lint()?,
        Task::Fuzz { seconds, targets } => fuzz::run(&root, seconds, &targets)?,
        Task::Package => {
            package::build(&root)?;
        }
        Task::Image => {
            setup::ensure_all(false)?;
            let deb = package::build(&root)?;
            image::build_and_check(&root, &deb)?;
        }
        Task::Test => test(&root)?,
        Task::Bench { args } => {
            setup::ensure_all(false)?;
            cargo(&["build", "--release", "-p", "tcpmon"])?;
            let status = Command::new(root.join("tcpmon/benches/commands.sh"))
                .args(args)
                .status()
                .context("running tcpmon/benches/commands.sh")?;
            if !status.success() {
                bail!("bench script failed: {status}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask/ sits in the workspace")
        .to_path_buf()
}

fn cargo(args: &[&str]) -> Result<()> {
    run_cmd(Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into())).args(args))
}

fn run_cmd(cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: {cmd:?}");
    let status = cmd.status().with_context(|| format!("spawning {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// The object is produced by tcpmon's build.rs (aya-build), the same routine `cargo build`
/// uses, so what developers inspect is what the binary embeds.
fn build_ebpf(root: &Path) -> Result<()> {
    let started = Instant::now();
    let output = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args(["build", "--release", "-p", "tcpmon", "--lib"])
        .args(["--message-format=json-render-diagnostics"])
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("spawning cargo build")?;
    if !output.status.success() {
        bail!("cargo build -p tcpmon failed");
    }
    let out_dir = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|msg| msg["reason"] == "build-script-executed")
        .filter(|msg| {
            msg["package_id"]
                .as_str()
                .is_some_and(|id| id.contains("/tcpmon#"))
        })
        .find_map(|msg| msg["out_dir"].as_str().map(PathBuf::from))
        .context("cargo did not report tcpmon's build-script output directory")?;
    let object = out_dir.join("tcpmon");
    let bytes = fs::read(&object).with_context(|| format!("reading {}", object.display()))?;
    if bytes.is_empty() {
        bail!("the eBPF object is empty: unset AYA_BUILD_SKIP");
    }
    let has_btf = bytes.windows(5).any(|w| w == b".BTF\0");
    let dest_dir = root.join("target/bpf");
    fs::create_dir_all(&dest_dir)?;
    let dest = dest_dir.join("tcpmon.bpf.o");
    fs::write(&dest, &bytes)?;
    println!(
        "{} ({} bytes, BTF: {}) built in {:.1}s",
        dest.display(),
        bytes.len(),
        if has_btf { "yes" } else { "MISSING" },
        started.elapsed().as_secs_f64()
    );
    if !has_btf {
        bail!("the object has no .BTF section; aya cannot load its maps");
    }
    Ok(())
}

fn lint() -> Result<()> {
    cargo(&["fmt", "--all", "--", "--check"])?;
    cargo(&["clippy", "--all-targets", "--", "-D", "warnings"])?;
    // The kernel crate only builds for the BPF target on nightly, so it gets its own run,
    // as aya's template does.
    run_cmd(
        Command::new("rustup")
            .args(["run", "nightly", "cargo", "clippy", "-p", "tcpmon-ebpf"])
            .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
            .args(["--", "-D", "warnings"])
            .env_remove("RUSTUP_TOOLCHAIN"),
    )
}

fn test(root: &Path) -> Result<()> {
    let started = Instant::now();
    setup::ensure_all(false)?;
    lint()?;
    cargo(&["test"])?;
    // Root tests share kernel state (programs, namespaces): one at a time.
    let ci = env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    let strict = if ci {
        " (CI=true: a skip is a failure)"
    } else {
        ""
    };
    eprintln!("xtask: root eBPF and namespace tests{strict}");
    cargo(&[
        "test",
        "-p",
        "tcpmon",
        "--test",
        "root",
        "--",
        "--ignored",
        "--test-threads=1",
    ])?;
    // The package, installed and checked (as root only: it installs into the system).
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let deb = package::build(root)?;
        package::install_and_check(root, &deb)?;
        image::build_and_check(root, &deb)?;
    } else if ci {
        bail!("the package and image checks need root (CI=true)");
    } else {
        eprintln!("SKIPPED package install checks: they need root");
    }
    eprintln!(
        "xtask: all tests passed in {:.0}s ({})",
        started.elapsed().as_secs_f64(),
        root.display()
    );
    Ok(())
}
