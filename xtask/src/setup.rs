//! Idempotent installation of what tcpmon's build and tests need. Each step checks first
//! and says what it skipped, so running it twice costs a few process spawns.
use std::process::Command;

use anyhow::{bail, Context as _, Result};

use crate::run_cmd;

/// The pinned linker: 0.10.4 loads rustc's own LLVM; 0.13 wants LLVM 23 and 0.9 produced
/// objects this kernel rejects (KERNEL_FACTS.md).
const BPF_LINKER_VERSION: &str = "0.10.4";

/// Debian packages the tests drive: ss/ip, nft, hping3, setpriv, strace, tmux, ...
const TEST_PACKAGES: &[(&str, &str)] = &[
    ("ss", "iproute2"),
    ("ip", "iproute2"),
    ("nft", "nftables"),
    ("hping3", "hping3"),
    ("setpriv", "util-linux"),
    ("hyperfine", "hyperfine"),
    ("netstat", "net-tools"),
    ("bc", "bc"),
    ("bpftool", "bpftool"),
    ("prometheus", "prometheus"),
    ("promtool", "prometheus"),
    ("systemd-analyze", "systemd"),
    ("man", "man-db"),
    ("curl", "curl"),
    ("strace", "strace"),
    ("tmux", "tmux"),
    ("script", "bsdutils"),
    ("buildah", "buildah"),
    ("readelf", "binutils"),
];

pub fn ensure_all(verbose: bool) -> Result<()> {
    ensure_ebpf_toolchain()?;
    ensure_test_tools(verbose)
}

pub fn ensure_ebpf_toolchain() -> Result<()> {
    if !succeeds(Command::new("rustup").args(["run", "nightly", "rustc", "--version"])) {
        run_cmd(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }
    let sysroot = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--print", "sysroot"])
        .output()
        .context("asking nightly rustc for its sysroot")?;
    let sysroot = String::from_utf8_lossy(&sysroot.stdout).trim().to_owned();
    if !std::path::Path::new(&sysroot)
        .join("lib/rustlib/src/rust/library/core")
        .exists()
    {
        run_cmd(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    let linker = Command::new("bpf-linker").arg("--version").output();
    let installed = linker
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    if installed.as_deref() != Some(&format!("bpf-linker {BPF_LINKER_VERSION}")) {
        run_cmd(Command::new("cargo").args([
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--locked",
            "--force",
        ]))?;
    }
    Ok(())
}

/// cargo-deb, for `cargo xtask package`.
pub fn ensure_cargo_deb() -> Result<()> {
    if succeeds(Command::new("cargo").args(["deb", "--version"])) {
        return Ok(());
    }
    run_cmd(Command::new("cargo").args(["install", "cargo-deb", "--locked"]))
}

/// cargo-fuzz, for `cargo xtask fuzz`.
pub fn ensure_cargo_fuzz() -> Result<()> {
    if succeeds(Command::new("cargo").args(["fuzz", "--version"])) {
        return Ok(());
    }
    run_cmd(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))
}

fn ensure_test_tools(verbose: bool) -> Result<()> {
    let mut missing: Vec<&str> = TEST_PACKAGES
        .iter()
        .filter(|(tool, _)| !on_path(tool))
        .map(|&(_, package)| package)
        .collect();
    missing.dedup();
    if missing.is_empty() {
        if verbose {
            eprintln!("xtask: test tools present");
        }
        return Ok(());
    }
    // SAFETY: geteuid has no preconditions.
    let is_root = unsafe { libc::geteuid() } == 0;
    if !is_root || !on_path("apt-get") {
        bail!(
            "missing test tools; install the Debian packages: {}",
            missing.join(" ")
        );
    }
    run_cmd(Command::new("apt-get").args(["update", "-q"]))?;
    run_cmd(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn succeeds(cmd: &mut Command) -> bool {
    cmd.output().is_ok_and(|o| o.status.success())
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()))
}
