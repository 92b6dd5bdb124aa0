//! Sections and cut lists: a titled table, "(none)" for an empty one, and the line that
//! says how much a cut list left out; a command that shows one list, as text or JSON.
use std::io::{self, Write};

use serde::Serialize;
use tcpmon::{
    model::Listed,
    output::table::{Style, Table},
    snapshot::SnapshotRead,
};

use super::{header::write_header, json::write_json};

pub fn section(out: &mut dyn Write, style: Style, title: &str) -> io::Result<()> {
    writeln!(out, "\n{}", style.heading(title))?;
    Ok(())
}

/// One list as a command shows it: its JSON field, the list, and its human table.
pub struct OneList<'a, T> {
    pub field: &'static str,
    pub listed: &'a Listed<T>,
    pub title: String,
    pub table: Table,
    /// What the rows are, for the "N more ... not shown" line.
    pub what: &'static str,
}

/// The whole output of a command that shows one list: JSON `{source..., field: list}`,
/// or the header and one titled table.
pub fn one_list<T: Serialize>(
    out: &mut dyn Write,
    loaded: &SnapshotRead,
    json: bool,
    style: Style,
    list: OneList<'_, T>,
) -> io::Result<()> {
    if json {
        return write_json(
            out,
            loaded,
            std::collections::BTreeMap::from([(list.field, list.listed)]),
        );
    }
    write_header(out, loaded, style)?;
    listed_section(out, style, &list.title, list.table, list.listed, list.what)
}

/// A titled section holding one cut list.
pub fn listed_section<T>(
    out: &mut dyn Write,
    style: Style,
    title: &str,
    table: Table,
    listed: &Listed<T>,
    what: &str,
) -> io::Result<()> {
    section(out, style, title)?;
    write_listed(out, table, listed, what)
}

/// Prints a table or a placeholder, then the "N more" line of a cut list.
pub fn write_listed<T>(
    out: &mut dyn Write,
    table: Table,
    listed: &Listed<T>,
    what: &str,
) -> io::Result<()> {
    if table.is_empty() {
        writeln!(out, "  (none)")?;
    } else {
        table.write(out, "  ")?;
    }
    write_omitted(out, listed, what)
}

/// The line printed under a cut list.
pub fn write_omitted<T>(out: &mut dyn Write, listed: &Listed<T>, what: &str) -> io::Result<()> {
    if listed.omitted > 0 {
        writeln!(
            out,
            "  ... {} more {what} not shown ({} in all; --limit N or --all to see more)",
            listed.omitted, listed.total
        )?;
    }
    Ok(())
}
