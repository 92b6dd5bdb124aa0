//! tcpmon's own messages on stderr: errors with their causes said once, and lines that
//! never hang on a stderr nobody reads.

/// An error and its causes on one line, each cause said once (a cause whose text an
/// outer error already quoted is not repeated).
pub fn error_chain(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let part = cause.to_string();
        if text.contains(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}

/// Writes `text` and a newline to stderr in one write, so that a line never interleaves
/// with stdout's when both go to one pipe (`2>&1`).
pub fn line(text: &str) {
    use std::io::Write;
    let line = format!("{text}\n");
    // Nowhere left to report a failure to.
    let _ = std::io::stderr().write_all(line.as_bytes());
}

/// Writes `text` to stderr only if it can without waiting long: the last words of a
/// stop must not hang on a stderr nobody reads.
pub fn stderr_line(text: &str) {
    let mut pollfd = libc::pollfd {
        fd: 2,
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one valid pollfd; a 200 ms timeout.
    let ready = unsafe { libc::poll(&mut pollfd, 1, 200) } == 1;
    if ready && pollfd.revents & libc::POLLOUT != 0 {
        let line = format!("{text}\n");
        // A short line fits a pipe's atomic write; an error has nowhere left to go.
        // SAFETY: fd 2, a valid buffer and its length.
        let _ = unsafe { libc::write(2, line.as_ptr().cast(), line.len()) };
    }
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;

    #[test]
    fn error_causes_are_said_once() {
        let io = io::Error::new(
            io::ErrorKind::NotFound,
            "No such file or directory (os error 2)",
        );
        let e = anyhow::Error::new(io)
            .context("cannot read /x/net/tcp: No such file or directory (os error 2)")
            .context("reading the socket tables");
        assert_eq!(
            error_chain(&e),
            "reading the socket tables: cannot read /x/net/tcp: No such file or directory (os error 2)"
        );
    }
}
