// pgJDBC through tandem, as a Java service uses it: global transactions in AT and XA
// mode around transactions with autocommit off (pgJDBC sends BEGIN in one batch with
// the first statement, and COMMIT over the extended protocol), server-side prepared
// statements (past prepareThreshold), and a batch of inserts outside any global
// transaction.
//
// Usage: java -cp /usr/share/java/postgresql.jar PgJdbcCheck.java PROXY_URL DIRECT_URL
// Exits non-zero with the failed check if anything differs.

import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;

public class PgJdbcCheck {
    static void check(boolean ok, String what) {
        if (!ok) {
            throw new AssertionError(what);
        }
    }

    static String one(Connection c, String sql) throws SQLException {
        try (Statement s = c.createStatement(); ResultSet r = s.executeQuery(sql)) {
            check(r.next(), "a row from " + sql);
            return r.getString(1);
        }
    }

    static long sum(Connection direct) throws SQLException {
        return Long.parseLong(one(direct, "SELECT sum(balance) FROM jdbc_accounts"));
    }

    static long balance(Connection direct, int id) throws SQLException {
        return Long.parseLong(one(direct, "SELECT balance FROM jdbc_accounts WHERE id = " + id));
    }

    /**
     * One global transaction moving 1 from row 1 to row 2 `rounds` times: in AT mode each
     * time in a local transaction of its own; in XA mode all in one (a prepared branch
     * keeps its row locks until the global decision, so a second branch of the same
     * global transaction could not touch those rows).
     */
    static void transfer(Connection c, String mode, int rounds, String decision) throws SQLException {
        c.setAutoCommit(true);
        check(one(c, "SELECT tandem_mode('" + mode + "')").equals(mode), "mode " + mode);
        String xid = one(c, "SELECT tandem_begin(30000)");
        check(xid != null && !xid.isEmpty(), "an xid");
        c.setAutoCommit(false);
        // Statement texts of each mode's own: the driver parses them afresh (Parse and
        // Bind in one batch) before it prepares them server-side.
        try (PreparedStatement debit = c.prepareStatement(
                        "UPDATE jdbc_accounts /* " + mode + " */ SET balance = balance - ? WHERE id = ?");
                PreparedStatement credit = c.prepareStatement(
                        "UPDATE jdbc_accounts /* " + mode + " */ SET balance = balance + ? WHERE id = ?")) {
            for (int i = 0; i < rounds; i++) {
                debit.setLong(1, 1);
                debit.setInt(2, 1);
                check(debit.executeUpdate() == 1, "debit");
                credit.setLong(1, 1);
                credit.setInt(2, 2);
                check(credit.executeUpdate() == 1, "credit");
                if (mode.equals("at")) {
                    c.commit();
                }
            }
        }
        c.commit();
        c.setAutoCommit(true);
        String status = one(c, "SELECT tandem_" + decision + "()");
        String want = decision.equals("commit") ? "Committed" : "Rollbacked";
        check(want.equals(status), mode + " " + decision + ": " + status);
    }

    public static void main(String[] args) throws Exception {
        String proxy = args[0];
        String direct = args[1];
        // Under preferQueryMode=simple each statement of a batch is a Query of its own,
        // with autocommit on a transaction of its own, as it is directly.
        boolean simple = proxy.contains("preferQueryMode=simple");
        try (Connection d = DriverManager.getConnection(direct);
                Connection c = DriverManager.getConnection(proxy)) {
            try (Statement s = d.createStatement()) {
                s.execute("DROP TABLE IF EXISTS jdbc_accounts");
                s.execute("CREATE TABLE jdbc_accounts (id int PRIMARY KEY, balance bigint NOT NULL CHECK (balance >= 0))");
                s.execute("INSERT INTO jdbc_accounts VALUES (1, 1000), (2, 1000)");
            }
            for (String mode : new String[] {"at", "xa"}) {
                // Seven local transactions: past prepareThreshold (5), the statements
                // run server-side prepared.
                long before = balance(d, 1);
                long before2 = balance(d, 2);
                transfer(c, mode, 7, "rollback");
                // XA's phase 2 (ROLLBACK PREPARED) is asynchronous; its rows were never
                // visible.
                check(balance(d, 1) == before && balance(d, 2) == before2, mode + ": rolled back exactly");
                transfer(c, mode, 7, "commit");
                long after = -1;
                for (int i = 0; i < 100 && after != before - 7; i++) {
                    // XA's phase 2 (COMMIT PREPARED) is asynchronous.
                    after = balance(d, 1);
                    Thread.sleep(50);
                }
                check(after == before - 7, mode + ": committed, row 1 is " + after);
                check(sum(d) == 2000, mode + ": money is conserved");
            }

            // A batch of updates in an AT global transaction (pgJDBC sends them all
            // before one Sync), then a batch whose third statement fails: the driver
            // reports it, and nothing after it runs.
            c.setAutoCommit(true);
            check(one(c, "SELECT tandem_mode('at')").equals("at"), "mode at");
            one(c, "SELECT tandem_begin(30000)");
            long before1 = balance(d, 1);
            long before2 = balance(d, 2);
            c.setAutoCommit(false);
            try (PreparedStatement debit = c.prepareStatement(
                    "UPDATE jdbc_accounts SET balance = balance - ? WHERE id = ?")) {
                for (int i = 0; i < 8; i++) {
                    debit.setLong(1, 1);
                    debit.setInt(2, 1);
                    debit.addBatch();
                }
                int[] counts = debit.executeBatch();
                check(counts.length == 8, "eight batched updates");
            }
            c.commit();
            check(balance(d, 1) == before1 - 8, "the batch committed locally");
            try (PreparedStatement set = c.prepareStatement(
                    "UPDATE jdbc_accounts SET balance = ? WHERE id = ?")) {
                long[] values = {1, 2, -1, 4};
                for (long v : values) {
                    set.setLong(1, v);
                    set.setInt(2, 2);
                    set.addBatch();
                }
                try {
                    set.executeBatch();
                    check(false, "a batch with a failing statement fails");
                } catch (java.sql.BatchUpdateException e) {
                    check("23514".equals(e.getNextException() == null
                            ? e.getSQLState() : e.getNextException().getSQLState())
                            || "23514".equals(e.getSQLState()), "the check violation: " + e);
                }
            }
            c.rollback();
            check(balance(d, 2) == before2, "the failed batch left nothing: " + balance(d, 2));
            check("Rollbacked".equals(one(c, "SELECT tandem_rollback()")), "batch rollback");
            c.setAutoCommit(true);
            check(balance(d, 1) == before1, "the batch rolled back exactly");

            // With autocommit on, a batch is one implicit transaction: tandem captures
            // every statement and commits them together, or none if one fails.
            one(c, "SELECT tandem_begin(30000)");
            try (PreparedStatement debit = c.prepareStatement(
                    "UPDATE jdbc_accounts SET balance = balance - ? WHERE id = ?")) {
                for (int i = 0; i < 5; i++) {
                    debit.setLong(1, 1);
                    debit.setInt(2, 1);
                    debit.addBatch();
                }
                check(debit.executeBatch().length == 5, "five batched updates, autocommit on");
            }
            check(balance(d, 1) == before1 - 5, "the autocommit batch committed");
            try (PreparedStatement set = c.prepareStatement(
                    "UPDATE jdbc_accounts SET balance = ? WHERE id = ?")) {
                for (long v : new long[] {3, -1, 4}) {
                    set.setLong(1, v);
                    set.setInt(2, 2);
                    set.addBatch();
                }
                try {
                    set.executeBatch();
                    check(false, "an autocommit batch with a failing statement fails");
                } catch (java.sql.BatchUpdateException e) {
                    check(true, "the autocommit batch failed");
                }
            }
            // Statement by statement, the driver goes on past the failed one.
            long leftByBatch = simple ? 4 : before2;
            check(balance(d, 2) == leftByBatch, "the failed autocommit batch left " + balance(d, 2));
            check("Rollbacked".equals(one(c, "SELECT tandem_rollback()")), "autocommit batch rollback");
            check(balance(d, 1) == before1 && balance(d, 2) == before2, "the autocommit batches rolled back exactly");

            // XA mode with autocommit on: each statement, or a whole batch, is a branch
            // prepared at its Sync; the rollback undoes them all.
            check(one(c, "SELECT tandem_mode('xa')").equals("xa"), "mode xa");
            one(c, "SELECT tandem_begin(30000)");
            try (PreparedStatement debit = c.prepareStatement(
                    "UPDATE jdbc_accounts SET balance = balance - ? WHERE id = ?")) {
                debit.setLong(1, 3);
                debit.setInt(2, 1);
                check(debit.executeUpdate() == 1, "an autocommit update in XA mode");
                // Statement by statement, each is a prepared branch, which keeps its row
                // locked from the next until the decision: one row, one statement.
                int entries = simple ? 1 : 4;
                for (int i = 0; i < entries; i++) {
                    debit.setLong(1, 1);
                    debit.setInt(2, 2);
                    debit.addBatch();
                }
                check(debit.executeBatch().length == entries, "an autocommit batch in XA mode");
            }
            check(balance(d, 1) == before1 && balance(d, 2) == before2,
                    "prepared branches are not visible before the decision");
            check("Rollbacked".equals(one(c, "SELECT tandem_rollback()")), "XA autocommit rollback");
            check(one(c, "SELECT tandem_mode('at')").equals("at"), "mode at again");
            for (int i = 0; i < 100 && one(d,
                    "SELECT count(*) FROM pg_prepared_xacts WHERE gid LIKE 'tandem:%'").equals("0") == false; i++) {
                Thread.sleep(50);
            }
            check(balance(d, 1) == before1 && balance(d, 2) == before2, "XA autocommit work rolled back");

            // Outside any global transaction: a batch of inserts in one transaction.
            c.setAutoCommit(false);
            try (PreparedStatement insert =
                    c.prepareStatement("INSERT INTO jdbc_accounts VALUES (?, ?)")) {
                for (int id = 10; id < 60; id++) {
                    insert.setInt(1, id);
                    insert.setLong(2, id);
                    insert.addBatch();
                }
                insert.executeBatch();
            }
            c.commit();
            c.setAutoCommit(true);
            check(one(d, "SELECT count(*) FROM jdbc_accounts WHERE id >= 10").equals("50"), "the batch");

            // Outside any global transaction, with autocommit off, while another
            // session's global transaction holds row 1: pgJDBC sends BEGIN in one batch
            // with the first statement, and writes to the table are checked.
            try (Connection holder = DriverManager.getConnection(proxy)) {
                one(holder, "SELECT tandem_begin(30000)");
                try (Statement s = holder.createStatement()) {
                    check(s.executeUpdate("UPDATE jdbc_accounts SET balance = balance + 1 WHERE id = 1") == 1,
                            "the holder's update");
                }
                long held = balance(d, 1);
                c.setAutoCommit(false);
                try (PreparedStatement update = c.prepareStatement(
                                "UPDATE jdbc_accounts SET balance = balance + ? WHERE id = ?");
                        PreparedStatement insert =
                                c.prepareStatement("INSERT INTO jdbc_accounts VALUES (?, ?)")) {
                    // Seven transactions: past prepareThreshold as well.
                    for (int i = 0; i < 7; i++) {
                        update.setLong(1, 1);
                        update.setInt(2, 2);
                        check(update.executeUpdate() == 1, "an outside update in a transaction");
                        insert.setInt(1, 100 + i);
                        insert.setLong(2, 1);
                        check(insert.executeUpdate() == 1, "an outside insert in a transaction");
                        c.commit();
                    }
                    for (String first : new String[] {"update", "insert"}) {
                        try {
                            if (first.equals("update")) {
                                update.setLong(1, 1);
                                update.setInt(2, 1);
                                update.executeUpdate();
                            } else {
                                // Row 1 itself: refused or waited for, never written.
                                insert.setInt(1, 1);
                                insert.setLong(2, 1);
                                insert.executeUpdate();
                            }
                            check(false, "an outside " + first + " of the held row fails");
                        } catch (SQLException e) {
                            check("55P03".equals(e.getSQLState()) || "23505".equals(e.getSQLState()),
                                    "the held row: " + e.getSQLState() + " " + e);
                        }
                        c.rollback();
                    }
                }
                c.setAutoCommit(true);
                check(balance(d, 2) == before2 + 7, "the outside updates committed: " + balance(d, 2));
                check(balance(d, 1) == held, "the held row untouched");
                check("Rollbacked".equals(one(holder, "SELECT tandem_rollback()")), "the holder rolls back");
                check(balance(d, 1) == held - 1, "the holder rolled back exactly");
            }

            // A fetch size inside a transaction (as defaultRowFetchSize sets it) makes
            // pgJDBC read a statement's rows from a named portal a few at a time, the
            // generated keys of an INSERT and an UPDATE's RETURNING included: every row
            // arrives, and every row is captured.
            c.setAutoCommit(true);
            try (Statement s = d.createStatement()) {
                s.execute("DROP TABLE IF EXISTS jdbc_items");
                s.execute("CREATE TABLE jdbc_items (id bigserial PRIMARY KEY, name text NOT NULL)");
            }
            one(c, "SELECT tandem_begin(30000)");
            c.setAutoCommit(false);
            int keys = 0;
            try (PreparedStatement insert = c.prepareStatement(
                    "INSERT INTO jdbc_items (name) VALUES (?), (?), (?), (?), (?)",
                    Statement.RETURN_GENERATED_KEYS)) {
                insert.setFetchSize(2);
                for (int i = 1; i <= 5; i++) {
                    insert.setString(i, "item " + i);
                }
                insert.executeUpdate();
                try (ResultSet r = insert.getGeneratedKeys()) {
                    while (r.next()) {
                        keys++;
                    }
                }
            }
            check(keys == 5, "five generated keys, two at a time: " + keys);
            int renamed = 0;
            try (PreparedStatement rename = c.prepareStatement(
                    "UPDATE jdbc_items SET name = name || '!' RETURNING name")) {
                rename.setFetchSize(2);
                try (ResultSet r = rename.executeQuery()) {
                    while (r.next()) {
                        check(r.getString(1).endsWith("!"), "a renamed row: " + r.getString(1));
                        renamed++;
                    }
                }
            }
            check(renamed == 5, "five rows returned, two at a time: " + renamed);
            c.commit();
            c.setAutoCommit(true);
            check("Rollbacked".equals(one(c, "SELECT tandem_rollback()")), "fetched writes roll back");
            check("0".equals(one(d, "SELECT count(*) FROM jdbc_items")), "every fetched write undone");

            // Control calls whose arguments are parameters, as a service passes on the
            // xid it was handed: bound as $1, or written into the text by the driver
            // under preferQueryMode=simple (`('30000'::int4)`).
            long before = balance(d, 1);
            String xid;
            try (PreparedStatement begin = c.prepareStatement("SELECT tandem_begin(?)")) {
                begin.setInt(1, 30000);
                try (ResultSet r = begin.executeQuery()) {
                    check(r.next(), "tandem_begin(?) answers");
                    xid = r.getString(1);
                }
            }
            try (Connection service = DriverManager.getConnection(proxy);
                    PreparedStatement join = service.prepareStatement("SELECT tandem_join(?)");
                    PreparedStatement debit = service.prepareStatement(
                            "UPDATE jdbc_accounts SET balance = balance - ? WHERE id = ?")) {
                join.setString(1, xid);
                try (ResultSet r = join.executeQuery()) {
                    check(r.next() && xid.equals(r.getString(1)), "tandem_join(?) joins " + xid);
                }
                debit.setLong(1, 3);
                debit.setInt(2, 1);
                check(debit.executeUpdate() == 1, "the joined service's debit");
            }
            check(balance(d, 1) == before - 3, "the debit committed locally");
            check("Rollbacked".equals(one(c, "SELECT tandem_rollback()")), "parameters' rollback");
            check(balance(d, 1) == before, "the joined service's debit undone");
        }
        System.out.println("all checks passed");
    }
}
