//! Table metadata and row images, and the SQL that captures them.
//!
//! Values are kept in the database's binary wire format, exactly as the server sent
//! them: whatever the client session's DateStyle, TimeZone or extra_float_digits, a
//! value written back is the value that was read, bit for bit. Never runs SQL itself.

use crate::analyze::{InsertRows, InsertValue, TableRef, Write, WriteKind};
use crate::dialect::Dialect;
use crate::error::Error;

/// SQL that tandem runs for a client's statement, and which of that statement's
/// parameters it binds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Capture {
    /// The SQL, with the dialect's placeholders.
    pub sql: String,
    /// For each placeholder of `sql` in order, the 0-based index of the client
    /// statement's parameter bound there, where placeholders are positional (MySQL).
    /// Empty where they are numbered (PostgreSQL): `sql` uses the statement's own
    /// numbers, and the statement's parameters are bound as they are.
    pub params: Vec<usize>,
}

impl Capture {
    /// `sql`, built from fragments of a statement analysed in `d`, made runnable.
    pub(crate) fn of(d: &dyn Dialect, sql: String) -> Result<Capture, Error> {
        if !d.positional_placeholders() {
            return Ok(Capture {
                sql,
                params: Vec::new(),
            });
        }
        let (sql, params) = crate::analyze::bind_positionally(&sql)?;
        Ok(Capture { sql, params })
    }
}

/// Appends the dialect's [`Dialect::every_row`] LIMIT to a SELECT of tandem's, where
/// it has one.
fn push_every_row(d: &dyn Dialect, sql: &mut String) {
    if let Some(every_row) = d.every_row() {
        sql.push(' ');
        sql.push_str(every_row);
    }
}

/// Whether `sql`, part of a statement that chooses a write's rows, calls one of the
/// dialect's [`Dialect::volatile_functions`]; true as well when it cannot be read.
pub(crate) fn calls_volatile_function(dialect: &dyn Dialect, sql: &str) -> bool {
    crate::try_called_functions(dialect, sql).is_none_or(|names| {
        names
            .iter()
            .any(|name| dialect.volatile_functions().contains(&name.as_str()))
    })
}

/// One column value in binary wire format; `None` is SQL NULL.
pub type Value = Option<Vec<u8>>;
/// One row, in the column order of its [`TableMeta`].
pub type Row = Vec<Value>;

/// A column as the catalog describes it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Column {
    /// Name.
    pub name: String,
    /// Type OID (PostgreSQL) or type code (MySQL).
    pub type_oid: u32,
    /// The type as SQL spells it in a cast, with its modifier (PostgreSQL's
    /// `format_type`: `numeric(10,2)`); empty where the catalog read does not give it
    /// (MySQL).
    pub sql_type: String,
    /// A generated column: computed by the server, never written back.
    pub generated: bool,
    /// PostgreSQL's GENERATED ALWAYS AS IDENTITY: an UPDATE may set it to DEFAULT only,
    /// a new value that no UPDATE could write back.
    pub identity_always: bool,
    /// MySQL's ON UPDATE CURRENT_TIMESTAMP: every UPDATE that changes the row sets it
    /// too, unassigned.
    pub set_on_update: bool,
    /// MySQL: the character set and collation a string column's values are compared
    /// by, where equal values may differ in bytes (`'Bob'` and `'bob '` under
    /// utf8mb4_general_ci). None for other columns, and on PostgreSQL.
    pub collation: Option<Collation>,
}

/// A foreign key that references a table and changes rows of its own table (cascades,
/// or sets NULL or DEFAULT) when a referenced row is deleted or its key updated.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cascade {
    /// It acts when a referenced row is deleted.
    pub on_delete: bool,
    /// It acts when one of `columns` of a referenced row changes.
    pub on_update: bool,
    /// The referenced table's columns it names.
    pub columns: Vec<String>,
    /// The names (without schema) of its table and of every table foreign-key actions
    /// reach from there: each may see rows changed.
    pub reaches: Vec<String>,
}

impl Cascade {
    /// The tables a write may change rows of through foreign-key actions: a DELETE's
    /// through every `on_delete` key, an UPDATE's (an upsert's DO UPDATE too) through
    /// the `on_update` keys whose columns it assigns.
    pub fn reached_by(cascades: &[Cascade], write: &crate::Write) -> Vec<String> {
        use crate::{OnDuplicate, WriteKind};
        let updated =
            |c: &Cascade| c.on_update && c.columns.iter().any(|col| write.assigned.contains(col));
        let acts = |c: &Cascade| match write.kind {
            WriteKind::Delete => c.on_delete,
            WriteKind::Update => updated(c),
            // REPLACE deletes the rows it collides with; an upsert's update changes
            // them.
            WriteKind::Insert => match write.on_duplicate {
                OnDuplicate::Replace => c.on_delete,
                _ if write.upsert.is_some() || write.on_duplicate == OnDuplicate::Update => {
                    updated(c)
                }
                _ => false,
            },
        };
        let mut reached: Vec<String> = Vec::new();
        for cascade in cascades.iter().filter(|c| acts(c)) {
            for table in &cascade.reaches {
                if !reached.contains(table) {
                    reached.push(table.clone());
                }
            }
        }
        reached
    }
}

/// A character set and one of its collations, as MySQL names them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Collation {
    /// `utf8mb4`, `latin1`, …
    pub charset: String,
    /// `utf8mb4_general_ci`, `latin1_bin`, …
    pub name: String,
}

/// What AT mode needs to know about a table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TableMeta {
    /// The table.
    pub table: TableRef,
    /// Every column, in catalog order.
    pub columns: Vec<Column>,
    /// Positions in `columns` of the primary key, in key order.
    pub pk: Vec<usize>,
    /// The table has user triggers: their effects would not be captured.
    pub has_triggers: bool,
    /// A foreign key elsewhere cascades (or sets NULL/DEFAULT) on changes to this
    /// table: those changes would not be captured.
    pub has_cascades: bool,
    /// The foreign keys with such actions, where the engine's catalog was read for
    /// them (PostgreSQL): what a write outside a global transaction also changes.
    pub cascades: Vec<Cascade>,
    /// The table's identity in the catalog where the engine has one (PostgreSQL's
    /// OID), 0 where it has none: a write checks that its table name still resolves
    /// to it.
    pub oid: u32,
    /// The table global locks name its rows by, where it is not this one: a
    /// PostgreSQL partition's root partitioned table, so that a row written through the
    /// root and through its partition is one lock (its key is unique in the whole tree).
    pub lock_table: Option<TableRef>,
    /// The table is a parent or a child in a PostgreSQL inheritance hierarchy (not
    /// partitioning): a write through a parent changes children's rows, whose keys the
    /// parent's need not keep apart.
    pub inheritance: bool,
    /// PostgreSQL row-level security is on: the RETURNING tandem appends to a write
    /// applies the table's SELECT policies, and would change which rows it writes.
    pub row_security: bool,
    /// A primary-key column's values print inexactly under some session settings
    /// (PostgreSQL: real, double precision or money, or a domain, array, range or
    /// composite type built on one): two keys could print alike, and tandem names a
    /// branch's rows by their printed keys.
    pub inexact_key: bool,
    /// PostgreSQL: a primary-key column calls values of other bytes equal (a
    /// nondeterministic collation, citext): a global lock names a row by its bytes, so
    /// two global transactions could hold one row under two names.
    pub loose_key: bool,
    /// PostgreSQL: the primary key is DEFERRABLE, checked at COMMIT: a transaction may
    /// hold two rows with one key until then, and tandem keeps one pair of images per
    /// key.
    pub key_checked_at_commit: bool,
    /// PostgreSQL: a partitioned table (its rows are in its partitions).
    pub partitioned: bool,
    /// PostgreSQL: a partition whose partition tree's root has no primary key: a key
    /// is unique in this partition only, while global locks name rows by the root
    /// (`lock_table`), and writes through the root cannot be checked by key.
    pub root_without_key: bool,
    /// PostgreSQL: a column (its name, its type) whose values may not come back from
    /// their binary form, in which images are kept and replayed: a type with no binary
    /// send or receive (contrib's seg, isn), one whose receive refuses a value its send
    /// gives (an empty int2vector or oidvector; the planner's statistics types), or
    /// changes it (xml drops a document's declaration), also inside another type.
    pub imageless_column: Option<(String, String)>,
    /// PostgreSQL: a CHECK or foreign-key constraint of the table added NOT VALID (and
    /// not validated since): rows from before it may break it, and a row put back as
    /// it was would be refused.
    pub unvalidated_constraint: Option<String>,
}

impl TableMeta {
    /// Whether a write with a LIMIT takes its rows in an order of its own alone: its
    /// ORDER BY names every primary-key column (MySQL; among rows that tie, two reads
    /// of the same ORDER BY … LIMIT may take others). True for one without a LIMIT.
    pub fn limit_takes_certain_rows(&self, write: &Write) -> bool {
        write.limit.is_none()
            || self.pk.iter().all(|&i| {
                let column = &self.columns[i].name;
                write.order_columns.iter().any(|c| c == column)
            })
    }

    /// Refuses a write to this table that AT mode cannot undo exactly.
    pub fn check_capturable(&self, dialect: &dyn Dialect, write: &Write) -> Result<(), Error> {
        let table = &self.table.name;
        if self.inheritance {
            return Err(Error::unsupported(format!(
                "a write to table {table}, which is a parent or a child in an inheritance hierarchy,"
            )));
        }
        if self.pk.is_empty() {
            return Err(Error::unsupported(format!(
                "a write to table {table}, which has no primary key,"
            )));
        }
        if self.root_without_key {
            return Err(Error::unsupported(format!(
                "a write to partition {table}, whose partitioned table has no primary key (a key is unique in one partition only),"
            )));
        }
        if self.loose_key {
            return Err(Error::unsupported(format!(
                "a write to table {table}, whose primary key compares values of other bytes as equal (a nondeterministic collation, citext, jsonb, character without a length, or numeric, interval or character inside a domain, array, range or composite type),"
            )));
        }
        if let Some((column, type_name)) = &self.imageless_column {
            return Err(Error::unsupported(format!(
                "a write to table {table}, whose column {column} has type {type_name}, whose values may not come back from their binary form (in which tandem keeps images),"
            )));
        }
        let changes_rows = write.kind != WriteKind::Insert || write.upsert.is_some();
        if changes_rows && let Some(constraint) = &self.unvalidated_constraint {
            return Err(Error::unsupported(format!(
                "an update or delete of table {table}, whose constraint {constraint} is NOT VALID (a row put back as it was may break it; VALIDATE it first),"
            )));
        }
        if self.key_checked_at_commit {
            return Err(Error::unsupported(format!(
                "a write to table {table}, whose primary key is DEFERRABLE (two rows may share a key until COMMIT),"
            )));
        }
        if self.has_triggers {
            return Err(Error::unsupported(format!(
                "a write to table {table}, which has triggers or rewrite rules (or a partition of it has),"
            )));
        }
        if self.row_security {
            return Err(Error::unsupported(format!(
                "a write to table {table}, which has row-level security enabled (the RETURNING tandem adds would apply its SELECT policies),"
            )));
        }
        // An UPDATE or DELETE cascades to rows tandem does not capture; so does the
        // DELETE that rolls back a plain INSERT, to rows that others may have added
        // since, referring to the row inserted.
        if self.has_cascades {
            return Err(Error::unsupported(format!(
                "a write to table {table}, which foreign keys reference with cascading actions,"
            )));
        }
        // The before image evaluates what chooses the rows once, the write once more.
        // (An upsert's conflict keys are left to the proxy's check of the rows it
        // returns: `VALUES (nextval('s'), …)` usually inserts, and did before.)
        if let Some(part) = write
            .selection
            .iter()
            .chain(&write.from)
            .find(|sql| calls_volatile_function(dialect, sql))
        {
            return Err(Error::unsupported(format!(
                "a write whose rows are chosen by something that differs from one evaluation to the next ({part}), whose before image could read other rows than it changes,"
            )));
        }
        if write.upsert.is_some() && self.partitioned {
            // Which rows it inserted is told by their xmax, which PostgreSQL does not
            // return from a partitioned table's ON CONFLICT DO UPDATE.
            return Err(Error::unsupported(format!(
                "INSERT … ON CONFLICT DO UPDATE into partitioned table {table} (write it into the partition)"
            )));
        }
        let updates = write.kind == WriteKind::Update || write.upsert.is_some();
        if updates && let Some(&i) = self.pk.iter().find(|&&i| self.columns[i].generated) {
            return Err(Error::unsupported(format!(
                "an update of table {table}, whose primary-key column {} is generated from other columns (the update may change it),",
                self.columns[i].name
            )));
        }
        // The row would move to a key its before image does not know: its after image
        // would not be found, nor the row it left undone.
        if updates && let Some(&i) = self.pk.iter().find(|&&i| self.columns[i].set_on_update) {
            return Err(Error::unsupported(format!(
                "an update of table {table}, whose primary-key column {} is set by every update (ON UPDATE),",
                self.columns[i].name
            )));
        }
        if updates
            && let Some(pk) = write
                .assigned
                .iter()
                .find(|c| self.pk.iter().any(|&i| &self.columns[i].name == *c))
        {
            return Err(Error::unsupported(format!(
                "an update of primary-key column {pk}"
            )));
        }
        if updates
            && let Some(column) = self
                .columns
                .iter()
                .find(|c| c.identity_always && write.assigned.contains(&c.name))
        {
            return Err(Error::unsupported(format!(
                "an update of column {}, GENERATED ALWAYS AS IDENTITY (the value it takes could not be written back),",
                column.name
            )));
        }
        Ok(())
    }

    /// The primary-key values of `row`.
    pub fn key_of(&self, row: &Row) -> Vec<Value> {
        self.pk
            .iter()
            .map(|&i| row.get(i).cloned().flatten())
            .collect()
    }

    /// The collation each primary-key part is compared by, in key order, where one is
    /// ([`Column::collation`]); None for the other parts.
    pub fn key_collations(&self) -> Vec<Option<&Collation>> {
        self.pk
            .iter()
            .map(|&i| self.columns.get(i).and_then(|c| c.collation.as_ref()))
            .collect()
    }

    /// Every column, each read as [`Dialect::capture`] reads it.
    fn column_list(&self, d: &dyn Dialect) -> String {
        self.columns
            .iter()
            .map(|c| d.capture(&d.quote_ident(&c.name), c.type_oid))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn pk_list(&self, d: &dyn Dialect) -> String {
        self.names_of(d, &self.pk)
    }

    /// The columns at `indexes`, quoted, comma-separated.
    fn names_of(&self, d: &dyn Dialect, indexes: &[usize]) -> String {
        indexes
            .iter()
            .map(|&i| d.quote_ident(&self.columns[i].name))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// `SELECT <all columns> FROM <table> WHERE <the write's predicate> FOR UPDATE`:
    /// the before image, locked, with the statement's own placeholders. A MySQL write's
    /// ORDER BY and LIMIT come along, so that it selects the rows the write takes, and a
    /// multi-table write's tables, so that it selects the rows its join matches.
    pub fn before_image_sql(&self, d: &dyn Dialect, write: &Write) -> String {
        let qualifier = self.qualifier(d, write);
        let columns = self
            .columns
            .iter()
            .map(|c| {
                d.capture(
                    &format!("{qualifier}.{}", d.quote_ident(&c.name)),
                    c.type_oid,
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        let mut sql = format!("SELECT {columns} FROM ");
        match &write.joined {
            Some(joined) => sql.push_str(joined),
            None => {
                sql.push_str(&d.qualified(&write.table));
                if let Some(alias) = &write.alias {
                    sql.push_str(&format!(" AS {}", d.quote_ident(alias)));
                }
            }
        }
        if let Some(from) = &write.from {
            sql.push_str(&format!(", {from}"));
        }
        // An outer join gives rows of the other tables a NULL row of the written one,
        // which the write does not touch (a primary key is never NULL).
        let joined_rows_only = write.joined.as_ref().map(|_| {
            self.pk
                .iter()
                .map(|&i| {
                    format!(
                        "{qualifier}.{} IS NOT NULL",
                        d.quote_ident(&self.columns[i].name)
                    )
                })
                .collect::<Vec<_>>()
                .join(" AND ")
        });
        match (&write.selection, joined_rows_only) {
            (Some(selection), Some(keyed)) => {
                sql.push_str(&format!(" WHERE ({selection}) AND {keyed}"))
            }
            (Some(selection), None) => sql.push_str(&format!(" WHERE {selection}")),
            (None, Some(keyed)) => sql.push_str(&format!(" WHERE {keyed}")),
            (None, None) => {}
        }
        if let Some(order_by) = &write.order_by {
            sql.push_str(&format!(" ORDER BY {order_by}"));
        }
        match &write.limit {
            Some(limit) => sql.push_str(&format!(" LIMIT {limit}")),
            None => push_every_row(d, &mut sql),
        }
        // Only the written table's rows are locked, not those of an UPDATE's FROM list,
        // where the dialect can say so.
        sql.push(' ');
        sql.push_str(&d.lock_rows(&qualifier));
        sql
    }

    /// [`Self::before_image_sql`] with the statement parameters it binds.
    pub fn before_image(&self, d: &dyn Dialect, write: &Write) -> Result<Capture, Error> {
        Capture::of(d, self.before_image_sql(d, write))
    }

    /// `SELECT <key columns> FROM <table> WHERE <predicate> FOR UPDATE OF <table>`: the
    /// keys (binary) of the rows a locking read takes, locked the same way.
    ///
    /// Refused where the predicate calls a volatile function: evaluated again, it could
    /// choose other rows than the read then locks.
    pub fn locked_keys_sql(
        &self,
        d: &dyn Dialect,
        read: &crate::analyze::LockedRead,
    ) -> Result<String, Error> {
        if let Some(selection) = read
            .selection
            .as_ref()
            .filter(|sql| calls_volatile_function(d, sql))
        {
            return Err(Error::unchecked(format!(
                "a locking read whose rows are chosen by something that differs from one evaluation to the next ({selection})"
            )));
        }
        let qualifier = d.quote_ident(read.alias.as_deref().unwrap_or(&read.table.name));
        let keys = self
            .pk
            .iter()
            .map(|&i| {
                let c = &self.columns[i];
                // Read as the images read them, so that lock keys compare equal.
                d.capture(
                    &format!("{qualifier}.{}", d.quote_ident(&c.name)),
                    c.type_oid,
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        let mut sql = format!("SELECT {keys} FROM {}", d.qualified(&read.table));
        if let Some(alias) = &read.alias {
            sql.push_str(&format!(" AS {}", d.quote_ident(alias)));
        }
        if let Some(selection) = &read.selection {
            sql.push_str(&format!(" WHERE {selection}"));
        }
        // Every row the predicate matches, even where the read itself was capped: a
        // global lock too many waits, one too few lets a write in.
        push_every_row(d, &mut sql);
        sql.push(' ');
        sql.push_str(&d.lock_read_rows(&qualifier, read.shared, read.nowait));
        Ok(sql)
    }

    /// [`Self::locked_keys_sql`] with the statement parameters it binds.
    pub fn locked_keys(
        &self,
        d: &dyn Dialect,
        read: &crate::analyze::LockedRead,
    ) -> Result<Capture, Error> {
        Capture::of(d, self.locked_keys_sql(d, read)?)
    }

    /// Whether an upsert's conflict target is the primary key.
    pub fn upsert_on_primary_key(&self, write: &Write) -> bool {
        let Some(upsert) = &write.upsert else {
            return false;
        };
        let mut target: Vec<&str> = upsert.target.iter().map(String::as_str).collect();
        target.sort_unstable();
        let mut pk: Vec<&str> = self
            .pk
            .iter()
            .map(|&i| self.columns[i].name.as_str())
            .collect();
        pk.sort_unstable();
        target == pk
    }

    /// The before image of an upsert: the existing rows equal to a VALUES row in the
    /// columns of its conflict target (the primary key or another unique key), locked.
    /// The rows it then updates must be among them: a row the write returns as updated
    /// that this did not read fails the write as uncaptured.
    pub fn upsert_before_image_sql(&self, d: &dyn Dialect, write: &Write) -> Result<String, Error> {
        let Some(upsert) = &write.upsert else {
            return Err(Error::unsupported("an upsert without its VALUES"));
        };
        let target: Vec<usize> = upsert
            .target
            .iter()
            .map(|name| self.columns.iter().position(|c| &c.name == name))
            .collect::<Option<_>>()
            .ok_or_else(|| {
                Error::unsupported(
                    "INSERT … ON CONFLICT DO UPDATE whose target names a column the table does not have",
                )
            })?;
        // Without a column list, VALUES gives the table's columns in order.
        let listed: Vec<&str> = if upsert.columns.is_empty() {
            self.columns.iter().map(|c| c.name.as_str()).collect()
        } else {
            upsert.columns.iter().map(String::as_str).collect()
        };
        let positions: Vec<usize> = target
            .iter()
            .map(|&i| listed.iter().position(|c| *c == self.columns[i].name))
            .collect::<Option<_>>()
            .ok_or_else(|| {
                Error::unsupported(
                    "an upsert that does not give every column of its conflict target",
                )
            })?;
        let columns = self.column_list(d);
        let table = d.qualified(&write.table);
        if let Some(select) = &upsert.select {
            return self.upsert_from_select_before_image_sql(
                d,
                select,
                listed.len(),
                &target.iter().copied().zip(positions).collect::<Vec<_>>(),
                &columns,
                &table,
            );
        }
        let target_list = self.names_of(d, &target);
        let rows = upsert
            .rows
            .iter()
            .map(|row| {
                positions
                    .iter()
                    .map(|&p| row.get(p).map(String::as_str))
                    .collect::<Option<Vec<&str>>>()
            })
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| Error::unsupported("a VALUES row shorter than its column list"))?;
        // A DEFAULT key is the server's to choose (a new identity value, usually): it is
        // no value to look up, and SQL allows it in VALUES only. Nor is one a volatile
        // function gives (`nextval('s')`): evaluated here too, it would move on what the
        // write then gets. What such a row met, if anything, the check of the rows the
        // write returns catches.
        // Each value as the INSERT stores it (`2.4` is 2 in an int key, a timestamp a
        // date in a date key): the existing row it meets is the one with that key.
        let tuples: Vec<String> = rows
            .iter()
            .filter(|values| {
                !values
                    .iter()
                    .any(|v| v.eq_ignore_ascii_case("DEFAULT") || calls_volatile_function(d, v))
            })
            .map(|values| {
                let stored: Vec<String> = values
                    .iter()
                    .zip(&target)
                    .map(|(value, &i)| match self.columns[i].sql_type.as_str() {
                        "" => value.to_string(),
                        sql_type => format!("CAST({value} AS {sql_type})"),
                    })
                    .collect();
                format!("({})", stored.join(", "))
            })
            .collect();
        if tuples.is_empty() {
            return Ok(format!(
                "SELECT {columns} FROM {table} WHERE false FOR UPDATE"
            ));
        }
        Ok(format!(
            "SELECT {columns} FROM {table} WHERE ({target_list}) IN ({}) FOR UPDATE",
            tuples.join(", ")
        ))
    }

    /// The before image of an `INSERT … SELECT … ON CONFLICT (…) DO UPDATE`: the
    /// existing rows whose conflict target's columns (`target`: each column's index,
    /// and its position among the `listed` columns the query gives) one of the query's
    /// rows gives, locked. The query
    /// runs twice, here and in the write: a query that may give other keys the second
    /// time (a volatile function's) is refused; one whose data changes in between
    /// updates a row tandem holds no image of, which the rows the write returns show
    /// (the write then fails as uncaptured).
    fn upsert_from_select_before_image_sql(
        &self,
        d: &dyn Dialect,
        select: &str,
        listed: usize,
        target: &[(usize, usize)],
        columns: &str,
        table: &str,
    ) -> Result<String, Error> {
        if calls_volatile_function(d, select) {
            return Err(Error::unsupported(format!(
                "INSERT … SELECT … ON CONFLICT DO UPDATE whose query gives rows by something that differs from one evaluation to the next ({select}), read once more for its before image,"
            )));
        }
        let source = d.quote_ident("tandem_upsert_source");
        let aliases: Vec<String> = (0..listed)
            .map(|i| d.quote_ident(&format!("tandem_{i}")))
            .collect();
        // Each value as the INSERT stores it, as for VALUES.
        let keys: Vec<String> = target
            .iter()
            .map(|&(i, p)| {
                let value = format!("{source}.{}", aliases[p]);
                match self.columns[i].sql_type.as_str() {
                    "" => value,
                    sql_type => format!("CAST({value} AS {sql_type})"),
                }
            })
            .collect();
        let target_list = self.names_of(d, &target.iter().map(|&(i, _)| i).collect::<Vec<_>>());
        Ok(format!(
            "SELECT {columns} FROM {table} WHERE ({target_list}) IN (SELECT {} FROM ({select}) AS {source}({})) FOR UPDATE",
            keys.join(", "),
            aliases.join(", ")
        ))
    }

    /// How the statement names its table: its alias, or the bare table name.
    fn qualifier(&self, d: &dyn Dialect, write: &Write) -> String {
        d.quote_ident(write.alias.as_deref().unwrap_or(&write.table.name))
    }

    /// Whether [`Self::with_returning_key`] appends the row's image to `write` (before
    /// the key columns), where the dialect can: an INSERT's or UPDATE's row as the
    /// write left it; a DELETE's as it was, whose column types alone are looked at
    /// (metadata read before the table changed would miss a column in its before
    /// image).
    pub fn returns_image(d: &dyn Dialect) -> bool {
        d.row_image("t").is_some()
    }

    /// Whether the table's columns have these types, in this order: whether a row
    /// image the server returned (`row_from_returned_image`) is of the table this
    /// metadata describes, or of the table as DDL since left it.
    pub fn has_column_types(&self, types: &[u32]) -> bool {
        self.columns.len() == types.len()
            && self
                .columns
                .iter()
                .zip(types)
                .all(|(c, &t)| c.type_oid == t)
    }

    /// The client's statement with the primary key appended to what it returns, so that
    /// tandem learns exactly which rows it changed (generated keys included) without a
    /// second round trip, and (see [`Self::returns_image`]) each row as the write left
    /// it, so that no after-image query is needed at COMMIT. The client's own text is
    /// kept as it was.
    pub fn with_returning_key(&self, d: &dyn Dialect, sql: &str, write: &Write) -> String {
        let body = crate::analyze::statement_body(sql);
        let qualifier = self.qualifier(d, write);
        let image = d
            .row_image(&qualifier)
            .filter(|_| Self::returns_image(d))
            .map(|image| {
                let image = d.as_output_text(&image);
                format!("{image} AS {}, ", d.quote_ident("tandem_image"))
            })
            .unwrap_or_default();
        let keys = self
            .pk
            .iter()
            .map(|&i| {
                let column = format!("{qualifier}.{}", d.quote_ident(&self.columns[i].name));
                format!(
                    "{} AS {}",
                    d.as_output_text(&column),
                    d.quote_ident(&format!("tandem_pk_{i}"))
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        // An upsert also says, per row, whether it inserted (xmax is 0 for a row version
        // its own transaction created by INSERT), so that an updated row tandem holds no
        // before image of is caught rather than undone as if it had been inserted.
        let keys = if write.upsert.is_some() {
            format!(
                "{keys}, {} AS {}",
                d.as_output_text(&format!("({qualifier}.xmax::text = '0')")),
                d.quote_ident("tandem_inserted")
            )
        } else {
            keys
        };
        // On a line of their own: the client's text may end in a `--` comment.
        if write.has_returning {
            format!("{body}\n, {image}{keys}")
        } else {
            format!("{body}\nRETURNING {image}{keys}")
        }
    }

    /// The primary key of each row of a PostgreSQL INSERT … VALUES that gives every key
    /// column a constant (a literal or a placeholder, cast or not), converted to the
    /// column's type as the INSERT converts it: `VALUES (CAST(<value> AS <type>), …), …`,
    /// one column per key column in key order, with the statement's own placeholders.
    /// None when no row gives its whole key so: the server generates it (a new key) or
    /// computes it, and evaluating it again need not give the same value.
    pub fn inserted_keys_query(&self, rows: &InsertRows) -> Option<String> {
        let positions: Vec<usize> = match &rows.columns {
            Some(columns) => self
                .pk
                .iter()
                .map(|&i| columns.iter().position(|c| *c == self.columns[i].name))
                .collect::<Option<_>>()?,
            None => self.pk.clone(),
        };
        let tuples: Vec<String> = rows
            .rows
            .iter()
            .filter_map(|row| {
                let casts = positions
                    .iter()
                    .zip(&self.pk)
                    .map(|(&at, &column)| match row.get(at) {
                        Some(InsertValue::Constant(value)) => Some(format!(
                            "CAST({value} AS {})",
                            self.columns[column].sql_type
                        )),
                        _ => None,
                    })
                    .collect::<Option<Vec<_>>>()?;
                Some(format!("({})", casts.join(", ")))
            })
            .collect();
        (!tuples.is_empty()
            && self
                .pk
                .iter()
                .all(|&i| !self.columns[i].sql_type.is_empty()))
        .then(|| format!("VALUES {}", tuples.join(", ")))
    }

    /// `SELECT <all columns> FROM <table> WHERE (<pk>) IN ((…), …)` for `rows` keys, with
    /// parameters in key order, row after row (bound as [`Dialect::param_type`] says):
    /// the after images, which MySQL's writes do not return.
    pub fn select_by_keys_sql(&self, d: &dyn Dialect, rows: usize) -> String {
        let width = self.pk.len();
        let tuples = (0..rows)
            .map(|r| {
                let ps = (0..width)
                    .map(|k| d.placeholder(r * width + k + 1))
                    .collect::<Vec<_>>();
                format!("({})", ps.join(", "))
            })
            .collect::<Vec<_>>()
            .join(", ");
        let mut sql = format!(
            "SELECT {} FROM {} WHERE ({}) IN ({tuples})",
            self.column_list(d),
            d.qualified(&self.table),
            self.pk_list(d)
        );
        push_every_row(d, &mut sql);
        sql
    }
}

/// The row a write returned with [`TableMeta::with_returning_key`]'s image column, as
/// the session printed that bytea (hex or escape `bytea_output`): each column's binary
/// value, and each column's type OID (the table's columns as the server has them now,
/// which [`TableMeta::has_column_types`] compares with the metadata). None if it is
/// not such a value.
pub fn row_from_returned_image(text: &[u8]) -> Option<(Row, Vec<u32>)> {
    let bytes = bytea_from_text(text)?;
    let mut at = 0usize;
    let mut take = |n: usize| {
        let got = bytes.get(at..at.checked_add(n)?)?;
        at += n;
        Some(got)
    };
    let word = |b: &[u8]| i32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    let columns = word(take(4)?);
    let mut row = Vec::with_capacity(usize::try_from(columns).ok()?.min(1600));
    let mut types = Vec::with_capacity(row.capacity());
    for _ in 0..columns {
        types.push(word(take(4)?) as u32);
        let len = word(take(4)?);
        row.push(match usize::try_from(len) {
            Ok(len) => Some(take(len)?.to_vec()),
            Err(_) if len == -1 => None,
            Err(_) => return None,
        });
    }
    (at == bytes.len()).then_some((row, types))
}

/// A bytea's text output in either `bytea_output` format.
fn bytea_from_text(text: &[u8]) -> Option<Vec<u8>> {
    if let Some(hex) = text.strip_prefix(b"\\x") {
        if hex.len() % 2 != 0 {
            return None;
        }
        let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
        return hex
            .chunks(2)
            .map(|p| Some(digit(p[0])? << 4 | digit(p[1])?))
            .collect();
    }
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        if text[i] != b'\\' {
            out.push(text[i]);
            i += 1;
        } else if text.get(i + 1) == Some(&b'\\') {
            out.push(b'\\');
            i += 2;
        } else {
            let octal = text.get(i + 1..i + 4)?;
            let value = octal.iter().try_fold(0u16, |v, &c| {
                (b'0'..=b'7')
                    .contains(&c)
                    .then(|| v * 8 + u16::from(c - b'0'))
            })?;
            out.push(u8::try_from(value).ok()?);
            i += 4;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Analysis;
    use crate::analyze::analyze;
    use crate::dialect::Postgres;

    fn meta() -> TableMeta {
        TableMeta {
            table: TableRef {
                schema: None,
                name: "accounts".into(),
            },
            columns: ["id", "balance", "note"]
                .iter()
                .map(|n| Column {
                    name: (*n).into(),
                    type_oid: 23,
                    sql_type: "integer".into(),
                    generated: false,
                    collation: None,
                    ..Default::default()
                })
                .collect(),
            pk: vec![0],
            has_triggers: false,
            has_cascades: false,
            oid: 0,
            ..Default::default()
        }
    }

    fn write(sql: &str) -> Write {
        match analyze(&Postgres, sql).unwrap().remove(0) {
            Analysis::Write(w) => w,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn cascading_tables_take_no_write() {
        let m = TableMeta {
            has_cascades: true,
            ..meta()
        };
        for refused in [
            "INSERT INTO accounts VALUES (1, 2, 'x')",
            "UPDATE accounts SET note = 'y' WHERE id = 1",
            "DELETE FROM accounts WHERE id = 1",
            "INSERT INTO accounts (id, balance, note) VALUES (1, 2, 'x') ON CONFLICT (id) DO UPDATE SET note = EXCLUDED.note",
        ] {
            assert!(
                m.check_capturable(&Postgres, &write(refused)).is_err(),
                "{refused}"
            );
        }
    }

    #[test]
    fn an_upsert_that_would_change_a_key_is_refused_and_its_keys_are_read_as_stored() {
        let m = meta();
        let refused = m
            .check_capturable(
                &Postgres,
                &write("INSERT INTO accounts VALUES (2, 1, 'x') ON CONFLICT (id) DO UPDATE SET id = 100"),
            )
            .unwrap_err()
            .to_string();
        assert!(refused.contains("primary-key column id"), "{refused}");
        let upsert = write(
            "INSERT INTO accounts (id, note) VALUES (2.4, 'q'), (DEFAULT, 'd'), ($1, 'p') ON CONFLICT (id) DO UPDATE SET note = 'u'",
        );
        assert!(m.check_capturable(&Postgres, &upsert).is_ok());
        assert_eq!(
            m.upsert_before_image_sql(&Postgres, &upsert).unwrap(),
            "SELECT \"id\", \"balance\", \"note\" FROM \"accounts\" WHERE (\"id\") IN ((CAST(2.4 AS integer)), (CAST($1 AS integer))) FOR UPDATE"
        );
        // Another unique key: the rows its values name there (every column of this
        // meta is an integer).
        let on_note = write(
            "INSERT INTO accounts (note, id) VALUES ('q', 7) ON CONFLICT (note) DO UPDATE SET balance = 2",
        );
        assert!(!m.upsert_on_primary_key(&on_note));
        assert_eq!(
            m.upsert_before_image_sql(&Postgres, &on_note).unwrap(),
            "SELECT \"id\", \"balance\", \"note\" FROM \"accounts\" WHERE (\"note\") IN ((CAST('q' AS integer))) FOR UPDATE"
        );
        // A key nextval() gives looks up nothing: evaluated here, it would move on.
        let sequenced = write(
            "INSERT INTO accounts (id, note) VALUES (nextval('s'), 'q') ON CONFLICT (id) DO UPDATE SET note = 'u'",
        );
        assert_eq!(
            m.upsert_before_image_sql(&Postgres, &sequenced).unwrap(),
            "SELECT \"id\", \"balance\", \"note\" FROM \"accounts\" WHERE false FOR UPDATE"
        );
        let unlisted = write(
            "INSERT INTO accounts (id) VALUES (7) ON CONFLICT (note) DO UPDATE SET balance = 2",
        );
        assert!(m.upsert_before_image_sql(&Postgres, &unlisted).is_err());
    }

    #[test]
    fn an_upsert_from_a_query_reads_the_keys_the_query_gives() {
        let m = meta();
        // Django 5.2's multi-row bulk_create(update_conflicts=True).
        let upsert = write(
            "INSERT INTO accounts (note, id) SELECT * FROM UNNEST($1::text[], $2::int[]) ON CONFLICT (id) DO UPDATE SET note = EXCLUDED.note",
        );
        assert!(m.check_capturable(&Postgres, &upsert).is_ok());
        assert_eq!(
            m.upsert_before_image_sql(&Postgres, &upsert).unwrap(),
            "SELECT \"id\", \"balance\", \"note\" FROM \"accounts\" WHERE (\"id\") IN (SELECT CAST(\"tandem_upsert_source\".\"tandem_1\" AS integer) FROM (SELECT * FROM UNNEST($1::TEXT[], $2::INT[])) AS \"tandem_upsert_source\"(\"tandem_0\", \"tandem_1\")) FOR UPDATE"
        );
        let volatile = write(
            "INSERT INTO accounts (id, note) SELECT nextval('s'), n FROM UNNEST($1::text[]) AS u(n) ON CONFLICT (id) DO UPDATE SET note = 'u'",
        );
        let refusal = m
            .upsert_before_image_sql(&Postgres, &volatile)
            .unwrap_err()
            .to_string();
        assert!(refusal.contains("differs from one evaluation"), "{refusal}");
        let unlisted = crate::analyze(
            &Postgres,
            "INSERT INTO accounts SELECT * FROM UNNEST($1::int[]) ON CONFLICT (id) DO UPDATE SET note = 'u'",
        )
        .unwrap_err()
        .to_string();
        assert!(unlisted.contains("without a column list"), "{unlisted}");
    }

    #[test]
    fn rows_chosen_by_a_volatile_function_are_refused() {
        let m = meta();
        for refused in [
            "DELETE FROM accounts WHERE random() < 0.5",
            "UPDATE accounts SET balance = 0 WHERE id = NEXTVAL('s')",
            "UPDATE accounts SET balance = 0 WHERE id = pg_catalog.nextval ('s')",
            "UPDATE accounts a SET balance = 0 FROM (SELECT random() AS r) x WHERE a.id = 1 AND x.r < 0.5",
            "DELETE FROM accounts WHERE note = $$a$$ AND random() < 0.5",
            "DELETE FROM accounts WHERE \"random\"() < 0.5",
            "DELETE FROM accounts WHERE note = uuidv7()::text",
            "DELETE FROM accounts WHERE note = encode(gen_random_bytes(1), 'hex')",
            "DELETE FROM accounts WHERE note = 'x\\' AND random() < 0.5",
            "UPDATE accounts SET balance = 1 WHERE id IN (SELECT id FROM accounts TABLESAMPLE BERNOULLI (50))",
            "DELETE FROM accounts WHERE id IN (SELECT id FROM accounts TABLESAMPLE SYSTEM (10) REPEATABLE (1))",
        ] {
            let refusal = m
                .check_capturable(&Postgres, &write(refused))
                .unwrap_err()
                .to_string();
            assert!(
                refusal.contains("differs from one evaluation"),
                "{refused}: {refusal}"
            );
        }
        for accepted in [
            "UPDATE accounts SET balance = random() * 10 WHERE id = 1",
            "UPDATE accounts SET balance = 0 WHERE id = my_random(1) OR note = 'random()x'",
            "DELETE FROM accounts WHERE random = 1",
            "UPDATE accounts SET balance = 0 WHERE note < clock_timestamp()::text",
            "INSERT INTO accounts (id, balance, note) VALUES (1, nextval('s'), 'x') ON CONFLICT (id) DO UPDATE SET note = 'y'",
            "INSERT INTO accounts VALUES (nextval('s'), 1, 'x')",
            "INSERT INTO accounts (id, balance, note) VALUES (nextval('s'), 1, 'x') ON CONFLICT (id) DO UPDATE SET note = 'y'",
            "UPDATE accounts SET balance = 0 WHERE note = $$see nextval(x)$$ AND id = $1",
            "UPDATE accounts SET balance = 0 WHERE note = $t$random()$t$",
        ] {
            assert!(
                m.check_capturable(&Postgres, &write(accepted)).is_ok(),
                "{accepted}"
            );
        }
    }

    #[test]
    fn an_inserts_given_keys_are_cast_to_the_key_type_and_generated_ones_skipped() {
        let m = meta();
        let keys = |sql: &str| m.inserted_keys_query(write(sql).rows.as_ref()?);
        assert_eq!(
            keys("INSERT INTO accounts VALUES (1, 2, 'x'), ($1, 3, 'y'), ('7'::int8, 1, 'z')")
                .as_deref(),
            Some(
                "VALUES (CAST(1 AS integer)), (CAST($1 AS integer)), (CAST('7'::INT8 AS integer))"
            )
        );
        assert_eq!(
            keys("INSERT INTO accounts (note, id) VALUES ('x', -4), ('y', DEFAULT), ('z', f())")
                .as_deref(),
            Some("VALUES (CAST(-4 AS integer))")
        );
        for unchecked in [
            "INSERT INTO accounts (note) VALUES ('x')",
            "INSERT INTO accounts (id) VALUES (nextval('s'))",
            "INSERT INTO accounts SELECT * FROM other",
            "INSERT INTO accounts DEFAULT VALUES",
            "INSERT INTO accounts OVERRIDING USER VALUE VALUES (1, 2, 'x')",
        ] {
            assert_eq!(keys(unchecked), None, "{unchecked}");
        }
        let composite = TableMeta {
            pk: vec![2, 0],
            ..meta()
        };
        let w = write("INSERT INTO accounts (id, note) VALUES ($1, $2)");
        assert_eq!(
            composite
                .inserted_keys_query(w.rows.as_ref().unwrap())
                .as_deref(),
            Some("VALUES (CAST($2 AS integer), CAST($1 AS integer))")
        );
    }

    #[test]
    fn before_image_uses_the_statements_own_predicate() {
        let w = write("UPDATE accounts a SET balance = 1 WHERE a.id = $1");
        assert_eq!(
            meta().before_image_sql(&Postgres, &w),
            "SELECT \"a\".\"id\", \"a\".\"balance\", \"a\".\"note\" FROM \"accounts\" AS \"a\" WHERE a.id = $1 FOR UPDATE OF \"a\""
        );
    }

    #[test]
    fn the_key_is_appended_to_what_the_statement_returns() {
        let m = meta();
        let w = write("DELETE FROM accounts WHERE id = 1;");
        assert_eq!(
            m.with_returning_key(&Postgres, "DELETE FROM accounts WHERE id = 1;", &w),
            "DELETE FROM accounts WHERE id = 1\nRETURNING pg_catalog.format('%s', record_send(\"accounts\".*)) AS \"tandem_image\", pg_catalog.format('%s', \"accounts\".\"id\") AS \"tandem_pk_0\""
        );
        let sql = "UPDATE accounts SET balance = 2 RETURNING balance -- the new balance";
        let w = write(sql);
        assert_eq!(
            m.with_returning_key(&Postgres, sql, &w),
            "UPDATE accounts SET balance = 2 RETURNING balance -- the new balance\n, pg_catalog.format('%s', record_send(\"accounts\".*)) AS \"tandem_image\", pg_catalog.format('%s', \"accounts\".\"id\") AS \"tandem_pk_0\""
        );
    }

    #[test]
    fn a_returned_image_decodes_from_either_bytea_output() {
        // record_send of (1, NULL, 'ab'): three columns, int4 / text NULL / text.
        let mut record = vec![0, 0, 0, 3];
        record.extend_from_slice(&[0, 0, 0, 23, 0, 0, 0, 4, 0, 0, 0, 1]);
        record.extend_from_slice(&[0, 0, 0, 25, 0xff, 0xff, 0xff, 0xff]);
        record.extend_from_slice(&[0, 0, 0, 25, 0, 0, 0, 2, b'a', b'b']);
        let hex: String = record.iter().map(|b| format!("{b:02x}")).collect();
        let expected: (Row, Vec<u32>) = (
            vec![Some(vec![0, 0, 0, 1]), None, Some(b"ab".to_vec())],
            vec![23, 25, 25],
        );
        assert_eq!(
            row_from_returned_image(format!("\\x{hex}").as_bytes()),
            Some(expected.clone())
        );
        let escape: String = record
            .iter()
            .map(|&b| match b {
                b'\\' => "\\\\".to_owned(),
                0x20..=0x7e => (b as char).to_string(),
                _ => format!("\\{b:03o}"),
            })
            .collect();
        assert_eq!(row_from_returned_image(escape.as_bytes()), Some(expected));
        assert_eq!(row_from_returned_image(b"\\x0000000"), None);
        assert_eq!(row_from_returned_image(b"\\x00000002"), None);
    }

    #[test]
    fn select_by_keys_numbers_parameters_row_by_row() {
        let mut m = meta();
        m.pk = vec![0, 2];
        assert_eq!(
            m.select_by_keys_sql(&Postgres, 2),
            "SELECT \"id\", \"balance\", \"note\" FROM \"accounts\" WHERE (\"id\", \"note\") IN (($1, $2), ($3, $4))"
        );
    }

    #[test]
    fn uncapturable_writes_are_refused() {
        let mut m = meta();
        assert!(
            m.check_capturable(&Postgres, &write("UPDATE accounts SET id = 2"))
                .is_err()
        );
        assert!(
            m.check_capturable(&Postgres, &write("UPDATE accounts SET note = 'x'"))
                .is_ok()
        );
        m.has_triggers = true;
        assert!(
            m.check_capturable(&Postgres, &write("DELETE FROM accounts"))
                .is_err()
        );
        m.has_triggers = false;
        m.columns[2].identity_always = true;
        assert!(
            m.check_capturable(&Postgres, &write("UPDATE accounts SET note = DEFAULT"))
                .is_err()
        );
        assert!(
            m.check_capturable(&Postgres, &write("UPDATE accounts SET balance = 2"))
                .is_ok()
        );
        m.columns[0].set_on_update = true;
        assert!(
            m.check_capturable(&Postgres, &write("UPDATE accounts SET balance = 2"))
                .is_err()
        );
        assert!(
            m.check_capturable(&Postgres, &write("DELETE FROM accounts"))
                .is_ok()
        );
        m.columns[0].set_on_update = false;
        m.pk.clear();
        assert!(
            m.check_capturable(&Postgres, &write("INSERT INTO accounts VALUES (1)"))
                .is_err()
        );
    }
}
