//! Output helpers shared by the commands: aligned tables, cut lists that say what they
//! left out, and severity colouring that only happens on a terminal.
use std::io::{self, Write};

use serde::Serialize;

use crate::model::Severity;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

/// A plain aligned table: headers, then rows, columns two spaces apart.
pub struct Table {
    columns: Vec<(&'static str, Align)>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(columns: &[(&'static str, Align)]) -> Self {
        Self {
            columns: columns.to_vec(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.columns.len());
        self.rows.push(cells);
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn write(&self, w: &mut dyn Write, indent: &str) -> io::Result<()> {
        let mut widths: Vec<usize> = self.columns.iter().map(|(h, _)| h.len()).collect();
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(visible_len(cell));
            }
        }
        let line = |w: &mut dyn Write, cells: &mut dyn Iterator<Item = &str>| -> io::Result<()> {
            let mut out = String::from(indent);
            for (i, cell) in cells.enumerate() {
                let (width, align) = (widths[i], self.columns[i].1);
                let pad = width.saturating_sub(visible_len(cell));
                let last = i + 1 == widths.len();
                match align {
                    Align::Left if last => out.push_str(cell),
                    Align::Left => {
                        out.push_str(cell);
                        out.extend(std::iter::repeat_n(' ', pad));
                    }
                    Align::Right => {
                        out.extend(std::iter::repeat_n(' ', pad));
                        out.push_str(cell);
                    }
                }
                if !last {
                    out.push_str("  ");
                }
            }
            writeln!(w, "{}", out.trim_end())
        };
        line(w, &mut self.columns.iter().map(|(h, _)| *h))?;
        for row in &self.rows {
            line(w, &mut row.iter().map(String::as_str))?;
        }
        Ok(())
    }
}

/// Characters a terminal shows: ANSI colour sequences take no room.
fn visible_len(cell: &str) -> usize {
    let mut len = 0;
    let mut in_escape = false;
    for c in cell.chars() {
        match (in_escape, c) {
            (false, '\x1b') => in_escape = true,
            (true, 'm') => in_escape = false,
            (true, _) => {}
            (false, _) => len += 1,
        }
    }
    len
}

/// ANSI styling, on only when writing to a terminal and NO_COLOR is unset.
#[derive(Clone, Copy, Debug, Default)]
pub struct Style {
    pub color: bool,
}

impl Style {
    pub fn detect() -> Self {
        use std::io::IsTerminal;
        Self {
            color: io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
        }
    }

    pub fn severity(&self, severity: Severity) -> String {
        let label = severity.name().to_ascii_uppercase();
        if !self.color {
            return label;
        }
        match severity {
            Severity::Critical => format!("\x1b[1;31m{label}\x1b[0m"),
            Severity::Warning => format!("\x1b[33m{label}\x1b[0m"),
            Severity::Info => format!("\x1b[2m{label}\x1b[0m"),
        }
    }

    pub fn heading(&self, text: &str) -> String {
        if self.color {
            format!("\x1b[1m{text}\x1b[0m")
        } else {
            text.to_owned()
        }
    }
}

/// Writes one JSON value followed by a newline.
pub fn json_line(w: &mut dyn Write, value: &impl Serialize) -> io::Result<()> {
    serde_json::to_writer(&mut *w, value).map_err(io::Error::other)?;
    w.write_all(b"\n")
}

/// Groups digits for counts humans read at a glance: 12345 -> 12,345.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns() {
        let mut t = Table::new(&[("STATE", Align::Left), ("COUNT", Align::Right)]);
        t.row(vec!["ESTABLISHED".into(), "5".into()]);
        t.row(vec!["LISTEN".into(), "12345".into()]);
        let mut out = Vec::new();
        t.write(&mut out, "").unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "STATE        COUNT\nESTABLISHED      5\nLISTEN       12345\n"
        );
    }

    #[test]
    fn colour_codes_do_not_count_toward_width() {
        let style = Style { color: true };
        assert_eq!(
            visible_len(&style.severity(Severity::Critical)),
            "CRITICAL".len()
        );
        assert_eq!(visible_len(&style.severity(Severity::Info)), "INFO".len());
    }

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1234567), "1,234,567");
    }
}
