//! `cargo xtask package`: the Debian package (cargo-deb) with the binary, man pages,
//! shell completions, the systemd unit and the Prometheus rules; and the checks CI runs
//! on it once installed.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

use crate::{cargo, run_cmd, setup};

/// Builds target/debian/tcpmon_*.deb; returns its path.
pub fn build(root: &Path) -> Result<PathBuf> {
    setup::ensure_ebpf_toolchain()?;
    setup::ensure_cargo_deb()?;
    cargo(&["build", "--release", "-p", "tcpmon"])?;
    let dist = root.join("target/dist");
    run_cmd(
        Command::new(root.join("target/release/tcpmon"))
            .arg("generate")
            .arg(&dist),
    )?;
    let out = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args(["deb", "-p", "tcpmon", "--no-build"])
        .current_dir(root)
        .output()
        .context("running cargo deb")?;
    if !out.status.success() {
        bail!(
            "cargo deb failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let deb = String::from_utf8_lossy(&out.stdout)
        .lines()
        .rev()
        .find(|l| l.trim_end().ends_with(".deb"))
        .map(|l| PathBuf::from(l.trim()))
        .context("cargo deb did not say where the package is")?;
    eprintln!("xtask: built {}", deb.display());
    Ok(deb)
}

/// Installs the package and checks what it installed: the binary runs, the man page is
/// found, the unit verifies, the rules load and pass their tests.
pub fn install_and_check(root: &Path, deb: &Path) -> Result<()> {
    run_cmd(Command::new("dpkg").arg("-i").arg(deb))?;
    let version = Command::new("/usr/bin/tcpmon")
        .arg("--version")
        .output()
        .context("running the installed tcpmon")?;
    let version = String::from_utf8_lossy(&version.stdout);
    if !version.starts_with("tcpmon ") {
        bail!("tcpmon --version said {version:?}");
    }
    check_contents(deb)?;
    run_cmd(Command::new("man").args(["-w", "tcpmon"]))?;
    run_cmd(Command::new("man").args(["-w", "tcpmon-serve"]))?;
    run_cmd(
        Command::new("systemd-analyze").args(["verify", "/lib/systemd/system/tcpmon.service"]),
    )?;
    run_cmd(Command::new("promtool").args([
        "check",
        "rules",
        "/usr/share/tcpmon/prometheus/tcpmon.rules.yml",
    ]))?;
    run_cmd(
        Command::new("promtool")
            .args(["test", "rules", "tcpmon.rules.test.yml"])
            .current_dir(root.join("deploy/prometheus")),
    )?;
    eprintln!("xtask: package installed and checked ({})", version.trim());
    Ok(())
}

/// What a packager would reject: debug symbols in the shipped binary, placeholder
/// addresses, missing licenses.
fn check_contents(deb: &Path) -> Result<()> {
    let sections = Command::new("readelf")
        .args(["-S", "-W", "/usr/bin/tcpmon"])
        .output()
        .context("running readelf")?;
    if String::from_utf8_lossy(&sections.stdout).contains(".debug_info") {
        bail!("/usr/bin/tcpmon carries debug symbols: the package must ship it stripped");
    }
    let control = Command::new("dpkg-deb")
        .arg("-f")
        .arg(deb)
        .output()
        .context("reading the package's control fields")?;
    let control = String::from_utf8_lossy(&control.stdout).into_owned();
    let unit = std::fs::read_to_string("/lib/systemd/system/tcpmon.service")?;
    for (what, text) in [("control file", &control), ("unit", &unit)] {
        for placeholder in ["example.invalid", "example.com", "github.com/tcpmon"] {
            if text.contains(placeholder) {
                bail!("the package's {what} holds a placeholder ({placeholder})");
            }
        }
    }
    for license in ["copyright", "LICENSE-MIT", "LICENSE-APACHE"] {
        let path = Path::new("/usr/share/doc/tcpmon").join(license);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        if text.trim().is_empty() {
            bail!("{} is empty", path.display());
        }
    }
    Ok(())
}
