//! tcpmon's exit statuses.
use std::process::ExitCode;

/// What the process tells its caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Done; for `audit`, no finding reached --fail-on.
    Clean = 0,
    /// `audit`: a finding reached --fail-on.
    Findings = 1,
    /// An error (or a usage error, as clap reports them).
    Error = 2,
}

impl From<Status> for ExitCode {
    fn from(status: Status) -> Self {
        ExitCode::from(status as u8)
    }
}
