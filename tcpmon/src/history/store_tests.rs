use super::*;
use crate::history::sample::{ListenerSeen, NamespaceSample, TopEntry};

/// A sample at `time` whose every metric is `value` (ESTABLISHED `value`, ...).
fn sample(time: i64, value: i64) -> Sample {
    Sample {
        time,
        port_range: 28_232,
        namespaces: vec![NamespaceSample {
            netns: 0,
            owner: String::new(),
            values: [value; METRICS.len()],
        }],
        tops: vec![],
        listeners: vec![],
    }
}

fn temp() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("history.db");
    (dir, path)
}

const DAY: i64 = 86_400;

#[test]
fn two_years_roll_up_into_tiers_and_each_tier_keeps_its_span() {
    let (_dir, path) = temp();
    let mut h = History::open(&path, u64::MAX).unwrap();
    let start = 1_700_000_000 / 3600 * 3600;
    let end = start + 2 * 365 * DAY + 10 * DAY;
    // Hourly samples for two years and more, then one every 10 s for the last 2.5 days
    // (the values vary so that min, mean and max differ).
    let dense = end - 5 * DAY / 2;
    let mut t = start;
    while t < end {
        h.record(&sample(t, (t / 10) % 7)).unwrap();
        t += if t < dense { 3600 } else { 10 };
    }
    let last = t - 10;
    // Raw: the last 48 hours only.
    let (first_raw, last_raw) = h.span(Tier::Raw, 0).unwrap().unwrap();
    assert_eq!(last_raw, last);
    // Pruned once a minute: up to a minute's samples older than the keep.
    assert!(
        first_raw >= last - RAW_KEEP - 60 && first_raw < last - RAW_KEEP + 70,
        "{first_raw}"
    );
    // Minutes: 30 days; hours: 2 years, from the first hourly sample still kept.
    let (first_minute, _) = h.span(Tier::Minute, 0).unwrap().unwrap();
    assert!(first_minute >= last - MINUTE_KEEP - 60 && first_minute < last - MINUTE_KEEP + 3600);
    let (first_hour, last_hour) = h.span(Tier::Hour, 0).unwrap().unwrap();
    assert!(first_hour >= last - HOUR_KEEP - 60 && first_hour < last - HOUR_KEEP + 3600);
    assert_eq!(
        last_hour,
        last.div_euclid(3600) * 3600 - 3600,
        "complete hours only"
    );
    // A dense minute: its 6 samples' min, mean and max.
    let minute = (last - DAY).div_euclid(60) * 60;
    let values: Vec<i64> = (0..6).map(|k| ((minute + 10 * k) / 10) % 7).collect();
    let b = h
        .buckets(Tier::Minute, 0, &[0, 5], (minute, minute + 60), 60)
        .unwrap();
    assert_eq!(b.len(), 1);
    assert_eq!(b[0].samples, 6);
    assert_eq!(b[0].min[0], *values.iter().min().unwrap());
    assert_eq!(b[0].max[1], *values.iter().max().unwrap());
    let mean = values.iter().sum::<i64>() as f64 / 6.0;
    assert!((b[0].avg[0] - mean).abs() < 1e-9);
    // An hour rolled from minutes is weighted by samples: the same as from raw.
    let hour = (last - DAY).div_euclid(3600) * 3600;
    let from_hour = h
        .buckets(Tier::Hour, 0, &[0], (hour, hour + 3600), 3600)
        .unwrap();
    let from_raw = h
        .buckets(Tier::Raw, 0, &[0], (hour, hour + 3600), 3600)
        .unwrap();
    assert_eq!(from_hour[0].samples, 360);
    assert_eq!(from_hour[0].samples, from_raw[0].samples);
    assert!((from_hour[0].avg[0] - from_raw[0].avg[0]).abs() < 1e-9);
    assert_eq!(
        (from_hour[0].min[0], from_hour[0].max[0]),
        (from_raw[0].min[0], from_raw[0].max[0])
    );
    assert_eq!(h.integrity().unwrap(), "ok");
}

#[test]
fn queries_pick_the_finest_tier_that_holds_the_period() {
    let now = 10 * 365 * DAY;
    assert_eq!(Tier::for_query(now - DAY, now, 10), Tier::Raw);
    assert_eq!(Tier::for_query(now - DAY, now, 3600), Tier::Raw);
    assert_eq!(Tier::for_query(now - 7 * DAY, now, 3600), Tier::Minute);
    assert_eq!(Tier::for_query(now - 7 * DAY, now, 30), Tier::Minute);
    assert_eq!(Tier::for_query(now - 90 * DAY, now, 86_400), Tier::Hour);
    assert_eq!(Tier::for_query(now - 900 * DAY, now, 86_400), Tier::Hour);
}

#[test]
fn the_file_stays_under_its_bound() {
    let (_dir, path) = temp();
    let bound = 512 << 10;
    let mut h = History::open(&path, bound).unwrap();
    let mut s = sample(0, 0);
    // Lists make rows bigger: 20 peers a sample.
    s.tops = (0..20)
        .map(|i| TopEntry {
            kind: "peer",
            netns: 0,
            key: format!("2001:db8::{i:x}"),
            value: i,
            value2: i,
            owners: String::new(),
        })
        .collect();
    for k in 0..20_000 {
        s.time = 1_700_000_000 + 10 * k;
        h.record(&s).unwrap();
    }
    // Held once a minute: at most a minute's samples over.
    let used = h.used_bytes().unwrap();
    assert!(used <= bound + (32 << 10), "{used} > {bound}");
    // The newest data is what stays.
    let (_, last) = h.span(Tier::Raw, 0).unwrap().unwrap();
    assert_eq!(last, s.time);
    drop(h);
    let on_disk = std::fs::metadata(&path).unwrap().len();
    assert!(on_disk <= bound + (64 << 10), "{on_disk}");
}

#[test]
fn older_files_are_migrated_and_keep_their_samples() {
    let (_dir, path) = temp();
    {
        let mut v1 = History {
            conn: Connection::open(&path).unwrap(),
            path: path.clone(),
            max_bytes: u64::MAX,
            rolled_minute: None,
            rolled_hour: None,
            listeners_written: Default::default(),
            last_listeners: (0, Vec::new()),
        };
        v1.migrate_to(1).unwrap();
        assert_eq!(v1.version().unwrap(), 1);
        // Version 1 had no port ranges.
        let mut s = sample(1_700_000_000, 42);
        s.port_range = 0;
        v1.record(&s).unwrap();
    }
    // A reader does not migrate: it says who does.
    let e = History::open_read(&path).err().unwrap();
    assert!(matches!(e, HistoryError::Older { found: 1, .. }), "{e}");
    let h = History::open(&path, u64::MAX).unwrap();
    assert_eq!(h.version().unwrap(), schema_version());
    let b = h
        .buckets(Tier::Raw, 0, &[0], (1_700_000_000, 1_700_000_001), 60)
        .unwrap();
    assert_eq!(b[0].max[0], 42);
    assert_eq!(h.port_range(i64::MAX).unwrap(), None);
    drop(h);
    assert!(History::open_read(&path).is_ok());
}

#[test]
fn foreign_damaged_and_newer_files_are_refused_and_left_alone() {
    let (dir, path) = temp();
    // Text.
    std::fs::write(&path, "not a database\n").unwrap();
    let e = History::open(&path, u64::MAX).err().unwrap();
    assert!(matches!(e, HistoryError::Foreign { .. }), "{e}");
    assert!(e.to_string().contains("--history-reset"), "{e}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "not a database\n");
    // Another program's database.
    std::fs::remove_file(&path).unwrap();
    Connection::open(&path)
        .unwrap()
        .execute_batch("CREATE TABLE notes (x TEXT); INSERT INTO notes VALUES ('mine');")
        .unwrap();
    let e = History::open(&path, u64::MAX).err().unwrap();
    assert!(e.to_string().contains("1 tables of its own"), "{e}");
    // A newer tcpmon's.
    std::fs::remove_file(&path).unwrap();
    History::open(&path, u64::MAX).unwrap();
    Connection::open(&path)
        .unwrap()
        .execute_batch("PRAGMA user_version = 99")
        .unwrap();
    let e = History::open(&path, u64::MAX).err().unwrap();
    assert!(matches!(e, HistoryError::Newer { found: 99, .. }), "{e}");
    // Damaged: pages overwritten in the middle.
    std::fs::remove_file(&path).unwrap();
    let _ = std::fs::remove_file(dir.path().join("history.db-wal"));
    {
        let mut h = History::open(&path, u64::MAX).unwrap();
        for k in 0..2000 {
            h.record(&sample(1_700_000_000 + 10 * k, k)).unwrap();
        }
    }
    let mut bytes = std::fs::read(&path).unwrap();
    assert!(bytes.len() > 64 << 10);
    for b in &mut bytes[8192..40_960] {
        *b = 0x5a;
    }
    std::fs::write(&path, &bytes).unwrap();
    let e = History::open(&path, u64::MAX).err().unwrap();
    assert!(matches!(e, HistoryError::Corrupt { .. }), "{e}");
    assert_eq!(std::fs::read(&path).unwrap(), bytes, "left as it was");
    // --history-reset moves it aside; a new history starts.
    let aside = History::reset(&path, 1_800_000_000).unwrap().unwrap();
    assert_eq!(std::fs::read(&aside).unwrap(), bytes);
    assert!(History::open(&path, u64::MAX).is_ok());
}

#[test]
fn listeners_keep_first_and_last_seen_and_lists_their_peaks() {
    let (_dir, path) = temp();
    let mut h = History::open(&path, u64::MAX).unwrap();
    let listener = |port: u16, queue| ListenerSeen {
        netns: 0,
        listener: format!("0.0.0.0:{port}"),
        process: "nginx".into(),
        backlog: Some(511),
        accept_queue: Some(queue),
    };
    let peer = |ip: &str, live| TopEntry {
        kind: "peer",
        netns: 0,
        key: ip.into(),
        value: live,
        value2: 1,
        owners: String::new(),
    };
    let t0 = 1_700_000_000;
    for k in 0..10 {
        let mut s = sample(t0 + 10 * k, 1);
        s.listeners.push(listener(80, k as u32));
        if k < 5 {
            // A debug port that came and went.
            s.listeners.push(listener(9999, 0));
        }
        s.tops.push(peer("192.0.2.1", 10 + k));
        s.tops.push(peer("192.0.2.2", 50 - k));
        h.record(&s).unwrap();
    }
    let l = h.listeners((t0, t0 + 1000)).unwrap();
    assert_eq!(l.len(), 2);
    // Last seen to within LISTENER_REFRESH (rewritten when it changes, else every 30 s).
    let debug = l.iter().find(|l| l.listener == "0.0.0.0:9999").unwrap();
    assert_eq!((debug.first_seen, debug.last_seen), (t0, t0 + 30));
    // A writer that stops writes the last sighting exactly.
    h.close().unwrap();
    let l = h.listeners((t0, t0 + 1000)).unwrap();
    let web = l.iter().find(|l| l.listener == "0.0.0.0:80").unwrap();
    assert_eq!(web.last_seen, t0 + 90);
    let web = l.iter().find(|l| l.listener == "0.0.0.0:80").unwrap();
    assert_eq!(web.max_accept_queue, Some(9));
    let peaks = h.top_peaks("peer", 0, (t0, t0 + 1000), 5).unwrap();
    assert_eq!(
        peaks
            .iter()
            .map(|p| (p.key.as_str(), p.max, p.at))
            .collect::<Vec<_>>(),
        vec![("192.0.2.2", 50, t0), ("192.0.2.1", 19, t0 + 90)]
    );
}
