//! `tandem migrate`: applies `migrations/<dialect>/*.sql` to databases given by URL.
//!
//! Owns the list of migrations (compiled in, so the binary needs no files beside it).
//! Never alters a table it did not create. Invariant: every migration is idempotent; a
//! PostgreSQL database's migrations apply in one transaction or not at all (MySQL
//! commits each DDL statement on its own, so a run cut short is finished by the next).
//!
//! `CREATE TABLE IF NOT EXISTS` accepts any table of that name: an `undo_log` made by
//! hand, or another tool's, may lack what tandem's correctness rests on (the unique
//! `(xid, branch_id)` that makes a late phase-1 commit fail after a rollback wrote
//! its marker; room for a whole undo record, which a non-strict MySQL session would
//! otherwise truncate). So the table found afterwards is checked, and one of another
//! shape fails the migration with what is wrong.

/// The PostgreSQL migrations, in order.
pub const POSTGRES: &[(&str, &str)] = &[(
    "0001_undo_log",
    include_str!("../../migrations/postgres/0001_undo_log.sql"),
)];

/// The MySQL/MariaDB migrations, in order.
pub const MYSQL: &[(&str, &str)] = &[(
    "0001_undo_log",
    include_str!("../../migrations/mysql/0001_undo_log.sql"),
)];

/// Why a database could not be migrated.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("{url}: not a postgres:// or mysql:// URL")]
    UnknownScheme { url: String },
    #[error("{url}: {source}")]
    Mysql {
        url: String,
        source: mysql_async::Error,
    },
    /// The driver's own message ("db error") names no cause; its sources do.
    #[error("{url}: {}", tandem_lockserver::error::chain(source))]
    Postgres {
        url: String,
        source: tokio_postgres::Error,
    },
    #[error("{url}: no database named (tandem's undo_log lives in each database it serves)")]
    NoDatabase { url: String },
    #[error(
        "{url}: the undo_log in {schema} is not of tandem's shape: {problem} (rename or drop it, then migrate again)"
    )]
    Shape {
        url: String,
        schema: String,
        problem: String,
    },
}

/// What `apply` did to one database.
#[derive(Debug)]
pub struct Applied {
    /// The migrations applied (each is idempotent: applied again, it changes nothing).
    pub migrations: Vec<&'static str>,
    /// Where the undo_log is: the schema (PostgreSQL) or database (MySQL).
    pub schema: String,
}

/// A column tandem's undo_log must have, and the types it accepts for it (lower-case,
/// without modifiers, as the catalog spells them: MySQL's `DATA_TYPE`, PostgreSQL's
/// `format_type(type, NULL)`).
struct Column {
    name: &'static str,
    postgres: &'static [&'static str],
    mysql: &'static [&'static str],
    /// tandem's inserts leave it out (the rollback's marker leaves out `id`).
    defaulted: bool,
}

const COLUMNS: &[Column] = &[
    Column {
        name: "id",
        postgres: &["bigint"],
        mysql: &["bigint"],
        defaulted: true,
    },
    Column {
        name: "branch_id",
        postgres: &["bigint"],
        mysql: &["bigint"],
        defaulted: false,
    },
    Column {
        name: "xid",
        postgres: &["character varying", "text"],
        mysql: &["varchar"],
        defaulted: false,
    },
    Column {
        name: "context",
        postgres: &["character varying", "text"],
        mysql: &["varchar"],
        defaulted: false,
    },
    Column {
        name: "rollback_info",
        postgres: &["bytea"],
        // Nothing smaller: a BLOB's 64 KiB would cut long records short.
        mysql: &["longblob"],
        defaulted: false,
    },
    Column {
        name: "log_status",
        postgres: &["integer"],
        mysql: &["int"],
        defaulted: false,
    },
    Column {
        name: "log_created",
        postgres: &["timestamp with time zone", "timestamp without time zone"],
        mysql: &["datetime", "timestamp"],
        defaulted: true,
    },
    Column {
        name: "log_modified",
        postgres: &["timestamp with time zone", "timestamp without time zone"],
        mysql: &["datetime", "timestamp"],
        defaulted: true,
    },
];

/// The shortest character column tandem writes xids and contexts into.
const MIN_CHARS: i64 = 128;

/// One column of an undo_log found in the catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FoundColumn {
    name: String,
    /// Without modifiers (see `Column`).
    ty: String,
    /// A character column's declared length; None: unlimited, or not one.
    length: Option<i64>,
    /// It has a default (or is generated, or takes NULL): an insert may leave it out.
    defaulted: bool,
}

/// What is wrong with an undo_log whose columns and unique keys (their key column
/// lists) are these; None: it is of tandem's shape.
fn shape_problem(
    columns: &[FoundColumn],
    unique_keys: &[Vec<String>],
    mysql: bool,
) -> Option<String> {
    for wanted in COLUMNS {
        let accepted = if mysql { wanted.mysql } else { wanted.postgres };
        let Some(found) = columns.iter().find(|c| c.name == wanted.name) else {
            return Some(format!("it has no column {}", wanted.name));
        };
        if !accepted.contains(&found.ty.as_str()) {
            return Some(format!(
                "its column {} is {}, not {}",
                wanted.name,
                found.ty,
                accepted.join(" or ")
            ));
        }
        if let Some(length) = found.length.filter(|&l| l < MIN_CHARS) {
            return Some(format!(
                "its column {} holds {length} characters, fewer than {MIN_CHARS}",
                wanted.name
            ));
        }
        if wanted.defaulted && !found.defaulted {
            return Some(format!(
                "its column {} has no default (tandem's inserts leave it out)",
                wanted.name
            ));
        }
    }
    let xid_and_branch = |key: &Vec<String>| {
        let mut key: Vec<&str> = key.iter().map(String::as_str).collect();
        key.sort_unstable();
        key == ["branch_id", "xid"]
    };
    if !unique_keys.iter().any(xid_and_branch) {
        return Some("it has no unique key on exactly (xid, branch_id)".to_owned());
    }
    None
}

/// Applies every migration of the URL's dialect to that database, then checks the
/// undo_log it finds there.
pub async fn apply(url: &str) -> Result<Applied, MigrateError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        apply_postgres(url).await
    } else if url.starts_with("mysql://") {
        apply_mysql(url).await
    } else {
        Err(MigrateError::UnknownScheme { url: redact(url) })
    }
}

/// The advisory lock concurrent `tandem migrate` runs on one PostgreSQL database take:
/// `CREATE TABLE IF NOT EXISTS` run at once from two sessions fails in one of them.
const POSTGRES_MIGRATE_LOCK: i64 = 0x7461_6e64_656d_0001;

async fn apply_postgres(url: &str) -> Result<Applied, MigrateError> {
    let err = |source| MigrateError::Postgres {
        url: redact(url),
        source,
    };
    let config: tokio_postgres::Config = url.parse().map_err(err)?;
    if config.get_dbname().is_none() {
        // PostgreSQL would pick the database named after the user.
        return Err(MigrateError::NoDatabase { url: redact(url) });
    }
    let (mut client, connection) = config.connect(tokio_postgres::NoTls).await.map_err(err)?;
    let driver = tokio::spawn(connection);
    // A second run's `… IF NOT EXISTS, skipping` NOTICEs say nothing an operator needs.
    client
        .batch_execute("SET client_min_messages = warning")
        .await
        .map_err(err)?;
    let tx = client.transaction().await.map_err(err)?;
    tx.execute(
        "SELECT pg_advisory_xact_lock($1)",
        &[&POSTGRES_MIGRATE_LOCK],
    )
    .await
    .map_err(err)?;
    // `CREATE TABLE IF NOT EXISTS` looks in the schema it would create in only: an
    // undo_log further along the search_path (the one tandem's connections use now)
    // would be shadowed by a second, empty one. It is checked instead.
    let elsewhere = tx
        .query_one(
            "SELECT to_regclass('undo_log') IS NOT NULL AND \
             (SELECT relnamespace FROM pg_class WHERE oid = to_regclass('undo_log')) \
             IS DISTINCT FROM (SELECT oid FROM pg_namespace WHERE nspname = current_schema())",
            &[],
        )
        .await
        .map_err(err)?
        .get::<_, bool>(0);
    if !elsewhere {
        for (_, sql) in POSTGRES {
            tx.batch_execute(sql).await.map_err(err)?;
        }
    }
    // The undo_log tandem's own connections find: the one this session's search_path
    // finds (the same role's, with no options of the client's).
    let schema: String = tx
        .query_one(
            "SELECT n.nspname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.oid = to_regclass('undo_log')",
            &[],
        )
        .await
        .map_err(err)?
        .get(0);
    let schema = format!("schema {schema}");
    let columns = tx
        .query(
            "SELECT attname::text, format_type(atttypid, NULL), \
                    CASE WHEN atttypid = 'varchar'::regtype AND atttypmod > 4 \
                         THEN (atttypmod - 4)::int8 END, \
                    atthasdef OR attidentity <> '' OR attgenerated <> '' OR NOT attnotnull \
             FROM pg_attribute \
             WHERE attrelid = to_regclass('undo_log') AND attnum > 0 AND NOT attisdropped",
            &[],
        )
        .await
        .map_err(err)?
        .iter()
        .map(|r| FoundColumn {
            name: r.get(0),
            ty: r.get(1),
            length: r.get(2),
            defaulted: r.get(3),
        })
        .collect::<Vec<_>>();
    // Key columns only: an index's INCLUDE columns do not make it unique on them.
    let unique_keys = tx
        .query(
            "SELECT ARRAY(SELECT a.attname::text FROM unnest(i.indkey[0:i.indnkeyatts - 1]) k \
                          JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k) \
             FROM pg_index i WHERE i.indrelid = to_regclass('undo_log') AND i.indisunique \
             AND i.indpred IS NULL AND i.indexprs IS NULL",
            &[],
        )
        .await
        .map_err(err)?
        .iter()
        .map(|r| r.get(0))
        .collect::<Vec<Vec<String>>>();
    if let Some(problem) = shape_problem(&columns, &unique_keys, false) {
        return Err(MigrateError::Shape {
            url: redact(url),
            schema,
            problem,
        });
    }
    tx.commit().await.map_err(err)?;
    drop(client);
    let _ = driver.await;
    Ok(Applied {
        migrations: POSTGRES.iter().map(|(name, _)| *name).collect(),
        schema,
    })
}

/// MySQL commits DDL on its own, one statement at a time: each migration is idempotent
/// (`CREATE TABLE IF NOT EXISTS`), so a run cut short is finished by the next.
async fn apply_mysql(url: &str) -> Result<Applied, MigrateError> {
    let err = |source| MigrateError::Mysql {
        url: redact(url),
        source,
    };
    let opts = mysql_async::Opts::from_url(url).map_err(|e| err(e.into()))?;
    let mut conn = mysql_async::Conn::new(opts).await.map_err(err)?;
    use mysql_async::prelude::Queryable;
    for (_, sql) in MYSQL {
        conn.query_drop(*sql).await.map_err(err)?;
    }
    let database: String = conn
        .query_first("SELECT DATABASE()")
        .await
        .map_err(err)?
        .unwrap_or_default();
    let schema = format!("database {database}");
    type Row = (String, String, Option<i64>, bool);
    let columns: Vec<Row> = conn
        .exec(
            "SELECT COLUMN_NAME, LOWER(DATA_TYPE), \
                    IF(DATA_TYPE IN ('varchar', 'char'), CHARACTER_MAXIMUM_LENGTH, NULL), \
                    COLUMN_DEFAULT IS NOT NULL OR IS_NULLABLE = 'YES' \
                    OR EXTRA LIKE '%auto_increment%' OR EXTRA LIKE '%GENERATED%' \
             FROM information_schema.COLUMNS \
             WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'undo_log'",
            (),
        )
        .await
        .map_err(err)?;
    let columns: Vec<FoundColumn> = columns
        .into_iter()
        .map(|(name, ty, length, defaulted)| FoundColumn {
            name,
            ty,
            length,
            defaulted,
        })
        .collect();
    let key_columns: Vec<(String, String)> = conn
        .exec(
            "SELECT INDEX_NAME, COLUMN_NAME FROM information_schema.STATISTICS \
             WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'undo_log' AND NON_UNIQUE = 0 \
               AND SUB_PART IS NULL \
             ORDER BY INDEX_NAME, SEQ_IN_INDEX",
            (),
        )
        .await
        .map_err(err)?;
    // The undo row must commit and roll back with the write it undoes.
    let engine: Option<(String, String)> = conn
        .query_first(
            "SELECT t.ENGINE, e.TRANSACTIONS FROM information_schema.TABLES t \
             JOIN information_schema.ENGINES e ON e.ENGINE = t.ENGINE \
             WHERE t.TABLE_SCHEMA = DATABASE() AND t.TABLE_NAME = 'undo_log'",
        )
        .await
        .map_err(err)?;
    conn.disconnect().await.map_err(err)?;
    if let Some((engine, transactions)) = engine
        && !transactions.eq_ignore_ascii_case("YES")
    {
        return Err(MigrateError::Shape {
            url: redact(url),
            schema,
            problem: format!(
                "undo_log uses engine {engine}, which has no transactions (the undo row must commit and roll back with the write it undoes): ALTER TABLE undo_log ENGINE=InnoDB"
            ),
        });
    }
    let mut unique_keys: Vec<(String, Vec<String>)> = Vec::new();
    for (index, column) in key_columns {
        match unique_keys.last_mut() {
            Some((name, columns)) if *name == index => columns.push(column),
            _ => unique_keys.push((index, vec![column])),
        }
    }
    let unique_keys: Vec<Vec<String>> = unique_keys.into_iter().map(|(_, c)| c).collect();
    if let Some(problem) = shape_problem(&columns, &unique_keys, true) {
        return Err(MigrateError::Shape {
            url: redact(url),
            schema,
            problem,
        });
    }
    Ok(Applied {
        migrations: MYSQL.iter().map(|(name, _)| *name).collect(),
        schema,
    })
}

/// The URL without its password (in its user info, or a `password=` option), for
/// messages.
pub fn redact(url: &str) -> String {
    let redacted = redact_by_shape(url);
    // A password with a raw `?` or `@` in it fools the shape; the drivers' own parsers
    // read it whole.
    let password = if url.starts_with("mysql://") {
        mysql_async::Opts::from_url(url)
            .ok()
            .and_then(|o| o.pass().map(str::to_owned))
    } else {
        url.parse::<tokio_postgres::Config>().ok().and_then(|c| {
            c.get_password()
                .map(|p| String::from_utf8_lossy(p).into_owned())
        })
    };
    match password {
        Some(password) if !password.is_empty() => {
            redacted.replacen(&format!(":{password}@"), ":***@", 1)
        }
        _ => redacted,
    }
}

fn redact_by_shape(url: &str) -> String {
    // The user info ends at the last `@`: a raw `?`, `/` or `@` may be in the password
    // (an `@` in the options makes this hide more than the password, never less).
    let (mut redacted, rest) = match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            let head = match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***@", &url[..scheme_end + 3]),
                None => url[..=at].to_owned(),
            };
            (head, &url[at + 1..])
        }
        _ => (String::new(), url),
    };
    let (host_and_path, query) = match rest.split_once('?') {
        Some((host_and_path, query)) => (host_and_path, Some(query)),
        None => (rest, None),
    };
    redacted.push_str(host_and_path);
    if let Some(query) = query {
        let options: Vec<String> = query
            .split('&')
            .map(|option| match option.split_once('=') {
                Some((name, _)) if name.eq_ignore_ascii_case("password") => format!("{name}=***"),
                _ => option.to_owned(),
            })
            .collect();
        redacted.push('?');
        redacted.push_str(&options.join("&"));
    }
    redacted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_that_break_the_url_are_redacted_too() {
        for (url, shown) in [
            (
                "mariadb://root:Sekr3tPW@127.0.0.1:3306/x",
                "mariadb://root:***@127.0.0.1:3306/x",
            ),
            (
                "mysql://root:pa?ss@127.0.0.1:3306/x",
                "mysql://root:***@127.0.0.1:3306/x",
            ),
            (
                "postgres://u:pa?ss@127.0.0.1:notaport/x",
                "postgres://u:***@127.0.0.1:notaport/x",
            ),
            (
                "postgres://u:a/b@c@h/db?password=x",
                "postgres://u:***@h/db?password=***",
            ),
        ] {
            assert_eq!(redact(url), shown);
        }
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(
            redact("postgres://u@h/db?sslmode=require&password=s3cret"),
            "postgres://u@h/db?sslmode=require&password=***"
        );
        assert_eq!(
            redact("mysql://u:pw@h/db?Password=x"),
            "mysql://u:***@h/db?Password=***"
        );
        assert_eq!(redact("postgres://u:p?w@h/db"), "postgres://u:***@h/db");
    }

    fn owned(columns: &[(&str, &str)]) -> Vec<FoundColumn> {
        columns
            .iter()
            .map(|(n, t)| FoundColumn {
                name: n.to_string(),
                ty: t.to_string(),
                length: None,
                defaulted: true,
            })
            .collect()
    }

    #[test]
    fn an_undo_log_of_another_shape_is_named_for_what_it_lacks() {
        let postgres = [
            ("id", "bigint"),
            ("branch_id", "bigint"),
            ("xid", "character varying"),
            ("context", "character varying"),
            ("rollback_info", "bytea"),
            ("log_status", "integer"),
            ("log_created", "timestamp with time zone"),
            ("log_modified", "timestamp with time zone"),
        ];
        let unique = vec![vec!["xid".to_owned(), "branch_id".to_owned()]];
        assert_eq!(shape_problem(&owned(&postgres), &unique, false), None);
        assert_eq!(
            shape_problem(&owned(&postgres), &[vec!["id".to_owned()]], false).as_deref(),
            Some("it has no unique key on exactly (xid, branch_id)")
        );
        assert_eq!(
            shape_problem(&owned(&postgres[1..]), &unique, false).as_deref(),
            Some("it has no column id")
        );
        let mysql = [
            ("id", "bigint"),
            ("branch_id", "bigint"),
            ("xid", "varchar"),
            ("context", "varchar"),
            ("rollback_info", "blob"),
            ("log_status", "int"),
            ("log_created", "datetime"),
            ("log_modified", "datetime"),
        ];
        assert_eq!(
            shape_problem(&owned(&mysql), &unique, true).as_deref(),
            Some("its column rollback_info is blob, not longblob")
        );
        let mut short = owned(&postgres);
        short[2].length = Some(16);
        assert_eq!(
            shape_problem(&short, &unique, false).as_deref(),
            Some("its column xid holds 16 characters, fewer than 128")
        );
        let mut undefaulted = owned(&postgres);
        undefaulted[6].defaulted = false;
        assert_eq!(
            shape_problem(&undefaulted, &unique, false).as_deref(),
            Some("its column log_created has no default (tandem's inserts leave it out)")
        );
        let mut wide = owned(&postgres);
        wide[2].length = Some(255);
        assert_eq!(shape_problem(&wide, &unique, false), None);
    }

    #[test]
    fn every_migration_is_idempotent_ddl() {
        for (name, sql) in POSTGRES.iter().chain(MYSQL) {
            let code: String = sql
                .lines()
                .filter(|l| !l.trim_start().starts_with("--"))
                .collect::<Vec<_>>()
                .join(" ");
            let statements: Vec<&str> = code
                .split(';')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .collect();
            assert!(!statements.is_empty(), "{name} is empty");
            for statement in statements {
                assert!(statement.contains("IF NOT EXISTS"), "{name}: {statement}");
            }
        }
    }
}
