//! Data-driven: `testdata/postgres/analyze.txt`.

use super::*;
use crate::dialect::Postgres;

fn summary(a: &Analysis) -> String {
    match a {
        Analysis::Read => "read".into(),
        Analysis::LockingRead(None) => "locking-read".into(),
        Analysis::LockingRead(Some(r)) => format!(
            "locking-read {} alias={} where={}",
            r.table.name,
            r.alias.as_deref().unwrap_or("-"),
            r.selection
                .as_ref()
                .map(|s| format!("[{s}]"))
                .unwrap_or("-".into())
        ),
        Analysis::Begin => "begin".into(),
        Analysis::Commit => "commit".into(),
        Analysis::Rollback => "rollback".into(),
        Analysis::Other => "other".into(),
        Analysis::Write(w) => format!(
            "write {} {} alias={} where={} assigned=[{}] returning={}{}",
            match w.kind {
                WriteKind::Insert => "insert",
                WriteKind::Update => "update",
                WriteKind::Delete => "delete",
            },
            match &w.table.schema {
                Some(s) => format!("{s}.{}", w.table.name),
                None => w.table.name.clone(),
            },
            w.alias.as_deref().unwrap_or("-"),
            w.selection
                .as_ref()
                .map(|s| format!("[{s}]"))
                .unwrap_or("-".into()),
            w.assigned.join(","),
            w.has_returning,
            w.from
                .as_ref()
                .map(|f| format!(" from=[{f}]"))
                .unwrap_or_default()
        ),
    }
}

#[test]
fn golden_cases() {
    let text = include_str!("../../testdata/postgres/analyze.txt");
    let mut cases = 0;
    let mut sql = None;
    for line in text.lines() {
        if let Some(s) = line.strip_prefix("sql: ") {
            sql = Some(s.to_owned());
        } else if let Some(want) = line.strip_prefix("want: ") {
            let sql = sql.take().expect("want: follows sql:");
            let got = analyze(&Postgres, &sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
            assert_eq!(got.len(), 1, "{sql}");
            assert_eq!(summary(&got[0]), want, "{sql}");
            cases += 1;
        } else if let Some(what) = line.strip_prefix("refused: ") {
            let sql = sql.take().expect("refused: follows sql:");
            match analyze(&Postgres, &sql) {
                Err(Error::Unsupported { what: got }) => assert_eq!(got, what, "{sql}"),
                other => panic!("{sql}: expected a refusal, got {other:?}"),
            }
            cases += 1;
        }
    }
    assert!(cases >= 20, "only {cases} cases ran");
}

#[test]
fn several_statements_are_analysed_one_by_one() {
    let got = analyze(&Postgres, "BEGIN; UPDATE t SET v = 1 WHERE id = 2; COMMIT").unwrap();
    assert_eq!(got.len(), 3);
    assert_eq!(got[0], Analysis::Begin);
    assert!(matches!(got[1], Analysis::Write(_)));
    assert_eq!(got[2], Analysis::Commit);
}

#[test]
fn parse_errors_carry_the_dialect_and_an_excerpt() {
    match analyze(&Postgres, "UPDATE SET WHERE") {
        Err(Error::Parse {
            dialect, excerpt, ..
        }) => {
            assert_eq!(dialect, "postgres");
            assert_eq!(excerpt, "UPDATE SET WHERE");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn deep_nesting_is_refused_not_a_stack_overflow() {
    let sql = format!("SELECT {}1{}", "(".repeat(500), ")".repeat(500));
    assert!(analyze(&Postgres, &sql).is_err());
}

#[test]
fn statements_split_at_their_own_semicolons_only() {
    let sql = "UPDATE t SET v = 'a;b' WHERE id = 1;\n  -- c; d\nSELECT $$x;y$$ /* ; */ ; DELETE FROM \"s;t\" WHERE k = 'é;';;";
    let got = crate::analyze::split_statements(&Postgres, sql).unwrap();
    assert_eq!(
        got,
        vec![
            "UPDATE t SET v = 'a;b' WHERE id = 1",
            "\n  -- c; d\nSELECT $$x;y$$ /* ; */ ",
            " DELETE FROM \"s;t\" WHERE k = 'é;'",
        ]
    );
    assert_eq!(
        crate::analyze::split_statements(&Postgres, "SELECT 1").unwrap(),
        vec!["SELECT 1"]
    );
    // Multi-byte characters before a separator on the same line.
    let got = crate::analyze::split_statements(&Postgres, "SELECT 'ü'; SELECT 'ß'").unwrap();
    assert_eq!(got, vec!["SELECT 'ü'", " SELECT 'ß'"]);
}

#[test]
fn mysql_statements_are_counted_by_mysql_rules() {
    use crate::analyze::count_mysql_statements as n;
    assert_eq!(n("UPDATE t SET v = 'a\\'; b' WHERE id = 1").unwrap(), 1);
    assert_eq!(n("UPDATE `a;b` SET v = 1; # c; d\n").unwrap(), 1);
    assert_eq!(n("BEGIN; UPDATE t SET v = 1; COMMIT").unwrap(), 3);
    assert_eq!(n("COMMIT;").unwrap(), 1);
    assert_eq!(n("/* ; */ SELECT 1 -- ;\n").unwrap(), 1);
}
