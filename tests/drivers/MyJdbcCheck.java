// MariaDB Connector/J through tandem, as a Java service uses it: global transactions in
// AT and XA mode around transactions with autocommit off (the driver sends SET
// autocommit = 0 and no START TRANSACTION: in XA mode the first statement opens the
// branch), with client-side or (useServerPrepStmts) server-side prepared statements, a
// batch of inserts outside any global transaction, and batches the driver rewrites into
// one multi-statement query (rewriteBatchedStatements), inside and outside one.
//
// Usage: java -cp /usr/share/java/mariadb-java-client.jar MyJdbcCheck.java PROXY_URL DIRECT_URL
// Exits non-zero with the failed check if anything differs.

import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;

public class MyJdbcCheck {
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
        return Long.parseLong(one(direct, "SELECT CAST(sum(balance) AS SIGNED) FROM jdbc_accounts"));
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
        try (PreparedStatement debit = c.prepareStatement(
                        "UPDATE jdbc_accounts SET balance = balance - ? WHERE id = ?");
                PreparedStatement credit = c.prepareStatement(
                        "UPDATE jdbc_accounts SET balance = balance + ? WHERE id = ?")) {
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
        // Decided before anything else runs on the connection: a connection that
        // prepared an XA branch takes nothing else until the branch is finished.
        String status = one(c, "SELECT tandem_" + decision + "()");
        String want = decision.equals("commit") ? "Committed" : "Rollbacked";
        check(want.equals(status), mode + " " + decision + ": " + status);
        c.setAutoCommit(true);
    }

    /** A batch of `UPDATE jdbc_accounts SET balance = balance + ? WHERE id = ?`, one per id. */
    static int[] addToEach(Connection c, int[] ids, long amount) throws SQLException {
        try (PreparedStatement add = c.prepareStatement(
                "UPDATE jdbc_accounts SET balance = balance + ? WHERE id = ?")) {
            for (int id : ids) {
                add.setLong(1, amount);
                add.setInt(2, id);
                add.addBatch();
            }
            return add.executeBatch();
        }
    }

    static String balances(Connection direct) throws SQLException {
        StringBuilder all = new StringBuilder();
        try (Statement s = direct.createStatement();
                ResultSet r = s.executeQuery("SELECT id, balance FROM jdbc_accounts ORDER BY id")) {
            while (r.next()) {
                all.append(r.getInt(1)).append('=').append(r.getLong(2)).append(' ');
            }
        }
        return all.toString();
    }

    /**
     * rewriteBatchedStatements: the driver sends an UPDATE or DELETE batch as one
     * multi-statement query. In an AT global transaction it is captured statement by
     * statement and rolled back exactly; outside one, rows no global transaction holds
     * are written at once while another row of the table is held.
     */
    static void rewrittenBatches(String proxy, Connection d) throws SQLException {
        String before = balances(d);
        try (Connection r = DriverManager.getConnection(proxy + "&rewriteBatchedStatements=true");
                Connection holder = DriverManager.getConnection(proxy)) {
            one(r, "SELECT tandem_begin(30000)");
            r.setAutoCommit(false);
            int[] counts = addToEach(r, new int[] {10, 11, 12, 13}, 5);
            check(counts.length == 4, "four counts, not " + counts.length);
            try (PreparedStatement delete = r.prepareStatement("DELETE FROM jdbc_accounts WHERE id = ?")) {
                for (int id = 20; id < 23; id++) {
                    delete.setInt(1, id);
                    delete.addBatch();
                }
                check(delete.executeBatch().length == 3, "three deletes");
            }
            r.commit();
            check(balance(d, 12) == 17 && one(d, "SELECT count(*) FROM jdbc_accounts WHERE id BETWEEN 20 AND 22").equals("0"),
                    "the rewritten batches committed locally: " + balances(d));
            check("Rollbacked".equals(one(r, "SELECT tandem_rollback()")), "rewritten batch rollback");
            r.setAutoCommit(true);
            check(balances(d).equals(before), "the rewritten batches rolled back exactly: " + balances(d));

            // Outside a global transaction, beside a row another one holds.
            one(holder, "SELECT tandem_begin(30000)");
            try (Statement s = holder.createStatement()) {
                check(s.executeUpdate("UPDATE jdbc_accounts SET balance = 0 WHERE id = 30") == 1, "held row");
            }
            counts = addToEach(r, new int[] {31, 32, 33}, 1);
            check(counts.length == 3, "three counts outside");
            check(balance(d, 32) == 33, "the batch outside ran");
            // A query timeout, which the driver sends to MariaDB as SET STATEMENT
            // max_statement_time = … FOR, ends the wait for the held row as it ends a
            // lock wait in the server (not after lockserver.lock_wait_ms).
            try (Statement s = r.createStatement()) {
                s.setQueryTimeout(1);
                long started = System.nanoTime();
                try {
                    s.executeUpdate("UPDATE jdbc_accounts SET balance = 1 WHERE id = 30");
                    check(false, "a write of the held row times out");
                } catch (SQLException e) {
                    long ms = (System.nanoTime() - started) / 1_000_000;
                    check(e.getErrorCode() == 1969 && ms < 3000,
                            "the query timeout ended the wait: " + e.getErrorCode() + " after " + ms + " ms");
                }
            }
            check("Rollbacked".equals(one(holder, "SELECT tandem_rollback()")), "holder rollback");
            check(balance(d, 30) == 30, "the held row restored");
        }
    }

    public static void main(String[] args) throws Exception {
        String proxy = args[0];
        String direct = args[1];
        try (Connection d = DriverManager.getConnection(direct);
                Connection c = DriverManager.getConnection(proxy)) {
            try (Statement s = d.createStatement()) {
                s.execute("DROP TABLE IF EXISTS jdbc_accounts");
                s.execute("CREATE TABLE jdbc_accounts (id int PRIMARY KEY, balance bigint NOT NULL) ENGINE=InnoDB");
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

            // A batch of updates in an AT global transaction (Connector/J may send its
            // statements without waiting for each reply), rolled back.
            c.setAutoCommit(true);
            check(one(c, "SELECT tandem_mode('at')").equals("at"), "mode at");
            one(c, "SELECT tandem_begin(30000)");
            long before1 = balance(d, 1);
            c.setAutoCommit(false);
            try (PreparedStatement debit = c.prepareStatement(
                    "UPDATE jdbc_accounts SET balance = balance - ? WHERE id = ?")) {
                for (int i = 0; i < 5; i++) {
                    debit.setLong(1, 1);
                    debit.setInt(2, 1);
                    debit.addBatch();
                }
                int[] counts = debit.executeBatch();
                check(counts.length == 5, "five batched updates");
            }
            c.commit();
            check(balance(d, 1) == before1 - 5, "the batch committed locally");
            check("Rollbacked".equals(one(c, "SELECT tandem_rollback()")), "batch rollback");
            c.setAutoCommit(true);
            check(balance(d, 1) == before1, "the batch rolled back exactly");

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
            rewrittenBatches(proxy, d);
        }
        System.out.println("all checks passed");
    }
}
