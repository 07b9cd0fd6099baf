//! A bounded memo of [`analyze`] by statement text, for the statements a client runs
//! again and again under one text: the extended protocol's and MySQL's prepared
//! statements, analysed at every Bind or execute. An analysis depends on the dialect
//! and the text alone, so a remembered one is the one `analyze` would give.

use super::{Analysis, analyze};
use crate::dialect::Dialect;
use crate::error::Error;
use std::collections::HashMap;
use std::sync::Mutex;

/// Texts longer than this are analysed each time: they are rarely the repeated kind,
/// and the memo's memory stays bounded by `capacity` × this.
const MAX_TEXT: usize = 8 * 1024;

/// Remembers what [`analyze`] said of each text in one dialect. Refusals are not
/// remembered (a client seldom sends a refused statement twice). Shared by every
/// session of a front end.
pub struct AnalysisCache {
    dialect: &'static dyn Dialect,
    capacity: usize,
    entries: Mutex<HashMap<Box<str>, Vec<Analysis>>>,
}

impl AnalysisCache {
    /// An empty memo for `dialect` that holds up to `capacity` texts; when full it
    /// starts again empty, which costs one analysis per text in use.
    pub fn new(dialect: &'static dyn Dialect, capacity: usize) -> Self {
        AnalysisCache {
            dialect,
            capacity,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// What [`analyze`] says of `sql`, from memory when it was asked before.
    pub fn analyze(&self, sql: &str) -> Result<Vec<Analysis>, Error> {
        if sql.len() > MAX_TEXT {
            return analyze(self.dialect, sql);
        }
        if let Some(known) = self.lock().get(sql) {
            return Ok(known.clone());
        }
        let analyses = analyze(self.dialect, sql)?;
        let mut entries = self.lock();
        if entries.len() >= self.capacity {
            entries.clear();
        }
        entries.insert(sql.into(), analyses.clone());
        Ok(analyses)
    }

    /// How many texts it remembers.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether it remembers none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Box<str>, Vec<Analysis>>> {
        // A panic elsewhere while holding it leaves a map that is still whole.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dialect::{Mysql, Postgres};

    #[test]
    fn remembered_analyses_equal_fresh_ones() {
        let cache = AnalysisCache::new(&Postgres, 8);
        let sql = "UPDATE accounts SET balance = balance + $1 WHERE id = $2";
        let first = cache.analyze(sql).unwrap();
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.analyze(sql).unwrap(), first);
        assert_eq!(first, analyze(&Postgres, sql).unwrap());
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn each_cache_keeps_its_own_dialect() {
        // `"a"` is an identifier in PostgreSQL and a string in MySQL: the two caches
        // must not answer for each other.
        let sql = "UPDATE t SET v = \"a\" WHERE id = 1";
        let pg = AnalysisCache::new(&Postgres, 8);
        let my = AnalysisCache::new(&Mysql, 8);
        assert_eq!(pg.analyze(sql).unwrap(), analyze(&Postgres, sql).unwrap());
        assert_eq!(my.analyze(sql).unwrap(), analyze(&Mysql, sql).unwrap());
    }

    #[test]
    fn refusals_are_not_remembered_and_a_full_cache_starts_again() {
        let cache = AnalysisCache::new(&Postgres, 2);
        assert!(cache.analyze("TRUNCATE accounts").is_err());
        assert!(cache.is_empty());
        cache.analyze("SELECT 1").unwrap();
        cache.analyze("SELECT 2").unwrap();
        assert_eq!(cache.len(), 2);
        cache.analyze("SELECT 3").unwrap();
        assert_eq!(cache.len(), 1);
        let long = format!("SELECT {}1", " ".repeat(MAX_TEXT));
        cache.analyze(&long).unwrap();
        assert_eq!(cache.len(), 1, "long texts are analysed each time");
    }
}
