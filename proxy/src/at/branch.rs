//! One branch in the making: the rows a local transaction inside a global transaction
//! has changed, with their before images, until its COMMIT turns them into an undo
//! record and lock keys.
//!
//! Pure bookkeeping: no I/O. Invariant: a row's before image is the one taken before
//! the branch first changed it; later statements never replace it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use tandem_lockserver::client::LockKey;
use tandem_undo::record::VERSION;
use tandem_undo::{Row, RowImages, SavepointOp, TableMeta, TableUndo, UndoRecord};

/// A primary key as text, as the server printed it on this connection: the identity of a
/// row within one branch.
pub type TextKey = Vec<Option<String>>;

/// A primary key's values as images read them (binary; None: NULL).
pub type KeyValues = Vec<Option<Vec<u8>>>;

#[derive(Debug, Default)]
pub struct Branch {
    tables: Vec<TableRows>,
    /// The local transaction's savepoints, oldest first.
    savepoints: Vec<String>,
}

#[derive(Debug)]
struct TableRows {
    meta: Arc<TableMeta>,
    /// Rows in first-change order.
    order: Vec<TextKey>,
    rows: HashMap<TextKey, RowImages>,
    /// Rows whose after image the last write that changed them returned (None after
    /// a DELETE): COMMIT reads only the others again.
    after_known: HashSet<TextKey>,
    /// For each row, how many savepoints were set when the branch first captured it:
    /// a rollback to one of them undoes the rows captured after it.
    depth: HashMap<TextKey, usize>,
}

/// A row the statement changed that tandem had no before image of.
#[derive(Debug, PartialEq, Eq)]
pub struct Uncaptured {
    pub table: String,
}

impl Branch {
    pub fn is_empty(&self) -> bool {
        self.tables.iter().all(|t| t.order.is_empty())
    }

    /// Whether the local transaction has a savepoint of this name (as the branch saw
    /// them set).
    pub fn has_savepoint(&self, name: &str) -> bool {
        self.savepoints.iter().any(|s| s == name)
    }

    /// The rows of `meta`'s own table (a partitioned table and each partition have
    /// their own: a replay restores each row through the table it was first captured
    /// by, which holds it).
    fn table(&mut self, meta: &Arc<TableMeta>) -> &mut TableRows {
        let at = match self.tables.iter().position(|t| t.meta.table == meta.table) {
            Some(at) => at,
            None => {
                self.tables.push(TableRows {
                    meta: Arc::clone(meta),
                    order: Vec::new(),
                    rows: HashMap::new(),
                    after_known: HashSet::new(),
                    depth: HashMap::new(),
                });
                self.tables.len() - 1
            }
        };
        &mut self.tables[at]
    }

    /// Where the branch holds the row `key` of `meta`'s table: a table of the same rows
    /// (`meta`'s own, or its partitioned table or a partition of it, through which the
    /// row was first captured), with how a row in `meta`'s column order reads in that
    /// table's. None if no table holds it.
    fn holder(&self, meta: &TableMeta, key: &TextKey) -> Option<(usize, ColumnOrder)> {
        self.tables.iter().enumerate().find_map(|(at, t)| {
            if !t.rows.contains_key(key) {
                return None;
            }
            column_order(&t.meta, meta).map(|order| (at, order))
        })
    }

    /// Rows read by a before-image query (binary row, text key), locked by it.
    pub fn record_before(&mut self, meta: &Arc<TableMeta>, rows: Vec<(Row, TextKey)>) {
        for (row, key) in rows {
            self.capture(meta, key, Some(row));
        }
    }

    /// Takes row `key` into `meta`'s table with its before image (None: it did not
    /// exist), unless a table of the same rows holds it already: its first before
    /// image stays.
    fn capture(&mut self, meta: &Arc<TableMeta>, key: TextKey, before: Option<Row>) {
        if self.holder(meta, &key).is_some() {
            return;
        }
        let depth = self.savepoints.len();
        let table = self.table(meta);
        table.depth.insert(key.clone(), depth);
        table.order.push(key.clone());
        table.rows.insert(
            key,
            RowImages {
                before,
                after: None,
            },
        );
    }

    /// Keys an UPDATE or DELETE returned: each must have a before image, or a row changed
    /// that tandem cannot undo (a phantom that appeared after the before image).
    pub fn check_captured(
        &self,
        meta: &Arc<TableMeta>,
        keys: &[TextKey],
    ) -> Result<(), Uncaptured> {
        let all = keys.iter().all(|k| self.holder(meta, k).is_some());
        if all {
            Ok(())
        } else {
            Err(Uncaptured {
                table: meta.table.name.clone(),
            })
        }
    }

    /// Keys an INSERT returned: rows that did not exist before the branch (unless the
    /// branch itself deleted them earlier, whose before image stays).
    pub fn record_inserted(&mut self, meta: &Arc<TableMeta>, keys: Vec<TextKey>) {
        for key in keys {
            self.capture(meta, key, None);
        }
    }

    /// Rows as the write that just changed them returned them (None: it deleted them),
    /// for rows the branch holds.
    pub fn record_returned_after(
        &mut self,
        meta: &Arc<TableMeta>,
        rows: impl IntoIterator<Item = (TextKey, Option<Row>)>,
    ) {
        for (key, after) in rows {
            let Some((at, order)) = self.holder(meta, &key) else {
                continue;
            };
            let table = &mut self.tables[at];
            if let Some(images) = table.rows.get_mut(&key) {
                images.after = after.map(|row| order.apply(row));
                table.after_known.insert(key);
            }
        }
    }

    /// Rows a write changed without returning them: COMMIT must read them again.
    pub fn forget_after(&mut self, meta: &Arc<TableMeta>, keys: &[TextKey]) {
        for key in keys {
            if let Some((at, _)) = self.holder(meta, key) {
                self.tables[at].after_known.remove(key);
            }
        }
    }

    /// A statement tandem does not capture ran (`ROLLBACK TO SAVEPOINT` above all, or a
    /// function): the rows may differ from what the writes returned, so COMMIT reads
    /// every one again.
    pub fn forget_all_after(&mut self) {
        for t in &mut self.tables {
            t.after_known.clear();
        }
    }

    /// A savepoint statement of the local transaction, at the moment it runs. After
    /// `ROLLBACK TO s` the rows the branch first captured after `s` are as they were
    /// before it touched them, and (on PostgreSQL) no longer locked by it: they leave
    /// the branch, or a global rollback would write their old before images over what
    /// others wrote since. Every row that stays is read again at COMMIT.
    ///
    /// `unknown_undoes_all`: what a rollback to a savepoint the branch never saw set
    /// means. On PostgreSQL it was set before the branch's binding began (an XID hint
    /// in the middle of a transaction), so it precedes every captured row; had it not
    /// been set at all, the server fails the transaction, which then commits nothing.
    /// On MySQL a missing savepoint is an error that leaves the transaction going.
    pub fn on_savepoint(&mut self, op: &SavepointOp, unknown_undoes_all: bool) {
        match op {
            SavepointOp::Set(name) => self.savepoints.push(name.clone()),
            SavepointOp::Release(name) => {
                if let Some(at) = self.savepoints.iter().rposition(|s| s == name) {
                    // Released with every later one: their rows now belong to the
                    // savepoint (or transaction) that encloses them.
                    self.savepoints.truncate(at);
                    for t in &mut self.tables {
                        for depth in t.depth.values_mut() {
                            *depth = (*depth).min(at);
                        }
                    }
                }
            }
            SavepointOp::RollbackTo(name) => {
                let kept = match self.savepoints.iter().rposition(|s| s == name) {
                    Some(at) => {
                        // The savepoint itself stays; later ones are gone.
                        self.savepoints.truncate(at + 1);
                        Some(at)
                    }
                    None if unknown_undoes_all => None,
                    None => {
                        self.forget_all_after();
                        return;
                    }
                };
                for t in &mut self.tables {
                    let undone: Vec<TextKey> = t
                        .order
                        .iter()
                        .filter(|k| kept.is_none_or(|at| t.depth.get(*k).is_some_and(|d| *d > at)))
                        .cloned()
                        .collect();
                    for key in &undone {
                        t.rows.remove(key);
                        t.after_known.remove(key);
                        t.depth.remove(key);
                    }
                    t.order.retain(|k| t.rows.contains_key(k));
                }
                self.forget_all_after();
            }
        }
    }

    /// Each table with the keys of its rows whose after image is not known yet, for the
    /// after-image queries.
    pub fn keys(&self) -> Vec<(Arc<TableMeta>, Vec<TextKey>)> {
        self.tables
            .iter()
            .map(|t| {
                let unknown = t
                    .order
                    .iter()
                    .filter(|k| !t.after_known.contains(*k))
                    .cloned()
                    .collect();
                (Arc::clone(&t.meta), unknown)
            })
            .filter(|(_, keys): &(_, Vec<TextKey>)| !keys.is_empty())
            .collect()
    }

    /// After images read at COMMIT, for keys [`Branch::keys`] gave. Every row whose
    /// after image was not known and is not among `rows` was deleted: an image an
    /// earlier write returned for it is out of date (an INSERT's row deleted again, or
    /// undone by ROLLBACK TO SAVEPOINT). The reads may come in several calls (chunks):
    /// rows already read stay as read.
    pub fn record_after(&mut self, meta: &Arc<TableMeta>, rows: Vec<(Row, TextKey)>) {
        let table = self.table(meta);
        for key in &table.order {
            if !table.after_known.contains(key)
                && let Some(images) = table.rows.get_mut(key)
            {
                images.after = None;
            }
        }
        for (row, key) in rows {
            if let Some(images) = table.rows.get_mut(&key) {
                images.after = Some(row);
                table.after_known.insert(key);
            }
        }
    }

    /// Every row the branch has touched so far, by table, in first-change order, as the
    /// key's binary values: the rows whose keys [`Branch::finish`] gives, plus rows
    /// inserted and deleted again, which it leaves out once their after images are read.
    /// Lets a COMMIT register while it reads the after images, for an engine whose text
    /// keys are the hex of the key's binary values (MySQL's `keyed`; [`unhex`]).
    pub fn touched_keys(&self) -> Vec<(Arc<TableMeta>, Vec<KeyValues>)> {
        self.tables
            .iter()
            .filter(|t| !t.order.is_empty())
            .map(|t| {
                let binary = t
                    .order
                    .iter()
                    .map(|key| key.iter().map(|v| unhex(v.as_deref())).collect())
                    .collect();
                (Arc::clone(&t.meta), binary)
            })
            .collect()
    }

    /// The undo record and the global lock keys of the whole branch.
    pub fn finish(self, resource: &str) -> (UndoRecord, Vec<LockKey>) {
        let mut keys = Vec::new();
        let record = self.into_record_with(|meta, image| {
            keys.push(lock_key(resource, meta, &meta.key_of(image)));
        });
        (record, keys)
    }

    /// The undo record alone, for a COMMIT that registered its lock keys already
    /// (by [`Branch::touched_keys`]).
    pub fn into_record(self) -> UndoRecord {
        self.into_record_with(|_, _| {})
    }

    /// The undo record; `on_row` sees each row that stays in it, with the image that
    /// names it (the after image, or the before image of a deleted row).
    fn into_record_with(self, mut on_row: impl FnMut(&TableMeta, &Row)) -> UndoRecord {
        let mut record = UndoRecord {
            version: VERSION,
            tables: Vec::new(),
        };
        for mut t in self.tables {
            let meta = &t.meta;
            let mut rows = Vec::with_capacity(t.order.len());
            for key in &t.order {
                let Some(images) = t.rows.remove(key) else {
                    continue;
                };
                let Some(image) = images.after.as_ref().or(images.before.as_ref()) else {
                    // Inserted and deleted again inside the branch: nothing to undo.
                    continue;
                };
                on_row(meta, image);
                rows.push(images);
            }
            if rows.is_empty() {
                continue;
            }
            record.tables.push(TableUndo {
                schema: meta.table.schema.clone(),
                table: meta.table.name.clone(),
                columns: meta.columns.iter().map(|c| c.name.clone()).collect(),
                types: meta.columns.iter().map(|c| c.type_oid).collect(),
                generated: meta.columns.iter().map(|c| c.generated).collect(),
                pk: meta.pk.clone(),
                rows,
            });
        }
        record
    }
}

/// How a row of one table reads in another table of the same rows.
#[derive(Debug, PartialEq, Eq)]
enum ColumnOrder {
    Same,
    /// For each column of the holding table, its index in the written one.
    Permuted(Vec<usize>),
}

impl ColumnOrder {
    fn apply(&self, row: Row) -> Row {
        match self {
            ColumnOrder::Same => row,
            ColumnOrder::Permuted(from) => from.iter().map(|&i| row[i].clone()).collect(),
        }
    }
}

/// Whether `written`'s rows are `holder`'s (the same table, or a partitioned table and
/// a partition of it, whose row written through either keeps one pair of images), and
/// if so how a row of `written` reads in `holder`'s column order: an image is in its
/// table's order, which an attached partition need not share, so columns are matched
/// by name and type. None where they cannot be (kept apart, such a row's second pair
/// of images would fail the rollback's check, which leaves the data alone).
fn column_order(holder: &TableMeta, written: &TableMeta) -> Option<ColumnOrder> {
    if holder.table == written.table {
        return Some(ColumnOrder::Same);
    }
    let root = |m: &TableMeta| m.lock_table.clone().unwrap_or_else(|| m.table.clone());
    if root(holder) != root(written) || holder.columns.len() != written.columns.len() {
        return None;
    }
    if holder.columns == written.columns && holder.pk == written.pk {
        return Some(ColumnOrder::Same);
    }
    let from: Vec<usize> = holder
        .columns
        .iter()
        .map(|c| {
            written
                .columns
                .iter()
                .position(|w| w.name == c.name && w.type_oid == c.type_oid)
        })
        .collect::<Option<_>>()?;
    // The key's values, in the key's own order, name the row alike in both.
    let same_key = holder.pk.len() == written.pk.len()
        && holder
            .pk
            .iter()
            .zip(&written.pk)
            .all(|(&h, &w)| from[h] == w);
    same_key.then_some(ColumnOrder::Permuted(from))
}

/// The global lock key of a row, from its binary key values: binary does not depend on
/// session settings (DateStyle and the like), so every session names a row alike. A
/// value longer than 64 bytes is named by its SHA-256; and a key whose parts together
/// still pass the lockserver's bound (a primary key of some 30 columns) has them all
/// named by one SHA-256, so that a key stays within the bound however long and many the
/// values: a collision would only make two rows lock each other.
pub fn lock_key(resource: &str, meta: &TableMeta, key: &[Option<Vec<u8>>]) -> LockKey {
    let types = meta
        .pk
        .iter()
        .map(|&i| meta.columns.get(i).map_or(0, |c| c.type_oid));
    let pk = key
        .iter()
        .zip(types.chain(std::iter::repeat(0)))
        .map(|(v, type_oid)| {
            let canonical = v.as_deref().map(|bytes| equality_bytes(type_oid, bytes));
            match canonical.as_deref() {
                Some(bytes) if bytes.len() > LONGEST_KEY_PART => {
                    use sha2::Digest;
                    format!("sha256:{}", hex(&sha2::Sha256::digest(bytes)))
                }
                Some(bytes) => hex(bytes),
                None => "null".to_owned(),
            }
        });
    let table = qualified_name(meta);
    let whole = LockKey::new(resource, &table, pk);
    if whole.as_str().len() <= tandem_lockserver::client::MAX_LOCK_KEY_BYTES {
        return whole;
    }
    use sha2::Digest;
    // The parts as the key spells them (length-prefixed): no two tuples hash alike
    // but by a collision.
    let parts = &whole.as_str()[LockKey::new(resource, &table, [""; 0]).as_str().len()..];
    let digest = format!("sha256:{}", hex(&sha2::Sha256::digest(parts.as_bytes())));
    LockKey::new(resource, &table, [digest])
}

/// PostgreSQL's numeric type, and interval.
const NUMERIC: u32 = 1700;
const INTERVAL: u32 = 1186;

/// A key part's binary value as its type's equality sees it, so that two values a
/// unique index calls equal take one lock: a numeric without its display scale (`1.0`
/// and `1.00`), an interval as its whole span (`1 day` and `24 hours`, `1 mon` and `30
/// days`, as PostgreSQL compares them). Other types' bytes are their identity already
/// (MySQL's collations have their weights taken before this).
fn equality_bytes(type_oid: u32, bytes: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    match (type_oid, bytes.len()) {
        // ndigits, weight, sign, dscale, then the digits: PostgreSQL keeps no leading
        // or trailing zero digit, so only the display scale tells equal values apart.
        (NUMERIC, 8..) => {
            let mut canonical = bytes.to_vec();
            canonical[6..8].fill(0);
            std::borrow::Cow::Owned(canonical)
        }
        // time (µs), days, months: compared as one span of 30-day months and 24-hour
        // days.
        (INTERVAL, 16) => {
            let time = i64::from_be_bytes(bytes[0..8].try_into().unwrap_or_default());
            let days = i32::from_be_bytes(bytes[8..12].try_into().unwrap_or_default());
            let months = i32::from_be_bytes(bytes[12..16].try_into().unwrap_or_default());
            const USECS_PER_DAY: i128 = 86_400_000_000;
            let span =
                i128::from(time) + (i128::from(days) + i128::from(months) * 30) * USECS_PER_DAY;
            std::borrow::Cow::Owned(span.to_be_bytes().to_vec())
        }
        _ => std::borrow::Cow::Borrowed(bytes),
    }
}

/// Key values longer than this are hashed in a lock key.
const LONGEST_KEY_PART: usize = 64;

/// `schema.table`, as lock keys and checks of writes outside global transactions name
/// a table. A part with a dot or a double quote in it is double-quoted, so that no two
/// tables share a name (`"a.b".c` and `a."b.c"`); other names read as they always have.
pub fn qualified_name(meta: &TableMeta) -> String {
    let table = meta.lock_table.as_ref().unwrap_or(&meta.table);
    let schema = table.schema.as_deref().unwrap_or("public");
    format!("{}.{}", lock_name_part(schema), lock_name_part(&table.name))
}

/// A schema's or table's name as [`qualified_name`] writes it.
pub fn lock_name_part(name: &str) -> String {
    if name.contains(['.', '"']) {
        format!("\"{}\"", name.replace('"', "\"\""))
    } else {
        name.to_owned()
    }
}

/// Bytes as lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bytes [`hex`] wrote; None for NULL (or text that is not hex).
pub fn unhex(text: Option<&str>) -> Option<Vec<u8>> {
    let text = text?;
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_undo::{Column, TableRef};

    fn meta() -> Arc<TableMeta> {
        Arc::new(TableMeta {
            table: TableRef {
                schema: Some("public".into()),
                name: "t".into(),
            },
            columns: vec![
                Column {
                    name: "id".into(),
                    type_oid: 23,
                    sql_type: "integer".into(),
                    generated: false,
                    collation: None,
                    ..Default::default()
                },
                Column {
                    name: "v".into(),
                    type_oid: 25,
                    sql_type: "text".into(),
                    generated: false,
                    collation: None,
                    ..Default::default()
                },
            ],
            pk: vec![0],
            has_triggers: false,
            has_cascades: false,
            oid: 0,
            ..Default::default()
        })
    }

    /// `meta()`'s table as partition `name` of `root`, its columns in `order`.
    fn partition(name: &str, root: &str, order: &[usize]) -> Arc<TableMeta> {
        let t = meta();
        let columns: Vec<Column> = order.iter().map(|&i| t.columns[i].clone()).collect();
        let pk = vec![order.iter().position(|&i| i == 0).unwrap_or(0)];
        Arc::new(TableMeta {
            table: TableRef {
                schema: Some("public".into()),
                name: name.into(),
            },
            lock_table: Some(TableRef {
                schema: Some("public".into()),
                name: root.into(),
            }),
            columns,
            pk,
            ..(*t).clone()
        })
    }

    #[test]
    fn rows_of_a_partitioned_table_read_in_the_column_order_of_the_table_holding_them() {
        let leaf = partition("t_1", "t", &[0, 1]);
        let reordered = partition("t_2", "t", &[1, 0]);
        let mut root = (*meta()).clone();
        root.lock_table = None;
        let root = Arc::new(root);
        assert_eq!(column_order(&root, &leaf), Some(ColumnOrder::Same));
        assert_eq!(
            column_order(&root, &reordered),
            Some(ColumnOrder::Permuted(vec![1, 0]))
        );
        assert_eq!(
            ColumnOrder::Permuted(vec![1, 0]).apply(row(7, "x")),
            vec![Some(b"x".to_vec()), Some(vec![0, 0, 0, 7])]
        );
        let mut other = (*meta()).clone();
        other.table.name = "elsewhere".into();
        assert_eq!(column_order(&root, &other), None, "another table");

        // A row captured through the reordered partition stays its: a write through
        // the root returns it in the root's order, recorded in the partition's.
        let mut b = Branch::default();
        b.record_before(
            &reordered,
            vec![(vec![Some(b"v".to_vec()), Some(vec![0, 0, 0, 2])], key(2))],
        );
        b.record_returned_after(&root, vec![(key(2), Some(row(2, "root")))]);
        assert!(b.check_captured(&root, &[key(2)]).is_ok());
        b.record_before(&root, vec![(row(3, "c"), key(3))]);
        let record = b.into_record();
        assert_eq!(record.tables.len(), 2);
        assert_eq!(record.tables[0].table, "t_2");
        assert_eq!(
            record.tables[0].rows[0].after,
            Some(vec![Some(b"root".to_vec()), Some(vec![0, 0, 0, 2])])
        );
        assert_eq!(record.tables[1].table, "t");
    }

    #[test]
    fn a_key_of_many_wide_columns_stays_within_the_lockservers_bound() {
        let columns = 32;
        let meta = TableMeta {
            columns: (0..columns)
                .map(|i| Column {
                    name: format!("c{i}"),
                    type_oid: 25,
                    ..Default::default()
                })
                .collect(),
            pk: (0..columns).collect(),
            ..Default::default()
        };
        let row = |last: u8| -> Vec<Option<Vec<u8>>> {
            (0..columns)
                .map(|i| Some(vec![if i + 1 == columns { last } else { b'a' }; 64]))
                .collect()
        };
        let key = lock_key("postgres://h/db", &meta, &row(b'a'));
        assert!(key.as_str().len() <= tandem_lockserver::client::MAX_LOCK_KEY_BYTES);
        assert!(LockKey::parse(key.as_str()).is_ok());
        assert_eq!(key, lock_key("postgres://h/db", &meta, &row(b'a')));
        assert_ne!(key, lock_key("postgres://h/db", &meta, &row(b'b')));
        // A narrow key keeps its parts as they were.
        let narrow = lock_key("r", &meta, &vec![Some(b"ab".to_vec()); columns]);
        assert_eq!(narrow.pk(), vec!["6162"; columns]);
    }

    #[test]
    fn keys_equal_to_their_type_take_one_lock() {
        let keyed = |type_oid: u32| TableMeta {
            columns: vec![Column {
                name: "k".into(),
                type_oid,
                ..Default::default()
            }],
            pk: vec![0],
            ..Default::default()
        };
        let lock =
            |type_oid: u32, bytes: &[u8]| lock_key("r", &keyed(type_oid), &[Some(bytes.to_vec())]);
        let hex = |s: &str| -> Vec<u8> {
            (0..s.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
                .collect()
        };
        // numeric_send of 1.0 and 1.00; of 0 and 0.0; and 10 (another value).
        let one = hex("00010000000000010001");
        assert_eq!(
            lock(NUMERIC, &one),
            lock(NUMERIC, &hex("00010000000000020001"))
        );
        assert_eq!(
            lock(NUMERIC, &hex("0000000000000000")),
            lock(NUMERIC, &hex("0000000000000001"))
        );
        assert_ne!(
            lock(NUMERIC, &one),
            lock(NUMERIC, &hex("0001000000000000000a"))
        );
        // interval_send of '1 day' and '24 hours'; '1 mon' and '30 days'; '1 day 1 µs'.
        let day = hex("00000000000000000000000100000000");
        assert_eq!(
            lock(INTERVAL, &day),
            lock(INTERVAL, &hex("000000141dd760000000000000000000"))
        );
        assert_eq!(
            lock(INTERVAL, &hex("00000000000000000000000000000001")),
            lock(INTERVAL, &hex("00000000000000000000001e00000000"))
        );
        assert_ne!(
            lock(INTERVAL, &day),
            lock(INTERVAL, &hex("00000000000000010000000100000000"))
        );
        // Other types keep their bytes.
        assert_ne!(lock(25, b"1.0"), lock(25, b"1.00"));
    }

    #[test]
    fn tables_whose_names_hold_dots_or_quotes_are_named_apart() {
        let named = |schema: &str, name: &str| {
            qualified_name(&TableMeta {
                table: TableRef {
                    schema: Some(schema.into()),
                    name: name.into(),
                },
                ..Default::default()
            })
        };
        assert_eq!(named("public", "t"), "public.t");
        assert_eq!(named("a", "b.c"), "a.\"b.c\"");
        assert_eq!(named("a.b", "c"), "\"a.b\".c");
        assert_eq!(named("a", "say \"hi\""), "a.\"say \"\"hi\"\"\"");
        assert_ne!(named("a", "b.c"), named("a.b", "c"));
        assert_ne!(named("a\".\"b", "c"), named("a", "b\".\"c"));
    }

    fn row(id: u8, v: &str) -> Row {
        vec![Some(vec![0, 0, 0, id]), Some(v.as_bytes().to_vec())]
    }

    fn key(id: u8) -> TextKey {
        vec![Some(id.to_string())]
    }

    #[test]
    fn the_first_before_image_wins_and_record_and_keys_follow() {
        let m = meta();
        let mut b = Branch::default();
        b.record_before(&m, vec![(row(1, "a"), key(1))]);
        b.record_before(&m, vec![(row(1, "changed"), key(1))]);
        assert!(b.check_captured(&m, &[key(1)]).is_ok());
        assert_eq!(
            b.check_captured(&m, &[key(2)]),
            Err(Uncaptured { table: "t".into() })
        );
        b.record_inserted(&m, vec![key(2), key(3)]);
        b.record_after(&m, vec![(row(1, "b"), key(1)), (row(2, "new"), key(2))]);
        let (record, keys) = b.finish("postgres://h/db");
        let rows = &record.tables[0].rows;
        // Row 3 was inserted and deleted again: nothing to undo, nothing to lock.
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].before, Some(row(1, "a")));
        assert_eq!(rows[0].after, Some(row(1, "b")));
        assert_eq!(rows[1].before, None);
        assert_eq!(keys.len(), 2);
        assert_eq!(
            keys[0],
            LockKey::new("postgres://h/db", "public.t", ["00000001"])
        );
    }

    #[test]
    fn a_row_not_found_at_commit_has_no_after_image_whatever_a_write_returned() {
        let m = meta();
        let mut b = Branch::default();
        b.record_before(&m, vec![(row(1, "a"), key(1))]);
        b.record_inserted(&m, vec![key(4)]);
        b.record_returned_after(&m, vec![(key(4), Some(row(4, "new")))]);
        // Row 4 deleted again, row 1 updated: neither returned its image.
        b.forget_after(&m, &[key(4), key(1)]);
        // The COMMIT reads both in two chunks; only row 1 is found.
        b.record_after(&m, vec![(row(1, "b"), key(1))]);
        b.record_after(&m, vec![]);
        let (record, keys) = b.finish("mysql://h/db");
        let rows = &record.tables[0].rows;
        assert_eq!(
            rows.len(),
            1,
            "the inserted and deleted row has nothing to undo"
        );
        assert_eq!(
            rows[0].after,
            Some(row(1, "b")),
            "a later chunk keeps what was read"
        );
        assert_eq!(keys.len(), 1);
    }

    #[test]
    fn commit_reads_again_only_rows_whose_after_image_no_write_returned() {
        let m = meta();
        let mut b = Branch::default();
        b.record_before(&m, vec![(row(1, "a"), key(1)), (row(2, "b"), key(2))]);
        b.record_inserted(&m, vec![key(3)]);
        // Row 1 updated (returned), row 2 deleted, row 3 inserted without its image.
        b.record_returned_after(&m, vec![(key(1), Some(row(1, "a2")))]);
        b.record_returned_after(&m, vec![(key(2), None)]);
        let pending: Vec<Vec<TextKey>> = b.keys().into_iter().map(|(_, k)| k).collect();
        assert_eq!(pending, vec![vec![key(3)]]);
        // A later write that did not return row 1 makes COMMIT read it again.
        b.forget_after(&m, &[key(1)]);
        let pending: Vec<Vec<TextKey>> = b.keys().into_iter().map(|(_, k)| k).collect();
        assert_eq!(pending, vec![vec![key(1), key(3)]]);
        b.record_returned_after(
            &m,
            vec![(key(1), Some(row(1, "a3"))), (key(3), Some(row(3, "c")))],
        );
        assert!(b.keys().is_empty(), "nothing left to read at COMMIT");
        let (record, keys) = b.finish("postgres://h/db");
        let rows = &record.tables[0].rows;
        assert_eq!(rows[0].after, Some(row(1, "a3")));
        assert_eq!(rows[1].after, None, "deleted");
        assert_eq!(rows[2].after, Some(row(3, "c")));
        assert_eq!(keys.len(), 3);
    }

    fn kept(b: &Branch) -> Vec<TextKey> {
        b.tables.iter().flat_map(|t| t.order.clone()).collect()
    }

    #[test]
    fn a_rollback_to_a_savepoint_drops_the_rows_first_captured_after_it() {
        let m = meta();
        let sp = |name: &str| SavepointOp::Set(name.into());
        let mut b = Branch::default();
        b.record_before(&m, vec![(row(1, "a"), key(1))]);
        b.on_savepoint(&sp("a"), true);
        b.record_before(&m, vec![(row(2, "b"), key(2)), (row(1, "again"), key(1))]);
        b.on_savepoint(&sp("b"), true);
        b.record_inserted(&m, vec![key(3)]);
        // Released into "a": row 3 now goes with a rollback to "a".
        b.on_savepoint(&SavepointOp::Release("b".into()), true);
        b.on_savepoint(&sp("c"), true);
        b.record_before(&m, vec![(row(4, "d"), key(4))]);
        b.on_savepoint(&SavepointOp::RollbackTo("c".into()), true);
        assert_eq!(kept(&b), vec![key(1), key(2), key(3)]);
        // "c" is still set; rolling back to "a" drops every row captured after it.
        b.on_savepoint(&SavepointOp::RollbackTo("a".into()), true);
        assert_eq!(kept(&b), vec![key(1)], "row 1 was captured before \"a\"");
        assert_eq!(
            b.keys()[0].1,
            vec![key(1)],
            "what stays is read again at COMMIT"
        );
        // Unknown savepoints: on MySQL an error that changes nothing; on PostgreSQL
        // one set before the branch's binding began, before every row.
        b.on_savepoint(&SavepointOp::RollbackTo("never".into()), false);
        assert_eq!(kept(&b), vec![key(1)]);
        b.on_savepoint(&SavepointOp::RollbackTo("never".into()), true);
        assert!(b.is_empty());
    }

    /// MySQL registers while it reads the after images: the keys it registers must be
    /// the ones the finished branch names, when text keys are the hex of binary keys.
    #[test]
    fn touched_keys_match_the_finished_branchs_keys() {
        let m = meta();
        let hex_key = |id: u8| vec![Some(hex(&[0, 0, 0, id]))];
        let mut b = Branch::default();
        b.record_before(
            &m,
            vec![(row(1, "a"), hex_key(1)), (row(4, "d"), hex_key(4))],
        );
        b.record_inserted(&m, vec![hex_key(2), hex_key(3)]);
        let early: Vec<LockKey> = b
            .touched_keys()
            .into_iter()
            .flat_map(|(meta, keys)| {
                keys.iter()
                    .map(|key| lock_key("mysql://h:3306", &meta, key))
                    .collect::<Vec<_>>()
            })
            .collect();
        b.record_after(
            &m,
            vec![
                (row(1, "b"), hex_key(1)),
                (row(4, "d"), hex_key(4)),
                (row(2, "new"), hex_key(2)),
            ],
        );
        let (_, keys) = b.finish("mysql://h:3306");
        // Row 3, inserted and deleted again, is locked early but not named at the end.
        assert_eq!(early.len(), 4);
        assert_eq!(
            keys,
            vec![early[0].clone(), early[1].clone(), early[2].clone()]
        );
    }
}
