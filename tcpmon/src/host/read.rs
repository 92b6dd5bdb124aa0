//! Reading files that a hostile `--proc-root` (or a hostile process) may have replaced:
//! opened without blocking (a FIFO would otherwise wait forever for a writer), refused
//! unless regular (procfs files are regular files of size 0; a device such as /dev/zero
//! would never end), and read up to a cap.
use std::{
    ffi::CString,
    fs::File,
    io,
    os::{
        fd::{AsRawFd, FromRawFd},
        unix::{ffi::OsStrExt, fs::FileTypeExt},
    },
    path::Path,
};

use bytes::{Bytes, BytesMut};

/// The most a socket table is read to: ~6 million rows of /proc/net/tcp6.
pub const MAX_TABLE_BYTES: usize = 1 << 30;
/// The most a sysctl, counter file or process name is read to.
pub const MAX_SMALL_BYTES: usize = 1 << 20;

/// Opens `path` for reading without blocking and checks it is a regular file.
pub fn open_regular(path: &Path) -> io::Result<File> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path holds a NUL byte"))?;
    let flags = libc::O_RDONLY | libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY;
    // SAFETY: a NUL-terminated path; the returned fd is owned by the File below.
    let fd = unsafe { libc::open(c_path.as_ptr(), flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and nothing else owns it.
    regular(unsafe { File::from_raw_fd(fd) })
}

/// Opens `relative` as if `root` were `/`: symlinks inside are resolved within `root`
/// (openat2 RESOLVE_IN_ROOT), so a file under another process's /proc/PID/root cannot
/// point tcpmon at one of this machine's files. Non-blocking, regular files only.
pub fn open_regular_in_root(root: &Path, relative: &str) -> io::Result<File> {
    let dir = open_dir(root)?;
    let c_relative = CString::new(relative)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path holds a NUL byte"))?;
    // SAFETY: open_how is plain integers; all-zero is its documented default.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_RDONLY | libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY) as u64;
    how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: a directory fd, a NUL-terminated path and an open_how of the size passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            c_relative.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and nothing else owns it.
    regular(unsafe { File::from_raw_fd(fd as libc::c_int) })
}

fn regular(file: File) -> io::Result<File> {
    let kind = file.metadata()?.file_type();
    if !kind.is_file() {
        let what = if kind.is_fifo() {
            "a FIFO"
        } else if kind.is_char_device() || kind.is_block_device() {
            "a device"
        } else if kind.is_socket() {
            "a socket"
        } else if kind.is_dir() {
            "a directory"
        } else {
            "not a regular file"
        };
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{what}, not a regular file"),
        ));
    }
    Ok(file)
}

/// Opens a directory without following it into anything else (a FIFO named like a
/// directory fails at once instead of blocking).
pub fn open_dir(path: &Path) -> io::Result<File> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path holds a NUL byte"))?;
    let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC | libc::O_NONBLOCK;
    // SAFETY: a NUL-terminated path; the returned fd is owned by the File below.
    let fd = unsafe { libc::open(c_path.as_ptr(), flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and nothing else owns it.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// Reads a whole regular file, up to `max` bytes, with large reads (seq_file produces as
/// much as each read asks for, so fewer, bigger reads mean fewer trips through the
/// kernel's socket walk). More than `max` bytes is an error, not a silent cut.
pub fn whole(path: &Path, max: usize) -> io::Result<Bytes> {
    whole_of(open_regular(path)?, max)
}

/// A small text file read with `relative` resolved inside `root` (see
/// [`open_regular_in_root`]), lossily decoded.
pub fn small_text_in_root(root: &Path, relative: &str, max: usize) -> io::Result<String> {
    let bytes = whole_of(open_regular_in_root(root, relative)?, max)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

fn whole_of(file: File, max: usize) -> io::Result<Bytes> {
    const CHUNK: usize = 1 << 20;
    let mut buf = BytesMut::with_capacity(CHUNK.min(max + 1));
    loop {
        if buf.capacity() - buf.len() < CHUNK / 2 {
            buf.reserve(CHUNK.min(max + 1 - buf.len()).max(1));
        }
        let room = max + 1 - buf.len().min(max);
        let spare = buf.spare_capacity_mut();
        let want = spare.len().min(room);
        // SAFETY: read(2) writes at most `want` bytes into the spare capacity, which is
        // at least that long; no reference to uninitialised memory is made.
        let n = unsafe { libc::read(file.as_raw_fd(), spare.as_mut_ptr().cast(), want) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        let n = n as usize;
        if n == 0 {
            return Ok(buf.freeze());
        }
        // SAFETY: the kernel initialised these `n` bytes.
        unsafe { buf.set_len(buf.len() + n) };
        if buf.len() > max {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("longer than {max} bytes"),
            ));
        }
    }
}

/// A small text file (sysctl, counters, a process name), lossily decoded.
pub fn small_text(path: &Path) -> io::Result<String> {
    let bytes = whole(path, MAX_SMALL_BYTES)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

#[cfg(test)]
mod tests {
    use std::{ffi::CString, time::Instant};

    use super::*;

    #[test]
    fn reads_regular_files_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..3_000_000u32).map(|i| i as u8).collect();
        std::fs::write(&path, &data).unwrap();
        assert_eq!(&whole(&path, MAX_TABLE_BYTES).unwrap()[..], &data[..]);
        let err = whole(&path, 1000).unwrap_err();
        assert!(err.to_string().contains("longer than 1000 bytes"), "{err}");
        // Exactly at the cap is fine.
        assert_eq!(whole(&path, data.len()).unwrap().len(), data.len());
    }

    #[test]
    fn procfs_files_read_although_their_size_is_zero() {
        let text = small_text(Path::new("/proc/self/status")).unwrap();
        assert!(text.starts_with("Name:"), "{text}");
    }

    #[test]
    fn fifos_and_devices_are_refused_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let c = CString::new(fifo.as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let started = Instant::now();
        let err = whole(&fifo, 100).unwrap_err();
        assert!(err.to_string().contains("a FIFO"), "{err}");
        assert!(started.elapsed().as_secs() < 5);
        let zero = dir.path().join("zero");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        let err = whole(&zero, MAX_TABLE_BYTES).unwrap_err();
        assert!(err.to_string().contains("a device"), "{err}");
        assert!(open_dir(&fifo).is_err());
        assert!(open_dir(dir.path()).is_ok());
    }

    #[test]
    fn files_in_another_root_cannot_point_outside_it() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("etc")).unwrap();
        std::fs::write(root.path().join("etc/real"), "inside\n").unwrap();
        std::os::unix::fs::symlink("/etc/real", root.path().join("etc/absolute")).unwrap();
        std::os::unix::fs::symlink("../../../../etc/os-release", root.path().join("etc/escape"))
            .unwrap();
        // An absolute link resolves inside the root, not on this machine.
        assert_eq!(
            small_text_in_root(root.path(), "etc/absolute", 100).unwrap(),
            "inside\n"
        );
        // `..` stops at the root: this names <root>/etc/os-release, which does not exist.
        assert_eq!(
            small_text_in_root(root.path(), "etc/escape", 100)
                .unwrap_err()
                .kind(),
            io::ErrorKind::NotFound
        );
        let fifo = root.path().join("etc/fifo");
        let c = CString::new(fifo.as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert!(small_text_in_root(root.path(), "etc/fifo", 100).is_err());
        assert!(small_text_in_root(root.path(), "etc/real", 3).is_err());
    }
}
