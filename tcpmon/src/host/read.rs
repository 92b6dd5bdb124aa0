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
    let file = unsafe { File::from_raw_fd(fd) };
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
    const CHUNK: usize = 1 << 20;
    let file = open_regular(path)?;
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
}
