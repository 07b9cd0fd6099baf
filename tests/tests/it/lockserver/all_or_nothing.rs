//! All-or-nothing multi-key acquisition under concurrency: no partial lock is ever
//! visible to an observer, and the winners hold every key they asked for.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tandem_lockserver::client::BranchKind;
use tandem_tests::lockserver::{Kind, TestLockserver};

use super::{RESOURCE, both, key};

both!(concurrent_multi_key_acquisition_is_all_or_nothing);

async fn concurrent_multi_key_acquisition_is_all_or_nothing(kind: Kind) {
    let ls = Arc::new(TestLockserver::start(kind).await);
    let c = ls.client();
    let n = 24u32;
    let done = Arc::new(AtomicBool::new(false));
    let observer = {
        let (ls, done) = (ls.clone(), done.clone());
        tokio::spawn(async move {
            let mut looks = 0;
            while !done.load(Ordering::Relaxed) || looks == 0 {
                let (code, body) = ls.get("/v1/locks").await;
                assert_eq!(code, 200);
                let mut per: HashMap<String, usize> = HashMap::new();
                for r in body["locks"].as_array().unwrap() {
                    *per.entry(r["xid"].as_str().unwrap().to_string())
                        .or_default() += 1;
                }
                assert!(
                    per.values().all(|n| *n == 10),
                    "a partial lock set is visible: {per:?}"
                );
                looks += 1;
            }
            looks
        })
    };
    for round in 0..3u32 {
        let mut tasks = Vec::new();
        for i in 0..n {
            let c = c.clone();
            // Ten keys each; neighbours overlap on two of them.
            let keys: Vec<_> = (0..10)
                .map(|j| key(round * 1000 + ((i * 8 + j) % (n * 8))))
                .collect();
            tasks.push(tokio::spawn(async move {
                let x = c.begin(None).await.unwrap();
                let ok = c
                    .register_branch(&x, RESOURCE, BranchKind::AT, &keys, Duration::ZERO)
                    .await
                    .is_ok();
                (x, keys, ok)
            }));
        }
        let mut winners = Vec::new();
        for t in tasks {
            let (x, keys, ok) = t.await.unwrap();
            if ok {
                for k in &keys {
                    let h = c.lock_holder(std::slice::from_ref(k)).await.unwrap();
                    assert_eq!(
                        h.map(|h| h.1),
                        Some(x.clone()),
                        "a winner holds all of its keys"
                    );
                }
                winners.push(x);
            }
        }
        assert!(!winners.is_empty());
        for x in winners {
            c.commit(&x).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    done.store(true, Ordering::Relaxed);
    let looks = observer.await.unwrap();
    assert!(looks > 0);
    Arc::try_unwrap(ls)
        .ok()
        .expect("observer released the server")
        .stop()
        .await;
}
