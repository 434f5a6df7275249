//! The OpenSSL ENGINE calls `openssl-sys` does not bind, wrapped once in a safe [`Engine`].
//!
//! ENGINEs are deprecated in OpenSSL 3.0 and removed in 4.0, so `openssl-sys`
//! leaves them out; Debian 12's libcrypto still exports them, and hardware
//! like Intel QAT (qatengine) and the libp11 `pkcs11` engine still use them.
//! Apart from one `set_var` in the test-only SoftHSM2 fixture (`test_support`), this is
//! the only module in the crate with `unsafe` code.
#![allow(unsafe_code)]

use std::ffi::{CString, c_char, c_int, c_uint, c_void};
use std::ptr::NonNull;
use std::sync::Once;

use foreign_types::ForeignType;
use openssl::error::ErrorStack;
use openssl::pkey::{PKey, Private};

use crate::Error;

/// OpenSSL's opaque `ENGINE` (named as in C).
#[allow(clippy::upper_case_acronyms)]
#[repr(C)]
struct ENGINE {
    _opaque: [u8; 0],
}

/// `OPENSSL_INIT_ENGINE_DYNAMIC`: lets `ENGINE_by_id` load engines from `ENGINESDIR`.
const OPENSSL_INIT_ENGINE_DYNAMIC: u64 = 0x0000_0400;
/// `OPENSSL_INIT_LOAD_CONFIG`: read `openssl.cnf`, where operators may configure engines.
const OPENSSL_INIT_LOAD_CONFIG: u64 = 0x0000_0040;
/// `ENGINE_METHOD_ALL`.
const ENGINE_METHOD_ALL: c_uint = 0xffff;

unsafe extern "C" {
    fn OPENSSL_init_crypto(opts: u64, settings: *const c_void) -> c_int;
    fn ENGINE_by_id(id: *const c_char) -> *mut ENGINE;
    fn ENGINE_ctrl_cmd_string(
        e: *mut ENGINE,
        cmd_name: *const c_char,
        arg: *const c_char,
        cmd_optional: c_int,
    ) -> c_int;
    fn ENGINE_init(e: *mut ENGINE) -> c_int;
    fn ENGINE_finish(e: *mut ENGINE) -> c_int;
    fn ENGINE_free(e: *mut ENGINE) -> c_int;
    fn ENGINE_set_default(e: *mut ENGINE, flags: c_uint) -> c_int;
    fn ENGINE_load_private_key(
        e: *mut ENGINE,
        key_id: *const c_char,
        ui_method: *mut c_void,
        callback_data: *mut c_void,
    ) -> *mut openssl_sys::EVP_PKEY;
}

/// An initialised ENGINE (structural and functional reference), released on drop.
#[derive(Debug)]
pub(crate) struct Engine {
    ptr: NonNull<ENGINE>,
    id: String,
    /// Whether `ENGINE_init` succeeded, so drop must also call `ENGINE_finish`.
    release_functional: bool,
}

// SAFETY: an ENGINE is reference-counted and its state is guarded by
// OpenSSL's global engine lock; the handle may move between threads. It is
// not `Sync`: the backend keeps it behind a Mutex so calls are serialised.
unsafe impl Send for Engine {}

fn c_string(engine: &str, what: &str, s: &str) -> Result<CString, Error> {
    CString::new(s).map_err(|_| Error::OpensslEngine {
        engine: engine.into(),
        reason: format!("{what} contains a NUL byte"),
    })
}

impl Engine {
    /// Finds engine `id` (loading it from `ENGINESDIR` if needed), sends the control commands, and initialises it.
    ///
    /// Commands are sent before `ENGINE_init` because engines like `pkcs11`
    /// (`MODULE_PATH`) and `qatengine` (`ENABLE_EXTERNAL_POLLING`) need them then.
    pub(crate) fn open(id: &str, ctrl: &[(String, String)]) -> Result<Self, Error> {
        static INIT: Once = Once::new();
        INIT.call_once(|| {
            openssl::init();
            // SAFETY: plain library initialisation with no settings pointer;
            // OpenSSL makes repeated and concurrent calls safe.
            unsafe {
                OPENSSL_init_crypto(
                    OPENSSL_INIT_ENGINE_DYNAMIC | OPENSSL_INIT_LOAD_CONFIG,
                    std::ptr::null(),
                )
            };
        });
        let fail = |reason: String| Error::OpensslEngine {
            engine: id.into(),
            reason,
        };
        let c_id = c_string(id, "the engine id", id)?;
        // SAFETY: c_id is a valid NUL-terminated string that outlives the call.
        let raw = unsafe { ENGINE_by_id(c_id.as_ptr()) };
        let ptr = NonNull::new(raw).ok_or_else(|| {
            fail(format!(
                "not found (is its package installed, e.g. libengine-pkcs11-openssl?): {}",
                ErrorStack::get()
            ))
        })?;
        // From here on Drop releases the structural reference.
        let mut engine = Self {
            ptr,
            id: id.into(),
            release_functional: false,
        };
        for (cmd, arg) in ctrl {
            let c_cmd = c_string(id, "a control command name", cmd)?;
            let c_arg = c_string(id, &format!("the value of {cmd}"), arg)?;
            // SAFETY: ptr is a live structural reference; both strings are valid
            // and outlive the call; cmd_optional = 0 makes unknown commands fail.
            let ok =
                unsafe { ENGINE_ctrl_cmd_string(ptr.as_ptr(), c_cmd.as_ptr(), c_arg.as_ptr(), 0) };
            if ok != 1 {
                // The value may be a PIN: name the command only.
                return Err(fail(format!(
                    "control command {cmd} failed: {}",
                    ErrorStack::get()
                )));
            }
        }
        // SAFETY: ptr is a live structural reference.
        if unsafe { ENGINE_init(ptr.as_ptr()) } != 1 {
            return Err(fail(format!("ENGINE_init failed: {}", ErrorStack::get())));
        }
        engine.release_functional = true;
        tracing::info!(engine = id, "initialised OpenSSL engine");
        Ok(engine)
    }

    /// Loads a private key the engine knows by `key_id` (for `pkcs11`, an RFC 7512 URI).
    pub(crate) fn load_private_key(&self, key_id: &str) -> Result<PKey<Private>, Error> {
        let display = crate::key_ref::shown(key_id);
        let c_key = c_string(&self.id, "the key id", key_id)?;
        // SAFETY: self.ptr is an initialised engine; c_key is valid for the
        // call; null UI method and callback data ask the engine to use the PIN
        // given by control command instead of prompting.
        let raw = unsafe {
            ENGINE_load_private_key(
                self.ptr.as_ptr(),
                c_key.as_ptr(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
        };
        if raw.is_null() {
            return Err(Error::OpensslEngine {
                engine: self.id.clone(),
                reason: format!("cannot load private key {display}: {}", ErrorStack::get()),
            });
        }
        // SAFETY: raw is a non-null EVP_PKEY whose one reference we now own;
        // PKey frees it on drop. The key holds its own engine reference.
        Ok(unsafe { PKey::from_ptr(raw) })
    }

    /// Makes the engine the default implementation of every algorithm it offers (how QAT accelerates file keys).
    pub(crate) fn set_default(&self) -> Result<(), Error> {
        // SAFETY: self.ptr is an initialised engine.
        if unsafe { ENGINE_set_default(self.ptr.as_ptr(), ENGINE_METHOD_ALL) } != 1 {
            return Err(Error::OpensslEngine {
                engine: self.id.clone(),
                reason: format!("ENGINE_set_default failed: {}", ErrorStack::get()),
            });
        }
        Ok(())
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        // SAFETY: we own one structural reference (ENGINE_by_id) and, once
        // initialised, one functional reference (ENGINE_init); each is
        // released exactly once here. Keys loaded from the engine keep their own.
        unsafe {
            if self.release_functional {
                ENGINE_finish(self.ptr.as_ptr());
            }
            ENGINE_free(self.ptr.as_ptr());
        }
    }
}
