-- tandem AT mode: the undo log, in Seata's shape. One row per branch, written in the
-- branch's own local transaction. Applied by `tandem migrate`; safe to apply again.
CREATE TABLE IF NOT EXISTS undo_log (
    id            bigserial    PRIMARY KEY,
    branch_id     bigint       NOT NULL,
    xid           varchar(128) NOT NULL,
    context       varchar(128) NOT NULL,
    rollback_info bytea        NOT NULL,
    -- 0 normal, 1 GlobalFinished (a marker written by a rollback that found no undo row)
    log_status    integer      NOT NULL,
    log_created   timestamptz  NOT NULL DEFAULT now(),
    log_modified  timestamptz  NOT NULL DEFAULT now(),
    CONSTRAINT ux_undo_log UNIQUE (xid, branch_id)
);
CREATE INDEX IF NOT EXISTS ix_undo_log_created ON undo_log (log_created);
