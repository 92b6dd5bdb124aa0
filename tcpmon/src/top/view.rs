//! The person's view of the dashboard: which pane has the focus, the row selected in
//! each, each pane's sort, the filter, a pause, a namespace scope, an open drill-down
//! and the help. Keys move it; rows are built from the dashboard through it. Pure.
use std::{cmp::Ordering, net::IpAddr, time::SystemTime};

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use super::dashboard::{AlertEntry, Dashboard, Scope};
use crate::{
    live::{
        failures::FailuresRecord,
        record::{CloseWaitRecord, ListenerRecord, Mode, PerIpTally, TallyRecord},
    },
    model::{
        printable, printable_clipped, CloseWaitSide, Process, Severity, StateCounts, TcpState,
    },
    snapshot::analysis::Connection,
};

/// The panes, in Tab order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Pane {
    States,
    Listeners,
    Peers,
    CloseWait,
    Alerts,
    Namespaces,
}

impl Pane {
    pub const ALL: [Pane; 6] = [
        Pane::States,
        Pane::Listeners,
        Pane::Peers,
        Pane::CloseWait,
        Pane::Alerts,
        Pane::Namespaces,
    ];

    pub const fn title(self) -> &'static str {
        match self {
            Pane::States => "States",
            Pane::Listeners => "Listeners",
            Pane::Peers => "Peers",
            Pane::CloseWait => "CLOSE_WAIT",
            Pane::Alerts => "Alerts",
            Pane::Namespaces => "Namespaces",
        }
    }

    /// The table's columns; each can be sorted on.
    pub const fn headers(self) -> &'static [&'static str] {
        match self {
            Pane::States => &["STATE", "COUNT", "CHANGE"],
            Pane::Listeners => &[
                "LISTENER",
                "ACCEPT QUEUE",
                "HALF-OPEN",
                "SYN/S",
                "SOCKETS",
                "OWNER",
            ],
            Pane::Peers => &[
                "REMOTE",
                "CONNECTIONS",
                "TIME_WAIT",
                "TOTAL",
                "RETRANS",
                "RESETS",
            ],
            Pane::CloseWait => &["LEAK", "SOCKETS", "OLDEST", "PROCESSES"],
            Pane::Alerts => &["SEVERITY", "AGE", "RULE", "MESSAGE"],
            Pane::Namespaces => &[
                "NAMESPACE",
                "SOCKETS",
                "ESTAB",
                "TIME_WAIT",
                "CLOSE_WAIT",
                "TRANSITIONS",
                "OWNER",
            ],
        }
    }

    /// The column sorted on at first, and whether largest first.
    const fn default_sort(self) -> (usize, bool) {
        match self {
            Pane::States => (0, false),
            Pane::Listeners => (1, true),
            Pane::Peers => (3, true),
            Pane::CloseWait => (1, true),
            Pane::Alerts => (1, false),
            Pane::Namespaces => (1, true),
        }
    }

    const fn index(self) -> usize {
        self as usize
    }
}

/// What a row opens with Enter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// The connections with this remote address.
    Peer(IpAddr),
    /// The connections on this port, at either end.
    Port(u16),
    /// The sockets in this state.
    State(TcpState),
    /// Scope every pane to this namespace.
    Namespace(Scope),
}

/// How a row is drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tone {
    Normal,
    Warning,
    Critical,
    /// Over: an alert that cleared, an event.
    Dim,
}

/// A value a column sorts by.
#[derive(Clone, Debug, PartialEq)]
pub enum SortValue {
    Num(f64),
    Text(String),
}

impl SortValue {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            (SortValue::Num(a), SortValue::Num(b)) => a.total_cmp(b),
            (SortValue::Text(a), SortValue::Text(b)) => a.cmp(b),
            (SortValue::Num(_), SortValue::Text(_)) => Ordering::Less,
            (SortValue::Text(_), SortValue::Num(_)) => Ordering::Greater,
        }
    }
}

/// One row of a pane's table.
#[derive(Clone, Debug, PartialEq)]
pub struct PaneRow {
    /// Stable across refreshes: the selection follows it, and it breaks sort ties.
    pub id: String,
    /// Rows of a lower group come first whatever the sort (active alerts before ended).
    pub group: u8,
    /// As shown (already made printable).
    pub cells: Vec<String>,
    pub sort: Vec<SortValue>,
    pub target: Option<Target>,
    pub tone: Tone,
    /// Filled and capacity, drawn as a gauge in the listeners' queue column.
    pub gauge: Option<(u64, u64)>,
}

/// A drill-down's question: connections of a target, in a namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DrillRequest {
    pub target: Target,
    pub netns: Scope,
}

impl DrillRequest {
    pub fn title(&self) -> String {
        let what = match self.target {
            Target::Peer(ip) => format!("connections with {ip}"),
            Target::Port(port) => format!("connections on port {port}"),
            Target::State(state) => format!("sockets in {}", state.name()),
            Target::Namespace(_) => "namespace".into(),
        };
        match self.netns {
            Some(inode) => format!("{what} in netns {inode}"),
            None => what,
        }
    }
}

/// What a drill-down has found so far.
#[derive(Clone, Debug, PartialEq)]
pub enum DrillState {
    Loading,
    Loaded {
        connections: Vec<Connection>,
        /// Matching sockets in all (more than listed when the list was cut).
        total: u64,
        notes: Vec<String>,
    },
    Failed(String),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Drill {
    pub request: DrillRequest,
    pub state: DrillState,
    pub selected: usize,
}

/// What the caller does after a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Nothing,
    Redraw,
    Quit,
    /// Read a snapshot for the drill-down just opened, then hand it to
    /// [`View::drill_loaded`].
    Drill(DrillRequest),
}

/// The longest filter typed.
const MAX_FILTER: usize = 64;
/// Rows a page key moves.
const PAGE: usize = 10;

/// Everything about the screen that is the person's, not the engine's.
#[derive(Clone, Debug)]
pub struct View {
    pub focus: Pane,
    selected: [Option<String>; 6],
    selected_index: [usize; 6],
    sort: [(usize, bool); 6],
    pub filter: String,
    /// Keys go to the filter.
    pub typing: bool,
    /// Paused: the dashboard as it was (the engine keeps counting into the live one).
    pub frozen: Option<Box<Dashboard>>,
    pub scope: Scope,
    pub help: bool,
    pub drill: Option<Drill>,
    /// A line for the footer until the next key.
    pub message: Option<String>,
}

impl Default for View {
    fn default() -> Self {
        Self {
            focus: Pane::States,
            selected: Default::default(),
            selected_index: [0; 6],
            sort: Pane::ALL.map(Pane::default_sort),
            filter: String::new(),
            typing: false,
            frozen: None,
            scope: None,
            help: false,
            drill: None,
            message: None,
        }
    }
}

impl View {
    /// What to draw: the frozen dashboard while paused, else the live one.
    pub fn shown<'a>(&'a self, live: &'a Dashboard) -> &'a Dashboard {
        self.frozen.as_deref().unwrap_or(live)
    }

    pub fn paused(&self) -> bool {
        self.frozen.is_some()
    }

    /// The sort of `pane`: column and whether largest first.
    pub fn sort(&self, pane: Pane) -> (usize, bool) {
        self.sort[pane.index()]
    }

    /// The panes there are (Namespaces only with `--all-netns`).
    pub fn panes(dash: &Dashboard) -> Vec<Pane> {
        let namespaces = dash.latest.as_ref().is_some_and(|t| t.namespaces.is_some());
        Pane::ALL
            .into_iter()
            .filter(|p| *p != Pane::Namespaces || namespaces)
            .collect()
    }

    /// The row selected in `pane` among `rows`: the same row as before when it is still
    /// there, else the same place.
    pub fn selected_row(&self, pane: Pane, rows: &[PaneRow]) -> Option<usize> {
        if rows.is_empty() {
            return None;
        }
        let i = pane.index();
        self.selected[i]
            .as_ref()
            .and_then(|id| rows.iter().position(|r| &r.id == id))
            .or(Some(self.selected_index[i].min(rows.len() - 1)))
    }

    fn select(&mut self, pane: Pane, rows: &[PaneRow], index: usize) {
        let i = pane.index();
        if let Some(row) = rows.get(index) {
            self.selected[i] = Some(row.id.clone());
            self.selected_index[i] = index;
        }
    }

    /// The drill-down's snapshot arrived (ignored when another was opened since).
    pub fn drill_loaded(&mut self, request: DrillRequest, state: DrillState) {
        if let Some(drill) = &mut self.drill {
            if drill.request == request {
                drill.state = state;
            }
        }
    }

    /// Moves the view as `key` says.
    pub fn on_key(&mut self, key: KeyEvent, live: &Dashboard) -> Action {
        if key.kind == KeyEventKind::Release {
            return Action::Nothing;
        }
        self.message = None;
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        if ctrl && matches!(key.code, KeyCode::Char('c' | 'C')) {
            return Action::Quit;
        }
        if self.typing {
            match key.code {
                KeyCode::Char(c) if !ctrl && !c.is_control() => {
                    if self.filter.chars().count() < MAX_FILTER {
                        self.filter.push(c);
                    }
                }
                KeyCode::Backspace => {
                    self.filter.pop();
                }
                KeyCode::Enter => self.typing = false,
                KeyCode::Esc => {
                    self.filter.clear();
                    self.typing = false;
                }
                _ => return Action::Nothing,
            }
            return Action::Redraw;
        }
        if self.help {
            if key.code == KeyCode::Char('q') {
                return Action::Quit;
            }
            self.help = false;
            return Action::Redraw;
        }
        let dash = self.shown(live).clone();
        if self.drill.is_some() {
            return self.drill_key(key);
        }
        let panes = Self::panes(&dash);
        let rows = rows(self.focus, &dash, self);
        let at = self.selected_row(self.focus, &rows).unwrap_or(0);
        match key.code {
            KeyCode::Char('q') => return Action::Quit,
            KeyCode::Char(' ' | 'p') => {
                self.frozen = match self.frozen {
                    Some(_) => None,
                    None => Some(Box::new(live.clone())),
                };
            }
            KeyCode::Tab | KeyCode::Right => self.focus = step(&panes, self.focus, 1),
            KeyCode::BackTab | KeyCode::Left => self.focus = step(&panes, self.focus, -1),
            KeyCode::Down | KeyCode::Char('j') => self.select(self.focus, &rows, at + 1),
            KeyCode::Up | KeyCode::Char('k') => {
                self.select(self.focus, &rows, at.saturating_sub(1))
            }
            KeyCode::PageDown => {
                let last = rows.len().saturating_sub(1);
                self.select(self.focus, &rows, (at + PAGE).min(last));
            }
            KeyCode::PageUp => self.select(self.focus, &rows, at.saturating_sub(PAGE)),
            KeyCode::Home => self.select(self.focus, &rows, 0),
            KeyCode::End => self.select(self.focus, &rows, rows.len().saturating_sub(1)),
            KeyCode::Char('s') => {
                let columns = self.focus.headers().len();
                let sort = &mut self.sort[self.focus.index()];
                sort.0 = (sort.0 + 1) % columns;
                // Numbers largest first, text in order, until reversed.
                sort.1 = rows
                    .first()
                    .is_some_and(|r| matches!(r.sort.get(sort.0), Some(SortValue::Num(_))));
            }
            KeyCode::Char('S') => {
                let sort = &mut self.sort[self.focus.index()];
                sort.1 = !sort.1;
            }
            KeyCode::Char('/') => self.typing = true,
            KeyCode::Char('?') => self.help = true,
            KeyCode::Char('n') => {
                if panes.contains(&Pane::Namespaces) {
                    self.focus = Pane::Namespaces;
                } else {
                    self.message = Some("namespaces are shown with --all-netns".into());
                }
            }
            KeyCode::Enter => {
                return match rows.get(at).and_then(|r| r.target) {
                    Some(Target::Namespace(scope)) => {
                        self.scope = scope;
                        self.focus = Pane::States;
                        Action::Redraw
                    }
                    Some(target) => {
                        let request = DrillRequest {
                            target,
                            netns: self.scope,
                        };
                        self.drill = Some(Drill {
                            request,
                            state: DrillState::Loading,
                            selected: 0,
                        });
                        Action::Drill(request)
                    }
                    None => Action::Nothing,
                };
            }
            KeyCode::Esc => {
                if !self.filter.is_empty() {
                    self.filter.clear();
                } else if self.scope.is_some() {
                    self.scope = None;
                } else {
                    return Action::Nothing;
                }
            }
            _ => return Action::Nothing,
        }
        Action::Redraw
    }

    fn drill_key(&mut self, key: KeyEvent) -> Action {
        let Some(drill) = &mut self.drill else {
            return Action::Nothing;
        };
        let rows = match &drill.state {
            DrillState::Loaded { connections, .. } => connections.len(),
            _ => 0,
        };
        match key.code {
            KeyCode::Char('q') => return Action::Quit,
            KeyCode::Esc | KeyCode::Backspace => self.drill = None,
            KeyCode::Down | KeyCode::Char('j') => {
                drill.selected = (drill.selected + 1).min(rows.saturating_sub(1));
            }
            KeyCode::Up | KeyCode::Char('k') => drill.selected = drill.selected.saturating_sub(1),
            KeyCode::PageDown => {
                drill.selected = (drill.selected + PAGE).min(rows.saturating_sub(1))
            }
            KeyCode::PageUp => drill.selected = drill.selected.saturating_sub(PAGE),
            KeyCode::Char('?') => self.help = true,
            _ => return Action::Nothing,
        }
        Action::Redraw
    }
}

fn step(panes: &[Pane], from: Pane, by: isize) -> Pane {
    let at = panes.iter().position(|p| *p == from).unwrap_or(0) as isize;
    let n = panes.len() as isize;
    panes[((at + by).rem_euclid(n)) as usize]
}

/// What one namespace's panes show.
pub struct ScopeData<'a> {
    pub states: StateCounts,
    pub listeners: &'a [ListenerRecord],
    pub per_ip: &'a PerIpTally,
    pub close_wait: &'a [CloseWaitRecord],
    /// Retransmits and resets (eBPF only).
    pub failures: Option<&'a FailuresRecord>,
    /// Its name as the status line says it.
    pub label: String,
}

/// The figures of `scope` in `tally`; `None` when that namespace is no longer tallied
/// (or its detail was not asked for).
pub fn scope_data(tally: &TallyRecord, scope: Scope) -> Option<ScopeData<'_>> {
    match scope {
        None => Some(ScopeData {
            states: tally.states,
            listeners: &tally.listeners,
            per_ip: &tally.per_ip,
            close_wait: &tally.close_wait,
            failures: (tally.mode == Mode::Ebpf).then_some(&tally.failures),
            label: "tcpmon's namespace".into(),
        }),
        Some(inode) => {
            let ns = tally
                .namespaces
                .as_ref()?
                .iter()
                .find(|n| n.inode == inode)?;
            let detail = ns.detail.as_ref()?;
            Some(ScopeData {
                states: ns.states,
                listeners: &detail.listeners,
                per_ip: &detail.per_ip,
                close_wait: &detail.close_wait,
                failures: (tally.mode == Mode::Ebpf).then_some(&detail.failures),
                label: namespace_label(ns.name.as_deref(), &ns.owner, inode),
            })
        }
    }
}

fn namespace_label(name: Option<&str>, owner: &str, inode: u64) -> String {
    match name {
        Some(name) => format!(
            "{} ({})",
            printable_clipped(name, 40),
            printable_clipped(owner, 60)
        ),
        None => format!("{} (netns {inode})", printable_clipped(owner, 60)),
    }
}

/// The rows of `pane`, filtered and sorted as `view` says.
pub fn rows(pane: Pane, dash: &Dashboard, view: &View) -> Vec<PaneRow> {
    let Some(tally) = &dash.latest else {
        return Vec::new();
    };
    let now = tally.time.0;
    let mut rows = match (pane, scope_data(tally, view.scope)) {
        (Pane::Alerts, _) => alert_rows(dash, view.scope, now),
        (Pane::Namespaces, _) => namespace_rows(tally),
        (_, None) => Vec::new(),
        (Pane::States, Some(data)) => state_rows(&data, dash.change(view.scope)),
        (Pane::Listeners, Some(data)) => listener_rows(&data, dash),
        (Pane::Peers, Some(data)) => peer_rows(&data),
        (Pane::CloseWait, Some(data)) => close_wait_rows(&data),
    };
    if pane != Pane::States && !view.filter.is_empty() {
        let needle = view.filter.to_lowercase();
        rows.retain(|r| r.cells.iter().any(|c| c.to_lowercase().contains(&needle)));
    }
    let (column, descending) = view.sort(pane);
    // Equal values keep the order of their ids: rows do not trade places between
    // refreshes.
    rows.sort_by(|a, b| {
        let by_value = match (a.sort.get(column), b.sort.get(column)) {
            (Some(x), Some(y)) => x.cmp(y),
            _ => Ordering::Equal,
        };
        a.group
            .cmp(&b.group)
            .then(if descending {
                by_value.reverse()
            } else {
                by_value
            })
            .then_with(|| a.id.cmp(&b.id))
    });
    rows
}

fn num(n: impl Into<f64>) -> SortValue {
    SortValue::Num(n.into())
}

fn row(id: String, cells: Vec<String>, sort: Vec<SortValue>, target: Option<Target>) -> PaneRow {
    PaneRow {
        id,
        group: 0,
        cells,
        sort,
        target,
        tone: Tone::Normal,
        gauge: None,
    }
}

fn state_rows(data: &ScopeData<'_>, change: Option<[i64; 12]>) -> Vec<PaneRow> {
    TcpState::ALL
        .iter()
        .enumerate()
        .map(|(order, &state)| {
            let count = data.states.get(state);
            let delta = change.map_or(0, |c| c[state.index()]);
            row(
                format!("{order:02}"),
                vec![
                    state.name().to_owned(),
                    count.to_string(),
                    signed(change.map(|c| c[state.index()])),
                ],
                vec![num(order as f64), num(count as f64), num(delta as f64)],
                Some(Target::State(state)),
            )
        })
        .collect()
}

/// A change as shown: +3, -2, 0, or blank before there are two samples.
pub fn signed(change: Option<i64>) -> String {
    match change {
        Some(0) => "0".into(),
        Some(n) => format!("{n:+}"),
        None => String::new(),
    }
}

/// Processes as a cell: the first two, and how many more.
fn owners_text(owners: Option<&Vec<Process>>) -> String {
    match owners.map(Vec::as_slice) {
        None | Some([]) => "-".into(),
        Some(list) => {
            let shown: Vec<String> = list.iter().take(2).map(ToString::to_string).collect();
            let more = list.len().saturating_sub(2);
            if more > 0 {
                format!("{} +{more}", shown.join(","))
            } else {
                shown.join(",")
            }
        }
    }
}

fn listener_rows(data: &ScopeData<'_>, dash: &Dashboard) -> Vec<PaneRow> {
    data.listeners
        .iter()
        .map(|l| {
            let port = l
                .listener
                .rsplit(':')
                .next()
                .and_then(|p| p.parse::<u16>().ok());
            let rate = dash.syn_rate(&l.listener);
            let fill = match (l.accept_queue, l.backlog) {
                (Some(q), Some(b)) if b > 0 => f64::from(q) / f64::from(b),
                (Some(q), _) => f64::from(q),
                _ => -1.0,
            };
            let mut r = row(
                l.listener.clone(),
                vec![
                    printable(&l.listener).into_owned(),
                    match (l.accept_queue, l.backlog) {
                        (Some(q), Some(b)) => format!("{q}/{b}"),
                        (Some(q), None) => q.to_string(),
                        _ => "-".into(),
                    },
                    l.half_open.to_string(),
                    rate.map_or_else(|| "-".into(), |r| format!("{r:.0}")),
                    l.sockets.to_string(),
                    owners_text(l.owners.as_ref()),
                ],
                vec![
                    SortValue::Text(sortable_endpoint(&l.listener)),
                    num(fill),
                    num(l.half_open as f64),
                    num(rate.unwrap_or(-1.0)),
                    num(l.sockets as f64),
                    SortValue::Text(owners_text(l.owners.as_ref())),
                ],
                port.map(Target::Port),
            );
            r.gauge = match (l.accept_queue, l.backlog) {
                (Some(q), Some(b)) => Some((u64::from(q), u64::from(b))),
                _ => None,
            };
            if fill >= 1.0 {
                r.tone = Tone::Critical;
            } else if fill >= 0.8 {
                r.tone = Tone::Warning;
            }
            r
        })
        .collect()
}

/// An endpoint's text sorted by port, then address.
fn sortable_endpoint(text: &str) -> String {
    match text.rsplit_once(':') {
        Some((addr, port)) => format!("{:>5}{addr}", port),
        None => text.to_owned(),
    }
}

fn peer_rows(data: &ScopeData<'_>) -> Vec<PaneRow> {
    let failures_of = |ip: IpAddr| {
        data.failures
            .and_then(|f| f.by_peer.iter().find(|p| p.ip == ip))
            .map(|p| p.counts)
    };
    // The peers of either tally, those with only failures (a client refused) too.
    let mut peers: Vec<(IpAddr, u64, u64)> = data
        .per_ip
        .peers
        .iter()
        .map(|p| (p.ip, p.connections, p.time_wait))
        .collect();
    for failed in data.failures.iter().flat_map(|f| &f.by_peer) {
        if !peers.iter().any(|(ip, _, _)| *ip == failed.ip) {
            peers.push((failed.ip, 0, 0));
        }
    }
    peers
        .into_iter()
        .map(|(ip, connections, time_wait)| {
            let total = connections + time_wait;
            let failed = failures_of(ip);
            let counted = |n: Option<u64>| match (data.failures, n) {
                (None, _) => "-".to_owned(),
                (Some(_), n) => n.unwrap_or(0).to_string(),
            };
            let retransmits = failed.map(|c| c.retransmits);
            let resets = failed.map(|c| c.resets_sent + c.resets_received);
            row(
                ip.to_string(),
                vec![
                    ip.to_string(),
                    connections.to_string(),
                    time_wait.to_string(),
                    total.to_string(),
                    counted(retransmits),
                    counted(resets),
                ],
                vec![
                    SortValue::Text(format!("{:?}", sortable_ip(ip))),
                    num(connections as f64),
                    num(time_wait as f64),
                    num(total as f64),
                    num(retransmits.unwrap_or(0) as f64),
                    num(resets.unwrap_or(0) as f64),
                ],
                Some(Target::Peer(ip)),
            )
        })
        .collect()
}

/// Addresses in numeric order (IPv4 before IPv6).
fn sortable_ip(ip: IpAddr) -> (u8, u128) {
    match ip {
        IpAddr::V4(v4) => (4, u128::from(u32::from(v4))),
        IpAddr::V6(v6) => (6, u128::from(v6)),
    }
}

fn close_wait_rows(data: &ScopeData<'_>) -> Vec<PaneRow> {
    data.close_wait
        .iter()
        .map(|c| {
            let (leak, target) = match c.side {
                CloseWaitSide::Server { local_port } => {
                    (format!("port {local_port}"), Target::Port(local_port))
                }
                CloseWaitSide::Client { remote } => {
                    (format!("to {remote}"), Target::Peer(remote.ip()))
                }
            };
            row(
                leak.clone(),
                vec![
                    leak.clone(),
                    c.count.to_string(),
                    age_text(c.oldest_secs),
                    owners_text(c.owners.as_ref()),
                ],
                vec![
                    SortValue::Text(leak),
                    num(c.count as f64),
                    num(c.oldest_secs),
                    SortValue::Text(owners_text(c.owners.as_ref())),
                ],
                Some(target),
            )
        })
        .collect()
}

/// An age as people read it: 42s, 3m05s, 2h10m, 4d03h.
pub fn age_text(secs: f64) -> String {
    let s = if secs.is_finite() && secs > 0.0 {
        secs as u64
    } else {
        0
    };
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86_400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

fn since(now: SystemTime, then: SystemTime) -> f64 {
    now.duration_since(then).map_or(0.0, |d| d.as_secs_f64())
}

fn alert_rows(dash: &Dashboard, scope: Scope, now: SystemTime) -> Vec<PaneRow> {
    let in_scope = |e: &&AlertEntry| e.netns == scope;
    let active = dash.active_alerts().filter(in_scope).map(|e| (e, 0));
    let recent = dash.recent_alerts().filter(in_scope).map(|e| (e, 1));
    active
        .chain(recent)
        .enumerate()
        .map(|(i, (e, group))| {
            let age = since(now, e.ended.unwrap_or(e.since));
            let severity = if e.event {
                "event".to_owned()
            } else if group == 1 {
                "cleared".to_owned()
            } else {
                e.severity.name().to_owned()
            };
            PaneRow {
                // Ended entries repeat (an alert may clear twice in ten minutes).
                id: format!("{group}{}{}#{i}", e.rule, e.subject),
                group,
                // The message names the subject.
                cells: vec![
                    severity,
                    age_text(age),
                    e.rule.to_owned(),
                    printable(&e.message).into_owned(),
                ],
                sort: vec![
                    num(match e.severity {
                        Severity::Info => 0.0,
                        Severity::Warning => 1.0,
                        Severity::Critical => 2.0,
                    }),
                    num(age),
                    SortValue::Text(e.rule.to_owned()),
                    SortValue::Text(e.message.clone()),
                ],
                target: None,
                tone: match (group, e.severity) {
                    (1, _) => Tone::Dim,
                    (_, Severity::Critical) => Tone::Critical,
                    (_, Severity::Warning) => Tone::Warning,
                    _ => Tone::Normal,
                },
                gauge: None,
            }
        })
        .collect()
}

fn namespace_rows(tally: &TallyRecord) -> Vec<PaneRow> {
    let own = PaneRow {
        id: String::new(),
        group: 0,
        cells: vec![
            "(tcpmon's own)".into(),
            tally.states.total().to_string(),
            tally.states.get(TcpState::Established).to_string(),
            tally.states.get(TcpState::TimeWait).to_string(),
            tally.states.get(TcpState::CloseWait).to_string(),
            tally.received.transitions.to_string(),
            "host".into(),
        ],
        sort: Vec::new(),
        target: Some(Target::Namespace(None)),
        tone: Tone::Normal,
        gauge: None,
    };
    let others = tally.namespaces.iter().flatten().map(|n| {
        let name = n.name.as_deref().map_or_else(
            || n.inode.to_string(),
            |name| printable_clipped(name, 40).into_owned(),
        );
        let owner = printable_clipped(&n.owner, 80).into_owned();
        PaneRow {
            id: n.inode.to_string(),
            group: 1,
            cells: vec![
                name.clone(),
                n.total.to_string(),
                n.states.get(TcpState::Established).to_string(),
                n.states.get(TcpState::TimeWait).to_string(),
                n.states.get(TcpState::CloseWait).to_string(),
                n.transitions.to_string(),
                owner.clone(),
            ],
            sort: vec![
                SortValue::Text(name),
                num(n.total as f64),
                num(n.states.get(TcpState::Established) as f64),
                num(n.states.get(TcpState::TimeWait) as f64),
                num(n.states.get(TcpState::CloseWait) as f64),
                num(n.transitions as f64),
                SortValue::Text(owner),
            ],
            target: Some(Target::Namespace(Some(n.inode))),
            tone: Tone::Normal,
            gauge: None,
        }
    });
    std::iter::once(own).chain(others).collect()
}
