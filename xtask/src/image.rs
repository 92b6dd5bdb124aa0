//! `cargo xtask image`: the container image the DaemonSet runs, built with buildah from
//! deploy/container/Containerfile and the Debian package, then run once to check that
//! the binary and its libraries are complete.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

use crate::run_cmd;

/// Builds the image from `deb`; returns the OCI archive it wrote.
pub fn build_and_check(root: &Path, deb: &Path) -> Result<PathBuf> {
    let context = root.join("target/image");
    if context.exists() {
        fs::remove_dir_all(&context).with_context(|| format!("removing {}", context.display()))?;
    }
    let unpacked = context.join("deb");
    fs::create_dir_all(&unpacked).with_context(|| format!("creating {}", unpacked.display()))?;
    run_cmd(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&unpacked))?;
    let rootfs = context.join("rootfs");
    for file in [
        "usr/bin/tcpmon",
        "usr/share/doc/tcpmon/copyright",
        "usr/share/doc/tcpmon/LICENSE-MIT",
        "usr/share/doc/tcpmon/LICENSE-APACHE",
    ] {
        copy_into(&unpacked.join(file), &rootfs.join(file))?;
    }
    let binary = rootfs.join("usr/bin/tcpmon");
    for library in linked_libraries(&binary)? {
        let inside = rootfs.join(library.strip_prefix("/").unwrap_or(&library));
        copy_into(&library, &inside)?;
    }
    let version = version_of(&binary)?;
    let tag = format!("localhost/tcpmon:{version}");
    run_cmd(
        Command::new("buildah")
            .args(["build", "--quiet", "-f"])
            .arg(root.join("deploy/container/Containerfile"))
            .args(["-t", &tag])
            .arg(&context),
    )?;
    check(&tag, &version)?;
    let archive = root.join(format!("target/dist/tcpmon-image_{version}.tar"));
    let _ = fs::remove_file(&archive);
    run_cmd(Command::new("buildah").args([
        "push",
        "--quiet",
        &tag,
        &format!("oci-archive:{}:tcpmon:{version}", archive.display()),
    ]))?;
    eprintln!(
        "xtask: image {tag} checked, written to {}",
        archive.display()
    );
    Ok(archive)
}

fn copy_into(from: &Path, to: &Path) -> Result<()> {
    if let Some(dir) = to.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // fs::copy follows symlinks: the image gets the library, not a dangling link.
    fs::copy(from, to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    Ok(())
}

/// The shared objects the dynamic loader maps for `binary`, the loader included.
fn linked_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .context("running ldd")?;
    if !out.status.success() {
        bail!(
            "ldd {}: {}",
            binary.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let libraries: Vec<PathBuf> = text
        .lines()
        .filter_map(|line| {
            // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or
            // "/lib64/ld-linux-x86-64.so.2 (0x...)"; the vDSO has no file.
            let path = line.split("=>").last()?.split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect();
    if !libraries
        .iter()
        .any(|l| l.to_string_lossy().contains("ld-linux"))
    {
        bail!(
            "ldd named no dynamic loader for {}: {text}",
            binary.display()
        );
    }
    Ok(libraries)
}

fn version_of(binary: &Path) -> Result<String> {
    let out = Command::new(binary).arg("--version").output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .strip_prefix("tcpmon ")
        .map(str::to_owned)
        .with_context(|| format!("tcpmon --version said {text:?}"))
}

/// Runs the image's tcpmon (chroot isolation: an OCI runtime cannot create cgroups on
/// a host with hybrid cgroups), as the DaemonSet's entrypoint would.
fn check(tag: &str, version: &str) -> Result<()> {
    let out = Command::new("buildah")
        .args(["from", "--quiet", tag])
        .output()?;
    if !out.status.success() {
        bail!(
            "buildah from {tag}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let container = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let result = (|| -> Result<()> {
        let run = |args: &[&str]| {
            Command::new("buildah")
                .args([
                    "run",
                    "--isolation",
                    "chroot",
                    &container,
                    "--",
                    "/usr/bin/tcpmon",
                ])
                .args(args)
                .output()
                .context("buildah run")
        };
        let out = run(&["--version"])?;
        let said = String::from_utf8_lossy(&out.stdout);
        if said.trim() != format!("tcpmon {version}") {
            bail!(
                "the image's tcpmon --version said {said:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let out = run(&["states", "--json"])?;
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "the image's tcpmon states --json: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
        if doc["schema_version"].as_u64().is_none() {
            bail!("the image's tcpmon states --json gave {doc}");
        }
        Ok(())
    })();
    let _ = Command::new("buildah").args(["rm", &container]).output();
    result
}
