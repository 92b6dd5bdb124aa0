//! `tcpmon audit`: findings and an exit status scripts can use.
use std::io::Write;

use anyhow::Result;
use serde::Serialize;
use tcpmon::{
    model::{Severity, Thresholds},
    output::table::Style,
    snapshot::{
        audit::{cut, fails, FindingList},
        Want,
    },
};

use crate::{
    cli::AuditArgs,
    exit::Status,
    render::{findings::write_findings, header::write_header, json::write_json},
};

pub fn run(args: &AuditArgs, out: &mut dyn Write, style: Style) -> Result<Status> {
    let allow = super::allowlist_of(&args.thresholds)?;
    let loaded = super::read(&args.snapshot, Want::audit())?;
    let thresholds = args.thresholds.thresholds();
    let findings = super::audited(&loaded, &thresholds, allow.as_ref());
    // The status covers every finding; the output shows --limit of each rule.
    let failed = fails(&findings, args.fail_on);
    let shown = cut(&findings, args.snapshot.limit());
    if args.snapshot.json {
        #[derive(Serialize)]
        struct Body<'a> {
            findings: &'a FindingList,
            thresholds: &'a Thresholds,
            fail_on: Severity,
            failed: bool,
        }
        write_json(
            out,
            &loaded,
            Body {
                findings: &shown,
                thresholds: &thresholds,
                fail_on: args.fail_on,
                failed,
            },
        )?;
    } else {
        write_header(out, &loaded, style)?;
        writeln!(out)?;
        if findings.is_empty() {
            writeln!(out, "  clean: no finding")?;
        } else {
            write_findings(out, &shown, style)?;
        }
        let worst = findings.iter().map(|f| f.severity).max();
        writeln!(
            out,
            "\n{} (fail-on {}): {}",
            if failed { "FAIL" } else { "PASS" },
            args.fail_on,
            worst.map_or_else(
                || "no findings".to_owned(),
                |w| format!("worst finding is {w}")
            )
        )?;
    }
    Ok(if failed {
        Status::Findings
    } else {
        Status::Clean
    })
}
