//! Reads of the socket table after the baseline: a failure (out of file descriptors,
//! say) is reported and retried with backoff instead of ending the engine.
use super::{Engine, EngineError, Reason, Sink};
use crate::{
    host::proc_net::Socket,
    live::{host::Host, source::EventSource},
};

impl<H: Host, S: EventSource> Engine<H, S> {
    /// [`Engine::reconcile`], unless reads are failing and the next attempt is not due
    /// yet; a failed read is counted and alerted (once per streak), not returned as an
    /// error. `None` when nothing was read.
    pub(super) fn reconcile_if_readable(
        &mut self,
        reason: Reason,
        sink: &mut impl Sink,
    ) -> Result<Option<Vec<Socket>>, EngineError> {
        let now = self.host.now_ns();
        if !self.reads.may_try(now) {
            return Ok(None);
        }
        match self.reconcile(reason, sink) {
            Ok(sockets) => {
                if let Some(cleared) = self.reads.succeeded() {
                    self.emit_alert(&cleared, sink)?;
                }
                Ok(Some(sockets))
            }
            Err(EngineError::Snapshot(e)) => {
                let interval = u64::try_from(self.cfg.interval.as_nanos()).unwrap_or(u64::MAX);
                let raised = self.reads.failed(now, &e.to_string(), interval);
                self.received.socket_read_failures = self.reads.failures();
                log::debug!("{} read of the socket table failed: {e}", reason.name());
                if let Some(raised) = raised {
                    self.emit_alert(&raised, sink)?;
                }
                Ok(None)
            }
            Err(other) => Err(other),
        }
    }
}
