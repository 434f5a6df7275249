//! A bounded pool of logged-in sessions to one token.
//!
//! A cryptoki [`Session`] is `Send` but not `Sync`: one thread may use it at a
//! time. Each signature checks a session out, uses it and returns it, so the
//! pool size bounds how many operations run on the token at once.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use cryptoki::context::Pkcs11;
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::session::{Session, SessionState, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;

use super::Pin;
use crate::Error;

/// Sessions to one token, opened lazily up to `size`.
#[derive(Debug)]
pub(crate) struct SessionPool {
    ctx: Pkcs11,
    slot: Slot,
    pin: Pin,
    /// The token label, for messages.
    token: String,
    size: usize,
    checkout_timeout: Duration,
    state: Mutex<PoolState>,
    returned: Condvar,
}

#[derive(Debug, Default)]
struct PoolState {
    idle: Vec<Session>,
    /// Sessions open, idle or checked out.
    open: usize,
}

/// What a failed call says about the session it ran on.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Fault {
    /// The token logged us out (another session called `C_Logout`, or the token was reset).
    LoggedOut,
    /// The session itself is gone; a fresh one may work.
    SessionLost,
    /// The device failed; the session is dropped and the error reported.
    Device,
    /// Our key's object handle no longer names it (the token was reinserted or
    /// reloaded): look the key up again by its URI.
    StaleHandle,
    /// The operation was refused for a reason a new session would not fix.
    Other,
}

/// Classifies a cryptoki error by what the pool should do about it.
pub(crate) fn fault(err: &CkError) -> Fault {
    match err {
        CkError::Pkcs11(rv, _) => match rv {
            RvError::UserNotLoggedIn => Fault::LoggedOut,
            RvError::ObjectHandleInvalid | RvError::KeyHandleInvalid => Fault::StaleHandle,
            RvError::SessionHandleInvalid | RvError::SessionClosed => Fault::SessionLost,
            RvError::DeviceError
            | RvError::DeviceRemoved
            | RvError::DeviceMemory
            | RvError::TokenNotPresent
            | RvError::TokenNotRecognized
            | RvError::GeneralError
            | RvError::CryptokiNotInitialized => Fault::Device,
            _ => Fault::Other,
        },
        CkError::LibraryLoading(_) | CkError::NullFunctionPointer => Fault::Device,
        _ => Fault::Other,
    }
}

impl SessionPool {
    /// Creates an empty pool; sessions are opened and logged in on first use.
    pub(crate) fn new(
        ctx: Pkcs11,
        slot: Slot,
        token: String,
        pin: Pin,
        size: usize,
        checkout_timeout: Duration,
    ) -> Self {
        Self {
            ctx,
            slot,
            pin,
            token,
            size: size.max(1),
            checkout_timeout,
            state: Mutex::new(PoolState::default()),
            returned: Condvar::new(),
        }
    }

    /// The token label.
    pub(crate) fn token(&self) -> &str {
        &self.token
    }

    fn lock(&self) -> MutexGuard<'_, PoolState> {
        // A panic while holding the lock leaves a consistent Vec and counter behind.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes an idle session, opens a new one if under the bound, or waits for one to come back.
    pub(crate) fn checkout(&self) -> Result<PooledSession<'_>, Error> {
        let deadline = Instant::now() + self.checkout_timeout;
        let mut state = self.lock();
        loop {
            if let Some(session) = state.idle.pop() {
                return Ok(PooledSession {
                    pool: self,
                    session: Some(session),
                });
            }
            if state.open < self.size {
                state.open += 1;
                drop(state);
                return match self.open_session() {
                    Ok(session) => Ok(PooledSession {
                        pool: self,
                        session: Some(session),
                    }),
                    Err(e) => {
                        self.forget_one();
                        Err(e)
                    }
                };
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::Pkcs11PoolTimeout {
                    token: self.token.clone(),
                    size: self.size,
                    waited: self.checkout_timeout,
                });
            }
            state = self
                .returned
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Opens a read-write session and makes sure the token is logged in.
    fn open_session(&self) -> Result<Session, Error> {
        let session = self
            .ctx
            .open_rw_session(self.slot)
            .map_err(|source| self.err("C_OpenSession", source))?;
        self.login(&session)?;
        tracing::debug!(token = %self.token, "opened PKCS#11 session");
        Ok(session)
    }

    /// Logs the token in through `session`; login state is per token, so one success covers every session.
    pub(crate) fn login(&self, session: &Session) -> Result<(), Error> {
        let pin = AuthPin::from(self.pin.expose());
        match session.login(UserType::User, Some(&pin)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(()),
            Err(source) => Err(self.err("C_Login", source)),
        }
    }

    /// Whether `session` still sees the token logged in.
    pub(crate) fn is_logged_in(session: &Session) -> bool {
        session.get_session_info().is_ok_and(|info| {
            matches!(
                info.session_state(),
                SessionState::RoUser | SessionState::RwUser | SessionState::RwSecurityOfficer
            )
        })
    }

    fn forget_one(&self) {
        let mut state = self.lock();
        state.open -= 1;
        drop(state);
        self.returned.notify_one();
    }

    /// Wraps a cryptoki error with the operation and this pool's token.
    pub(crate) fn err(&self, operation: impl Into<String>, cause: CkError) -> Error {
        Error::Pkcs11 {
            operation: operation.into(),
            token: self.token.clone(),
            cause,
        }
    }
}

/// A checked-out session; returned to the pool on drop unless [`discard`](Self::discard)ed.
#[derive(Debug)]
pub(crate) struct PooledSession<'p> {
    pool: &'p SessionPool,
    session: Option<Session>,
}

impl PooledSession<'_> {
    /// The session.
    pub(crate) fn session(&self) -> &Session {
        self.session.as_ref().expect("present until drop")
    }

    /// Closes this session instead of returning it: it failed in a way reuse would repeat.
    pub(crate) fn discard(mut self) {
        if let Some(session) = self.session.take() {
            // Closing a session on a failed device may itself fail; nothing more to do then.
            drop(session);
            self.pool.forget_one();
        }
    }
}

impl Drop for PooledSession<'_> {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            self.pool.lock().idle.push(session);
            self.pool.returned.notify_one();
        }
    }
}
