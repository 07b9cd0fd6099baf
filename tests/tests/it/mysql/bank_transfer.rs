//! The bank-transfer test across engines: a bank whose accounts are split between a
//! PostgreSQL database and a MariaDB database behind one tandem, with concurrent global
//! transactions in AT mode moving money both ways (debit on one engine, credit on the
//! other), a fifth of them rolled back on purpose. Each global transaction is begun on
//! either engine and joined on the other; the MariaDB write is an autocommit UPDATE or
//! runs inside START TRANSACTION … COMMIT (sometimes behind a locking read). A lock
//! conflict rolls the whole global transaction back. Money is neither made nor lost,
//! every committed transfer is applied exactly once and no rolled-back one at all, and
//! nothing is left behind (no undo rows, no locks).

use super::at_mode::{code, prepare, text, undo_rows};
use mysql_async::Conn;
use mysql_async::prelude::Queryable;
use std::sync::Arc;
use tandem_tests::harness::{TestDb, eventually};
use tandem_tests::lockserver::{Kind, TestLockserver};
use tandem_tests::mysql::{self as my, MyTestDb};
use tokio_postgres::Client;
use tokio_postgres::error::SqlState;

const WORKERS: usize = 8;
const TRANSFERS_PER_WORKER: usize = 250;
const ACCOUNTS: i32 = 50;
const OPENING_BALANCE: i64 = 10_000;
/// How long a write waits for a global lock before it fails with 1205 / 40001.
const LOCK_WAIT_MS: u64 = 1_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Pg,
    My,
}

impl Side {
    fn other(self) -> Side {
        match self {
            Side::Pg => Side::My,
            Side::My => Side::Pg,
        }
    }
}

/// How the MariaDB side writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MyForm {
    /// An autocommit UPDATE: a branch of its own, in tandem's own local transaction.
    Autocommit,
    /// START TRANSACTION, UPDATE, COMMIT.
    Transaction,
    /// START TRANSACTION, SELECT … FOR UPDATE of the row, UPDATE, COMMIT.
    LockingRead,
}

const FORMS: [MyForm; 3] = [MyForm::Autocommit, MyForm::Transaction, MyForm::LockingRead];

/// One transfer: `amount` from account `from` on the `debit` side to account `to` on
/// the other side, in a global transaction begun on `begin`.
#[derive(Clone, Copy, Debug)]
struct Transfer {
    debit: Side,
    begin: Side,
    form: MyForm,
    from: i32,
    to: i32,
    amount: i64,
    roll_back: bool,
}

impl Transfer {
    /// The account `side` writes and by how much.
    fn change(&self, side: Side) -> (i32, i64) {
        if side == self.debit {
            (self.from, -self.amount)
        } else {
            (self.to, self.amount)
        }
    }

    /// Which of the twelve kinds of transfer (debit side × begin side × MySQL form).
    fn kind(&self) -> (Side, Side, MyForm) {
        (self.debit, self.begin, self.form)
    }
}

/// Why a step of a transfer failed.
#[derive(Debug)]
enum Failure {
    Pg(tokio_postgres::Error),
    My(mysql_async::Error),
}

impl Failure {
    /// A lock conflict tandem reports after its wait for a global lock: the global
    /// transaction can only be rolled back (and retried).
    fn is_lock_conflict(&self) -> bool {
        match self {
            Failure::Pg(e) => e.code().is_some_and(|c| {
                *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::LOCK_NOT_AVAILABLE
            }),
            // 1205 for a write, 1213 for a COMMIT (tandem rolled the transaction back).
            Failure::My(e) => {
                matches!(e, mysql_async::Error::Server(_)) && matches!(code(e), 1205 | 1213)
            }
        }
    }
}

/// One worker's two sessions through tandem.
struct Sessions {
    pg: Client,
    my: Conn,
}

impl Sessions {
    /// The one value `sql` answers on `side` (a control function's).
    async fn value(&mut self, side: Side, sql: &str) -> Result<Option<String>, Failure> {
        match side {
            Side::Pg => crate::pg::at_mode_one(&self.pg, sql)
                .await
                .map_err(Failure::Pg),
            Side::My => text(&mut self.my, sql).await.map_err(Failure::My),
        }
    }

    /// A rollback's final status. tandem_rollback() answers once every branch is
    /// undone, or after the lockserver's rollback_wait_ms with the rollback still under
    /// way (a phase-2 replay can wait that long for a local row lock on a loaded
    /// machine): then `xid`'s status is asked until it is final.
    async fn settled(&mut self, side: Side, xid: &str, status: String) -> String {
        let mut status = status;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while matches!(status.as_str(), "Rollbacking" | "RollbackRetrying")
            && std::time::Instant::now() < deadline
        {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            if let Ok(Some(now)) = self
                .value(side, &format!("SELECT tandem_status('{xid}')"))
                .await
            {
                status = now;
            }
        }
        status
    }

    /// `side`'s part of `t`: one UPDATE of one account (text protocol on MySQL).
    async fn write(&mut self, side: Side, t: &Transfer) -> Result<(), Failure> {
        let (id, delta) = t.change(side);
        let update = format!("UPDATE accounts SET balance = balance + ({delta}) WHERE id = {id}");
        if side == Side::Pg {
            return self.pg.batch_execute(&update).await.map_err(Failure::Pg);
        }
        let my = &mut self.my;
        async {
            if t.form == MyForm::Autocommit {
                return my.query_drop(&update).await;
            }
            my.query_drop("START TRANSACTION").await?;
            if t.form == MyForm::LockingRead {
                my.query_drop(format!(
                    "SELECT balance FROM accounts WHERE id = {id} FOR UPDATE"
                ))
                .await?;
            }
            my.query_drop(&update).await?;
            my.query_drop("COMMIT").await
        }
        .await
        .map_err(Failure::My)
    }
}

/// What became of one transfer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Committed,
    /// Rolled back on purpose.
    RolledBack,
    /// A write or commit met a lock conflict: rolled back.
    Conflict,
}

/// One transfer: begun on one side, joined on the other, each side writing its account;
/// committed or rolled back on the side that began it.
async fn transfer(s: &mut Sessions, t: &Transfer) -> Outcome {
    let joined = t.begin.other();
    let mut began = String::new();
    let attempt = async {
        let xid = s
            .value(t.begin, "SELECT tandem_begin(20000)")
            .await?
            .unwrap_or_default();
        began = xid.clone();
        s.write(t.begin, t).await?;
        s.value(joined, &format!("SELECT tandem_join('{xid}')"))
            .await?;
        let written = s.write(joined, t).await;
        s.value(joined, "SELECT tandem_leave()").await?;
        written?;
        let decision = if t.roll_back {
            "tandem_rollback"
        } else {
            "tandem_commit"
        };
        s.value(t.begin, &format!("SELECT {decision}()")).await
    }
    .await;
    let attempt = match attempt {
        Ok(Some(status)) if t.roll_back => Ok(Some(s.settled(t.begin, &began, status).await)),
        other => other,
    };
    match attempt {
        Ok(Some(status)) if status == "Committed" && !t.roll_back => Outcome::Committed,
        Ok(Some(status)) if status == "Rollbacked" && t.roll_back => Outcome::RolledBack,
        Ok(other) => panic!("{t:?}: unexpected status {other:?}"),
        Err(e) => {
            assert!(e.is_lock_conflict(), "{t:?}: unexpected error {e:?}");
            // A write inside START TRANSACTION may leave the local transaction open,
            // and tandem_rollback() refuses to run while one is.
            s.my.query_drop("ROLLBACK")
                .await
                .expect("local ROLLBACK after an error");
            let status = s
                .value(t.begin, "SELECT tandem_rollback()")
                .await
                .expect("rollback after an error")
                .unwrap_or_default();
            let status = s.settled(t.begin, &began, status).await;
            assert_eq!(status, "Rollbacked", "{t:?} after {e:?}");
            let _ = s.value(joined, "SELECT tandem_leave()").await;
            Outcome::Conflict
        }
    }
}

async fn pg_bank() -> TestDb {
    let db = TestDb::create("bank_mixed_pg").await;
    db.migrate().await;
    db.direct()
        .await
        .batch_execute(&format!(
            "CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL);
             INSERT INTO accounts SELECT g, {OPENING_BALANCE} FROM generate_series(1, {ACCOUNTS}) g;"
        ))
        .await
        .unwrap();
    db
}

async fn my_bank() -> MyTestDb {
    let db = prepare("bank_mixed").await;
    let rows: Vec<String> = (1..=ACCOUNTS)
        .map(|id| format!("({id}, {OPENING_BALANCE})"))
        .collect();
    db.direct()
        .await
        .query_drop(format!(
            "DELETE FROM accounts; INSERT INTO accounts (id, balance) VALUES {};",
            rows.join(", ")
        ))
        .await
        .unwrap();
    db
}

async fn my_balances(conn: &mut Conn) -> Vec<i64> {
    conn.query("SELECT balance FROM accounts ORDER BY id")
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn money_moved_both_ways_between_postgres_and_mariadb_is_conserved_and_applied_once() {
    let (pg_db, my_db) = (pg_bank().await, my_bank().await);
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let endpoint = format!("http://{}", lockserver.grpc);
    let tandem = Arc::new(
        my::start_with(|c| {
            c.lockserver.endpoint = endpoint;
            // Transfers in opposite directions can wait for each other's locks (one holds
            // a PostgreSQL row and wants a MariaDB row, the other the reverse): only the
            // lock wait ends such a cycle, so it is kept short.
            c.lockserver.lock_wait_ms = LOCK_WAIT_MS;
        })
        .await,
    );
    let mut workers = Vec::new();
    for worker in 0..WORKERS {
        let (tandem, pg_name, my_name) =
            (Arc::clone(&tandem), pg_db.name.clone(), my_db.name.clone());
        workers.push(tokio::spawn(async move {
            let mut s = Sessions {
                pg: tandem.connect(&pg_name).await,
                my: my::connect(&tandem, &my_name).await,
            };
            for side in [Side::Pg, Side::My] {
                let chosen = s.value(side, "SELECT tandem_mode('at')").await.unwrap();
                assert_eq!(chosen.as_deref(), Some("at"));
            }
            let mut outcomes = Vec::new();
            let mut seed = 0x2545_f491_4f6c_dd1du64 ^ (worker as u64 * 0x9e37_79b9);
            let mut next = move || {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed
            };
            for i in 0..TRANSFERS_PER_WORKER {
                let t = Transfer {
                    debit: if i % 2 == 0 { Side::Pg } else { Side::My },
                    begin: if (i / 2) % 2 == 0 { Side::Pg } else { Side::My },
                    form: FORMS[(i / 4) % FORMS.len()],
                    from: (next() % ACCOUNTS as u64) as i32 + 1,
                    to: (next() % ACCOUNTS as u64) as i32 + 1,
                    amount: (next() % 100) as i64 + 1,
                    roll_back: (i + worker) % 5 == 0,
                };
                outcomes.push((t, transfer(&mut s, &t).await));
            }
            let Sessions { pg, my } = s;
            drop(pg);
            my.disconnect().await.expect("disconnect");
            outcomes
        }));
    }
    let mut outcomes = Vec::new();
    for w in workers {
        outcomes.extend(w.await.expect("worker"));
    }
    let committed: Vec<Transfer> = outcomes
        .iter()
        .filter(|(_, o)| *o == Outcome::Committed)
        .map(|(t, _)| *t)
        .collect();
    let total = WORKERS * TRANSFERS_PER_WORKER;
    assert!(
        committed.len() >= total / 2,
        "only {} of {total} committed",
        committed.len()
    );
    let rolled_back = outcomes
        .iter()
        .filter(|(_, o)| *o == Outcome::RolledBack)
        .count();
    assert!(
        rolled_back >= total / 10,
        "only {rolled_back} of {total} rolled back on purpose"
    );
    // Every kind of transfer (direction × side that begins × MySQL write form) committed.
    for debit in [Side::Pg, Side::My] {
        for begin in [Side::Pg, Side::My] {
            for form in FORMS {
                assert!(
                    committed.iter().any(|t| t.kind() == (debit, begin, form)),
                    "no {debit:?} debit begun on {begin:?} with {form:?} committed"
                );
            }
        }
    }

    let (pg_direct, mut my_direct) = (pg_db.direct().await, my_db.direct().await);
    let mut want_pg = vec![OPENING_BALANCE; ACCOUNTS as usize];
    let mut want_my = vec![OPENING_BALANCE; ACCOUNTS as usize];
    for t in &committed {
        for (side, want) in [(Side::Pg, &mut want_pg), (Side::My, &mut want_my)] {
            let (id, delta) = t.change(side);
            want[id as usize - 1] += delta;
        }
    }
    let (got_pg, got_my) = (
        crate::pg::bank_balances(&pg_direct).await,
        my_balances(&mut my_direct).await,
    );
    assert_eq!(
        got_pg, want_pg,
        "PostgreSQL: each committed transfer exactly once, no rolled-back one"
    );
    assert_eq!(
        got_my, want_my,
        "MariaDB: each committed transfer exactly once, no rolled-back one"
    );
    assert_eq!(
        got_pg.iter().sum::<i64>() + got_my.iter().sum::<i64>(),
        2 * ACCOUNTS as i64 * OPENING_BALANCE,
        "money is conserved"
    );
    eventually("no undo rows left", || {
        let (pg_direct, my_db) = (&pg_direct, &my_db);
        async move {
            let n_pg: i64 = pg_direct
                .query_one("SELECT count(*) FROM undo_log WHERE log_status = 0", &[])
                .await
                .unwrap()
                .get(0);
            n_pg == 0 && undo_rows(&mut my_db.direct().await).await == 0
        }
    })
    .await;

    let (_, locks) = lockserver.get("/v1/locks").await;
    assert_eq!(locks["locks"].as_array().map(Vec::len), Some(0), "{locks}");
    match Arc::try_unwrap(tandem) {
        Ok(tandem) => tandem.shutdown().await,
        Err(_) => panic!("a worker still holds the proxy"),
    }
    lockserver.stop().await;
}
