//! A session's binding to a global transaction, and the control functions that change
//! or report it. Shared by every SQL front end.
//!
//! Owns the binding state and the lockserver calls that control functions make. Never
//! touches a socket or a wire format: the session hands it a parsed `Control` and
//! writes the answer itself. Invariant: a session is bound to at most one xid, and
//! only after the lockserver confirmed that transaction.

use crate::control::Control;
use crate::error::{Error, Result};
use std::time::Duration;
use tandem_lockserver::client::{GlobalStatus, LockClient, Xid};

/// The branch mode a session asked for with `tandem_mode` (the resource's is
/// configured, with the same type).
pub use crate::config::BranchMode as Mode;

#[derive(Debug, Default)]
pub struct Binding {
    xid: Option<Xid>,
    mode: Option<Mode>,
    /// The binding came from a `/*+ XID('…') */` hint: it ends with the statement, or
    /// with the local transaction the statement runs in.
    from_hint: bool,
}

impl Binding {
    pub fn xid(&self) -> Option<&Xid> {
        self.xid.as_ref()
    }

    /// The mode the session chose, if it chose one.
    pub fn mode(&self) -> Option<Mode> {
        self.mode
    }

    /// A pool reset (`DISCARD ALL`, `RESET ALL`, `COM_RESET_CONNECTION`…) unbinds.
    pub fn unbind(&mut self) {
        self.xid = None;
        self.mode = None;
        self.from_hint = false;
    }

    /// Binds for one statement (and its local transaction) from an XID hint, after the
    /// lockserver confirmed the transaction is open. A session bound already keeps its
    /// binding; a hint naming another xid is refused.
    pub async fn bind_from_hint(&mut self, lock: &LockClient, xid: &str) -> Result<()> {
        let xid = Xid::parse(xid)?;
        if let Some(bound) = &self.xid {
            if *bound == xid {
                return Ok(());
            }
            return Err(Error::AlreadyBound {
                xid: bound.to_string(),
            });
        }
        let status = lock.status(&xid).await?;
        if status != GlobalStatus::Begin {
            return Err(Error::NotJoinable {
                xid: xid.to_string(),
                status: status.as_str().to_owned(),
            });
        }
        self.xid = Some(xid);
        self.from_hint = true;
        Ok(())
    }

    /// The session reached a sync point outside any local transaction: a hint's
    /// binding is over.
    pub fn on_local_transaction_end(&mut self) {
        if self.from_hint {
            self.xid = None;
            self.from_hint = false;
        }
    }

    /// Carries out `control`; returns the one value of the answer (None is SQL NULL).
    /// `local_transaction_open` says whether the session is inside BEGIN … COMMIT.
    pub async fn carry_out(
        &mut self,
        lock: &LockClient,
        local_transaction_open: bool,
        control: Control,
    ) -> Result<Option<String>> {
        match control {
            Control::Begin { timeout_ms } => {
                if let Some(xid) = &self.xid {
                    return Err(Error::AlreadyBound {
                        xid: xid.to_string(),
                    });
                }
                let xid = lock.begin(timeout_ms.map(Duration::from_millis)).await?;
                self.xid = Some(xid.clone());
                Ok(Some(xid.to_string()))
            }
            Control::Join { xid } => {
                if let Some(bound) = &self.xid {
                    return Err(Error::AlreadyBound {
                        xid: bound.to_string(),
                    });
                }
                let xid = Xid::parse(&xid)?;
                let status = lock.status(&xid).await?;
                if status != GlobalStatus::Begin {
                    return Err(Error::NotJoinable {
                        xid: xid.to_string(),
                        status: status.as_str().to_owned(),
                    });
                }
                self.xid = Some(xid.clone());
                Ok(Some(xid.to_string()))
            }
            Control::Commit | Control::Rollback => {
                let commit = control == Control::Commit;
                if local_transaction_open {
                    return Err(Error::LocalTransactionOpen {
                        what: if commit {
                            "tandem_commit()"
                        } else {
                            "tandem_rollback()"
                        },
                    });
                }
                let xid = self.xid.clone().ok_or(Error::NotBound)?;
                let decided = if commit {
                    lock.commit(&xid).await
                } else {
                    lock.rollback(&xid).await
                };
                let status = match decided {
                    Ok(status) => status,
                    // The transaction cannot go on (ended by a timeout, unknown...): the
                    // binding goes with it. A lockserver that is away keeps it, so that
                    // the client can retry.
                    Err(e) if e.is_client_fault() => {
                        self.xid = None;
                        return Err(e.into());
                    }
                    Err(e) => return Err(e.into()),
                };
                // The decision is taken: the session is free for its next transaction,
                // whether or not every branch has finished yet.
                self.xid = None;
                Ok(Some(status.as_str().to_owned()))
            }
            Control::Status { xid } => {
                let xid = match xid {
                    Some(xid) => Xid::parse(&xid)?,
                    None => self.xid.clone().ok_or(Error::NotBound)?,
                };
                Ok(Some(lock.status(&xid).await?.as_str().to_owned()))
            }
            Control::Leave => Ok(self.xid.take().map(|xid| xid.to_string())),
            Control::Xid => Ok(self.xid.as_ref().map(|xid| xid.to_string())),
            Control::Mode { mode } => {
                self.mode = Some(if mode == "xa" { Mode::Xa } else { Mode::At });
                Ok(Some(mode))
            }
        }
    }
}
