//! The pages of one pass over a pinned window, requested ahead of the
//! cursor and handed out strictly in offset order.
//!
//! The first page of a pass is requested alone. Once a committed page has
//! told `totalSize`, the pages after the cursor are requested by offset, at
//! most `parallel` at a time, counting those that arrived and wait for their
//! turn: the offsets `cursor`, `cursor + stride`, … below `totalSize`, where
//! `stride` is the number of records the last committed page held (a server
//! that caps `limit` serves fewer than asked, and fewer is not the end).
//!
//! Only the page at the cursor is handed out ([`Pager::take`]). A page that
//! no longer lies on the plan (a short page moved the grid, the total
//! shrank) is dropped and its request aborted; so is everything when the
//! pass changes ([`Pager::start_pass`]) or is abandoned ([`Pager::clear`],
//! and dropping the pager). Nothing handed out ahead is lost that way: the
//! stored cursor always names the first page not committed.
//!
//! Generic over the page and error types, so that the ordering can be
//! tested without HTTP.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;

use tokio::task::{AbortHandle, JoinSet};

/// Which pass of which window pages belong to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct PassKey {
    pub(super) from: i64,
    pub(super) to: i64,
    pub(super) pass: u32,
}

/// What [`Pager::next`] saw arrive.
#[derive(Debug)]
pub(super) enum Arrival<E> {
    /// The page at `offset` arrived; it waits for its turn.
    Page { offset: u64 },
    /// The request for `offset` failed: it is made again at the next
    /// [`Pager::request`]. `fresh` unless the request was sent before the
    /// last failure was handled ([`Pager::failure_handled`]): then it most
    /// likely met the same trouble, already waited for.
    Failed { offset: u64, error: E, fresh: bool },
}

#[derive(Debug)]
struct Running {
    id: u64,
    abort: AbortHandle,
}

/// Pages requested ahead of the cursor of one pass.
#[derive(Debug)]
pub(super) struct Pager<P, E> {
    parallel: u64,
    pass: Option<PassKey>,
    /// Records per page as served (the last committed page's count).
    stride: Option<u64>,
    /// `totalSize` of the last committed page.
    total: Option<u64>,
    running: HashMap<u64, Running>,
    arrived: BTreeMap<u64, P>,
    tasks: JoinSet<(u64, u64, Result<P, E>)>,
    next_id: u64,
    /// Requests numbered below this were sent before the last failure was
    /// handled.
    failure_mark: u64,
}

impl<P, E> Pager<P, E>
where
    P: Send + 'static,
    E: Send + 'static,
{
    /// At most `parallel` pages running or waiting (at least 1).
    pub(super) fn new(parallel: u32) -> Self {
        Self {
            parallel: u64::from(parallel.max(1)),
            pass: None,
            stride: None,
            total: None,
            running: HashMap::new(),
            arrived: BTreeMap::new(),
            tasks: JoinSet::new(),
            next_id: 0,
            failure_mark: 0,
        }
    }

    /// The pass the cursor is in: pages of any other are dropped.
    pub(super) fn start_pass(&mut self, pass: PassKey) {
        if self.pass != Some(pass) {
            self.clear();
            self.pass = Some(pass);
        }
    }

    /// Drops every page and aborts every request; the next request starts
    /// at the cursor alone again.
    pub(super) fn clear(&mut self) {
        // Dropping a JoinSet aborts its tasks.
        self.tasks = JoinSet::new();
        self.running.clear();
        self.arrived.clear();
        self.stride = None;
        self.total = None;
        self.pass = None;
    }

    /// Requests running.
    pub(super) fn running(&self) -> usize {
        self.running.len()
    }

    /// Pages held: running or arrived.
    #[cfg(test)]
    pub(super) fn held(&self) -> usize {
        self.running.len() + self.arrived.len()
    }

    /// Whether the page at `cursor` arrived.
    pub(super) fn has_arrived(&self, cursor: u64) -> bool {
        self.arrived.contains_key(&cursor)
    }

    /// The page at `cursor`, if it arrived.
    pub(super) fn take(&mut self, cursor: u64) -> Option<P> {
        self.arrived.remove(&cursor)
    }

    /// The page at the cursor was committed: it held `count` records and
    /// told `total`.
    pub(super) fn committed(&mut self, count: u64, total: Option<u64>) {
        if count > 0 {
            self.stride = Some(count);
        }
        self.total = total;
    }

    /// The offsets wanted from `cursor`: the cursor, and while a committed
    /// page told the total and how many records a page holds, the pages
    /// after it below the total, `parallel` in all.
    pub(super) fn plan(&self, cursor: u64) -> Vec<u64> {
        let (Some(stride), Some(total)) = (self.stride, self.total) else {
            return vec![cursor];
        };
        let mut offsets = vec![cursor];
        let mut offset = cursor;
        while (offsets.len() as u64) < self.parallel {
            offset = offset.saturating_add(stride);
            if offset >= total {
                break;
            }
            offsets.push(offset);
        }
        offsets
    }

    /// Drops the pages and requests off the plan from `cursor`, and starts
    /// `fetch(offset)` for each planned offset neither running nor arrived.
    pub(super) fn request<F>(&mut self, cursor: u64, mut fetch: impl FnMut(u64) -> F)
    where
        F: Future<Output = Result<P, E>> + Send + 'static,
    {
        let plan = self.plan(cursor);
        self.arrived.retain(|offset, _| plan.contains(offset));
        self.running.retain(|offset, running| {
            let keep = plan.contains(offset);
            if !keep {
                running.abort.abort();
            }
            keep
        });
        for offset in plan {
            if self.running.contains_key(&offset) || self.arrived.contains_key(&offset) {
                continue;
            }
            let id = self.next_id;
            self.next_id += 1;
            let request = fetch(offset);
            let abort = self.tasks.spawn(async move { (offset, id, request.await) });
            self.running.insert(offset, Running { id, abort });
        }
    }

    /// A failure was handled (and waited for): requests sent before now
    /// that fail too are not fresh.
    pub(super) fn failure_handled(&mut self) {
        self.failure_mark = self.next_id;
    }

    /// Waits for the next request to finish; `None` when none runs.
    /// Cancel-safe. A panic in a request carries on here.
    pub(super) async fn next(&mut self) -> Option<Arrival<E>> {
        loop {
            let (offset, id, result) = match self.tasks.join_next().await? {
                Ok(done) => done,
                Err(e) => match e.try_into_panic() {
                    Ok(panic) => std::panic::resume_unwind(panic),
                    // Aborted: dropped from the plan.
                    Err(_) => continue,
                },
            };
            // Finished before it could be aborted, or replaced since.
            if self.running.get(&offset).map(|r| r.id) != Some(id) {
                continue;
            }
            self.running.remove(&offset);
            return Some(match result {
                Ok(page) => {
                    self.arrived.insert(offset, page);
                    Arrival::Page { offset }
                }
                Err(error) => Arrival::Failed {
                    offset,
                    error,
                    fresh: id >= self.failure_mark,
                },
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use tokio::sync::oneshot;

    use super::*;

    const PASS: PassKey = PassKey {
        from: 0,
        to: 10,
        pass: 1,
    };

    /// How the test answers one request.
    type Reply = oneshot::Sender<Result<u64, String>>;

    /// Requests that answer when the test says: their senders by offset.
    #[derive(Default, Clone)]
    struct Server {
        waiting: Arc<Mutex<HashMap<u64, Vec<Reply>>>>,
        sent: Arc<Mutex<Vec<u64>>>,
    }

    impl Server {
        fn fetch(
            &self,
        ) -> impl FnMut(u64) -> futures::future::BoxFuture<'static, Result<u64, String>> + '_
        {
            move |offset| {
                let (tx, rx) = oneshot::channel();
                self.waiting
                    .lock()
                    .unwrap()
                    .entry(offset)
                    .or_default()
                    .push(tx);
                self.sent.lock().unwrap().push(offset);
                Box::pin(async move { rx.await.unwrap_or_else(|_| Err("dropped".into())) })
            }
        }

        /// Answers the oldest request for `offset` (a page is its offset).
        fn answer(&self, offset: u64, answer: Result<u64, String>) {
            let tx = self
                .waiting
                .lock()
                .unwrap()
                .get_mut(&offset)
                .filter(|waiting| !waiting.is_empty())
                .map(|waiting| waiting.remove(0))
                .unwrap_or_else(|| panic!("no request for {offset}"));
            let _ = tx.send(answer);
        }

        fn sent(&self) -> Vec<u64> {
            std::mem::take(&mut self.sent.lock().unwrap())
        }
    }

    #[test]
    fn the_plan_is_the_cursor_alone_until_a_page_told_the_total() {
        let mut pager = Pager::<u64, String>::new(4);
        assert_eq!(pager.plan(0), [0]);
        pager.committed(100, None);
        assert_eq!(pager.plan(100), [100], "no total: one at a time");
        pager.committed(100, Some(1_000));
        assert_eq!(pager.plan(100), [100, 200, 300, 400]);
        assert_eq!(pager.plan(800), [800, 900], "nothing at or past the total");
        // A server that caps pages at 30: the grid follows what it serves.
        pager.committed(30, Some(1_000));
        assert_eq!(pager.plan(130), [130, 160, 190, 220]);
        // An empty page (the end) does not make the stride zero.
        pager.committed(0, Some(1_000));
        assert_eq!(pager.plan(130), [130, 160, 190, 220]);
        let mut serial = Pager::<u64, String>::new(1);
        serial.committed(100, Some(1_000));
        assert_eq!(serial.plan(100), [100]);
        assert_eq!(Pager::<u64, String>::new(0).plan(0), [0], "at least one");
    }

    #[tokio::test]
    async fn pages_arriving_out_of_order_are_handed_out_in_offset_order() {
        let server = Server::default();
        let mut pager = Pager::new(3);
        pager.start_pass(PASS);
        pager.request(0, server.fetch());
        assert_eq!(server.sent(), [0]);
        server.answer(0, Ok(0));
        assert!(matches!(
            pager.next().await,
            Some(Arrival::Page { offset: 0 })
        ));
        assert_eq!(pager.take(0), Some(0));
        pager.committed(100, Some(1_000));
        pager.request(100, server.fetch());
        assert_eq!(server.sent(), [100, 200, 300]);
        // 300 and 200 answer first: they wait for 100.
        server.answer(300, Ok(300));
        server.answer(200, Ok(200));
        for _ in 0..2 {
            assert!(matches!(pager.next().await, Some(Arrival::Page { .. })));
        }
        assert_eq!(pager.take(100), None, "100 has not arrived");
        pager.request(100, server.fetch());
        assert!(server.sent().is_empty(), "three held: nothing more");
        assert_eq!(pager.held(), 3);
        server.answer(100, Ok(100));
        assert!(matches!(
            pager.next().await,
            Some(Arrival::Page { offset: 100 })
        ));
        let mut handed = Vec::new();
        let mut cursor = 100;
        while let Some(page) = pager.take(cursor) {
            handed.push(page);
            pager.committed(100, Some(1_000));
            cursor += 100;
            pager.request(cursor, server.fetch());
        }
        assert_eq!(handed, [100, 200, 300]);
        assert_eq!(server.sent(), [400, 500, 600]);
        assert_eq!(pager.running(), 3);
    }

    #[tokio::test]
    async fn a_short_page_moves_the_grid_and_drops_the_pages_off_it() {
        let server = Server::default();
        let mut pager = Pager::new(3);
        pager.start_pass(PASS);
        pager.committed(100, Some(1_000));
        pager.request(100, server.fetch());
        assert_eq!(server.sent(), [100, 200, 300]);
        server.answer(200, Ok(200));
        assert!(matches!(
            pager.next().await,
            Some(Arrival::Page { offset: 200 })
        ));
        server.answer(100, Ok(100));
        assert!(matches!(
            pager.next().await,
            Some(Arrival::Page { offset: 100 })
        ));
        assert_eq!(pager.take(100), Some(100));
        // It held only 60 records (a capped page): the next starts at 160.
        pager.committed(60, Some(1_000));
        pager.request(160, server.fetch());
        assert_eq!(server.sent(), [160, 220, 280]);
        assert_eq!(pager.take(200), None, "200 was dropped");
        assert_eq!(pager.held(), 3, "300 was dropped and aborted");
        // 300 answering after its abort is not seen.
        server.answer(300, Ok(300));
        server.answer(160, Ok(160));
        assert!(matches!(
            pager.next().await,
            Some(Arrival::Page { offset: 160 })
        ));
    }

    #[tokio::test]
    async fn a_failed_page_is_asked_again_and_echoes_of_one_failure_are_not_fresh() {
        let server = Server::default();
        let mut pager = Pager::new(3);
        pager.start_pass(PASS);
        pager.committed(100, Some(1_000));
        pager.request(100, server.fetch());
        assert_eq!(server.sent(), [100, 200, 300]);
        server.answer(200, Err("429".into()));
        let Some(Arrival::Failed {
            offset: 200,
            fresh: true,
            ..
        }) = pager.next().await
        else {
            panic!("not a fresh failure of 200")
        };
        pager.failure_handled();
        // 300 was sent before: the same trouble.
        server.answer(300, Err("429".into()));
        let Some(Arrival::Failed {
            offset: 300,
            fresh: false,
            ..
        }) = pager.next().await
        else {
            panic!("not an echo of 300")
        };
        // Both are asked again; a failure of the new request is fresh.
        pager.request(100, server.fetch());
        assert_eq!(server.sent(), [200, 300]);
        server.answer(200, Err("503".into()));
        assert!(matches!(
            pager.next().await,
            Some(Arrival::Failed {
                offset: 200,
                fresh: true,
                ..
            })
        ));
        // The cursor never passes a page that did not arrive.
        server.answer(100, Ok(100));
        server.answer(300, Ok(300));
        for _ in 0..2 {
            assert!(matches!(pager.next().await, Some(Arrival::Page { .. })));
        }
        assert_eq!(pager.take(100), Some(100));
        pager.committed(100, Some(1_000));
        assert_eq!(pager.take(200), None);
        pager.request(200, server.fetch());
        assert_eq!(server.sent(), [200, 400]);
    }

    #[tokio::test]
    async fn another_pass_or_a_clear_drops_everything_and_aborts_the_requests() {
        let server = Server::default();
        let mut pager = Pager::new(4);
        pager.start_pass(PASS);
        pager.committed(100, Some(1_000));
        pager.request(100, server.fetch());
        server.answer(200, Ok(200));
        assert!(matches!(
            pager.next().await,
            Some(Arrival::Page { offset: 200 })
        ));
        pager.start_pass(PASS);
        assert_eq!(pager.held(), 4, "the same pass keeps its pages");
        pager.start_pass(PassKey { pass: 2, ..PASS });
        assert_eq!(pager.held(), 0);
        assert_eq!(pager.plan(0), [0], "a new pass starts alone");
        // The aborted requests' futures were dropped.
        tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                let closed = server
                    .waiting
                    .lock()
                    .unwrap()
                    .values()
                    .flatten()
                    .all(oneshot::Sender::is_closed);
                if closed {
                    break;
                }
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("requests still running");
        assert!(pager.next().await.is_none());
        pager.start_pass(PassKey { pass: 2, ..PASS });
        pager.request(0, server.fetch());
        pager.clear();
        assert_eq!(pager.held(), 0);
    }

    #[tokio::test]
    async fn a_panic_in_a_request_carries_on_in_the_caller() {
        let mut pager = Pager::<u64, String>::new(2);
        pager.request(0, |_| async { panic!("boom in the request") });
        let caller = tokio::spawn(async move { pager.next().await.map(|_| ()) })
            .await
            .unwrap_err();
        assert_eq!(
            caller.into_panic().downcast_ref::<&str>().copied(),
            Some("boom in the request")
        );
    }
}
