//! The deterministic event timeline and the per-workspace append-only stream built from it.
//!
//! Timeline event `i` of a workspace has a creation time that depends only on the
//! configuration (backlog spread evenly before the epoch, live events at a fixed rate after
//! it). Each request appends every timeline event that has become visible to the workspace's
//! stream vector; "extra" events (late arrivals and `generate`d events) are appended to the
//! same vector, so stream order is append order, not creation order.

use super::SimConfig;

/// Per-workspace gid space: event gid = `GID_BASE + workspace index * GIDS_PER_WORKSPACE + key`.
pub(crate) const GID_BASE: u64 = 1_209_000_000_000_000;
pub(crate) const GIDS_PER_WORKSPACE: u64 = 1_000_000_000_000;
/// Keys below this are timeline indices; keys from here on belong to extra events.
pub(crate) const EXTRA_KEY_BASE: u64 = 500_000_000_000;
/// Extra keys start at a random point of this span in each process, so that extras created
/// by a restarted simulator do not reuse the gids of the previous run's extras.
pub(crate) const EXTRA_KEY_SPAN: u64 = 400_000_000_000;
/// Gids of deliberately malformed records, outside both ranges above.
pub(crate) const BAD_RECORD_KEY_BASE: u64 = 990_000_000_000;

/// One element of a workspace stream. The JSON is rendered from these on demand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Entry {
    /// Timeline index, or an extra key (`>= EXTRA_KEY_BASE`).
    pub(crate) key: u64,
    pub(crate) created_ms: i64,
    /// Index into the event-type catalogue, kept so `event_type` filters need no rendering.
    pub(crate) kind: u16,
}

/// Creation times of timeline events, derived from the configuration.
#[derive(Debug, Clone)]
pub(crate) struct Timeline {
    epoch_ms: i64,
    backlog: u64,
    span_ms: i64,
    rate: f64,
    max_live: Option<u64>,
}

impl Timeline {
    pub(crate) fn new(config: &SimConfig) -> Self {
        Self {
            epoch_ms: config.epoch.timestamp_millis(),
            backlog: config.backlog,
            span_ms: i64::try_from(config.backlog_span.as_millis()).unwrap_or(i64::MAX),
            rate: config.rate,
            max_live: config.max_live,
        }
    }

    /// Creation time of timeline event `index`, or `None` if the timeline has no such event
    /// (live events disabled or capped).
    pub(crate) fn created_ms(&self, index: u64) -> Option<i64> {
        if index < self.backlog {
            // Evenly spread over the span, the last backlog event exactly at the epoch.
            let offset =
                i128::from(self.span_ms) * i128::from(index + 1) / i128::from(self.backlog);
            let offset = i64::try_from(offset).unwrap_or(i64::MAX);
            return Some(self.epoch_ms - self.span_ms + offset);
        }
        let live = index - self.backlog;
        if self.rate <= 0.0 || self.max_live.is_some_and(|max| live >= max) {
            return None;
        }
        // Float precision is ample: indices stay far below 2^53.
        let after_epoch = ((live + 1) as f64 * 1000.0 / self.rate).floor();
        Some(self.epoch_ms.saturating_add(after_epoch as i64))
    }
}

/// Position in a stream expressed so that it survives a simulator restart: the number of
/// timeline events and of extra events that precede it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StreamCursor {
    pub(crate) timeline: u64,
    pub(crate) extras: u64,
}

/// The append-only stream of one workspace.
#[derive(Debug)]
pub(crate) struct WorkspaceLog {
    entries: Vec<Entry>,
    /// Next timeline index to materialise.
    next_index: u64,
    /// Stream positions of extra events, ascending.
    extra_positions: Vec<usize>,
    next_extra_key: u64,
}

impl WorkspaceLog {
    pub(crate) fn new(first_extra_key: u64) -> Self {
        Self {
            entries: Vec::new(),
            next_index: 0,
            extra_positions: Vec::new(),
            next_extra_key: first_extra_key,
        }
    }

    /// Appends every timeline event created at or before `now_ms`.
    pub(crate) fn materialise(
        &mut self,
        timeline: &Timeline,
        now_ms: i64,
        kind_of: impl Fn(u64) -> u16,
    ) {
        while let Some(created_ms) = timeline
            .created_ms(self.next_index)
            .filter(|&ms| ms <= now_ms)
        {
            self.entries.push(Entry {
                key: self.next_index,
                created_ms,
                kind: kind_of(self.next_index),
            });
            self.next_index += 1;
        }
    }

    /// Appends an event that is not part of the timeline (late or generated).
    pub(crate) fn push_extra(&mut self, created_ms: i64, kind_of: impl Fn(u64) -> u16) -> Entry {
        let key = self.next_extra_key;
        self.next_extra_key += 1;
        let entry = Entry {
            key,
            created_ms,
            kind: kind_of(key),
        };
        self.extra_positions.push(self.entries.len());
        self.entries.push(entry);
        entry
    }

    pub(crate) fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Cursor for stream position `position`.
    pub(crate) fn cursor_at(&self, position: usize) -> StreamCursor {
        let extras = self.extra_positions.partition_point(|&p| p < position);
        StreamCursor {
            timeline: (position - extras) as u64,
            extras: extras as u64,
        }
    }

    /// Stream position for a cursor. A cursor issued by this process maps back exactly. One
    /// issued by another process (before a restart) only has a meaningful timeline part, since
    /// that process's extras are gone: resume at the timeline position, but no later than this
    /// process's first extra so none of those is skipped. Re-serving a few timeline events is
    /// acceptable (consumers dedupe by gid); losing events is not.
    pub(crate) fn position_of(&self, cursor: StreamCursor, same_process: bool) -> usize {
        let position = if same_process {
            cursor.timeline.saturating_add(cursor.extras)
        } else {
            let first_extra = self.extra_positions.first().map_or(u64::MAX, |&p| p as u64);
            cursor.timeline.min(first_extra)
        };
        usize::try_from(position).map_or(self.entries.len(), |p| p.min(self.entries.len()))
    }

    /// Collects up to `limit` entries matching `matches`, scanning from `from`. Returns them
    /// and the position just after the last one collected, or the end of the stream when the
    /// page is not full (everything scanned failed the filters, which are fixed for a token).
    pub(crate) fn scan(
        &self,
        from: usize,
        limit: usize,
        mut matches: impl FnMut(&Entry) -> bool,
    ) -> (Vec<Entry>, usize) {
        let mut page = Vec::with_capacity(limit.min(1024));
        for (position, entry) in self.entries.iter().enumerate().skip(from) {
            if matches(entry) {
                page.push(*entry);
                if page.len() == limit {
                    return (page, position + 1);
                }
            }
        }
        (page, self.entries.len())
    }

    /// The last entry before `before` that matches, looking back at most `max_back` entries.
    pub(crate) fn previous_match(
        &self,
        before: usize,
        max_back: usize,
        mut matches: impl FnMut(&Entry) -> bool,
    ) -> Option<Entry> {
        let before = before.min(self.entries.len());
        self.entries[before.saturating_sub(max_back)..before]
            .iter()
            .rev()
            .find(|entry| matches(entry))
            .copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn timeline(backlog: u64, rate: f64, max_live: Option<u64>) -> Timeline {
        let config = SimConfig {
            backlog,
            backlog_span: Duration::from_secs(100),
            rate,
            max_live,
            epoch: chrono::DateTime::from_timestamp_millis(1_000_000).unwrap(),
            ..SimConfig::default()
        };
        Timeline::new(&config)
    }

    #[test]
    fn backlog_ends_at_epoch_and_live_events_follow_the_rate() {
        let t = timeline(4, 2.0, Some(3));
        let times: Vec<_> = (0..8).map(|i| t.created_ms(i)).collect();
        assert_eq!(
            times,
            [
                Some(925_000),
                Some(950_000),
                Some(975_000),
                Some(1_000_000),
                Some(1_000_500),
                Some(1_001_000),
                Some(1_001_500),
                None
            ]
        );
        assert_eq!(timeline(0, 0.0, None).created_ms(0), None);
    }

    #[test]
    fn cursors_round_trip_and_survive_a_restart() {
        let t = timeline(10, 0.0, None);
        let mut log = WorkspaceLog::new(EXTRA_KEY_BASE);
        log.materialise(&t, 950_000, |_| 0);
        assert_eq!(log.entries().len(), 5);
        log.push_extra(1, |_| 0);
        log.materialise(&t, 1_000_000, |_| 0);
        assert_eq!(log.entries().len(), 11);
        assert_eq!(log.entries()[5].key, EXTRA_KEY_BASE);

        let cursor = log.cursor_at(8);
        assert_eq!(
            cursor,
            StreamCursor {
                timeline: 7,
                extras: 1
            }
        );
        assert_eq!(log.position_of(cursor, true), 8);

        // A fresh process without extras resumes at the same timeline event.
        let mut restarted = WorkspaceLog::new(EXTRA_KEY_BASE + 7);
        restarted.materialise(&t, 1_000_000, |_| 0);
        assert_eq!(restarted.position_of(cursor, false), 7);
        assert_eq!(restarted.entries()[7].key, 7);
        // One whose first extra came earlier resumes there so the extra is not skipped.
        let mut with_extra = WorkspaceLog::new(EXTRA_KEY_BASE + 9);
        with_extra.materialise(&t, 925_000, |_| 0);
        with_extra.push_extra(1, |_| 0);
        with_extra.materialise(&t, 1_000_000, |_| 0);
        assert_eq!(with_extra.position_of(cursor, false), 2);
    }

    #[test]
    fn scan_stops_after_the_last_collected_entry() {
        let t = timeline(10, 0.0, None);
        let mut log = WorkspaceLog::new(EXTRA_KEY_BASE);
        log.materialise(&t, i64::MAX, |_| 0);
        let (page, end) = log.scan(0, 2, |e| e.key % 3 == 0);
        assert_eq!(page.iter().map(|e| e.key).collect::<Vec<_>>(), [0, 3]);
        assert_eq!(end, 4);
        let (page, end) = log.scan(end, 5, |e| e.key % 3 == 0);
        assert_eq!(page.iter().map(|e| e.key).collect::<Vec<_>>(), [6, 9]);
        assert_eq!(end, 10);
        assert_eq!(
            log.previous_match(10, 100, |e| e.key % 4 == 0)
                .map(|e| e.key),
            Some(8)
        );
        assert_eq!(log.previous_match(10, 1, |e| e.key % 4 == 0), None);
    }
}
