//! The bank-transfer test: concurrent global transactions across two databases, a fifth
//! of them rolled back on purpose, in AT mode and in XA mode, while other clients make
//! deposits outside any global transaction through the same proxy. Money is neither
//! made nor lost, every committed transfer and every deposit is applied exactly once,
//! no rollback meets a dirty write, and nothing is left behind (no undo rows, no
//! prepared transactions, no locks).

use std::sync::Arc;
use tandem_tests::harness::{Tandem, TestDb, eventually};
use tandem_tests::lockserver::{Kind, TestLockserver};
use tokio_postgres::{Client, SimpleQueryMessage};

const WORKERS: usize = 8;
const TRANSFERS_PER_WORKER: usize = 250;
const ACCOUNTS: i32 = 50;
const OPENING_BALANCE: i64 = 10_000;
/// Clients making deposits outside global transactions, and deposits each.
const DEPOSITORS: usize = 2;
const DEPOSITS_PER_DEPOSITOR: usize = 200;

async fn value(client: &Client, sql: &str) -> Result<Option<String>, tokio_postgres::Error> {
    let messages = client.simple_query(sql).await?;
    Ok(messages
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r.get(0).map(str::to_owned)),
            _ => None,
        })
        .flatten())
}

async fn bank(label: &str) -> TestDb {
    let db = TestDb::create(label).await;
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

/// Every account's balance, in key order.
pub(crate) async fn balances(client: &Client) -> Vec<i64> {
    client
        .query("SELECT balance FROM accounts ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// One transfer: debit in the first database, credit in the second; commit or roll back.
/// Returns whether it was committed.
async fn transfer(
    a: &Client,
    b: &Client,
    from: i32,
    to: i32,
    amount: i64,
    roll_back: bool,
) -> bool {
    let attempt = async {
        let xid = value(a, "SELECT tandem_begin(20000)")
            .await?
            .unwrap_or_default();
        a.batch_execute(&format!(
            "UPDATE accounts SET balance = balance - {amount} WHERE id = {from}"
        ))
        .await?;
        value(b, &format!("SELECT tandem_join('{xid}')")).await?;
        let credited = b
            .batch_execute(&format!(
                "UPDATE accounts SET balance = balance + {amount} WHERE id = {to}"
            ))
            .await;
        value(b, "SELECT tandem_leave()").await?;
        credited?;
        let decision = if roll_back {
            "tandem_rollback"
        } else {
            "tandem_commit"
        };
        value(a, &format!("SELECT {decision}()")).await
    }
    .await;
    match attempt {
        Ok(Some(status)) if status == "Committed" => true,
        Ok(Some(status)) if status == "Rollbacked" => false,
        Ok(other) => panic!("unexpected status {other:?}"),
        Err(e) => {
            // A lock conflict (40001): the whole global transaction is rolled back.
            let status = value(a, "SELECT tandem_rollback()")
                .await
                .expect("rollback after an error");
            assert_eq!(status.as_deref(), Some("Rollbacked"), "after {e:?}");
            let _ = value(b, "SELECT tandem_leave()").await;
            false
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn money_is_conserved_and_every_committed_transfer_applies_once() {
    run_bank("at").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn money_is_conserved_in_xa_mode_and_no_prepared_transaction_is_left() {
    run_bank("xa").await;
}

async fn prepared_count(client: &Client) -> i64 {
    client
        .query_one(
            "SELECT count(*) FROM pg_prepared_xacts WHERE database = current_database()",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

async fn run_bank(mode: &'static str) {
    let (first, second) = (
        bank(&format!("bank_{mode}_a")).await,
        bank(&format!("bank_{mode}_b")).await,
    );
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Arc::new(Tandem::start_for(&lockserver).await);
    let mut workers = Vec::new();
    for worker in 0..WORKERS {
        let (tandem, a_name, b_name) =
            (Arc::clone(&tandem), first.name.clone(), second.name.clone());
        workers.push(tokio::spawn(async move {
            let a = tandem.connect(&a_name).await;
            let b = tandem.connect(&b_name).await;
            for session in [&a, &b] {
                let chosen = value(session, &format!("SELECT tandem_mode('{mode}')"))
                    .await
                    .unwrap();
                assert_eq!(chosen.as_deref(), Some(mode));
            }
            let mut committed = Vec::new();
            let mut seed = 0x2545_f491_4f6c_dd1du64 ^ (worker as u64 * 0x9e37_79b9);
            let mut next = move || {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed
            };
            for i in 0..TRANSFERS_PER_WORKER {
                let from = (next() % ACCOUNTS as u64) as i32 + 1;
                let to = (next() % ACCOUNTS as u64) as i32 + 1;
                let amount = (next() % 100) as i64 + 1;
                let roll_back = (i + worker) % 5 == 0;
                if transfer(&a, &b, from, to, amount, roll_back).await {
                    committed.push((from, to, amount));
                }
            }
            committed
        }));
    }
    // Deposits outside any global transaction: autocommit writes to the same rows,
    // one depositor over the simple protocol, one over the extended protocol.
    let mut depositors = Vec::new();
    for depositor in 0..DEPOSITORS {
        let (tandem, names) = (
            Arc::clone(&tandem),
            [first.name.clone(), second.name.clone()],
        );
        depositors.push(tokio::spawn(async move {
            let clients = [
                tandem.connect(&names[0]).await,
                tandem.connect(&names[1]).await,
            ];
            let mut made = Vec::new();
            for i in 0..DEPOSITS_PER_DEPOSITOR {
                let side = i % 2;
                let id = ((i * 7 + depositor * 13) % ACCOUNTS as usize) as i32 + 1;
                let done = if depositor % 2 == 0 {
                    clients[side]
                        .batch_execute(&format!(
                            "UPDATE accounts SET balance = balance + 1 WHERE id = {id}"
                        ))
                        .await
                } else {
                    clients[side]
                        .execute(
                            "UPDATE accounts SET balance = balance + 1 WHERE id = $1",
                            &[&id],
                        )
                        .await
                        .map(|_| ())
                };
                match done {
                    Ok(()) => made.push((side, id)),
                    // Held past lock_wait_ms: refused, nothing changed.
                    Err(e) => assert_eq!(
                        e.code(),
                        Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE),
                        "{e:?}"
                    ),
                }
            }
            made
        }));
    }
    let mut committed = Vec::new();
    for w in workers {
        committed.extend(w.await.expect("worker"));
    }
    let mut deposits = Vec::new();
    for d in depositors {
        deposits.extend(d.await.expect("depositor"));
    }
    assert!(
        deposits.len() >= DEPOSITORS * DEPOSITS_PER_DEPOSITOR * 9 / 10,
        "only {} deposits went through",
        deposits.len()
    );
    let total = WORKERS * TRANSFERS_PER_WORKER;
    assert!(
        committed.len() >= total / 2,
        "only {} of {total} committed",
        committed.len()
    );
    assert!(committed.len() <= total * 4 / 5, "rollbacks did not happen");

    let (da, db) = (first.direct().await, second.direct().await);
    // XA's phase 2 (COMMIT PREPARED) runs after tandem_commit() answered: the
    // balances are final once no prepared transaction is left.
    eventually("no prepared transactions left", || async {
        prepared_count(&da).await == 0 && prepared_count(&db).await == 0
    })
    .await;
    let mut want_a = vec![OPENING_BALANCE; ACCOUNTS as usize];
    let mut want_b = vec![OPENING_BALANCE; ACCOUNTS as usize];
    for &(from, to, amount) in &committed {
        want_a[from as usize - 1] -= amount;
        want_b[to as usize - 1] += amount;
    }
    for &(side, id) in &deposits {
        let want = if side == 0 { &mut want_a } else { &mut want_b };
        want[id as usize - 1] += 1;
    }
    let (got_a, got_b) = (balances(&da).await, balances(&db).await);
    assert_eq!(
        got_a, want_a,
        "first database: each committed debit exactly once"
    );
    assert_eq!(
        got_b, want_b,
        "second database: each committed credit exactly once"
    );
    assert_eq!(
        got_a.iter().sum::<i64>() + got_b.iter().sum::<i64>(),
        2 * ACCOUNTS as i64 * OPENING_BALANCE + deposits.len() as i64,
        "money is conserved"
    );
    eventually("no undo rows left", || async {
        let n_a: i64 = da
            .query_one("SELECT count(*) FROM undo_log WHERE log_status = 0", &[])
            .await
            .unwrap()
            .get(0);
        let n_b: i64 = db
            .query_one("SELECT count(*) FROM undo_log WHERE log_status = 0", &[])
            .await
            .unwrap()
            .get(0);
        n_a == 0 && n_b == 0
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
