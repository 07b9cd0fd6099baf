//! Data-driven: `testdata/postgres/analyze.txt` and `testdata/mysql/analyze.txt`.

use super::*;
use crate::dialect::{Mysql, Postgres};

fn summary(a: &Analysis) -> String {
    match a {
        Analysis::Read => "read".into(),
        Analysis::LockingRead(None) => "locking-read".into(),
        Analysis::LockingRead(Some(r)) => format!(
            "locking-read {} alias={} where={}{}{}",
            r.table.name,
            r.alias.as_deref().unwrap_or("-"),
            r.selection
                .as_ref()
                .map(|s| format!("[{s}]"))
                .unwrap_or("-".into()),
            if r.shared { " shared" } else { "" },
            if r.nowait { " nowait" } else { "" },
        ),
        Analysis::Begin => "begin".into(),
        Analysis::Commit => "commit".into(),
        Analysis::Rollback => "rollback".into(),
        Analysis::Other => "other".into(),
        Analysis::Savepoint(SavepointOp::Set(name)) => format!("savepoint {name}"),
        Analysis::Savepoint(SavepointOp::Release(name)) => format!("release {name}"),
        Analysis::Savepoint(SavepointOp::RollbackTo(name)) => format!("rollback to {name}"),
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

/// What MySQL's writes add to [`summary`] (PostgreSQL's cases never show it).
fn mysql_summary(a: &Analysis) -> String {
    let Analysis::Write(w) = a else {
        return summary(a);
    };
    let mut out = summary(a);
    let mut field = |name: &str, value: &Option<String>| {
        if let Some(v) = value {
            out.push_str(&format!(" {name}=[{v}]"));
        }
    };
    field("order", &w.order_by);
    if !w.order_columns.is_empty() {
        field("order_columns", &Some(w.order_columns.join(",")));
    }
    field("limit", &w.limit);
    field("joined", &w.joined);
    match w.on_duplicate {
        OnDuplicate::Error => {}
        OnDuplicate::Ignore => out.push_str(" dup=ignore"),
        OnDuplicate::Update => out.push_str(" dup=update"),
        OnDuplicate::Replace => out.push_str(" dup=replace"),
    }
    if let Some(rows) = &w.rows {
        let columns = match &rows.columns {
            Some(c) => format!("({})", c.join(",")),
            None => "*".into(),
        };
        let rows: Vec<String> = rows
            .rows
            .iter()
            .map(|row| {
                let values: Vec<String> = row
                    .iter()
                    .map(|v| match v {
                        InsertValue::Default => "DEFAULT".into(),
                        InsertValue::Null => "NULL".into(),
                        InsertValue::Constant(s) => s.clone(),
                        InsertValue::Computed(s) => format!("~{s}"),
                    })
                    .collect();
                format!("({})", values.join(","))
            })
            .collect();
        out.push_str(&format!(" values={columns}[{}]", rows.join(",")));
        if w.rows.as_ref().is_some_and(|r| r.double_quoted) {
            out.push_str(" double-quoted");
        }
    }
    out
}

fn run_golden(d: &dyn Dialect, text: &str, summary: fn(&Analysis) -> String) -> usize {
    let mut cases = 0;
    let mut sql = None;
    for line in text.lines() {
        if let Some(s) = line.strip_prefix("sql: ") {
            sql = Some(s.to_owned());
        } else if let Some(want) = line.strip_prefix("want: ") {
            let sql = sql.take().expect("want: follows sql:");
            let got = analyze(d, &sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
            assert_eq!(got.len(), 1, "{sql}");
            assert_eq!(summary(&got[0]), want, "{sql}");
            cases += 1;
        } else if let Some(what) = line.strip_prefix("refused: ") {
            let sql = sql.take().expect("refused: follows sql:");
            match analyze(d, &sql) {
                Err(Error::Unsupported { what: got } | Error::Unchecked { what: got }) => {
                    assert_eq!(got, what, "{sql}")
                }
                other => panic!("{sql}: expected a refusal, got {other:?}"),
            }
            cases += 1;
        }
    }
    cases
}

#[test]
fn golden_cases() {
    let text = include_str!("../../testdata/postgres/analyze.txt");
    let cases = run_golden(&Postgres, text, summary);
    assert!(cases >= 20, "only {cases} cases ran");
}

#[test]
fn mysql_golden_cases() {
    let text = include_str!("../../testdata/mysql/analyze.txt");
    let cases = run_golden(&Mysql, text, mysql_summary);
    assert!(cases >= 50, "only {cases} cases ran");
}

#[test]
fn mysql_several_statements_number_placeholders_across_them() {
    let got = analyze(&Mysql, "BEGIN; UPDATE t SET v = ? WHERE id = ?; COMMIT").unwrap();
    assert_eq!(got.len(), 3);
    assert_eq!(got[0], Analysis::Begin);
    match &got[1] {
        Analysis::Write(w) => assert_eq!(w.selection.as_deref(), Some("id = ?2")),
        other => panic!("{other:?}"),
    }
    assert_eq!(got[2], Analysis::Commit);
}

#[test]
fn mysql_parse_errors_carry_the_dialect() {
    match analyze(&Mysql, "UPDATE SET WHERE") {
        Err(Error::Parse { dialect, .. }) => assert_eq!(dialect, "mysql"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn called_functions_are_named_as_the_dialect_folds_them() {
    let sql = "SELECT s.Bump(1), \"Quoted\"(2), 'wfn(3)', x FROM t WHERE id IN (1) -- f(4)";
    assert_eq!(
        crate::analyze::called_functions(&Postgres, sql),
        ["bump", "Quoted", "in"]
    );
    // A literal that ends in a backslash ends there: the call after it counts.
    assert_eq!(
        crate::analyze::called_functions(&Postgres, r"SELECT 'a\', wfn(1)"),
        ["wfn"]
    );
    assert_eq!(
        crate::analyze::called_functions(&Mysql, "SELECT `db`.`Bump`(1), 'f(2)' /* g(3) */"),
        ["bump"]
    );
}

#[test]
fn executable_comments_are_found_whatever_they_hold() {
    for sql in [
        "DELETE FROM t WHERE id = 1 /*M! + 1 */",
        "DELETE FROM t WHERE id = 1 /*M!100000 + 1 */",
        "DELETE FROM t WHERE id = 1 /*!99999 + 1 */",
        "SELECT 1 /*!50000 FROM t */",
    ] {
        assert!(crate::analyze::has_executable_comment(sql), "{sql}");
    }
    assert!(!crate::analyze::has_executable_comment(
        "DELETE FROM t WHERE id = 1 /* + 1 */ -- /*"
    ));
}

#[test]
fn comments_mysql_and_mariadb_read_otherwise_are_refused() {
    for sql in [
        "UPDATE /*!99999 a */ h SET v = 5 WHERE id = 1",
        "UPDATE /*!50700 a */ h SET v = 5 WHERE id = 1",
        "DELETE FROM /*!100000 a USING a JOIN */ h WHERE id = 1",
    ] {
        assert!(analyze(&Mysql, sql).is_err(), "{sql}");
    }
    for sql in [
        "UPDATE /*!50000 h */ SET v = 5 WHERE id = 1",
        "UPDATE h SET v = 5 /*!40101 , w = 1 */ WHERE id = 1",
    ] {
        assert!(analyze(&Mysql, sql).is_ok(), "{sql}");
    }
}

#[test]
fn numbered_placeholders_bind_by_position() {
    let (sql, params) =
        bind_positionally("SELECT `a?` FROM t WHERE k = ?2 AND v = '?1' LIMIT ?3").unwrap();
    assert_eq!(sql, "SELECT `a?` FROM t WHERE k = ? AND v = '?1' LIMIT ?");
    assert_eq!(params, vec![1, 2]);
    assert!(bind_positionally("SELECT ? FROM t").is_err());
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
fn mysql_statements_split_by_mysql_rules() {
    let sql = "SET @a = 'x\\';y'; SELECT `a;b` # c; d\n FROM t; -- e;\nSHOW WARNINGS;";
    let got = crate::analyze::split_mysql_statements(sql).unwrap();
    assert_eq!(
        got,
        vec![
            "SET @a = 'x\\';y'",
            " SELECT `a;b` # c; d\n FROM t",
            " -- e;\nSHOW WARNINGS",
        ]
    );
}

#[test]
fn a_statements_own_time_limit_is_read_from_set_statement() {
    use crate::analyze::statement_time_limit as limit;
    use std::time::Duration;
    assert_eq!(
        limit("SET STATEMENT max_statement_time=5 FOR SELECT 1"),
        Some(Duration::from_secs(5))
    );
    assert_eq!(
        limit(
            "set statement lock_wait_timeout = 2, MAX_STATEMENT_TIME = 0.25, optimizer_switch = 'index_merge=off' for UPDATE t SET v = 1"
        ),
        Some(Duration::from_millis(250))
    );
    for none in [
        "SET STATEMENT max_statement_time = 0 FOR SELECT 1",
        "SET STATEMENT lock_wait_timeout = 5 FOR SELECT 1",
        "SELECT 1",
        "SET max_statement_time = 5",
        "SET STATEMENT max_statement_time = 5; SELECT 1",
        "UPDATE t SET max_statement_time = 5",
    ] {
        assert_eq!(limit(none), None, "{none}");
    }
}

#[test]
fn empty_mysql_statements_are_found_where_the_server_would_meet_them() {
    use crate::analyze::has_empty_mysql_statement as empty;
    for sql in [
        "UPDATE t SET v = 1;; UPDATE t SET v = 2",
        "UPDATE t SET v = 1; ; UPDATE t SET v = 2",
        "; UPDATE t SET v = 1",
        "UPDATE t SET v = 1; /* nothing */; UPDATE t SET v = 2",
        "UPDATE t SET v = 1; UPDATE t SET v = 2; -- done",
        "UPDATE t SET v = 1; # done\n",
        "UPDATE t SET v = 'unended",
    ] {
        assert!(empty(sql), "{sql}");
    }
    for sql in [
        "UPDATE t SET v = 1; UPDATE t SET v = 2",
        "UPDATE t SET v = 1; UPDATE t SET v = 2;",
        "UPDATE t SET v = 1; UPDATE t SET v = 2 ;\n  ",
        "/* hibernate */ UPDATE t SET v = 1; /* again */ UPDATE t SET v = ';;'",
        "UPDATE t SET v = 1 -- trailing\n; UPDATE `a;;b` SET v = 2",
    ] {
        assert!(!empty(sql), "{sql}");
    }
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

#[test]
fn a_statement_body_ends_at_its_last_token() {
    use crate::analyze::statement_body;
    for (sql, body) in [
        ("UPDATE t SET v = 1", "UPDATE t SET v = 1"),
        ("UPDATE t SET v = 1 ;\n", "UPDATE t SET v = 1"),
        ("UPDATE t SET v = 1; -- done", "UPDATE t SET v = 1"),
        ("UPDATE t SET v = 1 /* a; b */ ;", "UPDATE t SET v = 1"),
        (
            "UPDATE t SET v = ';' WHERE k = 'ü'; /* x */",
            "UPDATE t SET v = ';' WHERE k = 'ü'",
        ),
        (
            "UPDATE t SET v = $$;$$;\n-- a\n-- b",
            "UPDATE t SET v = $$;$$",
        ),
        // A line comment with nothing after it: what is appended starts a new line.
        (
            "UPDATE t SET v = 1 -- no semicolon",
            "UPDATE t SET v = 1 -- no semicolon",
        ),
    ] {
        assert_eq!(statement_body(sql), body, "{sql}");
    }
}

#[test]
fn a_pool_reset_is_found_among_other_statements() {
    for sql in [
        "SELECT pg_advisory_unlock_all();\nCLOSE ALL;\nUNLISTEN *;\nRESET ALL;",
        "discard all",
        "SELECT 1; RESET  ALL",
        "/* pool */ DISCARD ALL;",
    ] {
        assert!(crate::resets_session(sql), "{sql}");
    }
    for sql in [
        "RESET search_path",
        "DISCARD PLANS",
        "SELECT 'reset all'",
        "VACUUM (VERBOSE) t; SELECT 'reset all'",
        "UPDATE t SET preset = 1 WHERE preset all_flag",
        "SELECT 1 /* RESET ALL */",
        "CLOSE ALL",
        "UPDATE t SET v = 1",
    ] {
        assert!(!crate::resets_session(sql), "{sql}");
    }
}

#[test]
fn mysql_spaces_the_server_reads_as_name_characters_are_refused() {
    for sql in [
        "UPDATE t SET v = 'z' WHERE id = 3 --\u{a0}\n",
        "UPDATE t SET v = 'z' WHERE id = 3 --\u{2003}x",
    ] {
        match analyze(&Mysql, sql) {
            Err(Error::Unsupported { what }) => assert!(what.contains("ASCII"), "{sql}: {what}"),
            other => panic!("{sql}: expected a refusal, got {other:?}"),
        }
    }
    for sql in [
        "UPDATE t SET v = 'a\u{a0}b' WHERE id = 3",
        "UPDATE t SET v = 1 WHERE id = 3 -- comment\u{a0}with it\n",
        "UPDATE t SET v = 1 /* \u{a0} */ WHERE `a\u{a0}b` = 3",
        "UPDATE t SET v = 'é' WHERE id = 3",
    ] {
        assert!(analyze(&Mysql, sql).is_ok(), "{sql}");
    }
    // PostgreSQL's `--` needs no space after it: nothing to refuse there.
    assert!(analyze(&Postgres, "UPDATE t SET v = 1 WHERE id = 3 --\u{a0}x").is_ok());
}

#[test]
fn fetch_and_move_without_from_are_cursor_moves_not_parse_errors() {
    for sql in ["FETCH ALL c", "fetch 2 c;", "MOVE 1 c", "FETCH ALL c ; ;"] {
        assert_eq!(analyze(&Postgres, sql), Ok(vec![Analysis::Other]), "{sql}");
    }
    for sql in [
        "FETCH ALL c; UPDATE t SET v = WHERE id = 1",
        "UPDATE t SET v = WHERE id = 1; FETCH ALL c",
    ] {
        assert!(
            matches!(analyze(&Postgres, sql), Err(Error::Parse { .. })),
            "{sql}"
        );
    }
}

#[test]
fn an_operator_read_on_through_a_comment_opener_is_flagged() {
    for sql in [
        "SELECT 2 #-- '\n 3; UPDATE t SET v = 5; --'",
        "SELECT 2 </* '*/ 3; UPDATE t SET v = 5; -- '",
        "SELECT '{}'::jsonb ?-- '\n''; UPDATE t SET v = 5 -- '",
    ] {
        assert!(super::operator_swallows_comment(sql), "{sql}");
    }
    for sql in [
        "SELECT 1 +-- c\n 2",
        "SELECT '<!-- html -->', 1 -- ---\n",
        "SELECT 2 /* a *//* b */ + 1",
        "SELECT a #> '{x}' FROM t",
    ] {
        assert!(!super::operator_swallows_comment(sql), "{sql}");
    }
}
