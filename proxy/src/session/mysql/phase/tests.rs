use super::*;

const AUTOCOMMIT: u16 = 0x0002;
const IN_TRANS: u16 = 0x0001;
const MORE: u16 = 0x0008;
const CURSOR: u16 = 0x0040;

fn ok(status: u16) -> Vec<u8> {
    let mut p = vec![0x00, 0x00, 0x00];
    p.extend_from_slice(&status.to_le_bytes());
    p.extend_from_slice(&[0, 0]);
    p
}

fn ok_terminator(status: u16) -> Vec<u8> {
    let mut p = ok(status);
    p[0] = 0xfe;
    p
}

fn eof(status: u16) -> Vec<u8> {
    let mut p = vec![0xfe, 0, 0];
    p.extend_from_slice(&status.to_le_bytes());
    p
}

const COLUMN_DEF: &[u8] =
    b"\x03def\x00\x00\x00\x01a\x00\x0c\x3f\x00\x0b\x00\x00\x00\x03\x00\x00\x00\x00\x00";
const ROW: &[u8] = b"\x011";
const ERR: &[u8] = b"\xff\x15\x04#28000Access denied";

fn feed(x: &mut Exchange, packets: &[&[u8]]) -> Vec<Progress> {
    packets
        .iter()
        .map(|p| {
            x.on_server_packet(ServerPacket {
                prefix: &p[..p.len().min(21)],
                payload_len: p.len(),
            })
            .unwrap()
        })
        .collect()
}

fn ready(deprecate_eof: bool) -> Exchange {
    ready_with(ServerRules {
        deprecate_eof,
        timeout_ends_transaction: false,
    })
}

fn ready_with(server: ServerRules) -> Exchange {
    let mut x = Exchange::new(server);
    x.on_authenticated(StatusFlags::from_bits_retain(AUTOCOMMIT));
    x
}

#[test]
fn ok_reply_carries_transaction_status() {
    let mut x = ready(true);
    x.on_command(Expect::Results, 1);
    assert!(!x.at_sync_point());
    assert_eq!(feed(&mut x, &[&ok(IN_TRANS)]), [Progress::SyncPoint]);
    assert_eq!(x.status().unwrap().bits(), IN_TRANS);
}

#[test]
fn text_result_set_with_and_without_deprecate_eof() {
    let mut x = ready(true);
    x.on_command(Expect::Results, 1);
    let progress = feed(
        &mut x,
        &[
            b"\x02",
            COLUMN_DEF,
            COLUMN_DEF,
            ROW,
            ROW,
            &ok_terminator(AUTOCOMMIT),
        ],
    );
    assert_eq!(progress.last(), Some(&Progress::SyncPoint));
    assert!(progress[..5].iter().all(|p| *p == Progress::Continues));

    let mut x = ready(false);
    x.on_command(Expect::Results, 1);
    let progress = feed(
        &mut x,
        &[b"\x01", COLUMN_DEF, &eof(AUTOCOMMIT), ROW, &eof(AUTOCOMMIT)],
    );
    assert_eq!(progress.last(), Some(&Progress::SyncPoint));
    assert!(x.at_sync_point());
}

#[test]
fn multi_statement_results_end_at_the_last_without_more_results() {
    let mut x = ready(true);
    x.on_command(Expect::Results, 1);
    let progress = feed(
        &mut x,
        &[
            b"\x01",
            COLUMN_DEF,
            ROW,
            &ok_terminator(AUTOCOMMIT | MORE),
            &ok(AUTOCOMMIT | MORE),
            b"\x01",
            COLUMN_DEF,
            &ok_terminator(AUTOCOMMIT),
        ],
    );
    assert_eq!(
        progress
            .iter()
            .filter(|p| **p == Progress::SyncPoint)
            .count(),
        1
    );
    assert_eq!(progress.last(), Some(&Progress::SyncPoint));
}

#[test]
fn an_error_ends_a_reply_mid_rows() {
    let mut x = ready(true);
    x.on_command(Expect::Results, 1);
    assert_eq!(
        feed(&mut x, &[b"\x01", COLUMN_DEF, ROW, ERR]).last(),
        Some(&Progress::SyncPoint)
    );
}

#[test]
fn a_row_that_starts_with_0xfe_is_not_a_terminator() {
    let mut x = ready(true);
    x.on_command(Expect::Results, 1);
    feed(&mut x, &[b"\x01", COLUMN_DEF]);
    let big_row = x
        .on_server_packet(ServerPacket {
            prefix: b"\xfe\x00\x00\x00\x01\x00\x00\x00\x00",
            payload_len: crate::wire::mysql::packet::MAX_PAYLOAD,
        })
        .unwrap();
    assert_eq!(big_row, Progress::Continues);
    assert!(!x.at_sync_point());
}

#[test]
fn prepare_replies_count_their_definitions() {
    let prepare_ok = b"\x00\x01\x00\x00\x00\x01\x00\x02\x00\x00\x00\x00";
    let mut x = ready(true);
    x.on_command(Expect::Prepare, 1);
    let progress = feed(&mut x, &[prepare_ok, COLUMN_DEF, COLUMN_DEF, COLUMN_DEF]);
    assert_eq!(progress.last(), Some(&Progress::SyncPoint));

    let mut x = ready(false);
    x.on_command(Expect::Prepare, 1);
    let progress = feed(
        &mut x,
        &[
            prepare_ok,
            COLUMN_DEF,
            COLUMN_DEF,
            &eof(AUTOCOMMIT),
            COLUMN_DEF,
            &eof(AUTOCOMMIT),
        ],
    );
    assert_eq!(progress.last(), Some(&Progress::SyncPoint));
    assert_eq!(
        progress
            .iter()
            .filter(|p| **p == Progress::SyncPoint)
            .count(),
        1
    );

    let no_definitions = b"\x00\x02\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00";
    let mut x = ready(false);
    x.on_command(Expect::Prepare, 1);
    assert_eq!(feed(&mut x, &[no_definitions]), [Progress::SyncPoint]);
}

#[test]
fn pipelined_commands_reach_the_sync_point_after_the_last_reply() {
    let mut x = ready(true);
    x.on_command(Expect::Prepare, 1);
    x.on_command(Expect::Results, 1);
    x.on_command(Expect::Status, 1);
    let prepare_ok = b"\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00";
    let progress = feed(&mut x, &[prepare_ok, &ok(AUTOCOMMIT), &ok(AUTOCOMMIT)]);
    assert_eq!(
        progress,
        [
            Progress::Continues,
            Progress::Continues,
            Progress::SyncPoint
        ]
    );
}

#[test]
fn local_infile_waits_for_the_upload_then_for_the_result() {
    let mut x = ready(true);
    x.on_command(Expect::Results, 1);
    assert_eq!(
        feed(&mut x, &[b"\xfb/tmp/data.csv"]),
        [Progress::InfileRequested]
    );
    assert!(matches!(x.phase, Phase::InfileUpload { .. }));
    assert!(
        x.on_server_packet(ServerPacket {
            prefix: &ok(0),
            payload_len: 7
        })
        .is_err()
    );
    x.on_infile_end(3);
    assert_eq!(feed(&mut x, &[&ok(AUTOCOMMIT)]), [Progress::SyncPoint]);
}

#[test]
fn a_cursor_ends_the_execute_reply_and_fetch_reads_rows() {
    let mut x = ready(false);
    x.on_command(Expect::Results, 1);
    assert_eq!(
        feed(&mut x, &[b"\x01", COLUMN_DEF, &eof(AUTOCOMMIT | CURSOR)]).last(),
        Some(&Progress::SyncPoint)
    );
    x.on_command(Expect::Rows, 1);
    assert_eq!(
        feed(&mut x, &[b"\x00\x01\x00", &eof(AUTOCOMMIT | 0x80)]).last(),
        Some(&Progress::SyncPoint)
    );
}

#[test]
fn status_field_list_and_statistics() {
    let mut x = ready(true);
    x.on_command(Expect::Status, 1);
    assert_eq!(feed(&mut x, &[&eof(AUTOCOMMIT)]), [Progress::SyncPoint]);
    x.on_command(Expect::Definitions, 1);
    assert_eq!(
        feed(
            &mut x,
            &[COLUMN_DEF, COLUMN_DEF, &ok_terminator(AUTOCOMMIT)]
        )
        .last(),
        Some(&Progress::SyncPoint)
    );
    x.on_command(Expect::AnyPacket, 1);
    assert_eq!(
        feed(&mut x, &[b"Uptime: 5  Threads: 1"]),
        [Progress::SyncPoint]
    );
}

#[test]
fn unexpected_packets_are_errors() {
    let mut x = ready(true);
    assert!(
        x.on_server_packet(ServerPacket {
            prefix: &ok(0),
            payload_len: 7
        })
        .is_err()
    );
    x.on_command(Expect::Status, 1);
    assert!(
        x.on_server_packet(ServerPacket {
            prefix: b"\x05",
            payload_len: 1
        })
        .is_err()
    );
    x.on_command(Expect::Results, 1);
    assert!(
        x.on_server_packet(ServerPacket {
            prefix: b"",
            payload_len: 0
        })
        .is_err()
    );
}

#[test]
fn commands_are_classified_by_their_first_byte() {
    assert_eq!(
        command_kind(command::QUERY),
        CommandKind::Replied(Expect::Results)
    );
    assert_eq!(command_kind(command::STMT_CLOSE), CommandKind::NoReply);
    assert_eq!(command_kind(command::CHANGE_USER), CommandKind::ChangeUser);
    assert_eq!(command_kind(command::BINLOG_DUMP), CommandKind::Refused);
    assert_eq!(command_kind(0xee), CommandKind::Refused);
}

#[test]
fn a_deadlock_error_makes_the_status_uncertain_and_other_errors_keep_it() {
    let mut x = ready(true);
    x.on_command(Expect::Results, 1);
    feed(&mut x, &[&ok(IN_TRANS | AUTOCOMMIT)]);
    x.on_command(Expect::Results, 1);
    assert_eq!(feed(&mut x, &[ERR]), [Progress::SyncPoint]);
    assert_eq!(x.status().unwrap().bits(), IN_TRANS | AUTOCOMMIT, "{ERR:?}");
    x.on_command(Expect::Results, 1);
    assert!(!x.status_uncertain);
    let deadlock: &[u8] = b"\xff\xbd\x04#40001Deadlock found when trying to get lock";
    assert_eq!(feed(&mut x, &[deadlock]), [Progress::SyncPoint]);
    // InnoDB rolled the transaction back, or (a metadata-lock deadlock) only the
    // statement: the relay asks before deciding anything.
    assert!(x.status_uncertain, "the status is to be asked");
    x.on_command(Expect::Results, 1);
    feed(&mut x, &[&ok(AUTOCOMMIT)]);
    assert!(!x.status_uncertain, "status flags arrived");
    assert_eq!(x.status().unwrap().bits(), AUTOCOMMIT);
}

#[test]
fn a_lock_wait_timeout_makes_the_status_uncertain_only_under_innodb_rollback_on_timeout() {
    let timeout: &[u8] =
        b"\xff\xb5\x04#HY000Lock wait timeout exceeded; try restarting transaction";
    for timeout_ends_transaction in [false, true] {
        let mut x = ready_with(ServerRules {
            deprecate_eof: true,
            timeout_ends_transaction,
        });
        x.on_command(Expect::Results, 1);
        feed(&mut x, &[&ok(IN_TRANS | AUTOCOMMIT)]);
        x.on_command(Expect::Results, 1);
        assert_eq!(feed(&mut x, &[timeout]), [Progress::SyncPoint]);
        assert_eq!(
            x.status_uncertain, timeout_ends_transaction,
            "innodb_rollback_on_timeout {timeout_ends_transaction}"
        );
        assert_eq!(x.status().unwrap().bits(), IN_TRANS | AUTOCOMMIT);
    }
}
