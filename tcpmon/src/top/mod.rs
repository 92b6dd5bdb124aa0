//! `tcpmon top`'s screen: what the engine said ([`Dashboard`], fed by [`TopSink`]), the
//! person's view of it ([`View`]: focus, rows, sort, filter, pause, scope, drill-down),
//! and drawing with ratatui ([`draw`]). No terminal and no clock in here: the binary
//! feeds records, keys and its CPU use, and tests draw on ratatui's TestBackend.
mod dashboard;
mod draw;
mod view;

use std::{
    io,
    sync::{Arc, Mutex, MutexGuard},
};

pub use dashboard::{AlertEntry, Dashboard, Scope, HISTORY_SAMPLES};
pub use draw::{draw, Theme, MIN_HEIGHT, MIN_WIDTH};
pub use view::{
    age_text, rows, Action, Drill, DrillRequest, DrillState, Pane, PaneRow, Target, View,
};

use crate::live::{
    record::{AlertRecord, ModeRecord, SummaryRecord, TallyRecord, TransitionEvent},
    Sink,
};

/// The dashboard shared between the engine (writing) and the screen (reading).
pub type Shared = Arc<Mutex<Dashboard>>;

/// Locks the dashboard; a panic elsewhere while it was held leaves it usable.
pub fn lock(shared: &Shared) -> MutexGuard<'_, Dashboard> {
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

/// The engine's sink for `top`: each record goes into the shared dashboard, the lock
/// held only to store it (a tally is copied before the lock is taken), so drawing never
/// holds up the reader for longer than a copy.
#[derive(Clone, Debug, Default)]
pub struct TopSink {
    pub shared: Shared,
}

impl Sink for TopSink {
    fn mode(&mut self, record: &ModeRecord) -> io::Result<()> {
        lock(&self.shared).on_mode(record);
        Ok(())
    }

    fn transition(&mut self, _: &TransitionEvent<'_>) -> io::Result<()> {
        Ok(())
    }

    fn alert(&mut self, record: &AlertRecord<'_>) -> io::Result<()> {
        lock(&self.shared).on_alert(record);
        Ok(())
    }

    fn tally(&mut self, record: &TallyRecord) -> io::Result<()> {
        let record = record.clone();
        lock(&self.shared).on_tally(record);
        Ok(())
    }

    fn summary(&mut self, _: &SummaryRecord) -> io::Result<()> {
        Ok(())
    }
}
