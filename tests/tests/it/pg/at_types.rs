//! Exact images: after a global rollback every built-in type is restored bit for bit,
//! whatever the client session's DateStyle, TimeZone, IntervalStyle, extra_float_digits
//! and bytea_output.

use tandem_tests::harness::{Tandem, TestDb};
use tandem_tests::lockserver::{Kind, TestLockserver};
use tokio_postgres::{Client, SimpleQueryMessage};

const SCHEMA: &str = r#"
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN positive AS numeric CHECK (VALUE > 0);
CREATE TABLE typed (
    id int PRIMARY KEY,
    n numeric(30,10), f4 float4, f8 float8, ts timestamp, tz timestamptz, iv interval,
    b bytea, j json, jb jsonb, ia int[], ta text[], u uuid, ip inet, m mood, d positive,
    t text, nothing text
);
INSERT INTO typed VALUES
 (1, 12345678901234567890.0123456789, 'NaN', '-0', '2024-02-29 23:59:59.999999', '1999-12-31 23:00:00.000001+05:30',
  '1 year 2 mons 3 days 04:05:06.789', (SELECT string_agg(set_byte('\x00'::bytea, 0, g), ''::bytea) FROM generate_series(0, 255) g),
  '{"b": 1,   "a": [1, 2.50]}', '{"b": 1, "a": [1, 2.50]}', '{1,NULL,-2147483648}', '{"a,b","c\"d",NULL}',
  'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '192.168.0.1/24', 'happy', 3.14, E'tab\there ✓ \\ '' "', NULL),
 (2, -0.0000000001, '-Infinity', 'Infinity', '0001-01-01 00:00:00', '294276-12-31 23:59:59.999999+00',
  '-178000000 years', '\x'::bytea, 'null', '[]', '{}', '{}',
  '00000000-0000-0000-0000-000000000000', '::1', 'sad', 0.0001, '', NULL),
 (3, 0, 1.17549435e-38, 2.2250738585072014e-308, 'infinity', '-infinity', '0', '\xdeadbeef', '"s"', '"s"',
  NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);
"#;

/// Every row as PostgreSQL's own exact renderings, read directly under fixed settings,
/// plus the floats' binary send format.
async fn exact(client: &Client) -> Vec<String> {
    client
        .query(
            "SELECT r::text || ' ' || coalesce(encode(float4send(f4), 'hex'), '-') || ' '
                    || coalesce(encode(float8send(f8), 'hex'), '-') FROM typed r ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test]
async fn every_type_is_restored_bit_for_bit_under_odd_session_settings() {
    let db = TestDb::create("at_types").await;
    db.migrate().await;
    let direct = db.direct().await;
    direct
        .batch_execute(
            "SET extra_float_digits = 3; SET TimeZone = 'UTC'; SET DateStyle = 'ISO, MDY'",
        )
        .await
        .unwrap();
    direct.batch_execute(SCHEMA).await.unwrap();
    let before = exact(&direct).await;
    assert_eq!(before.len(), 3);

    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let client = tandem.connect(&db.name).await;
    client
        .batch_execute(
            "SET DateStyle = 'SQL, DMY'; SET TimeZone = 'America/St_Johns'; SET IntervalStyle = 'iso_8601';
             SET extra_float_digits = -15; SET bytea_output = 'escape'",
        )
        .await
        .unwrap();
    let messages = client
        .simple_query("SELECT tandem_begin(30000)")
        .await
        .unwrap();
    assert!(
        messages
            .iter()
            .any(|m| matches!(m, SimpleQueryMessage::Row(_)))
    );
    client.batch_execute("BEGIN").await.unwrap();
    client
        .batch_execute(
            "UPDATE typed SET n = n + 1, f4 = 1, f8 = 2, ts = now(), tz = now(), iv = '1 day', b = 'x',
                 j = '{}', jb = '{}', ia = '{7}', ta = '{z}', u = gen_random_uuid(), ip = '10.0.0.1',
                 m = 'ok', d = 1, t = 'changed', nothing = 'now something' WHERE id IN (1, 3)",
        )
        .await
        .unwrap();
    client
        .batch_execute("DELETE FROM typed WHERE id = 2")
        .await
        .unwrap();
    client
        .batch_execute("INSERT INTO typed (id, f8, t) VALUES (4, -0.0, 'new')")
        .await
        .unwrap();
    client.batch_execute("COMMIT").await.unwrap();
    assert_ne!(exact(&direct).await, before);

    let status = client
        .simple_query("SELECT tandem_rollback()")
        .await
        .unwrap();
    let status = status
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .unwrap();
    assert_eq!(status, "Rollbacked");
    assert_eq!(exact(&direct).await, before, "every value restored exactly");
    tandem.shutdown().await;
    lockserver.stop().await;
}
