//! Bad input gets a clear error (right HTTP status / gRPC code) and leaves state unchanged.

use std::time::Duration;

use tandem_lockserver::Error;
use tandem_lockserver::client::{BranchKind, Xid};
use tandem_lockserver::proto::{self as pb, coordinator_client::CoordinatorClient};
use tandem_tests::lockserver::{Kind, TestLockserver, http_raw};
use tonic::Code;

use super::{RESOURCE, both, key};

both!(
    http_bad_input,
    grpc_bad_input,
    listings_show_live_transactions_first
);

async fn http_bad_input(kind: Kind) {
    let ls = TestLockserver::start(kind).await;
    let (code, b) = ls
        .post("/v1/transactions", Some(r#"{"timeout_ms": 1000}"#))
        .await;
    assert_eq!(code, 201);
    let x = b["xid"].as_str().unwrap().to_string();
    let show = format!("/v1/transactions/{x}");
    let before = ls.get(&show).await;
    for (body, why) in [
        (r#"{"timeout_ms": "soon"}"#, "wrong type"),
        ("{not json", "malformed"),
        (r#"{"timeout": 5}"#, "unknown field"),
        (r#"{"timeout_ms": 0}"#, "zero"),
    ] {
        let (code, b) = ls.post("/v1/transactions", Some(body)).await;
        assert_eq!(code, 400, "{why}: {b}");
        assert!(b["error"].as_str().is_some_and(|e| !e.is_empty()));
    }
    let (code, body) = http_raw(
        ls.http,
        "POST",
        "/v1/transactions",
        Some(&vec![b' '; 100_000]),
    )
    .await;
    assert_eq!(code, 413, "oversized body");
    let json = |body: &[u8]| {
        serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|b| b["error"].as_str().map(str::to_owned))
    };
    assert!(json(&body).is_some(), "a JSON error: {body:?}");
    // A wrong method, too.
    let (code, body) = http_raw(ls.http, "GET", &format!("{show}/commit"), None).await;
    assert_eq!(code, 405);
    assert!(json(&body).is_some(), "a JSON error: {body:?}");
    for p in [
        "/v1/transactions/nope",
        "/v1/transactions/nope/commit",
        "/v1/transactions/nope/rollback",
    ] {
        let method = if p.ends_with("nope") { "GET" } else { "POST" };
        let (code, b) = tandem_tests::lockserver::http(ls.http, method, p, None).await;
        assert_eq!(code, 404, "{p}: {b}");
    }
    assert_eq!(ls.get(&show).await, before, "state unchanged");
    assert_eq!(
        ls.post(&format!("{show}/commit"), None).await,
        (200, serde_json::json!({"status": "Committed"}))
    );
    // A repeated commit (a retry whose first answer was lost) answers the decision.
    let (code, b) = ls.post(&format!("{show}/commit"), None).await;
    assert_eq!(
        (code, b["status"].as_str()),
        (200, Some("Committed")),
        "duplicate commit: {b}"
    );
    let (code, _) = ls.post(&format!("{show}/rollback"), None).await;
    assert_eq!(code, 409, "rollback after commit");
    assert_eq!(ls.get(&show).await.1["status"], "Committed");
    let (code, b) = ls.get("/v1/nothing-here").await;
    assert_eq!(code, 404);
    assert!(b["error"].as_str().is_some(), "{b}");
    ls.stop().await;
}

async fn grpc_bad_input(kind: Kind) {
    let ls = TestLockserver::start(kind).await;
    let c = ls.client();
    let mut raw = CoordinatorClient::connect(format!("http://{}", ls.grpc))
        .await
        .unwrap();
    let x = c.begin(None).await.unwrap();
    c.register_branch(&x, RESOURCE, BranchKind::AT, &[key(1)], Duration::ZERO)
        .await
        .unwrap();
    let before = ls.get(&format!("/v1/transactions/{x}")).await;
    let reg = |xid: &str, keys: Vec<String>, t: pb::BranchType| pb::RegisterRequest {
        xid: xid.into(),
        resource_id: RESOURCE.into(),
        branch_type: t as i32,
        lock_keys: keys,
        wait_ms: 0,
        token: 0,
    };
    let cases = [
        (
            reg(x.as_str(), vec!["not-a-key".into()], pb::BranchType::At),
            Code::InvalidArgument,
        ),
        (
            reg(
                x.as_str(),
                vec![key(2).to_string()],
                pb::BranchType::Unspecified,
            ),
            Code::InvalidArgument,
        ),
        (
            reg("", vec![key(2).to_string()], pb::BranchType::At),
            Code::InvalidArgument,
        ),
        (
            reg("no-such-xid", vec![key(2).to_string()], pb::BranchType::At),
            Code::NotFound,
        ),
    ];
    for (req, code) in cases {
        let e = raw.register_branch(req.clone()).await.unwrap_err();
        assert_eq!(e.code(), code, "{req:?}: {e:?}");
    }
    let e = raw
        .report_branch(pb::ReportRequest {
            xid: x.to_string(),
            branch_id: 99,
            success: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    // A registration named by its token can be withdrawn, not reported done, and the
    // withdrawal names a branch type.
    let withdraw = |success: bool, t: pb::BranchType| pb::ReportRequest {
        xid: x.to_string(),
        branch_id: 0,
        success,
        token: 7,
        resource_id: RESOURCE.into(),
        branch_type: t as i32,
    };
    for req in [
        withdraw(true, pb::BranchType::Xa),
        withdraw(false, pb::BranchType::Unspecified),
    ] {
        let e = raw.report_branch(req.clone()).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{req:?}: {e:?}");
    }
    let e = raw
        .commit(pb::XidRequest {
            xid: "bad xid with spaces".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(
        ls.get(&format!("/v1/transactions/{x}")).await,
        before,
        "state unchanged"
    );
    assert!(!c.locks_held(&[key(2)]).await.unwrap());
    // Registration for a finished global transaction.
    c.commit(&x).await.unwrap();
    let e = c
        .register_branch(&x, RESOURCE, BranchKind::AT, &[key(3)], Duration::ZERO)
        .await
        .unwrap_err();
    assert!(
        matches!(
            &e,
            Error::Rpc {
                code: Code::FailedPrecondition,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.is_client_fault());
    // A repeated commit (a retry whose first answer was lost) answers the decision.
    assert_eq!(
        c.commit(&x).await.unwrap().as_str(),
        "Committed",
        "a repeated commit"
    );
    let e = c.rollback(&x).await.unwrap_err();
    assert!(
        matches!(&e, Error::Rpc { code: Code::FailedPrecondition, message } if message.contains("AsyncCommitting") || message.contains("Committed")),
        "the other decision is refused: {e:?}"
    );
    assert!(!c.locks_held(&[key(3)]).await.unwrap());
    let unknown = Xid::parse("ffffffffffffffff-1").unwrap();
    assert!(matches!(
        c.status(&unknown).await,
        Err(Error::Rpc {
            code: Code::NotFound,
            ..
        })
    ));
    ls.stop().await;
}

/// Operators list what is live: `GET /v1/transactions` puts unfinished transactions
/// before finished ones (kept for `finished_retention_ms`), and both listings say when
/// `limits.max_list` cut them short.
async fn listings_show_live_transactions_first(kind: Kind) {
    let (mut config, dir) = tandem_tests::lockserver::test_config(kind);
    config.limits.max_list = 3;
    let ls = TestLockserver::start_with(config, dir).await;
    let begin = || async {
        let (code, b) = ls.post("/v1/transactions", None).await;
        assert_eq!(code, 201, "{b}");
        b["xid"].as_str().unwrap().to_owned()
    };
    for _ in 0..3 {
        let xid = begin().await;
        let (code, _) = ls
            .post(&format!("/v1/transactions/{xid}/commit"), None)
            .await;
        assert_eq!(code, 200);
    }
    let live = [begin().await, begin().await];
    let (code, b) = ls.get("/v1/transactions").await;
    assert_eq!(code, 200);
    let listed: Vec<(&str, &str)> = b["transactions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| (g["xid"].as_str().unwrap(), g["status"].as_str().unwrap()))
        .collect();
    assert_eq!(listed.len(), 3, "{b}");
    assert_eq!(
        listed[..2],
        [(live[0].as_str(), "Begin"), (live[1].as_str(), "Begin")],
        "{b}"
    );
    assert_eq!(listed[2].1, "Committed", "{b}");
    assert_eq!(b["truncated"], true, "{b}");
    let (_, locks) = ls.get("/v1/locks").await;
    assert_eq!(locks["truncated"], false, "{locks}");
    ls.stop().await;
}
