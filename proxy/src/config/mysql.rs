//! `[[mysql]]`: MySQL/MariaDB front ends.

use super::TlsConfig;
use serde::Deserialize;
use std::net::SocketAddr;
use std::time::Duration;

/// One MySQL listener and the server it relays to. The client's handshake names the
/// user and database, so one front end serves every database of its server.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MysqlFrontend {
    /// Where clients connect. Default `127.0.0.1:3307`.
    pub listen: SocketAddr,
    /// The MySQL or MariaDB server, as `host:port`, or the path of its unix-domain
    /// socket (`/run/mysqld/mysqld.sock`). Default `127.0.0.1:3306`. A socket counts as
    /// a secure link for caching_sha2_password, so clear passwords from TLS clients go
    /// through as they are; over TCP tandem encrypts them with the server's RSA key.
    pub upstream: String,
    /// How resource ids and global lock keys name this server:
    /// `mysql://<name>/<database>`. Default: `upstream` as written. Every proxy of one
    /// server must name it alike, or their global locks never meet (one reaching it as
    /// `localhost:3306`, another as `127.0.0.1:3306` or through its socket): name it here
    /// where their upstreams are spelled otherwise.
    pub name: Option<String>,
    /// Certificate and key for TLS to clients. Default: none, and the greeting does not
    /// offer CLIENT_SSL.
    pub tls: Option<TlsConfig>,
    /// Credentials of tandem's own side connections (they stop a query that is still
    /// running when its client goes away). Default user `root`, no password.
    pub service: MysqlServiceCredentials,
    /// Client connections served at once. Default 10000. The next one is answered with
    /// error 1040 (08004) and closed.
    pub max_client_connections: usize,
    /// The largest message (all packets of one command or reply) accepted from either
    /// side, in bytes. Default 1 GiB, the servers' own ceiling for max_allowed_packet. A
    /// larger one is answered with error 1153 and the session is closed.
    pub max_message_bytes: usize,
    /// Timeout for opening an upstream connection and reading its greeting, in
    /// milliseconds. Default 5000. The client then gets error 1053.
    pub connect_timeout_ms: u64,
    /// How long a client has to answer the greeting (its HandshakeResponse, TLS
    /// negotiation included), in milliseconds; then the connection is closed, as the
    /// server closes it past its `connect_timeout`. Default 10000, the server's
    /// default: a client that never answers would hold one of
    /// `max_client_connections` for ever.
    pub handshake_timeout_ms: u64,
    /// The branch mode of sessions that did not choose one with `tandem_mode`: `"at"`
    /// (default) captures each write's images and keeps an undo log; `"xa"` runs a
    /// bound session's transaction as an XA branch.
    pub mode: super::BranchMode,
    /// XA recovery: how often `XA RECOVER` is scanned for tandem's branches, in
    /// milliseconds (also once at start). Default 10000.
    pub xa_recovery_interval_ms: u64,
    /// XA recovery: a prepared branch whose global transaction the lockserver does not
    /// know is rolled back once this proxy has seen it for this long, in milliseconds.
    /// Default 600000.
    pub xa_orphan_after_ms: u64,
}

impl Default for MysqlFrontend {
    fn default() -> Self {
        MysqlFrontend {
            listen: SocketAddr::from(([127, 0, 0, 1], 3307)),
            upstream: "127.0.0.1:3306".to_owned(),
            name: None,
            tls: None,
            service: MysqlServiceCredentials::default(),
            max_client_connections: 10_000,
            max_message_bytes: 1 << 30,
            connect_timeout_ms: 5_000,
            handshake_timeout_ms: 10_000,
            mode: super::BranchMode::At,
            xa_recovery_interval_ms: 10_000,
            xa_orphan_after_ms: 600_000,
        }
    }
}

impl MysqlFrontend {
    /// The server as resource ids and lock keys name it (`name`, else `upstream`).
    pub fn server(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.upstream)
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MysqlServiceCredentials {
    /// Default `root`.
    pub user: String,
    /// Default empty.
    pub password: String,
}

impl Default for MysqlServiceCredentials {
    fn default() -> Self {
        MysqlServiceCredentials {
            user: "root".to_owned(),
            password: String::new(),
        }
    }
}

/// Adds every problem of the `[[mysql]]` sections to `problems`; `listens` holds the
/// addresses already taken.
pub(super) fn validate(
    frontends: &[MysqlFrontend],
    listens: &mut Vec<SocketAddr>,
    problems: &mut Vec<String>,
) {
    for (i, my) in frontends.iter().enumerate() {
        let at = format!("mysql[{i}]");
        if listens.contains(&my.listen) && my.listen.port() != 0 {
            problems.push(format!("{at}.listen {} is used twice", my.listen));
        }
        listens.push(my.listen);
        if !my.upstream.starts_with('/')
            && my
                .upstream
                .rsplit_once(':')
                .is_none_or(|(_, port)| port.parse::<u16>().is_err())
        {
            problems.push(format!(
                "{at}.upstream {:?} is neither host:port nor a socket path",
                my.upstream
            ));
        }
        if my.max_client_connections == 0 {
            problems.push(format!("{at}.max_client_connections must be at least 1"));
        }
        if my.max_message_bytes < 1024 {
            problems.push(format!("{at}.max_message_bytes must be at least 1024"));
        }
        if my.connect_timeout_ms == 0 {
            problems.push(format!("{at}.connect_timeout_ms must be at least 1"));
        }
        if my.handshake_timeout_ms == 0 {
            problems.push(format!("{at}.handshake_timeout_ms must be at least 1"));
        }
        if let Some(tls) = &my.tls {
            for (what, path) in [("cert", &tls.cert), ("key", &tls.key)] {
                if !path.exists() {
                    problems.push(format!("{at}.tls.{what} {} does not exist", path.display()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    #[test]
    fn mysql_front_ends_parse_and_validate() {
        let config = Config::parse(
            "[[mysql]]\nlisten = \"127.0.0.1:13306\"\nupstream = \"/run/mysqld/mysqld.sock\"\n[mysql.service]\npassword = \"x\"\n",
        )
        .unwrap();
        config.validate().unwrap();
        assert_eq!(config.mysql[0].service.user, "root");
        assert_eq!(config.mysql[0].max_message_bytes, 1 << 30);
        let bad = Config::parse("[[mysql]]\nupstream = \"nowhere\"\nmax_client_connections = 0\n")
            .unwrap();
        assert!(bad.validate().is_err());
    }
}
