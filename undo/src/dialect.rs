//! What differs between SQL dialects, as capability methods rather than `if mysql`.

use crate::analyze::TableRef;

/// A SQL dialect as undo needs it.
pub trait Dialect: Send + Sync {
    /// The name, for messages.
    fn name(&self) -> &'static str;
    /// An identifier, quoted.
    fn quote_ident(&self, ident: &str) -> String;
    /// The placeholder of the `n`th (1-based) parameter.
    fn placeholder(&self, n: usize) -> String;
    /// Whether UPDATE/DELETE/INSERT take a RETURNING clause.
    fn supports_returning(&self) -> bool;
    /// How INSERT forces values into identity columns (empty if plain INSERT can).
    fn insert_override(&self) -> &'static str;
    /// An expression a write's RETURNING can carry that gives the whole row, every
    /// column in its binary send format, in catalog order (`whole_row`: the table's
    /// name or alias in the statement); None where the dialect has none.
    fn row_image(&self, whole_row: &str) -> Option<String> {
        let _ = whole_row;
        None
    }
    /// A table name, schema-qualified when it was.
    fn qualified(&self, table: &TableRef) -> String {
        match &table.schema {
            Some(schema) => format!(
                "{}.{}",
                self.quote_ident(schema),
                self.quote_ident(&table.name)
            ),
            None => self.quote_ident(&table.name),
        }
    }
}

/// PostgreSQL.
#[derive(Clone, Copy, Debug, Default)]
pub struct Postgres;

impl Dialect for Postgres {
    fn name(&self) -> &'static str {
        "postgres"
    }

    fn quote_ident(&self, ident: &str) -> String {
        format!("\"{}\"", ident.replace('"', "\"\""))
    }

    fn placeholder(&self, n: usize) -> String {
        format!("${n}")
    }

    fn supports_returning(&self) -> bool {
        true
    }

    fn insert_override(&self) -> &'static str {
        "OVERRIDING SYSTEM VALUE"
    }

    fn row_image(&self, whole_row: &str) -> Option<String> {
        // record_send skips dropped columns, as the catalog's column list does.
        Some(format!("record_send({whole_row}.*)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_quoting() {
        let d = Postgres;
        assert_eq!(d.quote_ident("a\"b"), "\"a\"\"b\"");
        let t = TableRef {
            schema: Some("s".into()),
            name: "T".into(),
        };
        assert_eq!(d.qualified(&t), "\"s\".\"T\"");
        assert_eq!(d.placeholder(3), "$3");
    }
}
