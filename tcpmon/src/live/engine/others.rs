//! `--all-netns`: how the engine reads other network namespaces and applies what it
//! finds. Discovery, baselines and reconciliations run on a thread of their own on the
//! real machine (under churn a socket table read takes seconds, and the rings must keep
//! draining), one read at a time, applied when ready; transitions that arrive meanwhile
//! are resolved against the reads. The bookkeeping itself is `live::namespaces`.
use super::{Engine, EngineError, Sink, OWNER_LOOKUP_GAP_NS};
use crate::{
    host::netns::Namespace,
    live::{
        host::Host,
        namespaces::{NamespaceRead, Namespaces},
        rules::Alert,
        source::EventSource,
    },
};

/// When other namespaces were last looked for and read.
pub(super) struct OthersIo {
    pub(super) last_discovery_ns: u64,
    /// When their owners were last looked up (a walk of every process).
    pub(super) last_owners_ns: Option<u64>,
    /// A read under way on its own thread.
    pub(super) read: Option<Reading>,
    /// When a CLOSE_WAIT alert last asked for its owner at once.
    pub(super) last_owner_lookup_ns: Option<u64>,
    /// Container roots that did not answer a read, already said.
    pub(super) unanswered_said: std::collections::BTreeSet<std::path::PathBuf>,
}

impl OthersIo {
    pub(super) fn new(now_ns: u64) -> Self {
        Self {
            last_discovery_ns: now_ns,
            last_owners_ns: None,
            read: None,
            last_owner_lookup_ns: None,
            unanswered_said: std::collections::BTreeSet::new(),
        }
    }
}

/// A read of other namespaces under way.
pub(super) struct Reading {
    handle: std::thread::JoinHandle<Vec<NamespaceRead>>,
    /// It baselines namespaces (their first read).
    baseline: bool,
}

impl<H: Host, S: EventSource> Engine<H, S> {
    /// Looks for namespaces that appeared or went, and baselines the new ones (on a
    /// thread of their own unless `inline`). Returns the events to report.
    pub(super) fn discover_namespaces(
        &mut self,
        inline: bool,
        sink: &mut impl Sink,
    ) -> Result<Vec<Alert>, EngineError> {
        let Some(others) = self.others.as_mut() else {
            return Ok(Vec::new());
        };
        self.others_io.last_discovery_ns = self.host.now_ns();
        let found = self.host.namespaces();
        let host = &mut self.host;
        let mut events = others.update(found, |ns| host.namespace_port_range(ns));
        // A container whose root never answered: said once (discovery went on without
        // its hostname, and without waiting for it again).
        let unanswered = self.host.unanswered_roots();
        self.others_io
            .unanswered_said
            .retain(|r| unanswered.contains(r));
        for root in unanswered {
            if self.others_io.unanswered_said.insert(root.clone()) {
                events.push(unanswered_event(&root));
            }
        }
        events.extend(self.reconcile_others(true, inline, sink)?);
        Ok(events)
    }

    /// Reads other namespaces (only those without a baseline when `pending_only`) and
    /// rebuilds their tallies; transitions that arrive meanwhile are resolved against the
    /// reads. On the real machine the reads run on a thread of their own (under churn a
    /// socket table read takes seconds, and the rings must keep draining): the result is
    /// applied when it is ready (see `poll_others_read`). One read at a time.
    pub(super) fn reconcile_others(
        &mut self,
        pending_only: bool,
        inline: bool,
        sink: &mut impl Sink,
    ) -> Result<Vec<Alert>, EngineError> {
        if self.others_io.read.is_some() {
            return Ok(Vec::new());
        }
        let targets = match &self.others {
            Some(others) if pending_only => others.pending(),
            Some(others) => others.all(),
            None => return Ok(Vec::new()),
        };
        if targets.is_empty() {
            return Ok(Vec::new());
        }
        self.drain_source(false, sink)?;
        if let Some(others) = self.others.as_mut() {
            others.open_window(&targets);
        }
        let mut reader = self.host.namespace_reader();
        let mut read_all = move |targets: Vec<Namespace>| -> Vec<NamespaceRead> {
            targets
                .iter()
                .map(|ns| {
                    let (at, read) = reader(ns);
                    (ns.inode, at, read)
                })
                .collect()
        };
        if !inline && self.host.reads_in_background() {
            self.others_io.read = Some(Reading {
                handle: std::thread::Builder::new()
                    .name("tcpmon-netns".into())
                    .spawn(move || read_all(targets))?,
                baseline: pending_only,
            });
            return Ok(Vec::new());
        }
        let reads = read_all(targets);
        self.apply_others_read(&reads, pending_only, false, sink)
    }

    /// Another namespace's CLOSE_WAIT alert about to be raised without its owner: read
    /// that namespace now (inline: the alert waits for it) and look at the processes, at
    /// most once a second, as for tcpmon's own namespace.
    fn look_up_other_owners(&mut self, now: u64, sink: &mut impl Sink) -> Result<(), EngineError> {
        let Some(others) = self.others.as_ref() else {
            return Ok(());
        };
        if self
            .others_io
            .last_owner_lookup_ns
            .is_some_and(|at| now.saturating_sub(at) < OWNER_LOOKUP_GAP_NS)
            || others.wanting_owners(now).is_empty()
        {
            return Ok(());
        }
        // A read under way holds the window: let it end first.
        self.poll_others_read(true, sink)?;
        let targets = match self.others.as_ref() {
            Some(others) => others.wanting_owners(now),
            None => return Ok(()),
        };
        if targets.is_empty() {
            return Ok(());
        }
        self.others_io.last_owner_lookup_ns = Some(now);
        self.drain_source(false, sink)?;
        if let Some(others) = self.others.as_mut() {
            others.open_window(&targets);
        }
        let mut reader = self.host.namespace_reader();
        let reads: Vec<NamespaceRead> = targets
            .iter()
            .map(|ns| {
                let (at, read) = reader(ns);
                (ns.inode, at, read)
            })
            .collect();
        let events = self.apply_others_read(&reads, false, true, sink)?;
        for event in &events {
            self.emit_alert(event, sink)?;
        }
        Ok(())
    }

    /// Applies a finished read of other namespaces (waiting for it when `wait`).
    pub(super) fn poll_others_read(
        &mut self,
        wait: bool,
        sink: &mut impl Sink,
    ) -> Result<(), EngineError> {
        if !self
            .others_io
            .read
            .as_ref()
            .is_some_and(|r| wait || r.handle.is_finished())
        {
            return Ok(());
        }
        let Some(pending) = self.others_io.read.take() else {
            return Ok(());
        };
        // A reader that panicked read nothing: the window closes, the tallies stay.
        let reads = pending.handle.join().unwrap_or_default();
        let events = self.apply_others_read(&reads, pending.baseline, false, sink)?;
        for event in &events {
            self.emit_alert(event, sink)?;
        }
        Ok(())
    }

    /// `owners`: look the CLOSE_WAIT sockets' owners up now, whenever it was last done.
    fn apply_others_read(
        &mut self,
        reads: &[NamespaceRead],
        baseline: bool,
        owners: bool,
        sink: &mut impl Sink,
    ) -> Result<Vec<Alert>, EngineError> {
        // Everything that happened up to now is in the window.
        let drained = self.drain_source(false, sink);
        let Some(others) = self.others.as_mut() else {
            return Ok(Vec::new());
        };
        let events = others.reconcile(reads, baseline);
        drained?;
        // The walk of every process is the costly part: at most once a reconcile interval.
        let now = self.host.now_ns();
        let due = owners
            || self.others_io.last_owners_ns.is_none_or(|at| {
                now.saturating_sub(at) >= self.cfg.reconcile_interval.as_nanos() as u64
            });
        if due {
            self.others_io.last_owners_ns = Some(now);
            let host = &mut self.host;
            others.refresh_owners(reads, |wanted| host.owners(wanted));
        }
        self.host.release_memory();
        Ok(events)
    }

    /// Each other namespace's detectors, after the owners of its CLOSE_WAIT sockets are
    /// looked up where an alert needs them; a namespace that sent transitions but is not
    /// known is looked for again (at most once a second).
    pub(super) fn evaluate_others(
        &mut self,
        now: u64,
        window_secs: f64,
        sink: &mut impl Sink,
    ) -> Result<Vec<Alert>, EngineError> {
        self.look_up_other_owners(now, sink)?;
        let mut alerts = Vec::new();
        if let Some(others) = self.others.as_mut() {
            let host = &mut self.host;
            alerts.extend(others.evaluate(now, window_secs, |ns| host.namespace_time_wait(ns)));
        }
        let rediscover = self
            .others
            .as_ref()
            .is_some_and(Namespaces::rediscover_wanted);
        if rediscover && now.saturating_sub(self.others_io.last_discovery_ns) >= OWNER_LOOKUP_GAP_NS
        {
            alerts.extend(self.discover_namespaces(false, sink)?);
        }
        Ok(alerts)
    }
}

fn unanswered_event(root: &std::path::Path) -> Alert {
    use std::os::unix::ffi::OsStrExt as _;
    let shown = crate::model::printable_bytes(root.as_os_str().as_bytes()).into_owned();
    Alert {
        status: crate::live::rules::Status::Event,
        severity: crate::model::Severity::Warning,
        rule: "owner_unanswered",
        subject: shown.clone(),
        message: format!(
            "{shown} did not answer a read within {} ms (a FUSE or network filesystem whose server is stuck?): its namespace is named without its hostname, and the engine does not wait for it again",
            crate::host::deadline::DEADLINE.as_millis()
        ),
        netns: None,
        owner: None,
    }
}
