//! Reads of files other people serve: a container's root may be a FUSE or network
//! filesystem whose server never answers, and a thread that touches it then sleeps in
//! the kernel until the server does (or forever). Such a read runs on a thread of its
//! own; the caller waits [`DEADLINE`] and goes on without the answer. A root that did
//! not answer is not tried again while its read is pending, and at most
//! [`MAX_ABANDONED`] reads are ever left waiting, so neither threads nor waits pile up.
use std::{
    collections::BTreeSet,
    io,
    path::{Path, PathBuf},
    sync::{Arc, Condvar, Mutex},
    time::Duration,
};

/// How long a caller waits for one read of a file under another root.
pub const DEADLINE: Duration = Duration::from_millis(500);
/// Reads left waiting at most; beyond, further reads are not even started.
pub const MAX_ABANDONED: usize = 8;

/// The roots whose reads are still waiting.
static STUCK: Mutex<BTreeSet<PathBuf>> = Mutex::new(BTreeSet::new());

/// Roots whose reads were abandoned and have not answered since: said in notes.
pub fn unanswered() -> Vec<PathBuf> {
    STUCK
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .cloned()
        .collect()
}

/// A small text file under `root` (see [`super::read::small_text_in_root`]), read
/// within `deadline`; `TimedOut` when it did not answer (now or before).
pub fn small_text_in_root(
    root: &Path,
    relative: &str,
    max: usize,
    deadline: Duration,
) -> io::Result<String> {
    {
        let stuck = STUCK.lock().unwrap_or_else(|p| p.into_inner());
        if stuck.contains(root) {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "an earlier read there has not answered yet",
            ));
        }
        if stuck.len() >= MAX_ABANDONED {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "too many reads elsewhere have not answered",
            ));
        }
    }
    // (the answer, whether the caller gave up waiting)
    let slot = Arc::new((Mutex::new((None, false)), Condvar::new()));
    let theirs = Arc::clone(&slot);
    let (owned_root, relative) = (root.to_owned(), relative.to_owned());
    std::thread::Builder::new()
        .name("tcpmon-slow-read".into())
        .spawn(move || {
            let answer = super::read::small_text_in_root(&owned_root, &relative, max);
            let (lock, ready) = &*theirs;
            let mut state = lock.lock().unwrap_or_else(|p| p.into_inner());
            if state.1 {
                // Abandoned: the root answers again.
                STUCK
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&owned_root);
            } else {
                state.0 = Some(answer);
                ready.notify_one();
            }
        })?;
    let (lock, ready) = &*slot;
    let state = lock.lock().unwrap_or_else(|p| p.into_inner());
    let (mut state, _) = ready
        .wait_timeout_while(state, deadline, |s| s.0.is_none())
        .unwrap_or_else(|p| p.into_inner());
    if let Some(answer) = state.0.take() {
        return answer;
    }
    state.1 = true;
    STUCK
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(root.to_owned());
    Err(io::Error::new(
        io::ErrorKind::TimedOut,
        format!("no answer within {} ms", deadline.as_millis()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_root_that_answers_is_read() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(dir.path().join("etc/hostname"), "web-1\n").unwrap();
        let text = small_text_in_root(dir.path(), "etc/hostname", 256, DEADLINE).unwrap();
        assert_eq!(text, "web-1\n");
        assert!(!unanswered().contains(&dir.path().to_owned()));
    }
}
