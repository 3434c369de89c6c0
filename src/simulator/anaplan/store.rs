//! The event store: timeline events (a pure function of the configuration) and inserted
//! events, kept in API order, `(eventDate, id)` ascending.
//!
//! Timeline event `i` happens at a time fixed by the configuration (backlog spread evenly
//! before the epoch, live events at a fixed rate after it) and is stored `delay_i` later
//! (`createdDate`). The store holds every event that has happened and is within retention; a
//! query shows only those already stored (`createdDate <= now`). Inserted events (drift,
//! `insert_events`) get keys above every timeline index, hence larger ids: like a Snowflake id
//! assigned at storage, a late event has a larger id than its neighbours in time.

/// Keys from here on belong to inserted events; below are timeline indices.
pub(crate) const EXTRA_KEY_BASE: u64 = 1 << 33;
/// Inserted keys start at a random point of this span in each process, so a restarted
/// simulator does not reuse the ids of the previous run's inserted events.
pub(crate) const EXTRA_KEY_SPAN: u64 = 1 << 32;
/// Ids are `id_base + ID_STRIDE * key + jitter`, `jitter < ID_STRIDE`.
pub(crate) const ID_STRIDE: u64 = 4;

/// One stored event; the JSON is rendered from it on demand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) key: u64,
    pub(crate) id: u64,
    pub(crate) event_ms: i64,
    pub(crate) created_ms: i64,
    /// Index of the event code (see `events::code`).
    pub(crate) code: u16,
}

impl Entry {
    fn order(&self) -> (i64, u64) {
        (self.event_ms, self.id)
    }
}

/// `eventDate`s of timeline events, derived from the configuration.
#[derive(Debug, Clone)]
pub(crate) struct Timeline {
    pub(crate) epoch_ms: i64,
    pub(crate) backlog: u64,
    pub(crate) span_ms: i64,
    pub(crate) rate: f64,
    pub(crate) max_live: Option<u64>,
}

impl Timeline {
    /// `eventDate` of timeline event `index`, or `None` if there is no such event.
    pub(crate) fn event_ms(&self, index: u64) -> Option<i64> {
        if index < self.backlog {
            let offset =
                i128::from(self.span_ms) * i128::from(index + 1) / i128::from(self.backlog);
            let offset = i64::try_from(offset).unwrap_or(i64::MAX);
            return Some(self.epoch_ms - self.span_ms + offset);
        }
        let live = index - self.backlog;
        if self.rate <= 0.0 || self.max_live.is_some_and(|max| live >= max) {
            return None;
        }
        let after_epoch = ((live + 1) as f64 * 1000.0 / self.rate).floor();
        Some(self.epoch_ms.saturating_add(after_epoch as i64))
    }

    /// The first index at or after `from` whose event happens at or after `ms` (or the index
    /// where the timeline ends). Timeline times increase with the index.
    fn first_at_or_after(&self, from: u64, ms: i64) -> u64 {
        let before = |i: u64| self.event_ms(i).is_some_and(|t| t < ms);
        if !before(from) {
            return from;
        }
        // Exponential search for an upper bound, then binary search.
        let mut step = 1u64;
        let mut high = from.saturating_add(step);
        while before(high) {
            step = step.saturating_mul(2);
            high = from.saturating_add(step);
        }
        let mut low = from; // before(low) holds
        while high - low > 1 {
            let mid = low + (high - low) / 2;
            if before(mid) {
                low = mid;
            } else {
                high = mid;
            }
        }
        high
    }
}

/// What a query selects.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Selection<'a> {
    /// Inclusive bounds on `eventDate`.
    pub(crate) from_ms: i64,
    pub(crate) to_ms: i64,
    /// `eventTypeId` prefix, `None` for every code.
    pub(crate) prefix: Option<&'a str>,
}

/// The stored events of the tenant.
#[derive(Debug)]
pub(crate) struct EventStore {
    /// Sorted by `(event_ms, id)`.
    entries: Vec<Entry>,
    /// Next timeline index to store.
    next_index: u64,
    next_extra_key: u64,
}

impl EventStore {
    pub(crate) fn new(first_extra_key: u64) -> Self {
        Self {
            entries: Vec::new(),
            next_index: 0,
            next_extra_key: first_extra_key,
        }
    }

    fn insert(&mut self, entry: Entry) {
        let position = self.entries.partition_point(|e| e.order() < entry.order());
        self.entries.insert(position, entry);
    }

    /// Stores every timeline event that has happened by `now_ms` and drops events older than
    /// `cutoff_ms` (retention); timeline events already past retention are skipped without
    /// being generated. `make` turns a timeline index and its time into an entry.
    pub(crate) fn materialise(
        &mut self,
        timeline: &Timeline,
        now_ms: i64,
        cutoff_ms: i64,
        make: impl Fn(u64, i64) -> Entry,
    ) {
        self.next_index = timeline.first_at_or_after(self.next_index, cutoff_ms);
        while let Some(event_ms) = timeline
            .event_ms(self.next_index)
            .filter(|&ms| ms <= now_ms)
        {
            self.insert(make(self.next_index, event_ms));
            self.next_index += 1;
        }
        let expired = self.entries.partition_point(|e| e.event_ms < cutoff_ms);
        if expired > 0 {
            self.entries.drain(..expired);
        }
    }

    /// Stores an event outside the timeline; `make` gets its key.
    pub(crate) fn push_extra(&mut self, make: impl FnOnce(u64) -> Entry) -> Entry {
        let entry = make(self.next_extra_key);
        self.next_extra_key += 1;
        self.insert(entry);
        entry
    }

    /// Visible events (stored by `now_ms`, within retention) matching `selection`, in API
    /// order.
    pub(crate) fn select(
        &self,
        selection: Selection<'_>,
        now_ms: i64,
        cutoff_ms: i64,
        code_id: impl Fn(u16) -> &'static str,
    ) -> Vec<Entry> {
        let from_ms = selection.from_ms.max(cutoff_ms);
        if from_ms > selection.to_ms {
            return Vec::new();
        }
        let start = self.entries.partition_point(|e| e.event_ms < from_ms);
        let end = self
            .entries
            .partition_point(|e| e.event_ms <= selection.to_ms);
        self.entries[start..end.max(start)]
            .iter()
            .filter(|e| e.created_ms <= now_ms)
            .filter(|e| {
                selection
                    .prefix
                    .is_none_or(|prefix| code_id(e.code).starts_with(prefix))
            })
            .copied()
            .collect()
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timeline(backlog: u64, rate: f64, max_live: Option<u64>) -> Timeline {
        Timeline {
            epoch_ms: 1_000_000,
            backlog,
            span_ms: 100_000,
            rate,
            max_live,
        }
    }

    fn entry(key: u64, event_ms: i64) -> Entry {
        Entry {
            key,
            id: 1000 + key * ID_STRIDE,
            event_ms,
            created_ms: event_ms + 10,
            code: (key % 3) as u16,
        }
    }

    fn codes(code: u16) -> &'static str {
        ["USR-8", "USR-9", "AUTHZ-3"][usize::from(code)]
    }

    #[test]
    fn timeline_times_and_search() {
        let t = timeline(4, 2.0, Some(3));
        let times: Vec<_> = (0..8).map(|i| t.event_ms(i)).collect();
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
        assert_eq!(t.first_at_or_after(0, 0), 0);
        assert_eq!(t.first_at_or_after(0, 950_000), 1);
        assert_eq!(t.first_at_or_after(0, 950_001), 2);
        assert_eq!(t.first_at_or_after(2, 1_000_600), 5);
        assert_eq!(t.first_at_or_after(0, i64::MAX), 7);
        let endless = timeline(0, 1000.0, None);
        assert_eq!(
            endless.first_at_or_after(0, 1_000_000 + 86_400_000),
            86_400_000 - 1
        );
    }

    #[test]
    fn select_filters_window_visibility_and_type() {
        let t = timeline(10, 0.0, None);
        let mut store = EventStore::new(EXTRA_KEY_BASE);
        store.materialise(&t, 1_000_000, 0, entry);
        assert_eq!(store.len(), 10);
        let all = Selection {
            from_ms: 0,
            to_ms: i64::MAX,
            prefix: None,
        };
        // Event 9 (at 1_000_000) is stored 10 ms later.
        assert_eq!(store.select(all, 1_000_000, 0, codes).len(), 9);
        assert_eq!(store.select(all, 1_000_010, 0, codes).len(), 10);
        let window = Selection {
            from_ms: 920_000,
            to_ms: 940_000,
            prefix: None,
        };
        let keys = |s: Vec<Entry>| s.iter().map(|e| e.key).collect::<Vec<_>>();
        assert_eq!(keys(store.select(window, i64::MAX, 0, codes)), [1, 2, 3]);
        let authz = Selection {
            prefix: Some("AUTHZ-"),
            ..all
        };
        assert_eq!(keys(store.select(authz, i64::MAX, 0, codes)), [2, 5, 8]);
        // Retention hides, then drops.
        assert_eq!(keys(store.select(window, i64::MAX, 930_000, codes)), [2, 3]);
        store.materialise(&t, 1_000_000, 930_000, entry);
        assert_eq!(store.len(), 8);
    }

    #[test]
    fn extras_land_in_order_and_past_events_are_skipped() {
        let t = timeline(10, 0.0, None);
        let mut store = EventStore::new(EXTRA_KEY_BASE);
        store.materialise(&t, 1_000_000, 960_000, entry);
        assert_eq!(store.len(), 5);
        let extra = store.push_extra(|key| Entry {
            id: 1000 + key * ID_STRIDE,
            ..entry(key, 965_000)
        });
        assert_eq!(extra.key, EXTRA_KEY_BASE);
        let all = Selection {
            from_ms: 0,
            to_ms: i64::MAX,
            prefix: None,
        };
        let keys: Vec<u64> = store
            .select(all, i64::MAX, 0, |_| "USR-8")
            .iter()
            .map(|e| e.key)
            .collect();
        assert_eq!(keys, [5, EXTRA_KEY_BASE, 6, 7, 8, 9]);
    }
}
