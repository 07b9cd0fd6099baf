//! Global row locks: the [`LockKey`] encoding and the in-memory [`LockTable`].
//!
//! Owns: which transaction holds which key. Never does I/O and never decides *when*
//! locks are released (that is `txn`'s status rule, `GlobalStatus::holds_locks`).
//! Invariant: acquisition is all or nothing — after [`LockTable::acquire`] either every
//! key of the request is held by the caller's xid or the table is unchanged.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fmt;
use std::sync::Arc;

use super::txn::Xid;

/// Largest encoded lock key accepted, in bytes. Longer keys are refused with
/// `Error::InvalidArgument` before anything is stored.
pub const MAX_LOCK_KEY_BYTES: usize = 4096;

/// One global row lock: (resource, table, primary-key tuple).
///
/// The canonical encoding is a sequence of length-prefixed fields,
/// `<len>:<bytes>` with `<len>` the field's byte length in decimal (no leading zeros):
/// resource, then table, then each primary-key column's value in text form.
/// `LockKey::new("pg://h/db", "public.t", ["1", "a"])` encodes as
/// `9:pg://h/db8:public.t1:11:a`. Length prefixes make the encoding unambiguous for
/// any bytes in any field, so two different rows never share a key.
#[derive(Clone, Eq, PartialOrd, Ord)]
pub struct LockKey(Arc<str>);

impl std::hash::Hash for LockKey {
    /// The text's hash, as a derived impl would give: equal text, equal hash.
    #[inline]
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        (*self.0).hash(h)
    }
}

impl PartialEq for LockKey {
    /// The lock table stores clones of one key: comparing the pointers first saves
    /// a memory load per probe (same result as comparing the text).
    #[inline]
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || *self.0 == *other.0
    }
}

/// Why a string is not a canonical lock key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed lock key at byte {at}: {why}")]
pub struct KeyError {
    /// Byte offset where decoding failed.
    pub at: usize,
    /// What was wrong.
    pub why: &'static str,
}

impl LockKey {
    /// Builds the key of one row. `pk` holds the primary-key column values as text,
    /// in the table's key-column order.
    pub fn new<I, S>(resource: &str, table: &str, pk: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut s = String::with_capacity(resource.len() + table.len() + 16);
        push_field(&mut s, resource);
        push_field(&mut s, table);
        for v in pk {
            push_field(&mut s, v.as_ref());
        }
        Self(s.into())
    }

    /// Parses a canonical encoding, as sent over the wire.
    pub fn parse(s: &str) -> Result<Self, KeyError> {
        if s.len() > MAX_LOCK_KEY_BYTES {
            return Err(KeyError {
                at: 0,
                why: "key too long",
            });
        }
        let mut fields = 0;
        visit_fields(s, |_| fields += 1)?;
        if fields < 3 {
            return Err(KeyError {
                at: s.len(),
                why: "need resource, table and at least one key column",
            });
        }
        Ok(Self(s.into()))
    }

    /// The canonical encoding.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The resource (database) this key belongs to.
    pub fn resource(&self) -> &str {
        self.fields()[0]
    }

    /// The table name.
    pub fn table(&self) -> &str {
        self.fields()[1]
    }

    /// The start of the encoding that names the key's table: its first two fields,
    /// `<len>:<resource><len>:<table>`. Unambiguous like the key itself, so two keys
    /// share it exactly when they name the same (resource, table). Allocates nothing.
    pub fn table_prefix(&self) -> &str {
        // Reads the two length headers only (hot: once per key of a registration).
        // A LockKey is only built by `new` or a successful `parse`, so both fields
        // are there; the whole text stands in if a bug ever broke that.
        let (s, b) = (&*self.0, self.0.as_bytes());
        let mut i = 0usize;
        for _ in 0..2 {
            let mut len = 0usize;
            while let Some(d) = b.get(i).filter(|d| d.is_ascii_digit()) {
                len = len.saturating_mul(10).saturating_add(usize::from(d - b'0'));
                i += 1;
            }
            i = i.saturating_add(1).saturating_add(len);
        }
        s.get(..i).unwrap_or(s)
    }

    /// Whether this key's table is the one `prefix` ([`LockKey::table_prefix`] of
    /// some key) names. The encoding is read front to back with lengths first, so a
    /// key that starts with another key's two-field prefix has exactly those two
    /// fields: one comparison of bytes, no parsing.
    #[inline]
    pub fn in_table(&self, prefix: &str) -> bool {
        self.0.starts_with(prefix)
    }

    /// The primary-key column values.
    pub fn pk(&self) -> Vec<&str> {
        self.fields()[2..].to_vec()
    }

    fn fields(&self) -> Vec<&str> {
        // A LockKey is only built by `new` or a successful `parse`, so it splits;
        // an empty list would only come from a bug, and then yields empty fields.
        let mut f = split_fields(&self.0).unwrap_or_default();
        f.resize(f.len().max(3), "");
        f
    }
}

/// The (resource, table) a [`LockKey::table_prefix`] names; `None` if `prefix` is
/// not exactly two fields.
pub fn split_table_prefix(prefix: &str) -> Option<(&str, &str)> {
    match split_fields(prefix).ok()?.as_slice() {
        [resource, table] => Some((resource, table)),
        _ => None,
    }
}

fn push_field(s: &mut String, f: &str) {
    // The decimal length without the formatting machinery (hot in key building).
    let mut digits = [0u8; 20];
    let (mut n, mut i) = (f.len(), digits.len());
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for &d in &digits[i..] {
        s.push(char::from(d));
    }
    s.push(':');
    s.push_str(f);
}

fn split_fields(s: &str) -> Result<Vec<&str>, KeyError> {
    let mut out = Vec::new();
    visit_fields(s, |f| out.push(f))?;
    Ok(out)
}

/// Calls `f` with each field of an encoded key; fails at the first malformed byte.
fn visit_fields<'a>(s: &'a str, mut f: impl FnMut(&'a str)) -> Result<(), KeyError> {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let start = i;
        // The length, accumulated while scanning (checked: no overflow).
        let mut len: Option<usize> = Some(0);
        while i < b.len() && b[i].is_ascii_digit() {
            len = len
                .and_then(|l| l.checked_mul(10))
                .and_then(|l| l.checked_add(usize::from(b[i] - b'0')));
            i += 1;
        }
        if i == start || i >= b.len() || b[i] != b':' {
            return Err(KeyError {
                at: start,
                why: "expected <decimal length>:",
            });
        }
        if b[start] == b'0' && i - start > 1 {
            return Err(KeyError {
                at: start,
                why: "length has a leading zero",
            });
        }
        let len = len.ok_or(KeyError {
            at: start,
            why: "length overflows",
        })?;
        i += 1;
        let end = i
            .checked_add(len)
            .filter(|e| *e <= b.len())
            .ok_or(KeyError {
                at: i,
                why: "field runs past the end",
            })?;
        let field = s.get(i..end).ok_or(KeyError {
            at: i,
            why: "field splits a UTF-8 character",
        })?;
        f(field);
        i = end;
    }
    Ok(())
}

/// A fast non-cryptographic hasher (the "Fx" multiply-rotate scheme) for the lock
/// table and the transaction map. Keys are not attacker-chosen in a way that could
/// degrade it badly (each key's resource and table come from the proxies' own
/// configuration), and it is several times cheaper than SipHash on ~60-byte keys.
#[derive(Default, Clone, Copy)]
pub struct FxHasher(u64);

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl FxHasher {
    #[inline]
    fn add(&mut self, w: u64) {
        self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(SEED);
    }
}

impl std::hash::Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.add(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(w));
        }
    }
    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(i as u64);
    }
    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
    #[inline]
    fn finish(&self) -> u64 {
        // Multiplication only carries entropy upwards, and keys differ mostly in their
        // last bytes; hashbrown picks buckets from the low bits. A final avalanche
        // (murmur3's fmix64) spreads every input bit over the whole hash.
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
}

/// A `HashMap` with [`FxHasher`].
pub type FastMap<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<FxHasher>>;

impl fmt::Display for LockKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for LockKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LockKey({:?})", &*self.0)
    }
}

impl serde::Serialize for LockKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for LockKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        LockKey::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A refused acquisition: the first requested key held by another transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The contested key.
    pub key: LockKey,
    /// The transaction holding it.
    pub holder: Xid,
}

/// Which xid holds which key. Keys of one xid are held as a set (reentrant).
#[derive(Debug, Default)]
pub struct LockTable {
    holders: FastMap<LockKey, Xid>,
    by_xid: FastMap<Xid, Vec<LockKey>>,
    /// Held keys per table, by [`LockKey::table_prefix`]; tables holding none are absent.
    per_table: FastMap<Box<str>, usize>,
}

/// Adds `n` (which may be negative) to the count of `prefix`, dropping it at zero.
fn count_table(per_table: &mut FastMap<Box<str>, usize>, prefix: &str, n: isize) {
    if n == 0 {
        return;
    }
    match per_table.get_mut(prefix) {
        Some(c) => {
            *c = c.saturating_add_signed(n);
            if *c == 0 {
                per_table.remove(prefix);
            }
        }
        None if n > 0 => {
            per_table.insert(prefix.into(), n as usize);
        }
        None => {}
    }
}

/// Counts keys per table in runs: the keys of one request usually share a table, so
/// this is one map update per run rather than per key.
struct TableRuns<'a> {
    prefix: Option<&'a str>,
    n: isize,
}

impl<'a> TableRuns<'a> {
    fn new() -> Self {
        TableRuns { prefix: None, n: 0 }
    }
    fn add(&mut self, per_table: &mut FastMap<Box<str>, usize>, key: &'a LockKey, n: isize) {
        if !self.prefix.is_some_and(|p| key.in_table(p)) {
            self.flush(per_table);
            self.prefix = Some(key.table_prefix());
        }
        self.n += n;
    }
    fn flush(&mut self, per_table: &mut FastMap<Box<str>, usize>) {
        if let Some(p) = self.prefix.take() {
            count_table(per_table, p, self.n);
        }
        self.n = 0;
    }
}

impl LockTable {
    /// The first key of `keys` held by a transaction other than `xid`.
    pub fn check(&self, xid: &Xid, keys: &[LockKey]) -> Result<(), Conflict> {
        for k in keys {
            if let Some(h) = self.holders.get(k)
                && h != xid
            {
                return Err(Conflict {
                    key: k.clone(),
                    holder: h.clone(),
                });
            }
        }
        Ok(())
    }

    /// Takes every key for `xid`, or none of them. Keys `xid` already holds are
    /// fine (reentrant). Returns how many keys were newly taken.
    pub fn acquire(&mut self, xid: &Xid, keys: &[LockKey]) -> Result<usize, Conflict> {
        self.check(xid, keys)?;
        Ok(self.take_free(xid, keys))
    }

    /// Takes the keys no other xid holds, without the all-or-nothing check; for
    /// replaying a log that was checked when written. A key another xid holds stays
    /// with it: a log never moves a held key, but a snapshot may list keys of a
    /// transaction that released them (committed, phase 2 owed). Returns how many
    /// keys were newly taken.
    pub fn take_free(&mut self, xid: &Xid, keys: &[LockKey]) -> usize {
        // Keys newly held by `xid`, added to its list with one lookup at the end.
        let mut taken = Vec::with_capacity(keys.len());
        let mut runs = TableRuns::new();
        for k in keys {
            if let Entry::Vacant(e) = self.holders.entry(k.clone()) {
                e.insert(xid.clone());
                taken.push(k.clone());
                runs.add(&mut self.per_table, k, 1);
            }
        }
        runs.flush(&mut self.per_table);
        let added = taken.len();
        if !taken.is_empty() {
            let mine = self.by_xid.entry(xid.clone()).or_default();
            if mine.is_empty() {
                *mine = taken;
            } else {
                mine.extend(taken);
            }
        }
        added
    }

    /// Releases every key of `xid`; returns how many.
    pub fn release_all(&mut self, xid: &Xid) -> usize {
        let keys = self.by_xid.remove(xid).unwrap_or_default();
        let mut runs = TableRuns::new();
        for k in &keys {
            if self.holders.remove(k).is_some() {
                runs.add(&mut self.per_table, k, -1);
            }
        }
        runs.flush(&mut self.per_table);
        keys.len()
    }

    /// Keys held in the table that `prefix` ([`LockKey::table_prefix`]) names.
    pub fn held_in_table(&self, prefix: &str) -> usize {
        self.per_table.get(prefix).copied().unwrap_or(0)
    }

    /// The [`LockKey::table_prefix`] of every table holding at least one key.
    pub fn tables(&self) -> impl Iterator<Item = &str> {
        self.per_table.keys().map(|p| &**p)
    }

    /// Who holds `key`, if anyone.
    pub fn holder(&self, key: &LockKey) -> Option<&Xid> {
        self.holders.get(key)
    }

    /// Number of held keys.
    pub fn len(&self) -> usize {
        self.holders.len()
    }

    /// True when no key is held.
    pub fn is_empty(&self) -> bool {
        self.holders.is_empty()
    }

    /// Every held key with its holder, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&LockKey, &Xid)> {
        self.holders.iter()
    }

    /// Keys held by `xid`.
    pub fn held_by(&self, xid: &Xid) -> &[LockKey] {
        self.by_xid.get(xid).map(Vec::as_slice).unwrap_or(&[])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn x(s: &str) -> Xid {
        Xid::parse(s).unwrap()
    }

    #[test]
    fn encoding_is_unambiguous() {
        let a = LockKey::new("r", "t", ["1:2"]);
        let b = LockKey::new("r", "t", ["1", "2"]);
        let c = LockKey::new("r", "t1", ["2"]);
        let d = LockKey::new("r:t", "", ["2"]);
        assert_ne!(a, b);
        assert_ne!(b, c);
        assert_ne!(c, d);
        assert_eq!(
            LockKey::new("pg://h/db", "public.t", ["1", "a"]).as_str(),
            "9:pg://h/db8:public.t1:11:a"
        );
        for k in [a, b, c, d, LockKey::new("é", "ü", ["", "ß"])] {
            let p = LockKey::parse(k.as_str()).unwrap();
            assert_eq!(p, k);
            assert_eq!(p.resource(), k.resource());
            assert_eq!(p.pk(), k.pk());
        }
    }

    #[test]
    fn parse_rejects_garbage() {
        for s in [
            "",
            "1:a1:b",
            "x",
            "2:a",
            "01:a1:b1:c",
            "1:a1:b1",
            "99999999999999999999999:a",
            "1:é1:b1:c",
        ] {
            assert!(LockKey::parse(s).is_err(), "{s:?} accepted");
        }
        assert!(LockKey::parse(&"9".repeat(MAX_LOCK_KEY_BYTES + 1)).is_err());
    }

    #[test]
    fn hash_spreads_keys_that_differ_only_at_the_end() {
        use std::hash::BuildHasher;
        let b = std::hash::BuildHasherDefault::<FxHasher>::default();
        let mut low: std::collections::HashSet<u64> = Default::default();
        for i in 0..1000 {
            low.insert(
                b.hash_one(LockKey::new("resource", "table", [format!("prefix-{i}")])) & 0xfff,
            );
        }
        assert!(
            low.len() > 700,
            "only {} distinct low-bit buckets",
            low.len()
        );
    }

    #[test]
    fn all_or_nothing_and_reentrant() {
        let mut t = LockTable::default();
        let k = |i: u32| LockKey::new("r", "t", [i.to_string()]);
        assert_eq!(t.acquire(&x("a"), &[k(1), k(2)]), Ok(2));
        assert_eq!(t.acquire(&x("a"), &[k(2), k(3)]), Ok(1), "reentrant");
        let err = t.acquire(&x("b"), &[k(4), k(3), k(5)]).unwrap_err();
        assert_eq!(
            err,
            Conflict {
                key: k(3),
                holder: x("a")
            }
        );
        assert_eq!(t.holder(&k(4)), None, "nothing taken on conflict");
        assert_eq!(t.len(), 3);
        assert_eq!(t.release_all(&x("a")), 3);
        assert!(t.is_empty());
        assert_eq!(t.acquire(&x("b"), &[k(3)]), Ok(1));
    }

    #[test]
    fn table_prefix_names_resource_and_table() {
        let a = LockKey::new("pg://h/db", "public.t", ["1", "a"]);
        assert_eq!(a.table_prefix(), "9:pg://h/db8:public.t");
        assert_eq!(
            split_table_prefix(a.table_prefix()),
            Some(("pg://h/db", "public.t"))
        );
        // The same text split differently is a different table.
        let b = LockKey::new("r", "t1", ["2"]);
        let c = LockKey::new("r", "t", ["12"]);
        assert_ne!(b.table_prefix(), c.table_prefix());
        assert!(c.in_table(c.table_prefix()) && !b.in_table(c.table_prefix()));
        assert!(LockKey::new("r", "t", ["1:x"]).in_table(c.table_prefix()));
        assert_eq!(split_table_prefix("1:r"), None);
        assert_eq!(split_table_prefix("1:r1:t1:x"), None);
    }

    #[test]
    fn held_keys_are_counted_per_table() {
        let mut t = LockTable::default();
        let k = |tab: &str, i: u32| LockKey::new("r", tab, [i.to_string()]);
        let (p, q) = (k("p", 0), k("q", 0));
        let (p, q) = (p.table_prefix(), q.table_prefix());
        t.acquire(&x("a"), &[k("p", 1), k("p", 2), k("q", 1), k("p", 3)])
            .unwrap();
        t.acquire(&x("a"), &[k("p", 1)]).unwrap();
        assert_eq!((t.held_in_table(p), t.held_in_table(q)), (3, 1));
        // Replay takes only free keys: a held one stays with its holder, counted once.
        assert_eq!(t.take_free(&x("b"), &[k("q", 1), k("q", 2)]), 1);
        assert_eq!(t.holder(&k("q", 1)), Some(&x("a")));
        assert_eq!((t.held_in_table(p), t.held_in_table(q)), (3, 2));
        assert_eq!(t.release_all(&x("a")), 4);
        assert_eq!((t.held_in_table(p), t.held_in_table(q)), (0, 1));
        assert_eq!(t.tables().collect::<Vec<_>>(), vec![q]);
        t.release_all(&x("b"));
        assert_eq!(t.tables().count(), 0);
    }
}
