//! Builds the kernel program (tcpmon-ebpf) with aya-build and leaves the object in
//! OUT_DIR, where src/ebpf embeds it. `cargo xtask build-ebpf` runs this same script.
use std::{env, fs, path::PathBuf, process::Command};

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo"));
    let object = out_dir.join("tcpmon");
    let workspace = manifest_dir
        .parent()
        .expect("tcpmon/ lives in the workspace");
    // aya-build watches the eBPF crate; the shared types matter just as much.
    println!(
        "cargo::rerun-if-changed={}",
        workspace.join("tcpmon-common/src").display()
    );
    println!("cargo::rerun-if-env-changed=AYA_BUILD_SKIP");

    if env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true")) {
        // A snapshot-only binary: `watch` will say the object is missing and fall back.
        fs::write(&object, []).expect("write empty eBPF object placeholder");
        return;
    }
    if let Err(missing) = preflight() {
        panic!(
            "\n\ntcpmon's kernel program cannot be built: {missing}.\n\
             Install the eBPF toolchain with `cargo xtask setup` (or build a snapshot-only \
             binary with AYA_BUILD_SKIP=1).\n"
        );
    }
    let ebpf_dir = workspace.join("tcpmon-ebpf");
    let ebpf = aya_build::Package {
        name: "tcpmon-ebpf",
        root_dir: ebpf_dir.to_str().expect("UTF-8 path"),
        ..Default::default()
    };
    // aya-build forwards every line of the nested cargo as a warning; only errors matter.
    env::set_var("CARGO_TERM_QUIET", "true");
    if let Err(err) = aya_build::build_ebpf([ebpf], aya_build::Toolchain::default()) {
        panic!("building tcpmon-ebpf failed: {err:#}");
    }
}

/// Checks the two things a fresh machine usually lacks, so the error names them
/// instead of surfacing as a linker failure deep in the nested build.
fn preflight() -> Result<(), String> {
    let linker = Command::new("bpf-linker").arg("--version").output();
    if !linker.is_ok_and(|o| o.status.success()) {
        return Err("bpf-linker is not on PATH".into());
    }
    let sysroot = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--print", "sysroot"])
        .output()
        .map_err(|e| format!("rustup is not usable ({e})"))?;
    if !sysroot.status.success() {
        return Err("the nightly toolchain is not installed".into());
    }
    let sysroot = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim());
    if !sysroot.join("lib/rustlib/src/rust/library/core").exists() {
        return Err("nightly's rust-src component is not installed".into());
    }
    Ok(())
}
