//! Table metadata from PostgreSQL's catalog, cached per database and refreshed after
//! DDL.
//!
//! Owns the cache. Reads the catalog through a side connection (service credentials),
//! never through a client's session. A side connection has its own search_path and
//! role, so it is only ever asked about schema-qualified names: a session resolves
//! the names its statements use on its own connection first (session/pg/at.rs).
//! Invariant: a cached entry is dropped as soon as any session of the database runs
//! DDL through this proxy, or finds that the name now resolves to another table or
//! that the table's columns changed; and it is read again after `META_TTL` anyway.

use crate::error::{Error, Result};
use crate::upstream::SidePools;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use tandem_undo::{Cascade, Column, Dialect, Postgres, TableMeta, TableRef};

#[derive(Default)]
pub struct MetaCache {
    // A std Mutex: held only to look up or insert, never across an await.
    tables: Mutex<Tables>,
}

/// Cached tables by (database, table), each with when it was read.
type Tables = HashMap<(String, TableRef), (std::time::Instant, Arc<TableMeta>)>;

/// How long a table's metadata is used without DDL seen through this proxy, on either
/// engine. On PostgreSQL, DDL from elsewhere that changes the table's column types is
/// caught at the write (the row image it returns has other column types); anything
/// else DDL from elsewhere changes is seen within this.
const META_TTL: std::time::Duration = std::time::Duration::from_secs(5);

/// A column's type for a cast (`Column::sql_type`): a built-in one as `format_type`
/// spells it, with its modifier (`numeric(10,2)`); any other schema-qualified, since a
/// client session's search_path need not see the schema this connection sees.
const COLUMNS: &str = "SELECT n.nspname::text, c.relname::text, a.attname::text, a.atttypid::int8, a.attgenerated <> '', c.oid::int8,
    CASE WHEN tn.nspname = 'pg_catalog' THEN pg_catalog.format_type(a.atttypid, a.atttypmod)
        ELSE pg_catalog.quote_ident(tn.nspname) || '.' || pg_catalog.quote_ident(t.typname) END,
    c.relkind = 'p', a.attidentity = 'a'
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
    JOIN pg_type t ON t.oid = a.atttypid JOIN pg_namespace tn ON tn.oid = t.typnamespace
    WHERE c.oid = to_regclass($1) ORDER BY a.attnum";
/// The key's columns in key order, each with whether the key is DEFERRABLE.
const PRIMARY_KEY: &str = "SELECT a.attname::text, NOT i.indimmediate FROM pg_index i
    CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
    JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
    WHERE i.indrelid = to_regclass($1) AND i.indisprimary ORDER BY k.ord";
/// The table and, if it is partitioned, every partition under it: a write through a
/// partitioned table fires its partitions' triggers and their foreign keys' actions.
macro_rules! with_tree {
    () => {
        "WITH tree(oid) AS (SELECT to_regclass($1)
    UNION SELECT relid FROM pg_catalog.pg_partition_tree(to_regclass($1)))"
    };
}
/// User triggers and rewrite rules (a view's `_RETURN` is no table's) of the table's
/// `with_tree`: what either does on a write is not captured, and would happen again at
/// replay.
const TRIGGERS: &str = concat!(
    with_tree!(),
    " SELECT (SELECT count(*) FROM pg_trigger WHERE tgrelid IN (SELECT oid FROM tree) AND NOT tgisinternal)
    + (SELECT count(*) FROM pg_rewrite WHERE ev_class IN (SELECT oid FROM tree) AND rulename <> '_RETURN')"
);
/// Whether row-level security is on for the table.
const ROW_SECURITY: &str = "SELECT relrowsecurity FROM pg_class WHERE oid = to_regclass($1)";
/// The root of the partition tree a table belongs to, if it does, and whether the
/// root has a primary key.
const PARTITION_ROOT: &str = "SELECT n.nspname::text, c.relname::text,
    EXISTS (SELECT FROM pg_index WHERE indrelid = c.oid AND indisprimary) FROM pg_class c
    JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.oid = pg_catalog.pg_partition_root(to_regclass($1))";
/// Whether a table has an inheritance parent or child other than by partitioning.
const INHERITANCE: &str = "SELECT count(*) FROM pg_inherits i
    JOIN pg_class child ON child.oid = i.inhrelid JOIN pg_class parent ON parent.oid = i.inhparent
    WHERE (i.inhrelid = to_regclass($1) OR i.inhparent = to_regclass($1))
    AND NOT child.relispartition AND parent.relkind <> 'p'";
/// Whether a primary-key column's type is real, double precision or money, or is built
/// on one: followed through domains, arrays, ranges, multiranges and composite types.
/// The contrib types cube and seg print floats too (a base type's output function
/// cannot be looked into: other extensions' types are taken as exact). And whether a
/// key column compares values of other bytes as equal (a nondeterministic collation,
/// citext anywhere in its type, numeric or interval inside a domain, array, range or
/// composite type, which lock keys do not see into; jsonb, which compares the numbers
/// in it by value; character without a length, which compares without the trailing
/// spaces it keeps: a length, the column's or its domain's or its attribute's, pads
/// values to it, arrays' elements too): see `TableMeta::loose_key`.
const INEXACT_KEY: &str = "WITH RECURSIVE parts(oid, nested, typmod) AS (
        SELECT a.atttypid, false, a.atttypmod FROM pg_index i
        CROSS JOIN LATERAL unnest(i.indkey) AS k(attnum)
        JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
        WHERE i.indrelid = to_regclass($1) AND i.indisprimary
    UNION
        SELECT part.oid, true, part.typmod FROM parts p JOIN pg_type t ON t.oid = p.oid
        CROSS JOIN LATERAL (
            SELECT t.typbasetype, t.typtypmod UNION ALL SELECT t.typelem, p.typmod
            UNION ALL SELECT rngsubtype, -1 FROM pg_range WHERE rngtypid = t.oid
            UNION ALL SELECT rngtypid, -1 FROM pg_range WHERE rngmultitypid = t.oid
            UNION ALL SELECT atttypid, atttypmod FROM pg_attribute
                WHERE attrelid = t.typrelid AND attnum > 0 AND NOT attisdropped
        ) AS part(oid, typmod)
        WHERE part.oid <> 0
    )
    SELECT EXISTS (SELECT FROM parts p JOIN pg_type t ON t.oid = p.oid
        WHERE p.oid IN ('float4'::regtype, 'float8'::regtype, 'money'::regtype)
        OR (t.typtype = 'b' AND t.typname IN ('cube', 'seg'))),
    EXISTS (SELECT FROM parts p JOIN pg_type t ON t.oid = p.oid
        WHERE t.typname = 'citext' OR p.oid = 'jsonb'::regtype
        OR (p.oid = 'bpchar'::regtype AND p.typmod < 0)
        OR (p.nested AND p.oid IN ('numeric'::regtype, 'interval'::regtype)))
    OR EXISTS (SELECT FROM pg_index i
        CROSS JOIN LATERAL unnest(i.indcollation::oid[]) AS k(coll)
        JOIN pg_collation c ON c.oid = k.coll
        WHERE i.indrelid = to_regclass($1) AND i.indisprimary AND NOT c.collisdeterministic)";
/// `parts(attname, oid)`, for a `WITH RECURSIVE`: every type each column of the table
/// `$1` is or holds, followed through domains, arrays, ranges, multiranges and
/// composite types.
macro_rules! column_types {
    () => {
        "parts(attname, oid) AS (
        SELECT a.attname::text, a.atttypid FROM pg_attribute a
        WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped
    UNION
        SELECT p.attname, part.oid FROM parts p JOIN pg_type t ON t.oid = p.oid
        CROSS JOIN LATERAL (
            SELECT t.typbasetype UNION ALL SELECT t.typelem
            UNION ALL SELECT rngsubtype FROM pg_range WHERE rngtypid = t.oid
            UNION ALL SELECT rngtypid FROM pg_range WHERE rngmultitypid = t.oid
            UNION ALL SELECT atttypid FROM pg_attribute
                WHERE attrelid = t.typrelid AND attnum > 0 AND NOT attisdropped
        ) AS part(oid)
        WHERE part.oid <> 0
    )"
    };
}
/// A column whose values may not come back from their binary form (see
/// `TableMeta::imageless_column`), with its type, followed through domains, arrays,
/// ranges, multiranges and composite types.
const IMAGELESS_COLUMN: &str = concat!(
    "WITH RECURSIVE ",
    column_types!(),
    " SELECT p.attname, pg_catalog.format_type(t.oid, NULL) FROM parts p
    JOIN pg_type t ON t.oid = p.oid
    WHERE t.typsend::oid = 0 OR t.typreceive::oid = 0
        OR (t.typnamespace = 'pg_catalog'::regnamespace AND t.typname IN ('int2vector',
            'oidvector', 'xml', 'pg_node_tree', 'pg_ndistinct', 'pg_dependencies',
            'pg_mcv_list', 'pg_brin_bloom_summary', 'pg_brin_minmax_multi_summary'))
    LIMIT 1"
);
/// A CHECK or foreign-key constraint not validated yet: the table's, its partitions',
/// or a domain's that a column's type is or holds (followed through domains, arrays,
/// ranges, multiranges and composite types).
const UNVALIDATED: &str = concat!(
    "WITH RECURSIVE tree(oid) AS (SELECT to_regclass($1)
        UNION SELECT relid FROM pg_catalog.pg_partition_tree(to_regclass($1))), ",
    column_types!(),
    " SELECT conname::text FROM pg_constraint WHERE NOT convalidated
    AND ((conrelid IN (SELECT oid FROM tree) AND contype IN ('c', 'f'))
        OR contypid IN (SELECT oid FROM parts))
    ORDER BY conname LIMIT 1"
);
/// Foreign keys with actions that reference the table's `with_tree`, one row each: whether
/// it acts on DELETE and on UPDATE, the referenced columns, and the names of its table
/// and of every table foreign-key actions reach from there (a partition by its root's,
/// which its global locks go by).
const CASCADES: &str = "WITH RECURSIVE tree(oid) AS (SELECT to_regclass($1)
        UNION SELECT relid FROM pg_catalog.pg_partition_tree(to_regclass($1))),
    acting AS (SELECT oid, conrelid, confrelid, confkey,
            confdeltype IN ('c', 'n', 'd') AS on_delete,
            confupdtype IN ('c', 'n', 'd') AS on_update
        FROM pg_catalog.pg_constraint
        WHERE contype = 'f' AND (confdeltype IN ('c', 'n', 'd') OR confupdtype IN ('c', 'n', 'd'))),
    reach(fk, rel) AS (SELECT oid, conrelid FROM acting WHERE confrelid IN (SELECT oid FROM tree)
        UNION SELECT r.fk, a.conrelid FROM reach r JOIN acting a ON a.confrelid = r.rel)
    SELECT f.on_delete, f.on_update,
        ARRAY(SELECT a.attname::text FROM unnest(f.confkey) k
            JOIN pg_catalog.pg_attribute a ON a.attrelid = f.confrelid AND a.attnum = k),
        ARRAY(SELECT DISTINCT c.relname::text FROM reach r JOIN pg_catalog.pg_class c
            ON c.oid = coalesce(pg_catalog.pg_partition_root(r.rel), r.rel) WHERE r.fk = f.oid)
    FROM acting f WHERE f.confrelid IN (SELECT oid FROM tree) ORDER BY f.oid";

/// A cached entry still fresh; or, the first time one is found expired, None, with
/// the entry made fresh for the others: the caller reads it again while the other
/// sessions go on with it, rather than every session reading it at once.
pub(crate) fn fresh_or_claimed<K: Eq + std::hash::Hash, V: Clone>(
    entries: &mut HashMap<K, (std::time::Instant, V)>,
    key: &K,
) -> Option<V> {
    let (at, value) = entries.get_mut(key)?;
    if at.elapsed() < META_TTL {
        return Some(value.clone());
    }
    *at = std::time::Instant::now();
    None
}

impl MetaCache {
    pub async fn get(
        &self,
        side: &SidePools,
        database: &str,
        table: &TableRef,
    ) -> Result<Arc<TableMeta>> {
        let key = (database.to_owned(), table.clone());
        if let Some(fresh) = fresh_or_claimed(&mut self.lock(), &key) {
            return Ok(fresh);
        }
        match load(side, database, table).await {
            Ok(meta) => {
                let meta = Arc::new(meta);
                self.lock()
                    .insert(key, (std::time::Instant::now(), Arc::clone(&meta)));
                Ok(meta)
            }
            Err(e) => {
                self.lock().remove(&key);
                Err(e)
            }
        }
    }

    /// `table` of `database` (schema-qualified) is not the table it was: forget it.
    pub fn forget(&self, database: &str, table: &TableRef) {
        self.lock().remove(&(database.to_owned(), table.clone()));
    }

    /// DDL ran in `database`: forget its tables.
    pub fn invalidate(&self, database: &str) {
        self.lock().retain(|(db, _), _| db != database);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tables> {
        self.tables.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Functions a statement could write through: VOLATILE (the default; PostgreSQL
/// refuses writes in STABLE and IMMUTABLE ones) and written in SQL or a procedural
/// language, outside pg_catalog and information_schema. C functions (extensions such as
/// uuid-ossp and pgcrypto) are taken as not writing tables; trigger functions cannot be
/// called.
pub const WRITING_FUNCTIONS: &str = "SELECT DISTINCT p.proname::text FROM pg_catalog.pg_proc p
    JOIN pg_catalog.pg_language l ON l.oid = p.prolang
    WHERE p.provolatile = 'v' AND l.lanname NOT IN ('c', 'internal')
    AND p.prorettype NOT IN ('pg_catalog.trigger'::regtype, 'pg_catalog.event_trigger'::regtype)
    AND p.pronamespace NOT IN ('pg_catalog'::regnamespace, 'information_schema'::regnamespace)";

/// For each partition, by name in any schema: its partition tree's root, whose name
/// its rows' global locks go by (a name alone does not show it).
pub const PARTITION_ROOTS: &str = "SELECT
        (SELECT nspname FROM pg_catalog.pg_namespace WHERE oid = c.relnamespace)::text,
        c.relname::text,
        ARRAY(SELECT r.relname::text FROM pg_catalog.pg_class r
            WHERE r.oid = pg_catalog.pg_partition_root(c.oid))
    FROM pg_catalog.pg_class c WHERE c.relispartition";

/// For each relation with rewrite rules (a view's `_RETURN`, a rule's `DO ALSO` or
/// `DO INSTEAD`), by name in any schema: the tables a write through it may change
/// besides or instead of it, followed through views and rules at any depth (a
/// partition by its root's name, which its global locks go by). Tables a rule or view
/// only reads are among them.
pub const REACHED_THROUGH_RULES: &str = "WITH RECURSIVE reach(rel, via) AS (
        SELECT c.oid, c.oid FROM pg_catalog.pg_class c WHERE c.relhasrules
        AND c.relnamespace NOT IN ('pg_catalog'::regnamespace, 'information_schema'::regnamespace)
    UNION
        SELECT d.refobjid, r.via FROM reach r
        JOIN pg_catalog.pg_rewrite w ON w.ev_class = r.rel
        JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_rewrite'::regclass
            AND d.objid = w.oid AND d.refclassid = 'pg_catalog.pg_class'::regclass
            AND d.refobjid <> w.ev_class)
    SELECT (SELECT nspname FROM pg_catalog.pg_namespace WHERE oid = v.relnamespace)::text,
        v.relname::text,
        ARRAY(SELECT DISTINCT t.relname::text FROM reach r
            JOIN pg_catalog.pg_class t ON t.oid = coalesce(pg_catalog.pg_partition_root(r.rel), r.rel)
            WHERE r.via = v.oid AND r.rel <> v.oid AND t.relkind IN ('r', 'p'))
    FROM pg_catalog.pg_class v WHERE v.oid IN (SELECT via FROM reach)";

/// For each table that foreign keys with actions (`ON DELETE` / `ON UPDATE` `CASCADE`,
/// `SET NULL`, `SET DEFAULT`) reference, by name in any schema: the tables those
/// actions may change, at any depth (a partition by its root's name). What a write
/// tandem judges by the tables it names (`tables_changed`) changes besides them.
pub const REACHED_BY_ACTIONS: &str = "WITH RECURSIVE acting AS (
        SELECT conrelid, confrelid FROM pg_catalog.pg_constraint
        WHERE contype = 'f' AND (confdeltype IN ('c', 'n', 'd') OR confupdtype IN ('c', 'n', 'd'))),
    reach(root, rel) AS (SELECT confrelid, conrelid FROM acting
        UNION SELECT r.root, a.conrelid FROM reach r JOIN acting a ON a.confrelid = r.rel)
    SELECT (SELECT nspname FROM pg_catalog.pg_namespace WHERE oid = s.relnamespace)::text,
        s.relname::text,
        pg_catalog.array_agg(DISTINCT t.relname::text)
    FROM reach r JOIN pg_catalog.pg_class s ON s.oid = r.root
    JOIN pg_catalog.pg_class t ON t.oid = coalesce(pg_catalog.pg_partition_root(r.rel), r.rel)
    GROUP BY s.relnamespace, s.relname";

/// How long names are used before they are read again: one created on another
/// connection is known within this.
const NAMES_TTL: std::time::Duration = std::time::Duration::from_secs(5);

/// Sets of names (or what names map to) by key (a database, say), each read at most
/// every `NAMES_TTL` and after `invalidate`. A read that fails keeps the names read
/// last, if any.
pub struct NamesCache<T = HashSet<String>> {
    // A std Mutex: held only to look up or insert, never across an await.
    by_key: Mutex<HashMap<String, NamesRead<T>>>,
}

impl<T> Default for NamesCache<T> {
    fn default() -> Self {
        NamesCache {
            by_key: Mutex::default(),
        }
    }
}

/// When a key's names were read, and the names.
type NamesRead<T> = (std::time::Instant, Arc<T>);

impl<T> NamesCache<T> {
    /// The names of `key`, from `read` if those held are older than `NAMES_TTL`.
    pub async fn get<E: std::fmt::Display>(
        &self,
        key: &str,
        read: impl std::future::Future<Output = std::result::Result<T, E>>,
    ) -> std::result::Result<Arc<T>, E> {
        let last = self.lock().get(key).cloned();
        if let Some((read_at, names)) = &last
            && read_at.elapsed() < NAMES_TTL
        {
            return Ok(Arc::clone(names));
        }
        match (read.await, last) {
            (Ok(names), _) => {
                let names = Arc::new(names);
                self.lock().insert(
                    key.to_owned(),
                    (std::time::Instant::now(), Arc::clone(&names)),
                );
                Ok(names)
            }
            (Err(e), Some((_, names))) => {
                tracing::warn!(key, error = %e, "names not read again; the last ones stay in use");
                Ok(names)
            }
            (Err(e), None) => Err(e),
        }
    }

    /// What `key` names may have changed (DDL): read them again.
    pub fn invalidate(&self, key: &str) {
        self.lock().remove(key);
    }

    /// Read every key's names again.
    pub fn invalidate_all(&self) {
        self.lock().clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, NamesRead<T>>> {
        self.by_key.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Per database, a set of names one catalog query gives (`WRITING_FUNCTIONS`), read
/// over a side connection (see `NamesCache`).
pub struct CatalogNames {
    query: &'static str,
    cache: NamesCache,
}

impl CatalogNames {
    pub fn new(query: &'static str) -> Self {
        CatalogNames {
            query,
            cache: NamesCache::default(),
        }
    }

    pub async fn get(&self, side: &SidePools, database: &str) -> Result<Arc<HashSet<String>>> {
        let read = async {
            let client = side.get(database).await?;
            let rows = client.query(self.query, &[]).await?;
            Ok::<_, Error>(rows.iter().map(|r| r.get(0)).collect())
        };
        self.cache.get(database, read).await
    }

    /// DDL ran in `database`: read its names again.
    pub fn invalidate(&self, database: &str) {
        self.cache.invalidate(database);
    }
}

/// How `CatalogReach` keys a relation of one schema (a name alone stands for that
/// name in every schema): both as the catalog spells them.
pub fn qualified_key(schema: &str, name: &str) -> String {
    format!("{schema}\0{name}")
}

/// Per database, the tables a write through a name may change besides (or instead
/// of) its own, as one catalog query gives them by name, and by schema and name
/// (`qualified_key`) (`PARTITION_ROOTS`, `REACHED_THROUGH_RULES`, `REACHED_BY_ACTIONS`; read over a side
/// connection, see `NamesCache`).
pub struct CatalogReach {
    query: &'static str,
    cache: NamesCache<HashMap<String, Vec<String>>>,
}

impl CatalogReach {
    pub fn new(query: &'static str) -> Self {
        CatalogReach {
            query,
            cache: NamesCache::default(),
        }
    }

    pub async fn get(
        &self,
        side: &SidePools,
        database: &str,
    ) -> Result<Arc<HashMap<String, Vec<String>>>> {
        let read = async {
            let client = side.get(database).await?;
            let rows = client.query(self.query, &[]).await?;
            let mut reached: HashMap<String, Vec<String>> = HashMap::new();
            for row in &rows {
                let (schema, name): (String, String) = (row.get(0), row.get(1));
                let tables: Vec<String> = row.get(2);
                if tables.is_empty() {
                    continue;
                }
                reached.insert(qualified_key(&schema, &name), tables.clone());
                // By name alone, one name in several schemas: what any of them reaches.
                let entry = reached.entry(name).or_default();
                for table in tables {
                    if !entry.contains(&table) {
                        entry.push(table);
                    }
                }
            }
            Ok::<_, Error>(reached)
        };
        self.cache.get(database, read).await
    }

    /// DDL ran in `database`: read it again.
    pub fn invalidate(&self, database: &str) {
        self.cache.invalidate(database);
    }
}

async fn load(side: &SidePools, database: &str, table: &TableRef) -> Result<TableMeta> {
    let client = side.get(database).await?;
    let name = Postgres.qualified(table);
    let rows = client.query(COLUMNS, &[&name]).await?;
    let Some(first) = rows.first() else {
        return Err(Error::UnknownTable { table: name });
    };
    let resolved = TableRef {
        schema: Some(first.get(0)),
        name: first.get(1),
    };
    let oid = first.get::<_, i64>(5) as u32;
    let columns: Vec<Column> = rows
        .iter()
        .map(|r| Column {
            name: r.get(2),
            type_oid: r.get::<_, i64>(3) as u32,
            sql_type: r.get(6),
            generated: r.get(4),
            identity_always: r.get(8),
            set_on_update: false,
            collation: None,
        })
        .collect();
    let partitioned: bool = first.get(7);
    let key_rows = client.query(PRIMARY_KEY, &[&name]).await?;
    let key_checked_at_commit = key_rows.iter().any(|r| r.get::<_, bool>(1));
    let pk = key_rows
        .iter()
        .filter_map(|r| columns.iter().position(|c| c.name == r.get::<_, &str>(0)))
        .collect();
    let triggers: i64 = client.query_one(TRIGGERS, &[&name]).await?.get(0);
    let cascades: Vec<Cascade> = client
        .query(CASCADES, &[&name])
        .await?
        .iter()
        .map(|r| Cascade {
            on_delete: r.get(0),
            on_update: r.get(1),
            columns: r.get(2),
            reaches: r.get(3),
        })
        .collect();
    let (lock_table, root_without_key) = match client.query_opt(PARTITION_ROOT, &[&name]).await? {
        Some(r) => {
            let root = TableRef {
                schema: Some(r.get(0)),
                name: r.get(1),
            };
            let keyed: bool = r.get(2);
            let without_key = !keyed && root != resolved;
            ((root != resolved).then_some(root), without_key)
        }
        None => (None, false),
    };
    let inheritance: i64 = client.query_one(INHERITANCE, &[&name]).await?.get(0);
    let row_security: bool = client.query_one(ROW_SECURITY, &[&name]).await?.get(0);
    let key_types = client.query_one(INEXACT_KEY, &[&name]).await?;
    let (inexact_key, loose_key): (bool, bool) = (key_types.get(0), key_types.get(1));
    let imageless_column = client
        .query_opt(IMAGELESS_COLUMN, &[&name])
        .await?
        .map(|r| (r.get(0), r.get(1)));
    let unvalidated_constraint = client
        .query_opt(UNVALIDATED, &[&name])
        .await?
        .map(|r| r.get(0));
    Ok(TableMeta {
        table: resolved,
        columns,
        pk,
        has_triggers: triggers > 0,
        has_cascades: !cascades.is_empty(),
        cascades,
        oid,
        lock_table,
        inheritance: inheritance > 0,
        row_security,
        inexact_key,
        loose_key,
        key_checked_at_commit,
        partitioned,
        root_without_key,
        imageless_column,
        unvalidated_constraint,
    })
}
