//! tandem's own connection to the backend server, with the front end's service
//! credentials: it stops a statement that is still running when its session ends (a
//! client that disconnects mid-query would otherwise leave `SELECT SLEEP(3600)` or a
//! runaway report holding its backend thread and locks).
//!
//! Never speaks for a client and never touches the session's own connection.

use crate::config::MysqlFrontend;
use mysql_async::prelude::Queryable;

/// Sends `KILL QUERY thread_id` on a short-lived side connection. Best effort: a failure
/// is logged, because the session is ending either way.
pub async fn kill_query(config: &MysqlFrontend, thread_id: u32, span: &tracing::Span) {
    let opts = service_opts(config);
    let kill = async {
        let mut conn = mysql_async::Conn::new(opts).await?;
        conn.query_drop(format!("KILL QUERY {thread_id}")).await?;
        conn.disconnect().await
    };
    match tokio::time::timeout(config.connect_timeout(), kill).await {
        Ok(Ok(())) => tracing::debug!(parent: span, thread_id, "stopped the running statement"),
        Ok(Err(e)) => {
            tracing::debug!(parent: span, error = %e, "could not stop the running statement")
        }
        Err(_) => tracing::debug!(parent: span, "stopping the running statement timed out"),
    }
}

/// Connection options for tandem's own connections to the front end's upstream, with
/// its service credentials (a unix socket path or `host[:port]`).
pub fn service_opts(config: &MysqlFrontend) -> mysql_async::OptsBuilder {
    let opts = mysql_async::OptsBuilder::default()
        .user(Some(config.service.user.clone()))
        .pass((!config.service.password.is_empty()).then(|| config.service.password.clone()))
        .prefer_socket(false);
    if config.upstream.starts_with('/') {
        opts.socket(Some(config.upstream.clone()))
    } else {
        let (host, port) = config
            .upstream
            .rsplit_once(':')
            .map(|(h, p)| (h.to_owned(), p.parse().unwrap_or(3306)))
            .unwrap_or_else(|| (config.upstream.clone(), 3306));
        opts.ip_or_hostname(host).tcp_port(port)
    }
}
