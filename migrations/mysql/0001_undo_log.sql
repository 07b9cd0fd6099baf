-- tandem AT mode: the undo log, in Seata's shape. One row per branch, written in the
-- branch's own local transaction. Applied by `tandem migrate`; safe to apply again.
CREATE TABLE IF NOT EXISTS `undo_log` (
    `id`            BIGINT       NOT NULL AUTO_INCREMENT,
    `branch_id`     BIGINT       NOT NULL,
    `xid`           VARCHAR(128) NOT NULL,
    `context`       VARCHAR(128) NOT NULL,
    `rollback_info` LONGBLOB     NOT NULL,
    -- 0 normal, 1 GlobalFinished (a marker written by a rollback that found no undo row)
    `log_status`    INT          NOT NULL,
    `log_created`   DATETIME(6)  NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    `log_modified`  DATETIME(6)  NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    PRIMARY KEY (`id`),
    UNIQUE KEY `ux_undo_log` (`xid`, `branch_id`),
    KEY `ix_undo_log_created` (`log_created`)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;
