//! How tandem captures each MySQL write exactly, or why it refuses it: the checks a
//! write must pass against its table, the before image of an UPDATE or DELETE, and the
//! plan of an INSERT, whose keys MySQL does not return.
//!
//! Owns the rules that follow from MySQL's semantics: what a VALUES row collides with
//! (the primary key or any unique key), which keys AUTO_INCREMENT hands out, when a
//! LIMIT picks rows deterministically. Never runs SQL. Invariant: every row a write that
//! passes changes is selected by its before image or named by its plan.

use super::catalog::MysqlTable;
use super::types;
use crate::analyze::{InsertRows, InsertValue, OnDuplicate, Write, WriteKind};
use crate::dialect::{Dialect, Mysql};
use crate::error::Error;
use crate::image::Capture;

/// How tandem learns what a MySQL INSERT (plain, IGNORE, … ON DUPLICATE KEY UPDATE, or
/// REPLACE) changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InsertPlan {
    /// The existing rows a VALUES row collides with: those an IGNORE skips (by primary
    /// key), an upsert updates or a REPLACE deletes (by any unique key). Run before the
    /// write, in its transaction; its rows are before images, locked. For a plain
    /// INSERT that gives its keys, the rows its keys already compare equal to, read
    /// without a lock: not images, since it changes none of them, but rows `after` will
    /// find that it did not insert.
    ///
    /// Why a plain INSERT needs one: the server compares a key value with a column
    /// otherwise than it converts one to store it (`5` equals the stored `'05'` of a
    /// VARCHAR key, and is stored as `'5'`; `4.6` is stored in an INT as 5), so `after`
    /// may find a row the write did not insert and miss one it did.
    pub before: Option<Capture>,
    /// The rows with the primary keys the VALUES rows give, run right after the write:
    /// those not among `before`'s rows are rows it inserted. An upsert's reads every
    /// row it collided with too, by the same predicate as `before`, so that what it
    /// did to each is known and must add up to its count of affected rows. None when
    /// the server generates the keys.
    pub after: Option<Capture>,
    /// How many rows take their AUTO_INCREMENT key from the server: the k-th (from 0)
    /// has LAST_INSERT_ID() + k × @@auto_increment_increment. 0 when the rows give keys.
    /// An IGNORE, upsert or REPLACE has one such row, inserted unless `before` finds a
    /// row it collides with (REPLACE: always).
    pub generated: usize,
}

/// Where a VALUES row's primary key comes from.
enum KeySource<'a> {
    /// The statement gives it: one SQL value per key column.
    Given(Vec<&'a str>),
    /// AUTO_INCREMENT hands it out.
    Generated,
}

/// A column the INSERT does not list takes its default.
const OMITTED: InsertValue = InsertValue::Default;

impl MysqlTable {
    /// Refuses a write to this table that AT mode cannot undo exactly: what
    /// [`crate::TableMeta::check_capturable`] refuses, and what only MySQL has.
    pub fn check_capturable(&self, write: &Write) -> Result<(), Error> {
        let table = &self.meta.table.name;
        if let Some(reason) = &self.refusal {
            return Err(Error::unsupported(format!(
                "a write to table {table}, where {reason},"
            )));
        }
        self.meta.check_capturable(&Mysql, write)?;
        let listed = write.rows.iter().flat_map(|r| r.columns.iter().flatten());
        if let Some(unknown) = write
            .assigned
            .iter()
            .chain(listed)
            .find(|c| self.position(c).is_none())
        {
            return Err(Error::unsupported(format!(
                "a write to column {unknown}, which tandem does not find in table {table},"
            )));
        }
        if let Some(&i) = self
            .meta
            .pk
            .iter()
            .find(|&&i| !types::usable_in_key(self.meta.columns[i].type_oid))
        {
            return Err(Error::unsupported(format!(
                "a write to table {table}, whose primary-key column {} has a type rows cannot be looked up by,",
                self.name(i)
            )));
        }
        let chooses_rows = [&write.selection, &write.order_by, &write.joined];
        if let Some(part) = chooses_rows
            .into_iter()
            .flatten()
            .find(|sql| varies_between_runs(sql))
        {
            return Err(Error::unsupported(format!(
                "a write whose rows are chosen by something that differs from one evaluation to the next (RAND(), UUID(), a variable assignment: {part}), whose before image could read other rows than it changes,"
            )));
        }
        if write.limit.is_some()
            && let Some(part) = chooses_rows
                .into_iter()
                .flatten()
                .find(|sql| reads_the_clock(sql))
        {
            // Without a LIMIT the write changing more rows than were read is caught;
            // with one, it changes as many, but maybe others.
            return Err(Error::unsupported(format!(
                "UPDATE or DELETE … LIMIT whose rows are chosen by the time ({part}), which moves on between its before image and the write,"
            )));
        }
        if !self.meta.limit_takes_certain_rows(write) {
            return Err(Error::unsupported(
                "UPDATE or DELETE … LIMIT whose ORDER BY does not name every primary-key column (which rows it takes would not be certain)",
            ));
        }
        // `id = VALUES(id)` changes nothing where the row collided on its primary key:
        // the only unique key, of integers (a string equal under its collation may be
        // stored as other bytes), and every assignment of the column that one (MySQL
        // runs them all, in order: `id = VALUES(id), id = id + 1` moves the key).
        let keeps_its_key = |i: usize| {
            let times = |columns: &[String]| columns.iter().filter(|c| *c == self.name(i)).count();
            self.unique_keys.is_empty()
                && types::is_integer(self.meta.columns[i].type_oid)
                && times(&write.assigned) == times(&write.assigned_as_inserted)
        };
        if write.on_duplicate == OnDuplicate::Update
            && let Some(&i) =
                self.meta.pk.iter().find(|&&i| {
                    write.assigned.iter().any(|c| c == self.name(i)) && !keeps_its_key(i)
                })
        {
            return Err(Error::unsupported(format!(
                "an update of primary-key column {}",
                self.name(i)
            )));
        }
        Ok(())
    }

    /// The before image of an UPDATE or DELETE: the rows it will change, locked, with the
    /// statement's own WHERE, ORDER BY and LIMIT.
    pub fn before_image(&self, write: &Write) -> Result<Capture, Error> {
        if write.kind == WriteKind::Insert {
            return Err(Error::unsupported(
                "an INSERT's before image outside its insert plan",
            ));
        }
        self.check_capturable(write)?;
        self.meta.before_image(&Mysql, write)
    }

    /// The after images of `rows` rows by primary key, bound as [`Dialect::param_type`]
    /// says: MySQL's writes return none.
    pub fn select_by_keys(&self, rows: usize) -> String {
        self.meta.select_by_keys_sql(&Mysql, rows)
    }

    /// How to capture an INSERT: which existing rows it may change, and how to find the
    /// rows it inserts.
    pub fn insert_plan(&self, write: &Write) -> Result<InsertPlan, Error> {
        self.check_capturable(write)?;
        let Some(rows) = &write.rows else {
            return Err(Error::unsupported(
                "an INSERT whose rows tandem does not see",
            ));
        };
        let rows = self.rows_by_position(rows)?;
        let sources = rows
            .iter()
            .map(|row| self.key_source(row))
            .collect::<Result<Vec<_>, _>>()?;
        let given: Vec<Vec<&str>> = sources
            .into_iter()
            .filter_map(|s| match s {
                KeySource::Given(values) => Some(values),
                KeySource::Generated => None,
            })
            .collect();
        let from = format!(
            "SELECT {} FROM {}",
            self.captured_columns(),
            Mysql.qualified(&self.meta.table)
        );
        let every_row = Mysql.every_row().unwrap_or_default();
        let unlocked = |predicate: &str| format!("{from} WHERE {predicate} {every_row}");
        let locked = |predicate: &str| format!("{} FOR UPDATE", unlocked(predicate));
        if given.len() < rows.len() {
            if !given.is_empty() {
                return Err(Error::unsupported(
                    "a multi-row INSERT that gives some AUTO_INCREMENT keys and leaves others to the server",
                ));
            }
            if write.on_duplicate != OnDuplicate::Error && rows.len() > 1 {
                return Err(Error::unsupported(
                    "a multi-row INSERT IGNORE, … ON DUPLICATE KEY UPDATE or REPLACE that leaves the AUTO_INCREMENT key to the server (which rows it inserts is not known)",
                ));
            }
            // One row: it is inserted unless `before` finds a row it collides with on a
            // unique key (IGNORE then skips it, an upsert updates that row); REPLACE
            // deletes what it collides with and always inserts.
            let before = match write.on_duplicate {
                OnDuplicate::Error => None,
                _ => Some(self.collisions(&rows)?).filter(|p| !p.is_empty()),
            };
            return Ok(InsertPlan {
                before: before
                    .map(|predicate| Capture::of(&Mysql, locked(&predicate)))
                    .transpose()?,
                after: None,
                generated: rows.len(),
            });
        }
        if matches!(
            write.on_duplicate,
            OnDuplicate::Update | OnDuplicate::Replace
        ) && given
            .iter()
            .enumerate()
            .any(|(i, key)| given[..i].contains(key))
        {
            // The second row meets the first: the server's row count then tells
            // nothing tandem can check.
            return Err(Error::unsupported(
                "an upsert or REPLACE that gives one key twice in its VALUES",
            ));
        }
        let by_key = self.in_list(&self.meta.pk, &given);
        let (before, after) = match write.on_duplicate {
            // Not locked: a gap lock here would make concurrent INSERTs deadlock.
            OnDuplicate::Error => (unlocked(&by_key), unlocked(&by_key)),
            OnDuplicate::Ignore => (locked(&by_key), unlocked(&by_key)),
            // Both current reads: the rows it collided with are compared as they are,
            // not as an older snapshot of a REPEATABLE READ transaction shows them.
            // `before` holds their locks already.
            OnDuplicate::Update => {
                let collisions = locked(&self.collisions(&rows)?);
                (collisions.clone(), collisions)
            }
            OnDuplicate::Replace => (locked(&self.collisions(&rows)?), unlocked(&by_key)),
        };
        Ok(InsertPlan {
            before: Some(Capture::of(&Mysql, before)?),
            after: Some(Capture::of(&Mysql, after)?),
            generated: 0,
        })
    }

    fn name(&self, i: usize) -> &str {
        &self.meta.columns[i].name
    }

    /// A column's position; MySQL's column names are case-insensitive.
    fn position(&self, name: &str) -> Option<usize> {
        let name = crate::analyze::fold_mysql_column(name);
        self.meta.columns.iter().position(|c| c.name == name)
    }

    /// Each row's value for every column of the table, in table order.
    fn rows_by_position<'a>(
        &self,
        rows: &'a InsertRows,
    ) -> Result<Vec<Vec<&'a InsertValue>>, Error> {
        let positions: Vec<usize> = match &rows.columns {
            Some(columns) => columns.iter().filter_map(|c| self.position(c)).collect(),
            None => (0..self.meta.columns.len()).collect(),
        };
        rows.rows
            .iter()
            .map(|row| {
                if row.len() != positions.len() {
                    return Err(Error::unsupported(
                        "a VALUES row whose length differs from its column list",
                    ));
                }
                let mut values = vec![&OMITTED; self.meta.columns.len()];
                for (&at, value) in positions.iter().zip(row) {
                    values[at] = value;
                }
                Ok(values)
            })
            .collect()
    }

    fn key_source<'a>(&self, row: &[&'a InsertValue]) -> Result<KeySource<'a>, Error> {
        let mut given = Vec::new();
        for &i in &self.meta.pk {
            let auto = self.auto_increment == Some(i);
            match row[i] {
                InsertValue::Constant(sql) if auto && is_zero(sql) => {
                    return Err(Error::unsupported(format!(
                        "0 for AUTO_INCREMENT column {} (what it means depends on sql_mode NO_AUTO_VALUE_ON_ZERO)",
                        self.name(i)
                    )));
                }
                InsertValue::Constant(sql) => given.push(sql.as_str()),
                InsertValue::Null | InsertValue::Default if auto && self.meta.pk.len() == 1 => {
                    return Ok(KeySource::Generated);
                }
                InsertValue::Null | InsertValue::Default => {
                    return Err(Error::unsupported(format!(
                        "an INSERT that leaves primary-key column {} to its default",
                        self.name(i)
                    )));
                }
                InsertValue::Computed(_) => {
                    return Err(Error::unsupported(format!(
                        "a value of primary-key column {} computed by an expression (tandem would have to evaluate it again)",
                        self.name(i)
                    )));
                }
            }
        }
        Ok(KeySource::Given(given))
    }

    /// The rows any VALUES row collides with, by the primary key or any unique key. A
    /// NULL never collides in a unique key, but a NULL, a default or an expression in one
    /// is refused: what it becomes (and so collides with) is up to the server.
    fn collisions(&self, rows: &[Vec<&InsertValue>]) -> Result<String, Error> {
        let mut predicates = Vec::new();
        for key in std::iter::once(&self.meta.pk).chain(&self.unique_keys) {
            // A FLOAT unique key: the double a statement names is not the single
            // precision value stored, and the collision would go unfound.
            if let Some(&i) = key
                .iter()
                .find(|&&i| types::is_single_precision(self.meta.columns[i].type_oid))
            {
                return Err(Error::unsupported(format!(
                    "an upsert or REPLACE into table {}, whose unique-key column {} is a FLOAT (stored in single precision, it is not found by the value the statement gives),",
                    self.meta.table.name,
                    self.name(i)
                )));
            }
            let mut tuples = Vec::new();
            for row in rows {
                let mut tuple = Vec::new();
                for &i in key {
                    match row[i] {
                        InsertValue::Constant(sql) => tuple.push(sql.as_str()),
                        // A fresh AUTO_INCREMENT value collides with nothing.
                        InsertValue::Default | InsertValue::Null
                            if self.auto_increment == Some(i) =>
                        {
                            tuple.clear();
                            break;
                        }
                        _ => {
                            return Err(Error::unsupported(format!(
                                "an upsert or REPLACE whose value of unique-key column {} is not a literal or a parameter",
                                self.name(i)
                            )));
                        }
                    }
                }
                if !tuple.is_empty() {
                    tuples.push(tuple);
                }
            }
            if !tuples.is_empty() {
                predicates.push(self.in_list(key, &tuples));
            }
        }
        Ok(predicates.join(" OR "))
    }

    /// `(<columns>) IN ((<values>), …)`.
    fn in_list(&self, columns: &[usize], tuples: &[Vec<&str>]) -> String {
        let names: Vec<String> = columns
            .iter()
            .map(|&i| Mysql.quote_ident(self.name(i)))
            .collect();
        let tuples: Vec<String> = tuples
            .iter()
            .map(|t| format!("({})", t.join(", ")))
            .collect();
        format!("({}) IN ({})", names.join(", "), tuples.join(", "))
    }

    fn captured_columns(&self) -> String {
        self.meta
            .columns
            .iter()
            .map(|c| Mysql.capture(&Mysql.quote_ident(&c.name), c.type_oid))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Whether SQL that chooses a write's rows may choose others when evaluated again (the
/// before image evaluates it once, the write once more): it calls one of
/// [`Dialect::volatile_functions`], assigns a variable, or takes a sequence's next value.
fn varies_between_runs(sql: &str) -> bool {
    sql.contains(":=")
        || crate::contains_ignore_case(sql.as_bytes(), b"NEXT VALUE FOR")
        // sql_mode ORACLE's `seq.nextval`, a name rather than a call.
        || crate::try_words(&Mysql, sql).is_none_or(|words| words.iter().any(|w| w == "nextval"))
        || crate::image::calls_volatile_function(&Mysql, sql)
}

/// Whether SQL reads the clock: the same within one statement, but not between the
/// before image and the write (`SYSDATE()` not even within one).
fn reads_the_clock(sql: &str) -> bool {
    const CLOCK: &[&str] = &[
        "now",
        "sysdate",
        "current_timestamp",
        "current_time",
        "current_date",
        "curdate",
        "curtime",
        "localtime",
        "localtimestamp",
        "utc_timestamp",
        "utc_time",
        "utc_date",
        "unix_timestamp",
    ];
    crate::try_words(&Mysql, sql)
        .is_none_or(|words| words.iter().any(|w| CLOCK.contains(&w.as_str())))
}

/// A literal zero, whatever its spelling (`0`, `-0`, `'0'`, `0.0`).
fn is_zero(sql: &str) -> bool {
    let unquoted = sql.trim_matches(|c| c == '\'' || c == '"');
    unquoted.parse::<f64>().is_ok_and(|v| v == 0.0)
}
