//! The two filesystems loading needs and a system may not have mounted where tcpmon
//! runs (`ip netns exec` remounts /sys without either): tracefs, to find classic
//! tracepoints, and cgroup2, whose root the SYN counter attaches to. Whatever tcpmon
//! mounts, it unmounts; nothing is ever mounted at a path another user could prepare.
use std::{
    ffi::CString,
    fs, io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
};

/// Where aya looks for tracepoints first.
const TRACEFS: &str = "/sys/kernel/tracing";

/// Why a filesystem could not be had.
#[derive(Clone, Debug, thiserror::Error)]
pub enum MountError {
    #[error("tracefs is not mounted at {TRACEFS} and mounting it failed ({0})")]
    Tracefs(String),
    #[error("no cgroup2 mount, and mounting a private one failed ({0})")]
    Cgroup2(String),
    #[error("cannot open the cgroup2 root {}: {reason}", path.display())]
    Cgroup2Open { path: PathBuf, reason: String },
}

/// tracefs while the tracepoints are being attached: mounted by tcpmon when it was not,
/// and then unmounted again on drop (an attached tracepoint no longer needs it).
#[derive(Debug)]
pub struct Tracefs {
    mounted_here: bool,
}

impl Tracefs {
    /// Makes tracefs available at /sys/kernel/tracing, mounting it when neither that nor
    /// /sys/kernel/debug/tracing has it.
    pub fn ensure() -> Result<Self, MountError> {
        let root = Path::new(TRACEFS);
        if root.join("events").exists() || Path::new("/sys/kernel/debug/tracing/events").exists() {
            return Ok(Self {
                mounted_here: false,
            });
        }
        let target = c_string(TRACEFS);
        let fstype = c_string("tracefs");
        // SAFETY: valid NUL-terminated strings; no data argument.
        let rc = unsafe {
            libc::mount(
                fstype.as_ptr(),
                target.as_ptr(),
                fstype.as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            return Err(MountError::Tracefs(io::Error::last_os_error().to_string()));
        }
        Ok(Self { mounted_here: true })
    }

    /// Whether tcpmon mounted it (the mode line says so).
    pub fn mounted_here(&self) -> bool {
        self.mounted_here
    }
}

impl Drop for Tracefs {
    fn drop(&mut self) {
        if self.mounted_here {
            let target = c_string(TRACEFS);
            // SAFETY: a valid path; lazy and not following a symlink planted since.
            unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH | UMOUNT_NOFOLLOW) };
        }
    }
}

const UMOUNT_NOFOLLOW: libc::c_int = 8;

fn c_string(text: &str) -> CString {
    CString::new(text).expect("constant without NUL")
}

/// The root of the cgroup v2 hierarchy, opened: the mounted one when there is one, else a
/// private mount that exists only as a file descriptor (no path, so nothing another user
/// could redirect), gone when the fd closes.
pub fn open_cgroup2_root() -> Result<fs::File, MountError> {
    match mounted_cgroup2() {
        Some(path) => fs::File::open(&path).map_err(|e| MountError::Cgroup2Open {
            path,
            reason: e.to_string(),
        }),
        None => detached_cgroup2().map_err(|e| MountError::Cgroup2(e.to_string())),
    }
}

/// The first cgroup2 mount point in /proc/self/mountinfo.
fn mounted_cgroup2() -> Option<PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").ok()?;
    cgroup2_in_mountinfo(&mountinfo)
}

fn cgroup2_in_mountinfo(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (mount, fs_part) = line.split_once(" - ")?;
        if fs_part.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        mount.split_whitespace().nth(4).map(PathBuf::from)
    })
}

/// A cgroup2 superblock mounted with the new mount API and never attached to the tree:
/// fsopen -> fsconfig(CREATE) -> fsmount gives a mount fd; its root directory is what the
/// SYN counter attaches to.
fn detached_cgroup2() -> io::Result<fs::File> {
    const FSOPEN_CLOEXEC: libc::c_uint = 1;
    const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
    const FSMOUNT_CLOEXEC: libc::c_uint = 1;
    let fstype = c_string("cgroup2");
    let check = |rc: libc::c_long| -> io::Result<OwnedFd> {
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = i32::try_from(rc).map_err(|_| io::Error::other("fd out of range"))?;
        // SAFETY: the kernel just returned this fd, and nothing else owns it.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    };
    // SAFETY: fsopen(2) with a NUL-terminated filesystem name and flags.
    let context =
        check(unsafe { libc::syscall(libc::SYS_fsopen, fstype.as_ptr(), FSOPEN_CLOEXEC) })?;
    // SAFETY: fsconfig(2) on the context fd; CREATE takes no key, value or aux.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            context.as_raw_fd(),
            FSCONFIG_CMD_CREATE,
            std::ptr::null::<libc::c_char>(),
            std::ptr::null::<libc::c_void>(),
            0,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fsmount(2) on the configured context; no mount attributes.
    let mount = check(unsafe {
        libc::syscall(
            libc::SYS_fsmount,
            context.as_raw_fd(),
            FSMOUNT_CLOEXEC,
            0 as libc::c_uint,
        )
    })?;
    let dot = c_string(".");
    // SAFETY: openat(2) relative to the mount fd, a NUL-terminated path.
    let dir = unsafe {
        libc::openat(
            mount.as_raw_fd(),
            dot.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if dir < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: just opened, owned by the File.
    Ok(unsafe { fs::File::from_raw_fd(dir) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cgroup2_mount_point() {
        let mountinfo = "\
25 30 0:23 / /sys rw,nosuid shared:7 - sysfs sysfs rw
35 25 0:30 / /sys/fs/cgroup/unified rw,nosuid,nodev shared:10 - cgroup2 cgroup2 rw
36 25 0:31 / /sys/fs/cgroup/cpu rw shared:11 - cgroup cgroup rw,cpu\n";
        assert_eq!(
            cgroup2_in_mountinfo(mountinfo),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(cgroup2_in_mountinfo("garbage\n"), None);
    }

    #[test]
    fn a_detached_cgroup2_root_needs_no_path() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return;
        }
        let root = detached_cgroup2().expect("root may mount cgroup2");
        // The hierarchy's root holds cgroup.procs, and no mount appeared anywhere.
        let procs = fs::read_dir(format!("/proc/self/fd/{}", root.as_raw_fd()))
            .unwrap()
            .filter_map(Result::ok)
            .any(|e| e.file_name() == "cgroup.procs");
        assert!(procs);
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!mountinfo.contains("tcpmon-cgroup2"));
    }
}
