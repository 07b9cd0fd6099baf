//! The lockserver against its real stores (embedded in a temp dir, and Redis),
//! through its real network APIs (gRPC for proxies, HTTP/JSON for applications).
//! Every case runs once per store. Crash/restart cases (kill -9 of the binary) live
//! in `lockserver/tests/crash.rs`, where the binary's path is known to cargo.

use std::sync::{Arc, Mutex};

use tandem_lockserver::client::{BoxFuture, BranchHandler, BranchOutcome, LockKey, Phase2Work};

mod all_or_nothing;
mod backpressure;
mod bad_input;
mod conflicts;
mod phase2;
mod timeout;

/// Runs `async fn $name(kind: Kind)` once per store, as `$name::embedded` and `$name::redis`.
macro_rules! both {
    ($($name:ident),* $(,)?) => { $(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn embedded() { super::$name(tandem_tests::lockserver::Kind::Embedded).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn redis() { super::$name(tandem_tests::lockserver::Kind::Redis).await }
        }
    )* };
}
pub(crate) use both;

pub fn key(i: u32) -> LockKey {
    LockKey::new(
        "postgres://127.0.0.1:5432/it",
        "public.accounts",
        [i.to_string()],
    )
}

pub const RESOURCE: &str = "postgres://127.0.0.1:5432/it";

/// Decides a phase-2 answer: (is commit, work) → outcome.
pub type Answer = Box<dyn Fn(bool, &Phase2Work) -> BranchOutcome + Send>;

/// A phase-2 handler that records what it was asked and answers per `answer`.
pub struct Recorder {
    pub seen: Mutex<Vec<(bool, String, u64)>>,
    pub answer: Mutex<Answer>,
}

impl Recorder {
    pub fn new(answer: impl Fn(bool, &Phase2Work) -> BranchOutcome + Send + 'static) -> Arc<Self> {
        Arc::new(Recorder {
            seen: Mutex::new(vec![]),
            answer: Mutex::new(Box::new(answer)),
        })
    }
    pub fn ok() -> Arc<Self> {
        Self::new(|_, _| BranchOutcome::Done)
    }
    pub fn seen(&self) -> Vec<(bool, String, u64)> {
        self.seen.lock().unwrap().clone()
    }
    fn handle(&self, commit: bool, w: Phase2Work) -> BranchOutcome {
        self.seen
            .lock()
            .unwrap()
            .push((commit, w.xid.to_string(), w.branch_id));
        (self.answer.lock().unwrap())(commit, &w)
    }
}

impl BranchHandler for Recorder {
    fn commit(&self, w: Phase2Work) -> BoxFuture<'_, BranchOutcome> {
        let o = self.handle(true, w);
        Box::pin(async move { o })
    }
    fn rollback(&self, w: Phase2Work) -> BoxFuture<'_, BranchOutcome> {
        let o = self.handle(false, w);
        Box::pin(async move { o })
    }
}
