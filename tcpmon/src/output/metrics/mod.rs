//! The Prometheus exporter's side of the engine: a [`MetricsSink`] keeps what the engine
//! emits, publishes it as a [`MetricsSnapshot`] once per tally, and [`encode`] turns a
//! snapshot into the Prometheus text or OpenMetrics exposition with prometheus-client.
//!
//! Every label set is bounded (docs/METRICS.md): states and families are fixed sets,
//! transitions at most 12 x 12 pairs, lists `--top` long with the rest as `other`,
//! listeners at most [`MAX_LISTENERS`], active alerts at most [`MAX_ACTIVE_ALERTS`].
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Instant, SystemTime},
};

use prometheus_client::encoding::text;
use serde::Serialize;

use crate::{
    live::{
        record::{AlertRecord, ModeRecord, SummaryRecord, TallyRecord, Timestamp, TransitionEvent},
        rules::Status,
        Sink,
    },
    model::Severity,
};

pub use self::collect::{registry, scrape_registry};
pub use crate::host::process::ProcessUsage;

mod collect;

/// Listener series at most; beyond, they add up under `listener="other"`.
pub const MAX_LISTENERS: usize = 1000;
/// Active-alert series at most; the rest are counted in `tcpmon_alerts_active_omitted`.
pub const MAX_ACTIVE_ALERTS: usize = 256;

/// An alert that is active now.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ActiveAlert {
    pub rule: &'static str,
    pub subject: String,
    pub severity: Severity,
    pub message: String,
    /// When it was raised.
    pub since: Timestamp,
}

/// How long a one-off event (a new listener, a namespace added or gone) stays listed in
/// `/alerts`, and how many at most.
pub const RECENT_EVENTS_SECS: u64 = 600;
pub const MAX_RECENT_EVENTS: usize = 100;

/// A one-off event, listed in `/alerts` for [`RECENT_EVENTS_SECS`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RecentEvent {
    pub rule: &'static str,
    pub subject: String,
    pub severity: Severity,
    pub message: String,
    pub time: Timestamp,
}

/// What the exporter publishes: the latest tally and everything counted up to it.
#[derive(Clone, Debug, Default)]
pub struct MetricsSnapshot {
    pub mode: Option<ModeRecord>,
    pub tally: Option<TallyRecord>,
    /// Alerts raised or escalated since the start, per (rule, severity).
    pub alerts_total: Vec<(&'static str, Severity, u64)>,
    pub active: Vec<ActiveAlert>,
    /// Active alerts beyond [`MAX_ACTIVE_ALERTS`].
    pub active_omitted: u64,
    /// One-off events of the last [`RECENT_EVENTS_SECS`], oldest first.
    pub events: Vec<RecentEvent>,
    /// The engine ended (and why), when it did.
    pub stopped: Option<String>,
    /// When the sink began, and when it received the last tally, on the monotonic
    /// clock: ages measured from these do not move when the wall clock is stepped.
    pub started_at: Option<Instant>,
    pub tally_at: Option<Instant>,
}

impl MetricsSnapshot {
    /// Since the last tally (since the start, before the first), at `now`.
    pub fn tally_age(&self, now: Instant) -> Option<std::time::Duration> {
        self.tally_at
            .or(self.started_at)
            .map(|at| now.saturating_duration_since(at))
    }
}

/// What the HTTP side reads; the engine thread writes it once per tally.
#[derive(Debug, Default)]
pub struct Published {
    latest: Mutex<Arc<MetricsSnapshot>>,
    /// Bumped at every publication, so encodings can be cached per version.
    version: AtomicU64,
}

impl Published {
    pub fn latest(&self) -> (u64, Arc<MetricsSnapshot>) {
        let snapshot = Arc::clone(&self.latest.lock().unwrap_or_else(|p| p.into_inner()));
        (self.version.load(Ordering::Acquire), snapshot)
    }

    fn publish(&self, snapshot: MetricsSnapshot) {
        *self.latest.lock().unwrap_or_else(|p| p.into_inner()) = Arc::new(snapshot);
        self.version.fetch_add(1, Ordering::AcqRel);
    }
}

/// The engine's sink when serving metrics: counts transitions on the hot path (one array
/// increment), follows alerts, and publishes a snapshot at every tally.
#[derive(Debug)]
pub struct MetricsSink {
    published: Arc<Published>,
    mode: Option<ModeRecord>,
    alerts_total: BTreeMap<(&'static str, Severity), u64>,
    active: BTreeMap<(&'static str, String), ActiveAlert>,
    events: std::collections::VecDeque<RecentEvent>,
    stopped: Option<String>,
    tally: Option<TallyRecord>,
    started_at: Instant,
    tally_at: Option<Instant>,
}

impl MetricsSink {
    pub fn new(published: Arc<Published>) -> Self {
        Self {
            published,
            mode: None,
            alerts_total: BTreeMap::new(),
            active: BTreeMap::new(),
            events: std::collections::VecDeque::new(),
            stopped: None,
            tally: None,
            started_at: Instant::now(),
            tally_at: None,
        }
    }

    fn publish(&mut self) {
        // Record times are the engine's start plus its monotonic clock, so a step of the
        // wall clock does not age events.
        if let Some(now) = self.tally.as_ref().map(|t| t.time.0) {
            let horizon = now - std::time::Duration::from_secs(RECENT_EVENTS_SECS);
            while self.events.front().is_some_and(|e| e.time.0 < horizon) {
                self.events.pop_front();
            }
        }
        self.published.publish(MetricsSnapshot {
            mode: self.mode.clone(),
            tally: self.tally.clone(),
            alerts_total: self
                .alerts_total
                .iter()
                .map(|(&(rule, sev), &n)| (rule, sev, n))
                .collect(),
            active: self
                .active
                .values()
                .take(MAX_ACTIVE_ALERTS)
                .cloned()
                .collect(),
            active_omitted: self.active.len().saturating_sub(MAX_ACTIVE_ALERTS) as u64,
            events: self.events.iter().cloned().collect(),
            stopped: self.stopped.clone(),
            started_at: Some(self.started_at),
            tally_at: self.tally_at,
        });
    }
}

impl Sink for MetricsSink {
    fn mode(&mut self, record: &ModeRecord) -> io::Result<()> {
        self.mode = Some(record.clone());
        self.publish();
        Ok(())
    }

    /// Transitions are counted by the engine (the tally's `transitions_by_pair`).
    fn transition(&mut self, _: &TransitionEvent<'_>) -> io::Result<()> {
        Ok(())
    }

    fn alert(&mut self, record: &AlertRecord<'_>) -> io::Result<()> {
        let alert = record.alert;
        let key = (alert.rule, alert.subject.clone());
        match alert.status {
            Status::Raised | Status::Changed => {
                *self
                    .alerts_total
                    .entry((alert.rule, alert.severity))
                    .or_default() += 1;
                let since = match self.active.get(&key) {
                    Some(active) => active.since,
                    None => record.time,
                };
                self.active.insert(
                    key,
                    ActiveAlert {
                        rule: alert.rule,
                        subject: alert.subject.clone(),
                        severity: alert.severity,
                        message: alert.message.clone(),
                        since,
                    },
                );
            }
            Status::Cleared => {
                self.active.remove(&key);
            }
            Status::Event => {
                *self
                    .alerts_total
                    .entry((alert.rule, alert.severity))
                    .or_default() += 1;
                if self.events.len() == MAX_RECENT_EVENTS {
                    self.events.pop_front();
                }
                self.events.push_back(RecentEvent {
                    rule: alert.rule,
                    subject: alert.subject.clone(),
                    severity: alert.severity,
                    message: alert.message.clone(),
                    time: record.time,
                });
            }
        }
        Ok(())
    }

    fn tally(&mut self, record: &TallyRecord) -> io::Result<()> {
        self.tally = Some(record.clone());
        self.tally_at = Some(Instant::now());
        self.publish();
        Ok(())
    }

    fn summary(&mut self, _: &SummaryRecord) -> io::Result<()> {
        self.stopped = Some("the engine stopped".into());
        self.publish();
        Ok(())
    }
}

/// The two expositions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `text/plain; version=0.0.4`.
    Prometheus,
    /// `application/openmetrics-text; version=1.0.0`.
    OpenMetrics,
}

impl Format {
    pub const fn content_type(self) -> &'static str {
        match self {
            Self::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
            Self::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }

    /// What to answer a request's `Accept` header with: OpenMetrics when it is asked
    /// for (and not refused with q=0), the Prometheus text format otherwise.
    pub fn negotiate(accept: Option<&str>) -> Self {
        // The highest q each format is given (a media range without q has 1; a range that
        // names neither gives the text format its q, as the default).
        let (mut openmetrics, mut text) = (None::<f64>, None::<f64>);
        for part in accept.unwrap_or_default().split(',') {
            let mut params = part.split(';').map(str::trim);
            let media = params.next().unwrap_or_default().to_ascii_lowercase();
            let q = params
                .filter_map(|p| p.strip_prefix("q="))
                .find_map(|q| q.parse::<f64>().ok())
                .filter(|q| q.is_finite())
                .unwrap_or(1.0);
            let best = |current: Option<f64>| Some(current.map_or(q, |c| c.max(q)));
            match media.as_str() {
                "application/openmetrics-text" => openmetrics = best(openmetrics),
                "text/plain" | "text/*" | "*/*" => text = best(text),
                _ => {}
            }
        }
        match (openmetrics, text) {
            (Some(om), text) if om > 0.0 && om >= text.unwrap_or(0.0) => Self::OpenMetrics,
            _ => Self::Prometheus,
        }
    }
}

/// Figures that move between publications, so they are read at every scrape instead of
/// cached with the rest.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ScrapeFigures {
    /// Since the last tally was published (since the engine started, before the first).
    pub tally_age: std::time::Duration,
    pub http: HttpFigures,
}

/// What the HTTP side did with its connections, since the start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HttpFigures {
    pub open: u64,
    pub refused: u64,
    pub evicted: u64,
    pub stalled: u64,
    pub accept_errors: u64,
}

/// `exposition` (from [`encode`]) with `figures` added, in the same format.
pub fn with_scrape_figures(exposition: &str, figures: &ScrapeFigures, format: Format) -> String {
    let mut extra = String::with_capacity(2048);
    // Writing into a String cannot fail.
    let _ = text::encode(&mut extra, &scrape_registry(figures));
    match format {
        Format::OpenMetrics => {
            let body = exposition.strip_suffix("# EOF\n").unwrap_or(exposition);
            let mut out = String::with_capacity(body.len() + extra.len());
            out.push_str(body);
            out.push_str(&extra);
            out
        }
        Format::Prometheus => {
            let mut out = String::with_capacity(exposition.len() + extra.len());
            out.push_str(exposition);
            out.push_str(&prometheus_text(&extra));
            out
        }
    }
}

/// `snapshot` (and this process's `usage`) as an exposition.
pub fn encode(snapshot: &MetricsSnapshot, usage: ProcessUsage, format: Format) -> String {
    let registry = registry(snapshot, usage);
    let mut out = String::with_capacity(16 << 10);
    // Writing into a String cannot fail.
    let _ = text::encode(&mut out, &registry);
    match format {
        Format::OpenMetrics => out,
        Format::Prometheus => prometheus_text(&out),
    }
}

/// prometheus-client writes OpenMetrics only. Its output is the Prometheus text format
/// but for three things, undone here: a counter's HELP and TYPE name the family without
/// the `_total` its samples carry, `# UNIT` lines, and the closing `# EOF`.
fn prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|prefix| line.strip_prefix(prefix).map(|rest| (prefix, rest)));
        match meta {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                if counters.contains(name) {
                    let _ = writeln!(out, "{prefix}{name}_total {tail}");
                } else {
                    out.push_str(line);
                    out.push('\n');
                }
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

/// The active alerts, as `/alerts` answers.
#[derive(Clone, Debug, Serialize)]
pub struct AlertsDocument<'a> {
    pub schema_version: u32,
    pub time: Timestamp,
    pub alerts: &'a [ActiveAlert],
    /// Active alerts beyond the ones listed.
    pub omitted: u64,
    /// One-off events (new listeners, namespaces added or gone) of the last ten minutes.
    pub events: &'a [RecentEvent],
}

impl<'a> AlertsDocument<'a> {
    pub fn of(snapshot: &'a MetricsSnapshot) -> Self {
        Self {
            schema_version: crate::live::record::SCHEMA_VERSION,
            time: Timestamp(SystemTime::now()),
            alerts: &snapshot.active,
            omitted: snapshot.active_omitted,
            events: &snapshot.events,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::HashMap, net::IpAddr};

    use super::*;
    use crate::{
        ebpf::decode::encode_transition,
        host::proc_net::Socket,
        live::{
            fake::{FakeHost, FakeSource},
            record::{ListenerRecord, Mode, SynTotals, SCHEMA_VERSION},
            rules::Alert,
            Engine, EngineConfig,
        },
        model::{Endpoints, Family, TcpState, Thresholds, Transition},
    };

    /// `name{labels} value` lines of an exposition, by series.
    fn series(text: &str) -> HashMap<String, f64> {
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| {
                let (name, value) = l.rsplit_once(' ').unwrap();
                (name.to_owned(), value.parse().unwrap())
            })
            .collect()
    }

    fn mode() -> ModeRecord {
        ModeRecord {
            schema_version: SCHEMA_VERSION,
            mode: Mode::Ebpf,
            reason: "test".into(),
            notes: Vec::new(),
            fell_back: false,
            poll_interval: None,
        }
    }

    #[test]
    fn openmetrics_only_when_asked_for() {
        assert_eq!(Format::negotiate(None), Format::Prometheus);
        assert_eq!(Format::negotiate(Some("*/*")), Format::Prometheus);
        assert_eq!(
            Format::negotiate(Some("text/plain;version=0.0.4;q=0.5")),
            Format::Prometheus
        );
        // What Prometheus sends.
        assert_eq!(
            Format::negotiate(Some(
                "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
            )),
            Format::OpenMetrics
        );
        assert_eq!(
            Format::negotiate(Some("application/openmetrics-text;q=0, text/plain")),
            Format::Prometheus
        );
        // The q-values decide: the text format preferred here.
        assert_eq!(
            Format::negotiate(Some("text/plain;q=1, application/openmetrics-text;q=0.1")),
            Format::Prometheus
        );
        assert_eq!(
            Format::negotiate(Some("text/plain;q=0.2, application/openmetrics-text;q=0.9")),
            Format::OpenMetrics
        );
        assert_eq!(
            Format::negotiate(Some("application/openmetrics-text")),
            Format::OpenMetrics
        );
    }

    #[test]
    fn prometheus_text_names_counters_by_their_samples() {
        let om = "# HELP a_seconds A.\n# TYPE a_seconds counter\n# UNIT a_seconds seconds\na_seconds_total 3\n# HELP g G.\n# TYPE g gauge\ng 1\n# EOF\n";
        assert_eq!(
            prometheus_text(om),
            "# HELP a_seconds_total A.\n# TYPE a_seconds_total counter\na_seconds_total 3\n# HELP g G.\n# TYPE g gauge\ng 1\n"
        );
    }

    fn lo() -> IpAddr {
        IpAddr::from([127, 0, 0, 1])
    }

    /// A new listener reaches a fleet: an info series per listener naming its process, and
    /// the event listed in /alerts for ten minutes.
    #[test]
    fn new_listeners_are_series_and_recent_events() {
        let published = Arc::new(Published::default());
        let mut sink = MetricsSink::new(Arc::clone(&published));
        let mut engine = Engine::start(
            EngineConfig::default().validate().expect("a valid config"),
            FakeHost::default(),
            Some(FakeSource::default()),
            mode(),
            &mut sink,
        )
        .unwrap();
        let mut t = Transition {
            at: Endpoints {
                ts_ns: 2_000_000_000,
                skaddr: 1,
                netns: 0,
                family: Family::Ipv4,
                local_ip: "0.0.0.0".parse().unwrap(),
                local_port: 4444,
                remote_ip: "0.0.0.0".parse().unwrap(),
                remote_port: 0,
            },
            old: TcpState::Close,
            new: TcpState::Listen,
            task: None,
        };
        let mut comm = [0u8; 16];
        comm[..2].copy_from_slice(b"nc");
        t.task = Some(crate::model::Task { pid: 77, comm });
        engine.source_mut().unwrap().push(encode_transition(&t));
        engine.drain(&mut sink).unwrap();
        engine.write_tally(&mut sink).unwrap();
        let (_, snapshot) = published.latest();
        let text = encode(&snapshot, ProcessUsage::default(), Format::Prometheus);
        assert!(
            text.contains(r#"tcpmon_listener_info{listener="0.0.0.0:4444",process="nc"} 1"#),
            "{text}"
        );
        let doc = serde_json::to_value(AlertsDocument::of(&snapshot)).unwrap();
        assert_eq!(doc["events"][0]["rule"], "new_listener");
        assert_eq!(doc["events"][0]["subject"], "0.0.0.0:4444");
        // Ten minutes on, the event has aged out; the listener's series stays.
        engine.host_mut().now_ns += (RECENT_EVENTS_SECS + 1) * 1_000_000_000;
        engine.write_tally(&mut sink).unwrap();
        let (_, snapshot) = published.latest();
        assert!(snapshot.events.is_empty());
        assert!(
            encode(&snapshot, ProcessUsage::default(), Format::Prometheus)
                .contains("tcpmon_listener_info{listener=\"0.0.0.0:4444\"")
        );
    }

    #[test]
    fn the_engine_s_records_become_series() {
        let published = Arc::new(Published::default());
        let mut sink = MetricsSink::new(Arc::clone(&published));
        let mut sockets: Vec<Socket> = (0..3)
            .map(|i| {
                Socket::new(
                    TcpState::Established,
                    (lo(), 80),
                    (lo(), 5000 + i),
                    10 + u64::from(i),
                )
            })
            .collect();
        sockets.push(Socket::new(
            TcpState::CloseWait,
            (lo(), 8080),
            (lo(), 6000),
            20,
        ));
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        sockets.push(Socket::new(
            TcpState::Established,
            (v6, 443),
            (v6, 7000),
            30,
        ));
        let mut engine = Engine::start(
            EngineConfig {
                top: 2,
                thresholds: Thresholds {
                    close_wait_age_secs: 1.0,
                    ..Thresholds::DEFAULT
                },
                transitions: None,
                ..EngineConfig::default()
            }
            .validate()
            .expect("a valid config"),
            FakeHost {
                sockets,
                owners: [(
                    20,
                    crate::model::Process {
                        pid: 7,
                        comm: "leaky".into(),
                    },
                )]
                .into(),
                ..FakeHost::default()
            },
            Some(FakeSource::default()),
            mode(),
            &mut sink,
        )
        .unwrap();
        let t = Transition {
            at: Endpoints {
                ts_ns: 2_000_000_000,
                skaddr: 99,
                netns: 0,
                family: Family::Ipv4,
                local_ip: lo(),
                local_port: 80,
                remote_ip: lo(),
                remote_port: 5000,
            },
            old: TcpState::Established,
            new: TcpState::CloseWait,
            task: None,
        };
        engine.source_mut().unwrap().push(encode_transition(&t));
        engine.drain(&mut sink).unwrap();
        // What the table shows now (the alert's owner lookup re-reads it).
        engine.host_mut().sockets[0].state = TcpState::CloseWait;
        engine.host_mut().now_ns += 5_000_000_000;
        engine.tick(&mut sink).unwrap();
        engine.write_tally(&mut sink).unwrap();
        let (_, snapshot) = published.latest();
        let text = encode(&snapshot, ProcessUsage::default(), Format::Prometheus);
        let s = series(&text);
        let get = |k: &str| {
            s.get(k)
                .copied()
                .unwrap_or_else(|| panic!("no {k} in\n{text}"))
        };
        assert_eq!(
            get(r#"tcpmon_connections{state="established",family="ipv4"}"#),
            2.0
        );
        assert_eq!(
            get(r#"tcpmon_connections{state="established",family="ipv6"}"#),
            1.0
        );
        assert_eq!(
            get(r#"tcpmon_connections{state="close_wait",family="ipv4"}"#),
            2.0
        );
        assert_eq!(
            get(r#"tcpmon_state_transitions_total{from="established",to="close_wait"}"#),
            1.0
        );
        assert_eq!(
            get(r#"tcpmon_close_wait_sockets{port="8080",remote="",process="leaky"}"#),
            1.0
        );
        assert_eq!(
            get(r#"tcpmon_close_wait_owner_info{port="8080",remote="",process="leaky",pid="7"}"#),
            1.0
        );
        assert_eq!(
            get(r#"tcpmon_close_wait_sockets{port="80",remote="",process="unknown"}"#),
            1.0
        );
        assert_eq!(
            get(r#"tcpmon_close_wait_sockets{port="other",remote="other",process="other"}"#),
            0.0
        );
        let close_wait_total: f64 = s
            .iter()
            .filter(|(k, _)| k.starts_with("tcpmon_close_wait_sockets"))
            .map(|(_, v)| v)
            .sum();
        assert_eq!(close_wait_total, 2.0);
        let ips: Vec<&String> = s
            .keys()
            .filter(|k| k.starts_with("tcpmon_remote_ip_connections"))
            .collect();
        assert_eq!(ips.len(), 3, "the top two and other: {ips:?}");
        assert_eq!(
            get(r#"tcpmon_alert_active{rule="close_wait",severity="warning",subject="8080"}"#),
            1.0
        );
        assert_eq!(
            get(r#"tcpmon_alerts_total{rule="close_wait",severity="warning"}"#),
            2.0,
            "ports 80 and 8080"
        );
        assert_eq!(get(r#"tcpmon_mode_info{mode="ebpf"}"#), 1.0);
        assert_eq!(get("tcpmon_up"), 1.0);
        assert_eq!(
            get(r#"tcpmon_events_received_total{kind="transition"}"#),
            1.0
        );
        // OpenMetrics carries the same series and the EOF marker.
        let om = encode(&snapshot, ProcessUsage::default(), Format::OpenMetrics);
        assert!(om.ends_with("# EOF\n"));
        assert_eq!(series(&om.replace("# EOF\n", "")).len(), s.len());
    }

    #[test]
    fn label_sets_stay_bounded() {
        let mut sink = MetricsSink::new(Arc::new(Published::default()));
        let alert = |i: usize| Alert {
            status: Status::Raised,
            severity: Severity::Warning,
            rule: "per_ip",
            subject: format!("10.0.{}.{}", i / 256, i % 256),
            message: String::new(),
            netns: None,
            owner: None,
        };
        for i in 0..1000 {
            let a = alert(i);
            sink.alert(&AlertRecord {
                time: Timestamp(SystemTime::UNIX_EPOCH),
                alert: &a,
            })
            .unwrap();
        }
        sink.publish();
        let (_, mut snapshot) = sink.published.latest();
        assert_eq!(snapshot.active.len(), MAX_ACTIVE_ALERTS);
        assert_eq!(snapshot.active_omitted, 1000 - MAX_ACTIVE_ALERTS as u64);
        // Thousands of listeners: at most MAX_LISTENERS series each, and "other".
        let mut tally = Arc::make_mut(&mut snapshot).clone();
        tally.tally = Some(crate::live::record::TallyRecord {
            listeners: (0..3000u16)
                .map(|p| ListenerRecord {
                    listener: format!("0.0.0.0:{p}"),
                    sockets: 1,
                    backlog: Some(128),
                    accept_queue: Some(0),
                    drops: None,
                    half_open: 1,
                    syn: SynTotals::default(),
                    owners: None,
                })
                .collect(),
            ..sample_tally()
        });
        let text = encode(&tally, ProcessUsage::default(), Format::Prometheus);
        let half_open = text
            .lines()
            .filter(|l| l.starts_with("tcpmon_listener_half_open{"))
            .count();
        assert_eq!(half_open, MAX_LISTENERS + 1);
        assert!(text.contains(r#"tcpmon_listener_half_open{listener="other"} 2000"#));
    }

    #[test]
    fn other_namespaces_become_labelled_series() {
        use crate::live::record::{NamespaceTally, Untracked};
        let mut tally = sample_tally();
        let mut states = crate::model::StateCounts::default();
        states.add(TcpState::CloseWait, 12);
        states.add(TcpState::NewSynRecv, 2);
        tally.namespaces = Some(vec![NamespaceTally {
            inode: 4026532200,
            name: None,
            owner: "pod web-7d9".into(),
            total: 14,
            states,
            transitions: 40,
            time_wait_sockstat_error: Some(0),
            reconcile_error: None,
            detail: None,
            failures: crate::live::failures::FailureCounts {
                retransmits: 9,
                resets_sent: 2,
                resets_received: 1,
                segments_sent: 120,
            },
        }]);
        tally.namespaces_untracked = Some(Untracked {
            namespaces: 3,
            transitions: 17,
        });
        let published = Arc::new(Published::default());
        let mut sink = MetricsSink::new(Arc::clone(&published));
        sink.mode(&mode()).unwrap();
        sink.tally(&tally).unwrap();
        let (_, snapshot) = published.latest();
        let text = encode(&snapshot, ProcessUsage::default(), Format::Prometheus);
        let s = series(&text);
        let netns = |state: &str| {
            s[&format!(
                r#"tcpmon_netns_connections{{netns="4026532200",owner="pod web-7d9",state="{state}"}}"#
            )]
        };
        assert_eq!(netns("close_wait"), 12.0);
        assert_eq!(netns("syn_recv"), 2.0);
        assert_eq!(s["tcpmon_netns_untracked"], 3.0);
        assert_eq!(s["tcpmon_netns_untracked_transitions_total"], 17.0);
        // Without --all-netns there is no such series.
        let mut sink = MetricsSink::new(Arc::clone(&published));
        sink.mode(&mode()).unwrap();
        sink.tally(&sample_tally()).unwrap();
        let (_, snapshot) = published.latest();
        let text = encode(&snapshot, ProcessUsage::default(), Format::Prometheus);
        assert!(!text.contains("tcpmon_netns"), "{text}");
    }

    fn sample_tally() -> crate::live::record::TallyRecord {
        let mut sink = crate::live::fake::RecordingSink::default();
        let mut engine = Engine::start(
            EngineConfig::default().validate().expect("a valid config"),
            FakeHost::default(),
            Some(FakeSource::default()),
            mode(),
            &mut sink,
        )
        .unwrap();
        engine.tally_record()
    }
}
