//! Drawing the view with ratatui, at any size: a grid of every pane from 120x36, the
//! states and one pane at a time from 80x20, the states alone (and a pane when there
//! is room) down to 40x12, and below that a line saying how small is too small.
use ratatui::{
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style},
    text::{Line, Span, Text},
    widgets::{Block, Cell, Clear, Paragraph, Row, Sparkline, Table, TableState, Wrap},
    Frame,
};

use super::{
    dashboard::Dashboard,
    view::{rows, scope_data, Drill, DrillState, Pane, ScopeData, Tone, View},
};
use crate::{
    live::record::{Mode, TallyRecord},
    model::{printable, TcpState},
};

/// The smallest terminal drawn.
pub const MIN_WIDTH: u16 = 40;
pub const MIN_HEIGHT: u16 = 12;

/// Colours, or none (NO_COLOR): emphasis then rests on bold, dim and reverse alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Theme {
    pub color: bool,
}

impl Theme {
    /// Colour unless NO_COLOR is set to anything but the empty string.
    pub fn from_env() -> Self {
        Self {
            color: std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        }
    }

    fn fg(self, color: Color) -> Style {
        if self.color {
            Style::new().fg(color)
        } else {
            Style::new()
        }
    }

    fn tone(self, tone: Tone) -> Style {
        match tone {
            Tone::Normal => Style::new(),
            Tone::Warning => self.fg(Color::Yellow),
            Tone::Critical => self.fg(Color::Red).add_modifier(Modifier::BOLD),
            Tone::Dim => Style::new().add_modifier(Modifier::DIM),
        }
    }

    fn border(self, focused: bool) -> Style {
        if focused {
            self.fg(Color::Cyan).add_modifier(Modifier::BOLD)
        } else {
            Style::new()
        }
    }

    fn header(self) -> Style {
        Style::new().add_modifier(Modifier::BOLD)
    }

    fn selected(self) -> Style {
        Style::new().add_modifier(Modifier::REVERSED)
    }
}

/// What every part of the screen is drawn from.
#[derive(Clone, Copy)]
struct Screen<'a> {
    dash: &'a Dashboard,
    view: &'a View,
    theme: Theme,
}

/// Draws the whole screen.
pub fn draw(frame: &mut Frame<'_>, live: &Dashboard, view: &View, theme: Theme) {
    let area = frame.area();
    if area.width < MIN_WIDTH || area.height < MIN_HEIGHT {
        let text = format!(
            "terminal {}x{}: tcpmon top needs {MIN_WIDTH}x{MIN_HEIGHT}",
            area.width, area.height
        );
        frame.render_widget(Paragraph::new(text).wrap(Wrap { trim: true }), area);
        return;
    }
    let dash = view.shown(live);
    let screen = Screen { dash, view, theme };
    let [status, body, footer] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Fill(1),
        Constraint::Length(1),
    ])
    .areas(area);
    draw_status(frame, status, screen);
    draw_footer(frame, footer, view, theme);
    match &dash.latest {
        None => frame.render_widget(
            Paragraph::new("waiting for the engine's first tally…"),
            body,
        ),
        Some(tally) => match (&view.drill, scope_data(tally, view.scope)) {
            (Some(drill), _) => draw_drill(frame, body, drill, theme),
            (None, None) => frame.render_widget(
                Paragraph::new(format!(
                    "netns {} is no longer tallied (Esc: back to tcpmon's namespace)",
                    view.scope.unwrap_or_default()
                )),
                body,
            ),
            (None, Some(data)) => draw_body(frame, body, screen, tally, &data),
        },
    }
    if view.help {
        draw_help(frame, area);
    }
}

fn draw_body(
    frame: &mut Frame<'_>,
    area: Rect,
    screen: Screen<'_>,
    tally: &TallyRecord,
    data: &ScopeData<'_>,
) {
    let Screen { dash, view, .. } = screen;
    let panes = View::panes(dash);
    let has_namespaces = panes.contains(&Pane::Namespaces);
    if area.width >= 120 && area.height >= 34 {
        let [top, middle, bottom] = Layout::vertical([
            Constraint::Length(15),
            Constraint::Fill(1),
            Constraint::Fill(1),
        ])
        .areas(area);
        let [states, alerts] =
            Layout::horizontal([Constraint::Percentage(50), Constraint::Fill(1)]).areas(top);
        draw_states(frame, states, screen, tally, data, false);
        draw_pane(frame, alerts, screen, Pane::Alerts, None);
        let [listeners, peers] =
            Layout::horizontal([Constraint::Percentage(60), Constraint::Fill(1)]).areas(middle);
        draw_pane(frame, listeners, screen, Pane::Listeners, None);
        draw_pane(frame, peers, screen, Pane::Peers, None);
        if has_namespaces {
            let [close_wait, namespaces] =
                Layout::horizontal([Constraint::Percentage(45), Constraint::Fill(1)]).areas(bottom);
            draw_pane(frame, close_wait, screen, Pane::CloseWait, None);
            draw_pane(frame, namespaces, screen, Pane::Namespaces, None);
        } else {
            draw_pane(frame, bottom, screen, Pane::CloseWait, None);
        }
        return;
    }
    // Smaller: the states in two columns, and the focused pane (the alerts while the
    // states have the focus) with a tab line naming the others.
    let tiny = area.width < 80 || area.height < 20;
    let [states, lower] =
        Layout::vertical([Constraint::Length(8), Constraint::Fill(1)]).areas(area);
    draw_states(frame, states, screen, tally, data, true);
    if lower.height >= 4 {
        let shown = if view.focus == Pane::States {
            Pane::Alerts
        } else {
            view.focus
        };
        draw_pane(frame, lower, screen, shown, Some(&panes));
    } else if tiny {
        let active = dash
            .active_alerts()
            .filter(|a| a.netns == view.scope)
            .count();
        frame.render_widget(
            Paragraph::new(format!(
                "{active} alert{} active (a taller terminal shows panes)",
                if active == 1 { "" } else { "s" }
            )),
            lower,
        );
    }
}

fn draw_status(frame: &mut Frame<'_>, area: Rect, screen: Screen<'_>) {
    let Screen { dash, view, theme } = screen;
    let sep = || Span::raw(" │ ");
    let mut spans = vec![Span::styled("tcpmon top", theme.header())];
    let Some(tally) = &dash.latest else {
        frame.render_widget(Line::from(spans), area);
        return;
    };
    spans.push(sep());
    spans.push(Span::raw(match (tally.mode, tally.poll_interval) {
        (Mode::Ebpf, _) => "eBPF".to_owned(),
        (Mode::Poll, Some(every)) => format!("polling every {}", humantime::format_duration(every)),
        (Mode::Poll, None) => "polling".to_owned(),
    }));
    spans.push(sep());
    let lost = if tally.lost > 0 {
        theme.fg(Color::Red).add_modifier(Modifier::BOLD)
    } else {
        Style::new()
    };
    spans.push(Span::styled(format!("lost {}", tally.lost), lost));
    let alerts: Vec<_> = dash
        .active_alerts()
        .filter(|a| a.netns == view.scope)
        .collect();
    if !alerts.is_empty() {
        spans.push(sep());
        let worst = alerts
            .iter()
            .map(|a| a.severity)
            .max()
            .unwrap_or(crate::model::Severity::Info);
        let tone = match worst {
            crate::model::Severity::Critical => Tone::Critical,
            crate::model::Severity::Warning => Tone::Warning,
            crate::model::Severity::Info => Tone::Normal,
        };
        let n = alerts.len();
        spans.push(Span::styled(
            format!("{n} alert{}", if n == 1 { "" } else { "s" }),
            theme.tone(tone),
        ));
    }
    if view.paused() {
        spans.push(sep());
        spans.push(Span::styled(
            " PAUSED ",
            theme.selected().add_modifier(Modifier::BOLD),
        ));
    }
    spans.push(sep());
    spans.push(Span::raw(format!(
        "{:.0} transitions/s",
        tally.transitions_per_sec
    )));
    if let Some(cpu) = dash.cpu {
        spans.push(sep());
        spans.push(Span::raw(format!("cpu {:.1}%", cpu * 100.0)));
    }
    if let Some(r) = &tally.reconcile {
        spans.push(sep());
        spans.push(Span::raw(format!(
            "reconcile: {} off ({})",
            r.total_abs_error, r.reason
        )));
    }
    if let Some(inode) = view.scope {
        spans.push(sep());
        let label =
            scope_data(tally, view.scope).map_or_else(|| format!("netns {inode}"), |d| d.label);
        spans.push(Span::styled(format!("scope: {label}"), theme.header()));
    }
    if !view.filter.is_empty() && !view.typing {
        spans.push(sep());
        spans.push(Span::raw(format!("filter: {}", printable(&view.filter))));
    }
    frame.render_widget(Line::from(spans), area);
}

fn draw_footer(frame: &mut Frame<'_>, area: Rect, view: &View, theme: Theme) {
    let line = if view.typing {
        Line::from(vec![
            Span::styled("filter: ", theme.header()),
            Span::raw(format!("{}▏", printable(&view.filter))),
            Span::raw("  (Enter keeps it, Esc clears it)"),
        ])
    } else if let Some(message) = &view.message {
        Line::from(Span::raw(message.as_str()))
    } else if view.drill.is_some() {
        Line::from("Esc back  ↑↓ row  q quit  ? help")
    } else {
        Line::from(
            "q quit  p pause  Tab pane  ↑↓ row  s sort  / filter  Enter open  n netns  ? help",
        )
    };
    frame.render_widget(line, area);
}

/// The states: count, change over the last interval, and a sparkline of the history
/// (`compact`: two columns, the sparkline only where it fits).
fn draw_states(
    frame: &mut Frame<'_>,
    area: Rect,
    screen: Screen<'_>,
    tally: &TallyRecord,
    data: &ScopeData<'_>,
    compact: bool,
) {
    let Screen { dash, view, theme } = screen;
    let focused = view.focus == Pane::States && view.drill.is_none();
    let mut block = Block::bordered()
        .title(format!(" States · {} sockets ", data.states.total()))
        .border_style(theme.border(focused));
    let correction = match view.scope {
        None => tally.time_wait.sockstat_error,
        Some(inode) => tally
            .namespaces
            .iter()
            .flatten()
            .find(|n| n.inode == inode)
            .and_then(|n| n.time_wait_sockstat_error),
    };
    if let Some(error) = correction.filter(|e| *e != 0) {
        block = block.title_bottom(format!(" TIME_WAIT corrected to sockstat by {} ", -error));
    }
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let rows = rows(Pane::States, dash, view);
    let selected = focused
        .then(|| view.selected_row(Pane::States, &rows))
        .flatten();
    let history = dash.history(view.scope);
    let columns: u16 = if compact { 2 } else { 1 };
    let per_column = rows.len().div_ceil(usize::from(columns)).max(1);
    let column_width = inner.width / columns;
    for (i, row) in rows.iter().enumerate() {
        let (column, line) = (i / per_column, i % per_column);
        let y = inner.y + line as u16;
        if y >= inner.y + inner.height {
            continue;
        }
        let x = inner.x + column as u16 * column_width;
        let width = column_width.saturating_sub(1);
        let text_width = width.min(31);
        let cell = Rect::new(x, y, text_width, 1);
        let style = if selected == Some(i) {
            theme.selected()
        } else {
            Style::new()
        };
        // Narrow: the name and the count only.
        let text = if text_width >= 29 {
            format!(
                "{:<12} {:>8} {:>7}",
                row.cells[0], row.cells[1], row.cells[2]
            )
        } else {
            let count_width = usize::from(text_width).saturating_sub(12);
            format!("{:<12}{:>count_width$}", row.cells[0], row.cells[1])
        };
        frame.render_widget(Line::styled(text, style), cell);
        let spark_width = width.saturating_sub(text_width + 1);
        if spark_width >= 4 {
            if let (Some(samples), Some(state)) = (history, TcpState::ALL.get(i)) {
                let values: Vec<u64> = samples
                    .iter()
                    .rev()
                    .take(usize::from(spark_width))
                    .map(|s| s.get(*state))
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect();
                let spark = Sparkline::default()
                    .data(values)
                    .style(theme.fg(Color::Green));
                frame.render_widget(spark, Rect::new(x + text_width + 1, y, spark_width, 1));
            }
        }
    }
}

/// A pane's table; `tabs`: draw the pane names in the title (one pane shown at a time).
fn draw_pane(
    frame: &mut Frame<'_>,
    area: Rect,
    screen: Screen<'_>,
    pane: Pane,
    tabs: Option<&[Pane]>,
) {
    let Screen { dash, view, theme } = screen;
    let focused = view.focus == pane && view.drill.is_none();
    let rows = rows(pane, dash, view);
    let (column, descending) = view.sort(pane);
    let headers = pane.headers();
    let sorted_by = format!(
        "{} {}",
        headers.get(column).copied().unwrap_or_default(),
        if descending { "↓" } else { "↑" }
    );
    let title = match tabs {
        Some(panes) => {
            let mut spans = vec![Span::raw(" ")];
            for p in panes.iter().filter(|p| **p != Pane::States) {
                let style = if *p == pane {
                    theme.selected().add_modifier(Modifier::BOLD)
                } else {
                    Style::new()
                };
                spans.push(Span::styled(format!(" {} ", p.title()), style));
            }
            spans.push(Span::raw(format!(" · {} · {sorted_by} ", rows.len())));
            Line::from(spans)
        }
        None => Line::from(format!(" {} · {} · {sorted_by} ", pane.title(), rows.len())),
    };
    let block = Block::bordered()
        .title(title)
        .border_style(theme.border(focused));
    let widths = widths(pane);
    let header = Row::new(headers.iter().enumerate().map(|(i, h)| {
        let style = if i == column {
            theme.header().add_modifier(Modifier::UNDERLINED)
        } else {
            theme.header()
        };
        Cell::from(*h).style(style)
    }));
    let gauge_width = 8;
    // An alert's message is what says what is wrong: on two lines where one is short.
    let message_width = usize::from(area.width.saturating_sub(2 + 8 + 6 + 13 + 3));
    let table_rows = rows.iter().map(|r| {
        let mut height = 1;
        let cells: Vec<Cell<'_>> = r
            .cells
            .iter()
            .enumerate()
            .map(|(i, text)| match r.gauge {
                Some((filled, capacity)) if pane == Pane::Listeners && i == 1 => {
                    Cell::from(gauge(filled, capacity, gauge_width, text, theme, r.tone))
                }
                _ if pane == Pane::Alerts && i == 3 && text.chars().count() > message_width => {
                    height = 2;
                    Cell::from(Text::from_iter(two_lines(text, message_width)))
                }
                _ => Cell::from(text.as_str()),
            })
            .collect();
        Row::new(cells).height(height).style(theme.tone(r.tone))
    });
    let table = Table::new(table_rows, widths)
        .header(header)
        .block(block)
        .row_highlight_style(theme.selected());
    let mut state = TableState::default();
    if focused {
        state.select(view.selected_row(pane, &rows));
    }
    frame.render_stateful_widget(table, area, &mut state);
    if rows.is_empty() {
        let empty = match pane {
            Pane::Alerts => "no alerts",
            _ if !view.filter.is_empty() => "nothing matches the filter",
            Pane::CloseWait => "no CLOSE_WAIT",
            _ => "none",
        };
        let inner = Block::bordered().inner(area);
        if inner.height >= 2 {
            let at = Rect::new(inner.x + 1, inner.y + 1, inner.width.saturating_sub(1), 1);
            frame.render_widget(
                Line::styled(empty, Style::new().add_modifier(Modifier::DIM)),
                at,
            );
        }
    }
}

fn widths(pane: Pane) -> Vec<Constraint> {
    use Constraint::{Fill, Length, Min};
    // Figures at fixed widths, the free text (owners, messages) last taking the rest.
    match pane {
        Pane::States => vec![Length(11), Length(9), Length(8)],
        Pane::Listeners => vec![
            Min(22),
            Length(16),
            Length(9),
            Length(6),
            Length(7),
            Fill(1),
        ],
        Pane::Peers => vec![
            Length(28),
            Length(11),
            Length(9),
            Length(7),
            Length(8),
            Length(7),
        ],
        Pane::CloseWait => vec![Length(24), Length(7), Length(8), Fill(1)],
        Pane::Alerts => vec![Length(8), Length(6), Length(13), Fill(1)],
        Pane::Namespaces => vec![
            Length(16),
            Length(7),
            Length(7),
            Length(9),
            Length(10),
            Length(11),
            Fill(1),
        ],
    }
}

/// `text` cut into a first line of at most `width` characters (at a space when there is
/// one) and the rest.
fn two_lines(text: &str, width: usize) -> [String; 2] {
    let cut = text
        .char_indices()
        .nth(width)
        .map_or(text.len(), |(at, _)| at);
    let at = text[..cut].rfind(' ').filter(|at| *at > 0).unwrap_or(cut);
    [text[..at].to_owned(), text[at..].trim_start().to_owned()]
}

/// A round-trip time in ms: three decimals below 10 ms (loopback and LANs), one above.
fn rtt_text(ms: f64) -> String {
    if ms < 10.0 {
        format!("{ms:.3}")
    } else {
        format!("{ms:.1}")
    }
}

/// The accept queue against the backlog as a bar, then the figures.
fn gauge(
    filled: u64,
    capacity: u64,
    width: usize,
    text: &str,
    theme: Theme,
    tone: Tone,
) -> Line<'static> {
    let ratio = if capacity == 0 {
        1.0
    } else {
        (filled as f64 / capacity as f64).min(1.0)
    };
    let mut full = (ratio * width as f64).round() as usize;
    if filled > 0 {
        full = full.max(1);
    }
    let bar_style = match tone {
        Tone::Normal => theme.fg(Color::Green),
        other => theme.tone(other),
    };
    Line::from(vec![
        Span::styled("█".repeat(full), bar_style),
        Span::styled(
            "░".repeat(width - full),
            Style::new().add_modifier(Modifier::DIM),
        ),
        Span::raw(format!(" {text}")),
    ])
}

fn draw_drill(frame: &mut Frame<'_>, area: Rect, drill: &Drill, theme: Theme) {
    let mut block = Block::bordered()
        .title(format!(" {} · Esc back ", drill.request.title()))
        .border_style(theme.border(true));
    match &drill.state {
        DrillState::Loading => {
            frame.render_widget(Paragraph::new("reading a snapshot…").block(block), area);
        }
        DrillState::Failed(why) => {
            frame.render_widget(
                Paragraph::new(printable(why).into_owned())
                    .wrap(Wrap { trim: true })
                    .block(block),
                area,
            );
        }
        DrillState::Loaded {
            connections,
            total,
            notes,
        } => {
            let mut bottom = format!(" {} of {total} ", connections.len());
            for note in notes {
                bottom.push_str(&format!("· {} ", printable(note)));
            }
            block = block.title_bottom(bottom);
            let header = Row::new(
                [
                    "STATE", "LOCAL", "REMOTE", "SEND-Q", "RECV-Q", "RTT ms", "RETRANS", "CWND",
                    "PROCESS",
                ]
                .map(|h| Cell::from(h).style(theme.header())),
            );
            let rows = connections.iter().map(|c| {
                let info = c.info.as_ref();
                Row::new(vec![
                    c.state.name().to_owned(),
                    crate::model::endpoint(c.local_ip, c.local_port),
                    crate::model::endpoint(c.remote_ip, c.remote_port),
                    c.send_queue.to_string(),
                    c.recv_queue.to_string(),
                    info.map_or_else(|| "-".into(), |i| rtt_text(i.rtt_ms)),
                    info.map_or_else(|| "-".into(), |i| i.total_retrans.to_string()),
                    info.map_or_else(|| "-".into(), |i| i.snd_cwnd.to_string()),
                    c.process
                        .as_ref()
                        .map_or_else(|| "-".into(), ToString::to_string),
                ])
            });
            use Constraint::{Fill, Length, Min};
            let widths = [
                Length(11),
                Min(21),
                Min(21),
                Length(7),
                Length(7),
                Length(7),
                Length(8),
                Length(6),
                Fill(1),
            ];
            let table = Table::new(rows, widths)
                .header(header)
                .block(block)
                .row_highlight_style(theme.selected());
            let mut state = TableState::default().with_selected(Some(drill.selected));
            frame.render_stateful_widget(table, area, &mut state);
        }
    }
}

const HELP: &[(&str, &str)] = &[
    ("q, Ctrl-C", "quit"),
    ("Space, p", "pause the screen (the engine keeps counting)"),
    ("Tab, ←/→", "next / previous pane"),
    ("↑/↓, j/k", "row (PgUp/PgDn, Home/End)"),
    ("s / S", "sort by the next column / reverse"),
    ("/", "filter by address, port or process (Esc clears)"),
    ("Enter", "open: a peer's, port's or state's connections;"),
    ("", "  on a namespace, scope every pane to it"),
    ("Esc", "back: drill-down, filter, scope"),
    ("n", "namespaces (with --all-netns)"),
    ("?", "this help"),
];

fn draw_help(frame: &mut Frame<'_>, area: Rect) {
    let width = area.width.min(64);
    let height = area.height.min(HELP.len() as u16 + 4);
    let popup = Rect::new(
        area.x + (area.width - width) / 2,
        area.y + (area.height - height) / 2,
        width,
        height,
    );
    let lines: Vec<Line<'_>> = HELP
        .iter()
        .map(|(key, what)| Line::from(format!("{key:<10} {what}")))
        .collect();
    frame.render_widget(Clear, popup);
    frame.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: false })
            .block(Block::bordered().title(" keys · any key closes ")),
        popup,
    );
}
