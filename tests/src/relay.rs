//! A TCP relay that can lose the answers: requests still reach the server, which
//! carries them out, while its replies are dropped on the floor. That is how a reply
//! gets lost on a real network, and the one failure a timeout cannot tell apart from a
//! request that never arrived.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// A relay to one upstream address; dropping it closes every relayed connection.
pub struct LossyRelay {
    pub addr: SocketAddr,
    answers_lost: Arc<AtomicBool>,
    connections: Arc<std::sync::Mutex<JoinSet<()>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl LossyRelay {
    /// Relays connections to `upstream`, answers included until [`LossyRelay::lose_answers`].
    pub async fn start(upstream: SocketAddr) -> LossyRelay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
        let addr = listener.local_addr().expect("relay address");
        let answers_lost = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(std::sync::Mutex::new(JoinSet::new()));
        let (lost, conns) = (answers_lost.clone(), connections.clone());
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let lost = lost.clone();
                let mut set = conns.lock().unwrap_or_else(|p| p.into_inner());
                set.spawn(async move {
                    if let Ok(server) = TcpStream::connect(upstream).await {
                        relay(client, server, lost).await;
                    }
                });
            }
        });
        LossyRelay {
            addr,
            answers_lost,
            connections,
            accept,
        }
    }

    /// A proxy's lockserver settings for this relay: its address, and calls bounded to
    /// a second, so that a lost answer shows soon.
    pub fn proxy_settings(&self, config: &mut tandem_proxy::config::Config) {
        config.lockserver.endpoint = format!("http://{}", self.addr);
        config.lockserver.call_timeout_ms = 1_000;
    }

    /// From now on the server's replies are read and dropped.
    pub fn lose_answers(&self) {
        self.answers_lost.store(true, Ordering::SeqCst);
    }

    /// Closes every relayed connection (their byte streams lost data and cannot go
    /// on) and relays new ones whole again.
    pub fn heal(&self) {
        self.connections
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .abort_all();
        self.answers_lost.store(false, Ordering::SeqCst);
    }
}

impl Drop for LossyRelay {
    fn drop(&mut self) {
        self.accept.abort();
        self.connections
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .abort_all();
    }
}

async fn relay(client: TcpStream, server: TcpStream, answers_lost: Arc<AtomicBool>) {
    let (mut client_rx, mut client_tx) = client.into_split();
    let (mut server_rx, mut server_tx) = server.into_split();
    let requests = async {
        let _ = tokio::io::copy(&mut client_rx, &mut server_tx).await;
    };
    let answers = async {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = match server_rx.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if answers_lost.load(Ordering::SeqCst) {
                continue;
            }
            if client_tx.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        _ = requests => {}
        _ = answers => {}
    }
}
