//! tcpmon's own network namespace: its inode (what the kernel program filters on) and
//! its cookie (what cgroup programs can read).
use std::{fs, io, os::fd::AsRawFd};

/// The network namespace inode of this process.
pub fn own_inode() -> io::Result<u32> {
    use std::os::unix::fs::MetadataExt;
    let ino = fs::metadata("/proc/self/ns/net")?.ino();
    u32::try_from(ino).map_err(|_| io::Error::other("netns inode does not fit 32 bits"))
}

/// This process's network namespace cookie (SO_NETNS_COOKIE, Linux >= 5.14).
pub fn own_cookie() -> io::Result<u64> {
    const SO_NETNS_COOKIE: libc::c_int = 71;
    let socket = std::net::UdpSocket::bind("127.0.0.1:0")
        .or_else(|_| std::net::UdpSocket::bind("[::1]:0"))?;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: valid socket fd and an 8-byte out buffer with its length.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}
