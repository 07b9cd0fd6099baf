use std::time::Duration;

use tokio::sync::mpsc;

use super::*;

const R: &str = "pg://h/db";

fn notice(seq: u64, locked: &[&str], unlocked: &[&str]) -> pb::TableNotice {
    pb::TableNotice {
        resource_id: R.into(),
        seq,
        locked: locked.iter().map(|s| s.to_string()).collect(),
        unlocked: unlocked.iter().map(|s| s.to_string()).collect(),
        snapshot: false,
        unknown: false,
        lease_ms: 0,
    }
}

fn snapshot(seq: u64, locked: &[&str]) -> pb::TableNotice {
    pb::TableNotice {
        snapshot: true,
        ..notice(seq, locked, &[])
    }
}

fn enters(v: &TableLockView, table: Option<&str>) -> bool {
    v.enter_unchecked(R, table).is_some()
}

#[test]
fn nothing_is_trusted_before_a_snapshot() {
    let v = TableLockView::new(Duration::from_secs(60));
    assert!(!enters(&v, Some("t")));
    assert!(v.may_be_locked(R, "t"));
    let g = v.stream_up();
    v.heard(&g);
    assert!(!enters(&v, Some("t")), "stream up, but no snapshot yet");
    // A notice that is not a snapshot does not make the view trusted.
    v.apply(&g, notice(1, &["a"], &[]));
    v.heard(&g);
    assert!(!enters(&v, Some("t")));
}

#[test]
fn snapshot_then_notices_decide_which_writes_enter() {
    let v = TableLockView::new(Duration::from_secs(60));
    let g = v.stream_up();
    assert!(
        v.apply(&g, snapshot(1, &["a"])).is_some(),
        "a snapshot is acked"
    );
    v.heard(&g);
    assert!(enters(&v, Some("b")));
    assert!(!enters(&v, Some("a")), "announced table");
    assert!(!enters(&v, None), "unknown table while one is announced");
    assert!(
        v.enter_unchecked("pg://other", Some("b")).is_none(),
        "a resource without a snapshot"
    );
    assert!(v.may_be_locked(R, "a") && !v.may_be_locked(R, "b"));
    assert!(
        v.apply(&g, notice(2, &["b"], &[])).is_some(),
        "locked: acked"
    );
    assert!(!enters(&v, Some("b")));
    assert!(
        v.apply(&g, notice(3, &[], &["a", "b"])).is_none(),
        "unlocked: nothing to ack"
    );
    assert!(enters(&v, Some("a")) && enters(&v, None));
}

#[test]
fn a_table_known_by_name_only_enters_while_no_schema_has_it_announced() {
    let v = TableLockView::new(Duration::from_secs(60));
    let g = v.stream_up();
    v.apply(&g, snapshot(1, &["tenant.accounts", "public.my.table"]));
    v.heard(&g);
    let by_name = |name: &str| v.enter_unchecked_by_name(R, name).is_some();
    assert!(!by_name("accounts"), "announced in another schema");
    assert!(!by_name("Accounts"), "a doubt over case means a check");
    assert!(!by_name("my.table") && !by_name("table"));
    assert!(by_name("counts") && by_name("orders") && by_name("tenant"));
    assert!(
        enters(&v, Some("public.accounts")),
        "the qualified name is free"
    );
    assert!(
        v.enter_unchecked_by_name("pg://other", "orders").is_none(),
        "a resource without a snapshot"
    );
}

#[test]
fn unknown_lease_and_stream_end_withdraw_trust() {
    let v = TableLockView::new(Duration::from_millis(200));
    let g = v.stream_up();
    v.apply(&g, snapshot(1, &[]));
    v.heard(&g);
    assert!(enters(&v, Some("t")));
    std::thread::sleep(Duration::from_millis(300));
    assert!(!enters(&v, Some("t")), "nothing heard within the lease");
    assert!(v.may_be_locked(R, "t"));
    v.heard(&g);
    assert!(enters(&v, Some("t")), "a heartbeat renews it");
    v.stream_down(&g);
    assert!(!enters(&v, Some("t")), "stream down");

    let g = v.stream_up();
    v.apply(&g, snapshot(1, &[]));
    v.heard(&g);
    assert!(enters(&v, Some("t")));
    v.apply(
        &g,
        pb::TableNotice {
            unknown: true,
            ..notice(2, &[], &[])
        },
    );
    assert!(!enters(&v, Some("t")), "unknown: check everything");
}

#[test]
fn a_lockserver_with_a_shorter_lease_shortens_the_trust() {
    let v = TableLockView::new(Duration::from_secs(60));
    let g = v.stream_up();
    // table_lease_ms = 300: trusted at most 200 ms after the last message.
    v.apply(
        &g,
        pb::TableNotice {
            lease_ms: 300,
            ..snapshot(1, &[])
        },
    );
    v.heard(&g);
    assert!(enters(&v, Some("t")));
    std::thread::sleep(Duration::from_millis(250));
    assert!(
        !enters(&v, Some("t")),
        "past two thirds of the lockserver's lease"
    );
    v.heard(&g);
    assert!(enters(&v, Some("t")), "heard again");
}

#[test]
fn a_replaced_stream_is_believed_until_the_new_snapshot_and_only_adds_tables() {
    let v = TableLockView::new(Duration::from_millis(300));
    let old = v.stream_up();
    v.apply(&old, snapshot(1, &["a"]));
    v.heard(&old);
    let new = v.stream_up();
    v.heard(&new);
    assert!(
        enters(&v, Some("b")) && !enters(&v, Some("a")),
        "the new stream's snapshot is not in yet: the old one's stands"
    );
    // Still the old stream's set: a late notice of it may add tables.
    v.apply(&old, notice(2, &["c"], &[]));
    assert!(!enters(&v, Some("c")));
    v.stream_down(&old);
    assert!(
        enters(&v, Some("b")),
        "a replaced stream ending does not withdraw trust"
    );
    std::thread::sleep(Duration::from_millis(400));
    v.heard(&new);
    assert!(
        !enters(&v, Some("b")),
        "the old stream's snapshot, past its lease"
    );
    v.apply(&new, snapshot(1, &["a"]));
    assert!(enters(&v, Some("b")) && enters(&v, Some("c")));
    // Once the new snapshot is in, a late notice of the old stream may add tables,
    // never remove them.
    v.apply(&old, notice(3, &[], &["a"]));
    assert!(!enters(&v, Some("a")));
    v.apply(&old, notice(4, &["d"], &[]));
    assert!(!enters(&v, Some("d")));
    v.stream_down(&old);
    assert!(
        enters(&v, Some("b")),
        "the old stream ending changes nothing"
    );
    v.stream_down(&new);
    assert!(!enters(&v, Some("b")));
}

#[test]
fn after_the_newest_stream_went_down_only_a_newer_snapshot_is_believed() {
    let v = TableLockView::new(Duration::from_secs(60));
    let old = v.stream_up();
    v.apply(&old, snapshot(1, &["a"]));
    v.heard(&old);
    v.stream_down(&old);
    let new = v.stream_up();
    v.heard(&new);
    v.heard(&old);
    assert!(
        !enters(&v, Some("b")),
        "the snapshot of a stream that went down as the newest"
    );
    v.apply(&new, snapshot(1, &[]));
    assert!(enters(&v, Some("a")) && enters(&v, Some("b")));
}

async fn no_ack(acks: &mut mpsc::Receiver<u64>, what: &str) {
    let r = tokio::time::timeout(Duration::from_millis(100), acks.recv()).await;
    assert!(r.is_err(), "acked {what}: {r:?}");
}

async fn ack(acks: &mut mpsc::Receiver<u64>) -> u64 {
    tokio::time::timeout(Duration::from_secs(5), acks.recv())
        .await
        .expect("no ack")
        .expect("acker gone")
}

#[tokio::test]
async fn an_ack_waits_for_unchecked_writes_but_not_for_later_ones() {
    let v = TableLockView::new(Duration::from_secs(60));
    let (tx, mut acks) = mpsc::channel(8);
    let stream = StreamTables::start(v.clone(), tx);
    assert!(stream.on_message(vec![snapshot(1, &[])]));
    assert_eq!(ack(&mut acks).await, 1);

    let before = v.enter_unchecked(R, Some("b")).expect("b enters");
    assert!(stream.on_message(vec![notice(2, &["b"], &[])]));
    assert!(!enters(&v, Some("b")), "flags apply at once");
    no_ack(&mut acks, "while a write that entered before is running").await;
    // Writes on other tables keep coming and overlapping: the ack must not wait for
    // a moment with no write in flight at all.
    let mut later = v.enter_unchecked(R, Some("c")).expect("c enters");
    for _ in 0..3 {
        let next = v.enter_unchecked(R, Some("c")).expect("c enters");
        drop(std::mem::replace(&mut later, next));
    }
    no_ack(&mut acks, "before the earlier write finished").await;
    drop(before);
    assert_eq!(ack(&mut acks).await, 2);
    drop(later);

    // Acks stay in order: an unlocked notice needs none, the next locked one does.
    assert!(stream.on_message(vec![notice(3, &[], &["b"]), notice(4, &["d"], &[])]));
    assert_eq!(ack(&mut acks).await, 4);
    drop(stream);
    assert!(!enters(&v, Some("c")), "stream gone: untrusted");
}

#[tokio::test]
async fn dropping_the_guard_wakes_the_waiting_ack() {
    let v = TableLockView::new(Duration::from_secs(60));
    let (tx, mut acks) = mpsc::channel(8);
    let stream = StreamTables::start(v.clone(), tx);
    assert!(stream.on_message(vec![snapshot(1, &[])]));
    assert_eq!(ack(&mut acks).await, 1);
    let guard = v.enter_unchecked(R, None).expect("nothing announced");
    assert!(stream.on_message(vec![notice(2, &["t"], &[])]));
    let dropper = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(guard);
    });
    let started = std::time::Instant::now();
    assert_eq!(ack(&mut acks).await, 2);
    assert!(started.elapsed() >= Duration::from_millis(40));
    dropper.await.unwrap();
}
