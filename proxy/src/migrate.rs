//! `tandem migrate`: applies `migrations/<dialect>/*.sql` to databases given by URL.
//!
//! Owns the list of migrations (compiled in, so the binary needs no files beside it).
//! Never alters a table it did not create. Invariant: every migration is idempotent; a
//! PostgreSQL database's migrations apply in one transaction or not at all (MySQL
//! commits each DDL statement on its own, so a run cut short is finished by the next).

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
    #[error("{url}: {source}")]
    Postgres {
        url: String,
        source: tokio_postgres::Error,
    },
}

/// Applies every migration of the URL's dialect to that database; returns the names
/// applied.
pub async fn apply(url: &str) -> Result<Vec<&'static str>, MigrateError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        apply_postgres(url).await
    } else if url.starts_with("mysql://") {
        apply_mysql(url).await
    } else {
        Err(MigrateError::UnknownScheme {
            url: url.to_owned(),
        })
    }
}

async fn apply_postgres(url: &str) -> Result<Vec<&'static str>, MigrateError> {
    let err = |source| MigrateError::Postgres {
        url: redact(url),
        source,
    };
    let config: tokio_postgres::Config = url.parse().map_err(err)?;
    let (mut client, connection) = config.connect(tokio_postgres::NoTls).await.map_err(err)?;
    let driver = tokio::spawn(connection);
    let tx = client.transaction().await.map_err(err)?;
    for (_, sql) in POSTGRES {
        tx.batch_execute(sql).await.map_err(err)?;
    }
    tx.commit().await.map_err(err)?;
    drop(client);
    let _ = driver.await;
    Ok(POSTGRES.iter().map(|(name, _)| *name).collect())
}

/// MySQL commits DDL on its own, one statement at a time: each migration is idempotent
/// (`CREATE TABLE IF NOT EXISTS`), so a run cut short is finished by the next.
async fn apply_mysql(url: &str) -> Result<Vec<&'static str>, MigrateError> {
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
    conn.disconnect().await.map_err(err)?;
    Ok(MYSQL.iter().map(|(name, _)| *name).collect())
}

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
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
