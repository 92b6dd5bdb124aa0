//! Audit findings as a table, with a line per rule whose findings were cut.
use std::io::{self, Write};

use tcpmon::{
    output::table::{Align, Style, Table},
    snapshot::audit::{Finding, FindingList},
};

/// The findings section's body: the table, then a line per rule that was cut.
pub fn write_findings(out: &mut dyn Write, list: &FindingList, style: Style) -> io::Result<()> {
    findings_table(&list.items, style).write(out, "  ")?;
    for (rule, omitted) in &list.omitted_by_rule {
        writeln!(
            out,
            "  ... {omitted} more {rule} finding{} not shown (--limit N or --all to see more)",
            if *omitted == 1 { "" } else { "s" }
        )?;
    }
    Ok(())
}

fn findings_table(findings: &[Finding], style: Style) -> Table {
    let mut table = Table::new(&[
        ("SEVERITY", Align::Left),
        ("RULE", Align::Left),
        ("FINDING", Align::Left),
    ]);
    for f in findings {
        table.row(vec![
            style.severity(f.severity),
            f.rule.clone(),
            f.message.clone(),
        ]);
    }
    table
}
