use super::*;

fn event(id: &str, time: i64) -> NewEvent {
    NewEvent {
        event_id: id.to_string(),
        event_time: time,
        payload: format!("{{\"id\":\"{id}\"}}"),
    }
}

fn cursor(pos: &str, last: i64) -> SourceCursor {
    SourceCursor {
        position: Some(pos.to_string()),
        filters_hash: "h".into(),
        stream_start: Some(0),
        last_event_time: Some(last),
        last_event_id: None,
    }
}

/// Commits events named and timed 1, 2, … as one page of `source`.
fn commit_events(db: &mut StateDb, source: &str, ids: std::ops::RangeInclusive<i64>) {
    let last = *ids.end();
    let events: Vec<_> = ids.map(|i| event(&i.to_string(), i)).collect();
    db.commit_page(source, "asana", &events, &[], &cursor("p", last))
        .unwrap();
}

fn open_tmp() -> (tempfile::TempDir, StateDb) {
    let dir = tempfile::tempdir().unwrap();
    let db = StateDb::open(&dir.path().join("sub/state.db")).unwrap();
    (dir, db)
}

#[test]
fn state_file_is_private_and_versioned() {
    let (dir, db) = open_tmp();
    let path = dir.path().join("sub/state.db");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let version: i64 = db
        .conn
        .query_row("SELECT MAX(version) FROM schema_migrations", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION);
    drop(db);
    // Reopening applies nothing and keeps the data.
    StateDb::open(&path).unwrap();
}

#[test]
fn newer_schema_is_refused() {
    let (dir, db) = open_tmp();
    db.conn
        .execute(
            "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?1, 'future.sql', 0)",
            [SCHEMA_VERSION + 1],
        )
        .unwrap();
    drop(db);
    let err = StateDb::open(&dir.path().join("sub/state.db")).unwrap_err();
    assert!(matches!(err, StateError::SchemaTooNew { .. }), "{err}");
    assert!(err.to_string().contains("newer than this binary"), "{err}");
}

#[test]
fn page_commit_dedups_and_moves_cursor_atomically() {
    let (_dir, mut db) = open_tmp();
    let out = db
        .commit_page(
            "a",
            "asana",
            &[event("1", 10), event("2", 20)],
            &[],
            &cursor("p1", 20),
        )
        .unwrap();
    assert_eq!((out.stored, out.duplicates), (2, 0));
    let out = db
        .commit_page(
            "a",
            "asana",
            &[event("2", 20), event("3", 30), event("3", 30)],
            &[Quarantined {
                reason: "record 1: missing created_at".into(),
                raw: "{}".into(),
            }],
            &cursor("p2", 30),
        )
        .unwrap();
    assert_eq!((out.stored, out.duplicates, out.quarantined), (1, 2, 1));
    // The same id from another source is a different event.
    let out = db
        .commit_page("b", "asana", &[event("1", 10)], &[], &cursor("q", 10))
        .unwrap();
    assert_eq!(out.stored, 1);
    assert_eq!(
        db.cursor("a").unwrap().unwrap().position.as_deref(),
        Some("p2")
    );
    let rows = db.read_outbox(0, 100).unwrap();
    let ids: Vec<_> = rows
        .iter()
        .map(|r| (r.source_id.as_str(), r.event_id.as_str()))
        .collect();
    assert_eq!(ids, [("a", "1"), ("a", "2"), ("a", "3"), ("b", "1")]);
    assert_eq!(db.summary().unwrap().quarantined, 1);
}

#[test]
fn failed_commit_moves_nothing() {
    let (_dir, mut db) = open_tmp();
    db.commit_page("a", "asana", &[event("1", 10)], &[], &cursor("p1", 10))
        .unwrap();
    // Make the commit fail half way through the page, after event 2 went
    // into the dedup window.
    db.conn
        .execute_batch(
            "CREATE TRIGGER fail_on_boom BEFORE INSERT ON seen WHEN NEW.event_id = 'boom'
             BEGIN SELECT RAISE(ABORT, 'injected'); END;",
        )
        .unwrap();
    let err = db.commit_page(
        "a",
        "asana",
        &[event("2", 20), event("boom", 30)],
        &[],
        &cursor("p2", 30),
    );
    let err = err.unwrap_err().to_string();
    assert!(err.contains("injected"), "{err}");
    assert_eq!(
        db.cursor("a").unwrap().unwrap().position.as_deref(),
        Some("p1")
    );
    assert_eq!(db.read_outbox(0, 10).unwrap().len(), 1);
    // Event 2 did not enter the dedup window either, so a retry stores it.
    db.conn.execute_batch("DROP TRIGGER fail_on_boom").unwrap();
    let out = db
        .commit_page("a", "asana", &[event("2", 20)], &[], &cursor("p2", 20))
        .unwrap();
    assert_eq!(out.stored, 1);
}

#[test]
fn progress_is_monotonic_and_trim_waits_for_every_active_sink() {
    let (_dir, mut db) = open_tmp();
    // One page per event, so every event is a row of its own.
    for i in 1..=5 {
        db.commit_page(
            "a",
            "asana",
            &[event(&i.to_string(), i)],
            &[],
            &cursor("p", i),
        )
        .unwrap();
    }
    let missed = db
        .register_sinks(&[("file".into(), "file"), ("out".into(), "stdout")])
        .unwrap();
    assert!(missed.is_empty());
    assert_eq!(db.acked_seq("file").unwrap(), 0);
    db.ack("file", 4).unwrap();
    db.ack("file", 2).unwrap();
    assert_eq!(db.acked_seq("file").unwrap(), 4);
    assert_eq!(
        db.trim_outbox().unwrap(),
        0,
        "stdout acknowledged nothing yet"
    );
    db.ack("out", 3).unwrap();
    assert_eq!(db.trim_outbox().unwrap(), 3);
    assert_eq!(db.outbox_depth().unwrap(), 2);
    // Removing "out" from the configuration stops it holding rows back, and
    // a sink added later starts at the oldest row still present.
    db.register_sinks(&[("file".into(), "file"), ("late".into(), "file")])
        .unwrap();
    assert_eq!(db.acked_seq("late").unwrap(), 3);
    db.ack("late", 5).unwrap();
    assert_eq!(db.trim_outbox().unwrap(), 1);
    let rows = db.read_outbox(db.acked_seq("file").unwrap(), 10).unwrap();
    assert_eq!(rows.iter().map(|r| r.seq).collect::<Vec<_>>(), [5]);
}

#[test]
fn new_sink_on_an_empty_but_used_outbox_starts_after_the_last_seq() {
    let (_dir, mut db) = open_tmp();
    db.register_sinks(&[("file".into(), "file")]).unwrap();
    commit_events(&mut db, "a", 1..=2);
    db.ack("file", 2).unwrap();
    db.trim_outbox().unwrap();
    db.register_sinks(&[("file".into(), "file"), ("new".into(), "file")])
        .unwrap();
    assert_eq!(db.acked_seq("new").unwrap(), 2);
}

#[test]
fn seen_window_is_pruned_by_event_time_and_age() {
    let (_dir, mut db) = open_tmp();
    let hour = 3_600_000;
    db.commit_page(
        "a",
        "asana",
        &[event("old", 0), event("new", 10 * hour)],
        &[],
        &cursor("p", 10 * hour),
    )
    .unwrap();
    // Just inserted: event time says prune, insert time says keep.
    assert_eq!(db.prune_seen("a", Duration::from_secs(3600)).unwrap(), 0);
    db.conn.execute("UPDATE seen SET seen_at = 0", []).unwrap();
    assert_eq!(db.prune_seen("a", Duration::from_secs(3600)).unwrap(), 1);
    let out = db
        .commit_page(
            "a",
            "asana",
            &[event("new", 10 * hour)],
            &[],
            &cursor("p", 10 * hour),
        )
        .unwrap();
    assert_eq!(out.duplicates, 1, "the recent id is still in the window");
}

#[test]
fn lock_is_exclusive() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let held = StateLock::acquire(&path).unwrap();
    let err = StateLock::acquire(&path).unwrap_err();
    assert!(matches!(err, StateError::Locked { .. }), "{err}");
    drop(held);
    StateLock::acquire(&path).unwrap();
}

#[test]
fn a_sink_configured_again_after_a_trim_reports_what_it_missed() {
    let (_dir, mut db) = open_tmp();
    db.register_sinks(&[("a".into(), "file"), ("b".into(), "file")])
        .unwrap();
    let events: Vec<_> = (1..=4).map(|i| event(&i.to_string(), i)).collect();
    db.commit_page("s", "asana", &events, &[], &cursor("p", 4))
        .unwrap();
    db.ack("b", 1).unwrap();
    // "b" leaves the configuration; "a" delivers and trims everything.
    db.register_sinks(&[("a".into(), "file")]).unwrap();
    db.ack("a", 4).unwrap();
    assert_eq!(db.trim_outbox().unwrap(), 4);
    let missed = db
        .register_sinks(&[("a".into(), "file"), ("b".into(), "file")])
        .unwrap();
    assert_eq!(missed, [("b".to_string(), 3)]);
}

#[test]
fn quarantine_keeps_a_record_once_and_stays_bounded() {
    let (_dir, mut db) = open_tmp();
    let bad = |raw: &str| Quarantined {
        reason: "missing created_at".into(),
        raw: raw.into(),
    };
    let out = db
        .commit_page(
            "s",
            "asana",
            &[],
            &[bad("{\"gid\":\"1\"}"), bad("{\"gid\":\"2\"}")],
            &cursor("p", 0),
        )
        .unwrap();
    assert_eq!(out.quarantined, 2);
    // The same page read again after a restart.
    let out = db
        .commit_page(
            "s",
            "asana",
            &[],
            &[bad("{\"gid\":\"1\"}")],
            &cursor("p", 0),
        )
        .unwrap();
    assert_eq!(out.quarantined, 0);
    assert_eq!(db.prune_quarantine(1).unwrap(), 1);
    assert_eq!(db.summary().unwrap().quarantined, 1);
}

#[test]
fn read_only_open_never_creates_or_migrates() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let err = StateDb::open_read_only(&path).unwrap_err();
    assert!(err.to_string().contains("no state file"), "{err}");
    assert!(!path.exists());
    // An empty SQLite file (schema version 0) is refused, not upgraded.
    Connection::open(&path)
        .unwrap()
        .execute_batch("CREATE TABLE x (y)")
        .unwrap();
    let err = StateDb::open_read_only(&path).unwrap_err();
    assert!(
        matches!(err, StateError::SchemaTooOld { found: 0, .. }),
        "{err}"
    );
    drop(StateDb::open(&path).unwrap());
    let db = StateDb::open_read_only(&path).unwrap();
    assert_eq!(db.summary().unwrap().schema_version, SCHEMA_VERSION);
}

#[test]
fn dead_letters_move_atomically_and_replay_settles() {
    let (_dir, mut db) = open_tmp();
    db.register_sinks(&[("k".into(), "kafka")]).unwrap();
    let events: Vec<_> = (1..=3).map(|i| event(&i.to_string(), i)).collect();
    db.commit_page("s", "asana", &events, &[], &cursor("p", 3))
        .unwrap();
    let batch = db.read_outbox(0, 10).unwrap();
    db.ack_with_dead_letters("k", 3, &[(batch[1].clone(), "too large".into())])
        .unwrap();
    assert_eq!(db.acked_seq("k").unwrap(), 3);
    assert_eq!(
        db.trim_outbox().unwrap(),
        3,
        "the dead letter left the outbox with the rest"
    );
    let letters = db.dead_letters(None).unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(
        (letters[0].event_id.as_str(), letters[0].reason.as_str()),
        ("2", "too large")
    );
    assert!(
        db.replay_batch("k", 10).unwrap().is_empty(),
        "not marked yet"
    );

    assert_eq!(db.mark_replay(Some("other"), &[]).unwrap(), 0);
    assert_eq!(db.mark_replay(Some("k"), &[]).unwrap(), 1);
    let replay = db.replay_batch("k", 10).unwrap();
    assert_eq!(replay[0].payload, batch[1].payload);
    // Refused again: it stays, unmarked, with the new reason.
    db.settle_replay(&[], &[(replay[0].seq, "still too large".into())])
        .unwrap();
    assert!(db.replay_batch("k", 10).unwrap().is_empty());
    assert_eq!(
        db.dead_letters(Some("k")).unwrap()[0].reason,
        "still too large"
    );
    db.mark_replay(None, &[replay[0].seq]).unwrap();
    db.settle_replay(&[replay[0].seq], &[]).unwrap();
    assert!(db.dead_letters(None).unwrap().is_empty());
}

#[test]
fn purge_takes_ids_or_a_sink() {
    let (_dir, mut db) = open_tmp();
    db.register_sinks(&[("a".into(), "kafka"), ("b".into(), "kafka")])
        .unwrap();
    let events: Vec<_> = (1..=3).map(|i| event(&i.to_string(), i)).collect();
    db.commit_page("s", "asana", &events, &[], &cursor("p", 3))
        .unwrap();
    let batch = db.read_outbox(0, 10).unwrap();
    db.ack_with_dead_letters(
        "a",
        3,
        &[
            (batch[0].clone(), "x".into()),
            (batch[1].clone(), "y".into()),
        ],
    )
    .unwrap();
    db.ack_with_dead_letters("b", 3, &[(batch[2].clone(), "z".into())])
        .unwrap();
    let first = db.dead_letters(Some("a")).unwrap()[0].id;
    assert_eq!(
        db.purge_dead_letters(Some("b"), &[first]).unwrap(),
        0,
        "id of another sink"
    );
    assert_eq!(db.purge_dead_letters(None, &[first]).unwrap(), 1);
    assert_eq!(db.purge_dead_letters(Some("b"), &[]).unwrap(), 1);
    assert_eq!(db.dead_letters(None).unwrap().len(), 1);
}

#[test]
fn backlog_per_sink_matches_a_full_count_after_trims() {
    let (_dir, mut db) = open_tmp();
    db.register_sinks(&[("a".into(), "file"), ("b".into(), "file")])
        .unwrap();
    let mut n = 0;
    for page in 0..4 {
        let events: Vec<NewEvent> = (0..25)
            .map(|i| {
                n += 1;
                let mut e = event(&format!("e{n}"), n);
                // Payloads of different sizes, some multi-byte.
                e.payload = format!("{{\"id\":\"e{n}\",\"pad\":\"{}\"}}", "é".repeat(i * page));
                e
            })
            .collect();
        db.commit_page("s", "asana", &events, &[], &cursor(&format!("p{page}"), n))
            .unwrap();
    }
    db.ack("a", 30).unwrap();
    db.ack("b", 70).unwrap();
    db.trim_outbox().unwrap();
    // Counted event by event, from what the sink would read.
    let exact = |db: &StateDb, acked: i64| -> (i64, i64) {
        let pending = db.read_outbox(acked, usize::MAX).unwrap();
        let bytes = pending.iter().map(|r| r.payload.len() as i64).sum();
        (pending.len() as i64, bytes)
    };
    let observed = db.observe().unwrap();
    for (sink, acked) in [("a", 30), ("b", 70)] {
        let backlog = observed.sinks.iter().find(|s| s.sink_id == sink).unwrap();
        assert_eq!((backlog.events, backlog.bytes), exact(&db, acked), "{sink}");
    }
    // Caught up: nothing pending.
    db.ack("a", 100).unwrap();
    db.ack("b", 100).unwrap();
    db.trim_outbox().unwrap();
    let observed = db.observe().unwrap();
    assert!(observed.sinks.iter().all(|s| s.events == 0 && s.bytes == 0));
    assert_eq!(observed.outbox_events, 0);
}

#[test]
fn a_reset_forgets_what_the_source_read_through() {
    let (_dir, mut db) = open_tmp();
    db.commit_page("s", "asana", &[event("e1", 5)], &[], &cursor("p", 5))
        .unwrap();
    let mut record = ComponentRecord::new("source", "s", "asana");
    record.caught_up_at = Some(1_000);
    record.last_success_at = Some(1_000);
    db.record_health(&[record]).unwrap();
    assert!(db.delete_cursor("s").unwrap());
    let stored = db.component_health("source", "s").unwrap().unwrap();
    assert_eq!(stored.caught_up_at, None);
    assert_eq!(stored.last_success_at, Some(1_000));
}

fn slice(n: u32, start: i64, end: i64) -> SliceCursor {
    SliceCursor {
        slice: n,
        end_ms: end,
        cursor: SourceCursor {
            position: None,
            filters_hash: "h".into(),
            stream_start: Some(start),
            last_event_time: None,
            last_event_id: None,
        },
    }
}

#[test]
fn a_backfill_plan_and_its_slices_commit_atomically_and_leave_nothing_behind() {
    let (_dir, mut db) = open_tmp();
    let tail = SourceCursor {
        position: None,
        stream_start: Some(1_000),
        ..cursor("ignored", 900)
    };
    db.store_backfill(
        "s",
        "asana",
        &tail,
        &[slice(0, 0, 500), slice(1, 500, 1_000)],
    )
    .unwrap();
    assert_eq!(db.cursor("s").unwrap().unwrap(), tail);
    assert_eq!(db.slices("s").unwrap().len(), 2);
    assert_eq!(
        db.backfill("s").unwrap(),
        Some(BackfillProgress {
            pending: 2,
            read_through_ms: 0
        })
    );

    // A page of slice 0: its events and its cursor, together.
    let mut first = slice(0, 0, 500);
    first.cursor.position = Some("o1".into());
    first.cursor.last_event_time = Some(200);
    let outcome = db
        .commit_slice_page("s", &[event("a", 100), event("b", 200)], &[], &first, false)
        .unwrap();
    assert_eq!(outcome.stored, 2);
    assert_eq!(db.slices("s").unwrap()[0], first);
    // Read through: the slowest slice (slice 1 has read nothing yet).
    assert_eq!(db.backfill("s").unwrap().unwrap().read_through_ms, 200);

    // A commit that fails (here: the quarantine table is missing) moves
    // nothing.
    db.conn
        .execute_batch("ALTER TABLE quarantine RENAME TO quarantine_gone")
        .unwrap();
    let mut moved = first.clone();
    moved.cursor.position = Some("o2".into());
    let bad = Quarantined {
        reason: "r".into(),
        raw: "x".into(),
    };
    assert!(db
        .commit_slice_page("s", &[event("c", 300)], &[bad], &moved, false)
        .is_err());
    assert_eq!(db.slices("s").unwrap()[0], first);
    assert_eq!(db.outbox_depth().unwrap(), 2);
    db.conn
        .execute_batch("ALTER TABLE quarantine_gone RENAME TO quarantine")
        .unwrap();

    // The last page deletes the slice; a repeat of an event is dropped.
    let outcome = db
        .commit_slice_page("s", &[event("b", 200), event("c", 300)], &[], &first, true)
        .unwrap();
    assert_eq!((outcome.stored, outcome.duplicates), (1, 1));
    let left = db.slices("s").unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].slice, 1);
    assert_eq!(
        db.backfills().unwrap(),
        vec![(
            "s".to_string(),
            BackfillProgress {
                pending: 1,
                read_through_ms: 500
            }
        )]
    );
    db.commit_slice_page("s", &[], &[], &slice(1, 500, 1_000), true)
        .unwrap();
    assert!(db.slices("s").unwrap().is_empty());
    assert_eq!(db.backfill("s").unwrap(), None);
    assert!(db.backfills().unwrap().is_empty());
}

#[test]
fn a_reset_drops_the_backfill_with_the_cursor() {
    let (_dir, mut db) = open_tmp();
    db.store_backfill("s", "asana", &cursor("p", 1), &[slice(0, 0, 10)])
        .unwrap();
    db.store_backfill("other", "asana", &cursor("p", 1), &[slice(0, 0, 10)])
        .unwrap();
    assert!(db.delete_cursor("s").unwrap());
    assert!(db.slices("s").unwrap().is_empty());
    assert_eq!(db.slices("other").unwrap().len(), 1);
    // `state reset --to`: the cursor moves, the backfill and what was read
    // through go, together.
    let mut health = ComponentRecord::new("source", "other", "asana");
    health.caught_up_at = Some(5);
    db.record_health(&[health]).unwrap();
    let to = SourceCursor {
        position: None,
        stream_start: Some(1),
        last_event_time: None,
        ..cursor("p", 1)
    };
    db.reset_cursor("other", "asana", &to).unwrap();
    assert_eq!(db.cursor("other").unwrap(), Some(to));
    assert!(db.slices("other").unwrap().is_empty());
    let health = db.component_health("source", "other").unwrap().unwrap();
    assert_eq!(health.caught_up_at, None);
}

#[test]
fn outbox_depth_reads_the_ends_of_the_outbox_not_every_row() {
    let (_dir, mut db) = open_tmp();
    assert_eq!(db.outbox_depth().unwrap(), 0);
    let events: Vec<_> = (1..=2_000).map(|i| event(&i.to_string(), i)).collect();
    db.commit_page("a", "asana", &events, &[], &cursor("p", 2_000))
        .unwrap();
    db.register_sinks(&[("file".into(), "file")]).unwrap();
    // Rows go whole: acknowledging 4 rows and some of the 5th trims 4; the
    // depth counts what the sink has not acknowledged.
    let row = super::outbox::ROW_EVENTS as i64;
    db.ack("file", 4 * row + 10).unwrap();
    assert_eq!(db.trim_outbox().unwrap(), 4 * row as u64);
    assert_eq!(db.outbox_depth().unwrap(), 2_000 - 4 * row - 10);
    // The statement the call used, with its counter of virtual machine
    // steps: a handful for two b-tree ends, thousands for a scan.
    let mut stmt = db.conn.prepare_cached(outbox::DEPTH).unwrap();
    stmt.reset_status(rusqlite::StatementStatus::VmStep);
    let depth: i64 = stmt.query_row([], |row| row.get(0)).unwrap();
    assert_eq!(depth, 2_000 - 4 * row - 10);
    let steps = stmt.get_status(rusqlite::StatementStatus::VmStep);
    assert!(
        steps < 100,
        "{steps} steps: the depth query scans the outbox"
    );
}

#[test]
fn events_are_stored_as_rows_of_consecutive_seqs_and_read_from_any_seq() {
    let (_dir, mut db) = open_tmp();
    db.register_sinks(&[("file".into(), "file")]).unwrap();
    let row = outbox::ROW_EVENTS as i64;
    // A page of 2½ rows' events, then one event too big to share a row.
    let events: Vec<_> = (1..=2 * row + row / 2)
        .map(|i| event(&format!("e{i}"), i))
        .collect();
    db.commit_page("a", "asana", &events, &[], &cursor("p1", 1))
        .unwrap();
    let mut big = event("big", 1);
    big.payload = format!("{{\"pad\":\"{}\"}}", "x".repeat(outbox::ROW_BYTES));
    db.commit_page(
        "b",
        "asana",
        &[event("b1", 1), big, event("b2", 1)],
        &[],
        &cursor("p", 1),
    )
    .unwrap();
    let rows: Vec<(i64, i64, String)> = db
        .conn
        .prepare("SELECT first_seq, last_seq, source_id FROM outbox ORDER BY last_seq")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let n = 2 * row + row / 2;
    let a = |first, last| (first, last, "a".to_string());
    let b = |first, last| (first, last, "b".to_string());
    assert_eq!(
        rows,
        [
            a(1, row),
            a(row + 1, 2 * row),
            a(2 * row + 1, n),
            b(n + 1, n + 1),
            b(n + 2, n + 2),
            b(n + 3, n + 3)
        ],
        "rows end at the event bound, the byte bound and the page"
    );
    // Every event reads back with its own seq, from any seq on, across rows.
    let all = db.read_outbox(0, usize::MAX).unwrap();
    assert_eq!(all.len() as i64, n + 3);
    for (i, record) in all.iter().enumerate() {
        assert_eq!(record.seq, i as i64 + 1);
    }
    assert_eq!(all[0].event_id, "e1");
    assert_eq!(all[n as usize + 1].event_id, "big");
    assert_eq!(all[n as usize + 2].payload, "{\"id\":\"b2\"}");
    let middle = db.read_outbox(row - 2, 5).unwrap();
    let ids: Vec<_> = middle.iter().map(|r| r.event_id.as_str()).collect();
    let expected: Vec<String> = (row - 1..=row + 3).map(|i| format!("e{i}")).collect();
    assert_eq!(ids, expected);
    assert_eq!(middle[0].seq, row - 1);
    assert!(db.read_outbox(n + 3, 10).unwrap().is_empty());
    assert!(db.read_outbox(0, 0).unwrap().is_empty());

    // A row stays until all of it is acknowledged; the sink reads on from
    // inside it, and a sink added now starts at the row's first event.
    db.ack("file", row + 3).unwrap();
    assert_eq!(db.trim_outbox().unwrap(), row as u64);
    assert_eq!(db.outbox_depth().unwrap(), n - row, "not yet acknowledged");
    assert_eq!(db.summary().unwrap().outbox_oldest_seq, Some(row + 1));
    assert_eq!(db.read_outbox(row + 3, 1).unwrap()[0].seq, row + 4);
    db.register_sinks(&[("file".into(), "file"), ("late".into(), "file")])
        .unwrap();
    assert_eq!(db.acked_seq("late").unwrap(), row);
}

#[test]
fn an_outbox_row_that_does_not_decode_is_an_error_naming_it() {
    let (_dir, mut db) = open_tmp();
    commit_events(&mut db, "a", 1..=2);
    // A row that claims more events than it holds.
    db.conn
        .execute("UPDATE outbox SET first_seq = 0 WHERE last_seq = 2", [])
        .unwrap();
    let err = db.read_outbox(0, 10).unwrap_err().to_string();
    assert_eq!(
        err,
        "outbox row ending at seq 2 is unreadable: its seqs 0..=2 name 3 events, it holds 2"
    );
    db.conn
        .execute(
            "UPDATE outbox SET first_seq = 1, events = CAST('1 99\n1{}' AS BLOB) WHERE last_seq = 2",
            [],
        )
        .unwrap();
    let err = db.read_outbox(0, 10).unwrap_err().to_string();
    assert!(
        err.starts_with("outbox row ending at seq 2 is unreadable: an entry needs 99 bytes"),
        "{err}"
    );
    // A row holding more events than its seqs: the surplus is never handed
    // out under the next row's seqs, not even when the limit is reached
    // inside it.
    db.conn
        .execute(
            "UPDATE outbox SET first_seq = 2, events = CAST('1 2\n1{}1 2\n2{}' AS BLOB) WHERE last_seq = 2",
            [],
        )
        .unwrap();
    let err = db.read_outbox(1, 2).unwrap_err().to_string();
    assert_eq!(
        err,
        "outbox row ending at seq 2 is unreadable: it holds more events than its seqs 2..=2 name"
    );
    // A sink stopped inside a row that holds fewer events than its seqs:
    // the backlog says so instead of counting too little.
    db.register_sinks(&[("file".into(), "file")]).unwrap();
    db.conn
        .execute(
            "UPDATE outbox SET first_seq = 0, events = CAST('1 2\n1{}' AS BLOB) WHERE last_seq = 2",
            [],
        )
        .unwrap();
    db.ack("file", 1).unwrap();
    let err = db.observe().unwrap_err().to_string();
    assert_eq!(
        err,
        "outbox row ending at seq 2 is unreadable: its seqs 0..=2 name 3 events, it holds 1"
    );
}

/// A state file as version 5 left it, at `state.db` in the directory.
fn version_5_file() -> (tempfile::TempDir, Connection) {
    let dir = tempfile::tempdir().unwrap();
    let mut conn = Connection::open(dir.path().join("state.db")).unwrap();
    migrate::migrate_to(&mut conn, 5).unwrap();
    (dir, conn)
}

#[test]
fn a_version_5_outbox_migrates_event_by_event_and_keeps_its_seqs() {
    let (dir, conn) = version_5_file();
    let path = dir.path().join("state.db");
    // As version 5 stored them: one row per event, the first two trimmed.
    let mut cum = 0;
    for seq in 1..=5 {
        let payload = format!("{{\"id\":\"é{seq}\"}}");
        cum += payload.len() as i64;
        conn.execute(
            "INSERT INTO outbox (source_id, event_id, event_time, enqueued_at, payload, cum_bytes)
             VALUES ('s', ?1, ?2, 7, ?3, ?4)",
            params![format!("é{seq}"), seq, payload, cum],
        )
        .unwrap();
    }
    conn.execute_batch(
        "DELETE FROM outbox WHERE seq <= 2;
         INSERT INTO sink_progress (sink_id, kind, acked_seq, updated_at) VALUES ('f', 'file', 3, 0);",
    )
    .unwrap();
    drop(conn);

    let mut db = StateDb::open(&path).unwrap();
    let records = db.read_outbox(0, 10).unwrap();
    let got: Vec<_> = records
        .iter()
        .map(|r| {
            (
                r.seq,
                r.source_id.as_str(),
                r.event_id.as_str(),
                r.payload.as_str(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (3, "s", "é3", "{\"id\":\"é3\"}"),
            (4, "s", "é4", "{\"id\":\"é4\"}"),
            (5, "s", "é5", "{\"id\":\"é5\"}"),
        ]
    );
    let observed = db.observe().unwrap();
    let sink = &observed.sinks[0];
    assert_eq!(
        (sink.events, sink.bytes),
        (2, 2 * "{\"id\":\"é4\"}".len() as i64)
    );
    // Seqs go on after the highest one, also once the outbox is empty.
    db.ack("f", 5).unwrap();
    assert_eq!(db.trim_outbox().unwrap(), 3);
    db.commit_page("s", "asana", &[event("6", 6)], &[], &cursor("p", 6))
        .unwrap();
    assert_eq!(db.read_outbox(5, 10).unwrap()[0].seq, 6);
}

#[test]
fn a_version_5_file_with_an_emptied_outbox_keeps_its_last_seq() {
    let (dir, conn) = version_5_file();
    let path = dir.path().join("state.db");
    conn.execute_batch(
        "INSERT INTO outbox (source_id, event_id, event_time, enqueued_at, payload, cum_bytes)
         VALUES ('s', 'e1', 1, 1, '{}', 2), ('s', 'e2', 1, 1, '{}', 4);
         DELETE FROM outbox;",
    )
    .unwrap();
    drop(conn);
    let mut db = StateDb::open(&path).unwrap();
    assert_eq!(db.outbox_depth().unwrap(), 0);
    db.register_sinks(&[("new".into(), "file")]).unwrap();
    assert_eq!(db.acked_seq("new").unwrap(), 2);
    db.commit_page("s", "asana", &[event("e3", 3)], &[], &cursor("p", 3))
        .unwrap();
    assert_eq!(db.read_outbox(0, 10).unwrap()[0].seq, 3);
}
