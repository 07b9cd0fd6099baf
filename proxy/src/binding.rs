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

/// Where a session's local transaction stands when a control function arrives.
#[derive(Debug, Clone, Copy, Default)]
pub struct LocalTransaction {
    /// Inside BEGIN … COMMIT (or MySQL's implicit transaction).
    pub open: bool,
    /// It has captured writes (AT) or is an open XA branch: it must end inside the
    /// global transaction.
    pub has_branch: bool,
    /// Only BEGIN and SAVEPOINT have run in it: it holds no row locks (JDBC with
    /// autocommit off sends BEGIN, and with `autosave` a SAVEPOINT, ahead of every first
    /// statement of a block).
    pub fresh: bool,
}

#[derive(Debug)]
pub struct Binding {
    xid: Option<Xid>,
    /// The session's span.
    session_span: tracing::Span,
    /// The session's span while unbound; while bound, a `global` span under it that
    /// carries the xid, so that every event of the session's part in a global
    /// transaction names it.
    span: tracing::Span,
    mode: Option<Mode>,
    /// The binding came from a `/*+ XID('…') */` hint: it ends with the statement, or
    /// with the local transaction the statement runs in.
    from_hint: bool,
    /// A pool reset arrived inside a local transaction: the binding (and mode) end
    /// with that transaction, whose branch must still commit or roll back inside the
    /// global transaction.
    reset_at_transaction_end: bool,
    /// A branch registration was refused because the transaction is over. The session
    /// stays bound, so its writes keep failing (unbound, a client that carried on past
    /// the error would commit the rest for good outside the transaction), but
    /// tandem_begin() and tandem_join() may replace the binding.
    over: bool,
}

impl Binding {
    /// An unbound session whose events go under `session_span`.
    pub fn new(session_span: tracing::Span) -> Self {
        Binding {
            xid: None,
            span: session_span.clone(),
            session_span,
            mode: None,
            from_hint: false,
            reset_at_transaction_end: false,
            over: false,
        }
    }

    pub fn xid(&self) -> Option<&Xid> {
        self.xid.as_ref()
    }

    /// The mode the session chose, if it chose one.
    pub fn mode(&self) -> Option<Mode> {
        self.mode
    }

    /// A pool reset (`DISCARD ALL`, `RESET ALL`, `COM_RESET_CONNECTION`…) unbinds.
    pub fn unbind(&mut self) {
        self.set_xid(None);
        self.mode = None;
        self.from_hint = false;
        self.reset_at_transaction_end = false;
    }

    /// Binds the session to `xid` (None: to nothing); returns the binding it had. A new
    /// binding is not over, whatever the old one was.
    fn set_xid(&mut self, xid: Option<Xid>) -> Option<Xid> {
        self.over = false;
        if xid != self.xid {
            self.span = match &xid {
                Some(xid) => tracing::info_span!(parent: &self.session_span, "global", %xid),
                None => self.session_span.clone(),
            };
        }
        std::mem::replace(&mut self.xid, xid)
    }

    /// The span for the session's events: the session's, under a `global` span naming
    /// the xid while the session is bound.
    pub fn span(&self) -> &tracing::Span {
        &self.span
    }

    /// A span for the events of one branch of `xid`: under the session's `global`
    /// span when the session is bound to `xid`, else under a new one.
    pub fn branch_span(&self, xid: &Xid, branch_id: u64) -> tracing::Span {
        let global = match &self.xid {
            Some(bound) if bound == xid => self.span.clone(),
            _ => tracing::info_span!(parent: &self.session_span, "global", %xid),
        };
        tracing::info_span!(parent: &global, "branch", branch = branch_id)
    }

    /// A branch registration was refused: if because the global transaction is over
    /// (decided, timed out, forgotten), tandem_begin() and tandem_join() may replace
    /// the binding, which otherwise stays (see `over`).
    pub fn on_registration_refused(&mut self, e: &tandem_lockserver::Error) {
        if self.xid.is_some() && e.transaction_is_over() {
            tracing::debug!(xid = ?self.xid, error = %e, "the bound global transaction is over");
            self.over = true;
        }
    }

    /// Whether a new binding may replace this one: none, or one whose transaction is
    /// over. Another service may have ended it (a session that joined and never left):
    /// the lockserver is asked, which costs a call only here.
    async fn replaceable(&mut self, lock: &LockClient) -> Result<()> {
        let Some(xid) = &self.xid else {
            return Ok(());
        };
        if self.over {
            return Ok(());
        }
        let over = match lock.status(xid).await {
            Ok(status) => status != GlobalStatus::Begin,
            Err(e) if e.transaction_is_over() => true,
            // Unknown while the lockserver cannot answer: its error says why, not
            // "already bound" (whose advice would not help).
            Err(e) => return Err(Error::Lockserver(e)),
        };
        if !over {
            return Err(Error::AlreadyBound {
                xid: xid.to_string(),
            });
        }
        self.over = true;
        Ok(())
    }

    /// A pool reset that ran inside a local transaction (`RESET ALL`): it takes effect
    /// when the transaction ends, or the transaction's writes would commit outside the
    /// global transaction they were captured for.
    pub fn unbind_at_transaction_end(&mut self) {
        self.reset_at_transaction_end = true;
    }

    /// The local transaction rolled back (perhaps to a savepoint): a pool reset that
    /// ran in it may be undone, so the binding stays.
    pub fn keep_after_rollback(&mut self) {
        self.reset_at_transaction_end = false;
    }

    /// A hint in a bound session: it must name the transaction the session is bound
    /// to.
    pub fn check_hint(&self, xid: &str) -> Result<()> {
        let xid = Xid::parse(xid)?;
        match &self.xid {
            Some(bound) if *bound != xid => Err(Error::AlreadyBound {
                xid: bound.to_string(),
            }),
            _ => Ok(()),
        }
    }

    /// Binds for one statement (and its local transaction) from an XID hint, after the
    /// lockserver confirmed the transaction is open. A session bound already keeps its
    /// binding; a hint naming another xid is refused. So is one inside an open local
    /// transaction (`local_transaction_open`), as tandem_join() is: the writes made
    /// before it, not captured, would commit in the branch.
    pub async fn bind_from_hint(
        &mut self,
        lock: &LockClient,
        xid: &str,
        local_transaction_open: bool,
    ) -> Result<()> {
        if self.xid.is_some() {
            return self.check_hint(xid);
        }
        let xid = Xid::parse(xid)?;
        if local_transaction_open {
            return Err(Error::LocalTransactionOpen {
                what: "a statement with an XID hint",
            });
        }
        let status = lock.status(&xid).await?;
        if status != GlobalStatus::Begin {
            return Err(Error::NotJoinable {
                xid: xid.to_string(),
                status: status.as_str().to_owned(),
            });
        }
        self.set_xid(Some(xid));
        self.from_hint = true;
        Ok(())
    }

    /// The session reached a sync point outside any local transaction: a hint's
    /// binding is over, and so is one a pool reset ended inside the transaction.
    pub fn on_local_transaction_end(&mut self) {
        if self.reset_at_transaction_end {
            self.unbind();
        }
        if self.from_hint {
            self.set_xid(None);
            self.from_hint = false;
        }
    }

    /// Carries out `control`; returns the one value of the answer (None is SQL NULL).
    /// `local` says where the session's local transaction stands.
    pub async fn carry_out(
        &mut self,
        lock: &LockClient,
        local: LocalTransaction,
        control: Control,
    ) -> Result<Option<String>> {
        // A local transaction belongs to the binding it began under. Binding inside
        // one would take writes made before it (not captured) into a branch; changing
        // mode would switch how its branch commits halfway; leaving it once it has
        // captured writes would let them commit outside the global transaction. One
        // where only BEGIN and SAVEPOINT ran holds nothing yet (ORMs and drivers send
        // BEGIN ahead of a transaction's first statement, the control call too): its
        // work is the branch's, as under a hint.
        let changes_binding = match &control {
            Control::Begin { .. } if local.open && !local.fresh => Some("tandem_begin()"),
            Control::Join { .. } if local.open && !local.fresh => Some("tandem_join()"),
            Control::Mode { .. } if local.open => Some("tandem_mode()"),
            Control::Leave if local.has_branch => Some("tandem_leave()"),
            _ => None,
        };
        if let Some(what) = changes_binding {
            return Err(Error::LocalTransactionOpen { what });
        }
        match control {
            Control::Begin { timeout_ms } => {
                self.replaceable(lock).await?;
                let xid = lock.begin(timeout_ms.map(Duration::from_millis)).await?;
                self.set_xid(Some(xid.clone()));
                Ok(Some(xid.to_string()))
            }
            Control::Join { xid } => {
                self.replaceable(lock).await?;
                let xid = Xid::parse(&xid)?;
                let status = lock.status(&xid).await?;
                if status != GlobalStatus::Begin {
                    return Err(Error::NotJoinable {
                        xid: xid.to_string(),
                        status: status.as_str().to_owned(),
                    });
                }
                self.set_xid(Some(xid.clone()));
                Ok(Some(xid.to_string()))
            }
            Control::Commit | Control::Rollback => {
                let commit = control == Control::Commit;
                // A local transaction with captured work must end first. So must any
                // other open one before a rollback, which waits for every branch to be
                // undone: its row locks (a SELECT … FOR UPDATE) could hold up the undo.
                // A commit waits for no branch, and a transaction begun ahead of the
                // call itself (JDBC with autocommit off) holds nothing.
                let blocks = if commit {
                    local.has_branch
                } else {
                    local.open && !local.fresh
                };
                if blocks {
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
                        self.set_xid(None);
                        return Err(e.into());
                    }
                    Err(e) => return Err(e.into()),
                };
                // The decision is taken: the session is free for its next transaction,
                // whether or not every branch has finished yet.
                self.set_xid(None);
                Ok(Some(status.as_str().to_owned()))
            }
            Control::Status { xid } => {
                let xid = match xid {
                    Some(xid) => Xid::parse(&xid)?,
                    None => self.xid.clone().ok_or(Error::NotBound)?,
                };
                Ok(Some(lock.status(&xid).await?.as_str().to_owned()))
            }
            Control::Leave => Ok(self.set_xid(None).map(|xid| xid.to_string())),
            Control::Xid => Ok(self.xid.as_ref().map(|xid| xid.to_string())),
            Control::Mode { mode } => {
                self.mode = Some(if mode == "xa" { Mode::Xa } else { Mode::At });
                Ok(Some(mode))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// The formatted events written while `f` runs.
    fn logged(f: impl FnOnce()) -> String {
        let out = Arc::new(Mutex::new(Vec::new()));
        let writer = {
            let out = out.clone();
            move || Capture(out.clone())
        };
        let subscriber = tracing_subscriber::fmt()
            .with_writer(writer)
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let bytes = out.lock().map(|b| b.clone()).unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if let Ok(mut out) = self.0.lock() {
                out.extend_from_slice(buf);
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_bound_sessions_events_name_the_xid_and_a_branchs_the_branch() {
        let xid = Xid::parse("0123456789abcdef-7").unwrap();
        let other = Xid::parse("0123456789abcdef-8").unwrap();
        let log = logged(|| {
            let mut binding = Binding::new(tracing::info_span!("session", session = 41));
            tracing::info!(parent: binding.span(), "unbound");
            binding.set_xid(Some(xid.clone()));
            tracing::info!(parent: binding.span(), "bound");
            tracing::info!(parent: &binding.branch_span(&xid, 3), "registered");
            tracing::info!(parent: &binding.branch_span(&other, 4), "elsewhere");
            binding.unbind();
            tracing::info!(parent: binding.span(), "left");
        });
        let line = |message: &str| {
            log.lines()
                .find(|l| l.ends_with(&format!(": {message}")))
                .unwrap_or_else(|| panic!("no event {message:?} in {log}"))
                .to_owned()
        };
        assert!(line("unbound").contains("session{session=41}: "));
        assert!(!line("unbound").contains("global"));
        assert!(line("bound").contains("session{session=41}:global{xid=0123456789abcdef-7}: "));
        assert!(
            line("registered")
                .contains("session{session=41}:global{xid=0123456789abcdef-7}:branch{branch=3}: ")
        );
        assert!(
            line("elsewhere")
                .contains("session{session=41}:global{xid=0123456789abcdef-8}:branch{branch=4}: ")
        );
        assert!(!line("left").contains("global"));
    }
}
