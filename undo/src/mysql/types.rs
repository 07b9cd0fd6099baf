//! MySQL column types as undo encodes them in [`crate::Column::type_oid`], and how a
//! value of each is read, compared and written back exactly.
//!
//! A type code is the protocol's column type (`MYSQL_TYPE_*`), with [`UNSIGNED`] set the
//! way COM_STMT_EXECUTE's two-byte parameter type sets it, and [`CHARACTER`] for strings
//! that have a character set. Images are values as the binary protocol (a
//! COM_STMT_EXECUTE result row) carries them, without their length prefix. Never does
//! I/O. Invariant: [`capture`] never depends on the session's time_zone,
//! character_set_results or sql_mode, and [`param_type`] binds what [`capture`] read so
//! that [`restore`] writes the same value back.

use crate::error::Error;
use crate::image::Collation;

/// `MYSQL_TYPE_TINY`.
pub const TINY: u32 = 1;
/// `MYSQL_TYPE_SHORT`.
pub const SHORT: u32 = 2;
/// `MYSQL_TYPE_LONG`.
pub const LONG: u32 = 3;
/// `MYSQL_TYPE_FLOAT`.
pub const FLOAT: u32 = 4;
/// `MYSQL_TYPE_DOUBLE`.
pub const DOUBLE: u32 = 5;
/// `MYSQL_TYPE_TIMESTAMP`.
pub const TIMESTAMP: u32 = 7;
/// `MYSQL_TYPE_LONGLONG`.
pub const LONGLONG: u32 = 8;
/// `MYSQL_TYPE_INT24`.
pub const INT24: u32 = 9;
/// `MYSQL_TYPE_DATE`.
pub const DATE: u32 = 10;
/// `MYSQL_TYPE_TIME`.
pub const TIME: u32 = 11;
/// `MYSQL_TYPE_DATETIME`.
pub const DATETIME: u32 = 12;
/// `MYSQL_TYPE_YEAR`.
pub const YEAR: u32 = 13;
/// `MYSQL_TYPE_BIT`.
pub const BIT: u32 = 16;
/// `MYSQL_TYPE_JSON` (MySQL; MariaDB's JSON is a LONGTEXT).
pub const JSON: u32 = 245;
/// `MYSQL_TYPE_NEWDECIMAL`.
pub const NEWDECIMAL: u32 = 246;
/// `MYSQL_TYPE_ENUM`.
pub const ENUM: u32 = 247;
/// `MYSQL_TYPE_SET`.
pub const SET: u32 = 248;
/// `MYSQL_TYPE_BLOB`.
pub const BLOB: u32 = 252;
/// `MYSQL_TYPE_VAR_STRING`.
pub const VAR_STRING: u32 = 253;
/// `MYSQL_TYPE_STRING`.
pub const STRING: u32 = 254;
/// `MYSQL_TYPE_GEOMETRY`.
pub const GEOMETRY: u32 = 255;
/// An unsigned integer: the flag byte 0x80 of COM_STMT_EXECUTE's parameter type.
pub const UNSIGNED: u32 = 0x8000;
/// A string with a character set (not a binary string).
pub const CHARACTER: u32 = 0x1_0000;

/// The protocol type without undo's flags.
fn base(type_code: u32) -> u32 {
    type_code & 0xff
}

/// The type code of a column from `information_schema.COLUMNS` (`DATA_TYPE`,
/// `COLUMN_TYPE`), or a refusal for types undo does not know how to restore exactly.
pub fn type_code(data_type: &str, column_type: &str) -> Result<u32, Error> {
    let unsigned = if column_type.to_ascii_lowercase().contains("unsigned") {
        UNSIGNED
    } else {
        0
    };
    let code = match data_type.to_ascii_lowercase().as_str() {
        "tinyint" => TINY | unsigned,
        "smallint" => SHORT | unsigned,
        "mediumint" => INT24 | unsigned,
        "int" | "integer" => LONG | unsigned,
        "bigint" => LONGLONG | unsigned,
        "decimal" | "numeric" => NEWDECIMAL,
        "float" => FLOAT,
        "double" | "real" | "double precision" => DOUBLE,
        "bit" => BIT,
        "date" => DATE,
        "time" => TIME,
        "datetime" => DATETIME,
        "timestamp" => TIMESTAMP,
        "year" => YEAR,
        "char" => STRING | CHARACTER,
        "varchar" => VAR_STRING | CHARACTER,
        "tinytext" | "text" | "mediumtext" | "longtext" => BLOB | CHARACTER,
        "enum" => ENUM | CHARACTER,
        "set" => SET | CHARACTER,
        "binary" => STRING,
        "varbinary" => VAR_STRING,
        "tinyblob" | "blob" | "mediumblob" | "longblob" => BLOB,
        "json" => JSON,
        "geometry" | "point" | "linestring" | "polygon" | "multipoint" | "multilinestring"
        | "multipolygon" | "geometrycollection" | "geomcollection" => GEOMETRY,
        other => {
            return Err(Error::unsupported(format!(
                "a write to a table with a column of type {other}, which tandem cannot restore exactly,"
            )));
        }
    };
    Ok(code)
}

/// Whether values of this type are compared by a collation, so that equal values may
/// differ in bytes: strings of a character set. ENUM and SET store one spelling per
/// member.
pub fn compares_by_collation(type_code: u32) -> bool {
    type_code & CHARACTER != 0 && matches!(base(type_code), STRING | VAR_STRING | BLOB)
}

/// The weight `collation` gives a value of its character set bound as a binary string
/// (`placeholder`, under `SET NAMES binary`). Trailing spaces go first: WEIGHT_STRING
/// keeps them, yet PAD SPACE collations (most, the `_bin` ones included) compare without
/// them; [`lock_key_part`] then drops what else weighs as a space. Under a NO PAD
/// collation two values that differ only there weigh the same, which makes their keys
/// lock each other: too much, never too little.
pub fn weight(placeholder: &str, collation: &Collation) -> String {
    let Collation { charset, name } = collation;
    format!(
        "WEIGHT_STRING(TRIM(TRAILING CHAR(32 USING {charset}) FROM CONVERT({placeholder} USING {charset})) COLLATE {name})"
    )
}

/// The weights of `' '`, `'a '` and `'a'` under `collation`, for [`pad_weight`].
pub fn space_probe(collation: &Collation) -> String {
    let Collation { charset, name } = collation;
    let space = format!("CHAR(32 USING {charset})");
    let a = format!("CHAR(97 USING {charset})");
    format!(
        "WEIGHT_STRING({space} COLLATE {name}), WEIGHT_STRING(CONCAT({a}, {space}) COLLATE {name}), WEIGHT_STRING({a} COLLATE {name})"
    )
}

/// One row: for each of `collations`, its three [`space_probe`] weights; then the
/// weights of `values` values, the k-th compared by `collations[k %
/// collations.len()]`, each bound as a binary string ([`weight`]).
pub fn weights_sql(collations: &[&Collation], values: usize) -> String {
    let probes = collations.iter().map(|c| space_probe(c));
    let weights = collations
        .iter()
        .cycle()
        .take(values)
        .map(|c| weight("?", c));
    let items: Vec<String> = probes.chain(weights).collect();
    format!("SELECT {}", items.join(", "))
}

/// The weight a trailing space adds to a value's, from [`space_probe`]'s three
/// weights, where a collation weighs one level only and so appends it (`'a '` weighs
/// `'a'` then `' '`). None where levels interleave (accent- or case-sensitive UCA
/// collations: primary weights of every character first, then secondary ones).
pub fn pad_weight(space: &[u8], a_space: &[u8], a: &[u8]) -> Option<Vec<u8>> {
    let appended = !space.is_empty()
        && a_space.len() == a.len() + space.len()
        && a_space.starts_with(a)
        && a_space.ends_with(space);
    appended.then(|| space.to_vec())
}

/// A key part's bytes in a global lock key, from its weight: without trailing `pad`
/// units, since a PAD SPACE collation compares as if they were not there (characters
/// that weigh as a space included: a no-break space under unicode_ci).
pub fn lock_key_part(mut weight: Vec<u8>, pad: Option<&[u8]>) -> Vec<u8> {
    if let Some(pad) = pad.filter(|p| !p.is_empty()) {
        while weight.ends_with(pad) {
            weight.truncate(weight.len() - pad.len());
        }
    }
    weight
}

/// Whether a column of this type can be part of a key that tandem binds: a key is
/// compared as the column itself, so its capture must be the plain column. A FLOAT
/// key is single precision, so the double a statement names it by (`0.1`) does not
/// find the row it stored.
pub fn usable_in_key(type_code: u32) -> bool {
    !matches!(base(type_code), TIMESTAMP | JSON | GEOMETRY | FLOAT)
}

/// An integer column: a value that equals a stored one is stored as the same bytes.
pub fn is_integer(type_code: u32) -> bool {
    matches!(base(type_code), TINY | SHORT | LONG | LONGLONG | INT24)
}

/// A FLOAT column: stored in single precision, so the double a statement names a row
/// by (`0.1`) does not equal what it stored.
pub fn is_single_precision(type_code: u32) -> bool {
    base(type_code) == FLOAT
}

/// See [`crate::Dialect::capture`].
pub fn capture(column: &str, type_code: u32) -> String {
    match base(type_code) {
        // The UTC wall-clock time, by arithmetic on the epoch rather than through the
        // session's time_zone (which folds an hour at each DST change). The zero
        // TIMESTAMP reads as 1970-01-01 00:00:00, the epoch, which no other TIMESTAMP
        // holds: a zero DATETIME would be NULL under the session's NO_ZERO_DATE.
        TIMESTAMP => format!(
            "TIMESTAMP'1970-01-01 00:00:00' + INTERVAL CAST(UNIX_TIMESTAMP({column}) * 1000000 AS SIGNED) MICROSECOND"
        ),
        JSON => format!("CAST(CAST({column} AS CHAR CHARACTER SET utf8mb4) AS BINARY)"),
        // PAD_CHAR_TO_FULL_LENGTH would pad what is read; what CHAR stores has no
        // trailing spaces to keep. Under sql_mode ORACLE, TRIM makes '' NULL: the
        // empty binary string is put back.
        STRING if type_code & CHARACTER != 0 => format!(
            "IFNULL(CAST(TRIM(TRAILING ' ' FROM {column}) AS BINARY), LEFT(CAST({column} AS BINARY), 0))"
        ),
        // The column's own bytes, not converted to character_set_results.
        _ if type_code & CHARACTER != 0 => format!("CAST({column} AS BINARY)"),
        _ => column.to_owned(),
    }
}

/// See [`crate::Dialect::restore_binds`].
pub fn restore_binds(type_code: u32) -> usize {
    match base(type_code) {
        TIMESTAMP => 2,
        _ => 1,
    }
}

/// See [`crate::Dialect::restore`].
pub fn restore(placeholders: &[String], type_code: u32) -> String {
    match (base(type_code), placeholders) {
        // A JSON column refuses a binary string; the bytes are utf8mb4 JSON text.
        (JSON, [value]) => format!("CONVERT({value} USING utf8mb4)"),
        // The epoch is how [`capture`] reads the zero TIMESTAMP, which only the number
        // 0 stores (the replay session's time_zone is UTC); the others are stored as
        // their UTC wall-clock time, given as a number that no time_zone reads.
        (TIMESTAMP, [value, again]) => {
            format!("IF(UNIX_TIMESTAMP({value}) = 0, 0, CAST({again} AS DATETIME(6)) + 0)")
        }
        _ => placeholders.join(", "),
    }
}

/// See [`crate::Dialect::param_type`]: strings of any kind go as BLOB parameters, which
/// the server takes as binary strings (no character-set conversion) and relabels into
/// the column's character set; a TIMESTAMP goes as the UTC DATETIME [`capture`] read,
/// which the replay session (time_zone '+00:00') stores as that instant.
pub fn param_type(type_code: u32) -> u32 {
    match base(type_code) {
        TIMESTAMP => DATETIME,
        // A BIT compared with or assigned a string takes the string as a number
        // ('\0\x01' is 0): its big-endian bytes are bound as the unsigned integer they
        // spell, which the proxy sends as a LONGLONG.
        BIT => BIT | UNSIGNED,
        JSON | GEOMETRY => BLOB,
        _ if type_code & CHARACTER != 0 => BLOB,
        STRING | VAR_STRING => BLOB,
        _ => type_code & 0xffff,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_types_map_to_protocol_codes() {
        assert_eq!(
            type_code("bigint", "bigint(20) unsigned"),
            Ok(LONGLONG | UNSIGNED)
        );
        assert_eq!(type_code("INT", "int(11)"), Ok(LONG));
        assert_eq!(type_code("char", "char(4)"), Ok(STRING | CHARACTER));
        assert_eq!(type_code("binary", "binary(16)"), Ok(STRING));
        assert_eq!(type_code("enum", "enum('a','b')"), Ok(ENUM | CHARACTER));
        assert_eq!(type_code("point", "point"), Ok(GEOMETRY));
        assert_eq!(
            type_code("inet6", "inet6"),
            Err(Error::Unsupported {
                what: "a write to a table with a column of type inet6, which tandem cannot restore exactly,".into()
            })
        );
    }

    #[test]
    fn session_dependent_types_are_captured_independently() {
        assert_eq!(capture("`a`.`n`", LONG | UNSIGNED), "`a`.`n`");
        assert_eq!(capture("`d`", DOUBLE), "`d`");
        assert_eq!(
            capture("`s`", VAR_STRING | CHARACTER),
            "CAST(`s` AS BINARY)"
        );
        assert_eq!(capture("`b`", VAR_STRING), "`b`");
        assert_eq!(
            capture("`c`", STRING | CHARACTER),
            "IFNULL(CAST(TRIM(TRAILING ' ' FROM `c`) AS BINARY), LEFT(CAST(`c` AS BINARY), 0))"
        );
        assert_eq!(
            capture("`j`", JSON),
            "CAST(CAST(`j` AS CHAR CHARACTER SET utf8mb4) AS BINARY)"
        );
        assert_eq!(
            capture("`t`", TIMESTAMP),
            "TIMESTAMP'1970-01-01 00:00:00' + INTERVAL CAST(UNIX_TIMESTAMP(`t`) * 1000000 AS SIGNED) MICROSECOND"
        );
    }

    #[test]
    fn parameters_bind_what_was_captured() {
        assert_eq!(param_type(LONGLONG | UNSIGNED), 0x8008);
        assert_eq!(param_type(TIMESTAMP), DATETIME);
        assert_eq!(param_type(SET | CHARACTER), BLOB);
        assert_eq!(param_type(STRING), BLOB);
        assert_eq!(param_type(BIT), BIT | UNSIGNED);
        assert_eq!(param_type(NEWDECIMAL), NEWDECIMAL);
        let q = || "?".to_owned();
        assert_eq!(restore(&[q()], JSON), "CONVERT(? USING utf8mb4)");
        assert_eq!(restore(&[q()], DATETIME), "?");
        assert_eq!(restore_binds(TIMESTAMP), 2);
        assert_eq!(
            restore(&[q(), q()], TIMESTAMP),
            "IF(UNIX_TIMESTAMP(?) = 0, 0, CAST(? AS DATETIME(6)) + 0)"
        );
        assert!(!usable_in_key(TIMESTAMP));
        assert!(!usable_in_key(FLOAT));
        assert!(usable_in_key(DOUBLE));
        assert!(usable_in_key(VAR_STRING | CHARACTER));
    }
}
