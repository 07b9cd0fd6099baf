//! The undo record: what `undo_log.rollback_info` holds for one branch.
//!
//! JSON with hex-encoded binary values: readable with `convert_from`/`jq` by an operator
//! investigating a failed rollback, and versioned. Invariant: `decode(encode(r)) == r`.

use crate::error::Error;
use crate::image::{Row, Value};
use serde::{Deserialize, Serialize};

/// The format version written by this build.
pub const VERSION: u32 = 1;

/// Every row one branch changed, per table.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UndoRecord {
    /// Format version.
    pub version: u32,
    /// Tables in the order the branch first wrote them.
    pub tables: Vec<TableUndo>,
}

/// One table's rows in an undo record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableUndo {
    /// Schema, if qualified.
    pub schema: Option<String>,
    /// Table.
    pub table: String,
    /// Column names, in image order.
    pub columns: Vec<String>,
    /// Column type OIDs, in image order.
    pub types: Vec<u32>,
    /// Generated columns, never written back.
    pub generated: Vec<bool>,
    /// Primary-key positions in `columns`.
    pub pk: Vec<usize>,
    /// Each changed row: before the branch (None: it did not exist) and after it (None:
    /// the branch deleted it).
    pub rows: Vec<RowImages>,
}

/// A row before and after the branch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowImages {
    /// The row before the branch's first change.
    #[serde(with = "hex_row")]
    pub before: Option<Row>,
    /// The row when the branch committed.
    #[serde(with = "hex_row")]
    pub after: Option<Row>,
}

impl UndoRecord {
    /// An empty record of the current version.
    pub fn new() -> Self {
        UndoRecord {
            version: VERSION,
            tables: Vec::new(),
        }
    }

    /// Serialises the record.
    pub fn encode(&self) -> Vec<u8> {
        // Serialising plain data to a Vec cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Reads a record back.
    pub fn decode(bytes: &[u8]) -> Result<UndoRecord, Error> {
        let record: UndoRecord = serde_json::from_slice(bytes).map_err(|e| Error::Corrupt {
            what: e.to_string(),
        })?;
        if record.version != VERSION {
            return Err(Error::Corrupt {
                what: format!("version {} is not {VERSION}", record.version),
            });
        }
        for t in &record.tables {
            let width = t.columns.len();
            let consistent = t.types.len() == width
                && t.generated.len() == width
                && !t.pk.is_empty()
                && t.pk.iter().all(|&i| i < width)
                && t.rows.iter().all(|r| {
                    r.before.as_ref().is_none_or(|row| row.len() == width)
                        && r.after.as_ref().is_none_or(|row| row.len() == width)
                });
            if !consistent {
                return Err(Error::Corrupt {
                    what: format!("table {} has images that do not fit its columns", t.table),
                });
            }
        }
        Ok(record)
    }
}

mod hex_row {
    use super::{Row, Value};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    fn hex(bytes: &[u8]) -> String {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut s = String::with_capacity(bytes.len() * 2);
        for b in bytes {
            s.push(DIGITS[(b >> 4) as usize] as char);
            s.push(DIGITS[(b & 15) as usize] as char);
        }
        s
    }

    fn unhex(s: &str) -> Option<Vec<u8>> {
        if !s.len().is_multiple_of(2) {
            return None;
        }
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
            .collect()
    }

    pub fn serialize<S: Serializer>(row: &Option<Row>, s: S) -> Result<S::Ok, S::Error> {
        let encoded: Option<Vec<Option<String>>> = row
            .as_ref()
            .map(|r| r.iter().map(|v: &Value| v.as_deref().map(hex)).collect());
        encoded.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Row>, D::Error> {
        let encoded: Option<Vec<Option<String>>> = Option::deserialize(d)?;
        encoded
            .map(|row| {
                row.into_iter()
                    .map(|v| match v {
                        None => Ok(None),
                        Some(h) => unhex(&h)
                            .map(Some)
                            .ok_or_else(|| serde::de::Error::custom("bad hex value")),
                    })
                    .collect()
            })
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> UndoRecord {
        UndoRecord {
            version: VERSION,
            tables: vec![TableUndo {
                schema: None,
                table: "t".into(),
                columns: vec!["id".into(), "v".into()],
                types: vec![23, 17],
                generated: vec![false, false],
                pk: vec![0],
                rows: vec![
                    RowImages {
                        before: Some(vec![Some(vec![0, 0, 0, 1]), Some(vec![0, 255, 10])]),
                        after: Some(vec![Some(vec![0, 0, 0, 1]), None]),
                    },
                    RowImages {
                        before: None,
                        after: Some(vec![Some(vec![0, 0, 0, 2]), Some(vec![])]),
                    },
                ],
            }],
        }
    }

    #[test]
    fn round_trips_every_byte_null_and_empty_value() {
        let r = record();
        assert_eq!(UndoRecord::decode(&r.encode()).unwrap(), r);
    }

    #[test]
    fn corrupt_records_are_errors() {
        assert!(UndoRecord::decode(b"not json").is_err());
        let mut r = record();
        r.tables[0].pk = vec![5];
        assert!(UndoRecord::decode(&r.encode()).is_err());
        let mut r = record();
        r.version = 99;
        assert!(UndoRecord::decode(&r.encode()).is_err());
        let text = String::from_utf8(record().encode())
            .unwrap()
            .replace("00ff0a", "0xff");
        assert!(UndoRecord::decode(text.as_bytes()).is_err());
    }
}
