//! The [`Validator`]: walks the raw config into typed values, collecting every located
//! problem instead of stopping at the first; the checks its sections share live here.

mod crypto;
mod files;
mod http;
mod identity;
mod listeners;

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::error::{Locator, Problem};
use super::raw::{RawAdmin, RawAudit, RawConfig, RawResumption, S};
use super::{
    AdminConfig, AuditConfig, Config, FsyncPolicy, Limits, MAX_SESSION_CACHE, OnFull,
    ResumptionConfig, format_duration, parse_duration,
};
use crate::proxy::live::RecheckMode;

/// Validates a parsed file: the typed config, or every problem found in it. With
/// `check_files`, every file it names must also be readable as the daemon will read it.
pub(super) fn validate(
    loc: Locator<'_>,
    raw: RawConfig,
    check_files: bool,
) -> Result<Config, Vec<Problem>> {
    let mut v = Validator {
        loc,
        problems: Vec::new(),
        check_files,
        workload_socket: None,
    };
    match v.config(raw) {
        Some(config) if v.problems.is_empty() => Ok(config),
        _ => Err(v.problems),
    }
}

/// Walks the raw config, collecting every problem instead of stopping at the first.
///
/// Each section's method returns `None` when that section is unusable; its problems are
/// already recorded, so callers just stop building on it.
struct Validator<'a> {
    loc: Locator<'a>,
    problems: Vec<Problem>,
    /// Whether files named by the config are opened too (`mtlsd check`), or only their paths
    /// validated (start and reload, which read them right after anyway).
    check_files: bool,
    /// The Workload API address JWT-SVID issuers use unless they name one: `identity.socket`,
    /// else `SPIFFE_ENDPOINT_SOCKET`.
    workload_socket: Option<String>,
}

impl Validator<'_> {
    /// Records a problem at the span of `at`.
    fn report<T>(&mut self, at: &S<T>, key: &str, message: impl Into<String>) {
        self.report_at(at.span(), key, message);
    }

    /// Records a problem at `span`.
    fn report_at(&mut self, span: Range<usize>, key: &str, message: impl Into<String>) {
        let p = self.loc.problem(span, key, message);
        self.problems.push(p);
    }

    /// Runs `parse` on a spanned value, reporting a failure under `key`.
    fn check<T, U, E: ToString>(
        &mut self,
        value: &S<T>,
        key: &str,
        parse: impl FnOnce(&T) -> Result<U, E>,
    ) -> Option<U> {
        match parse(value.get_ref()) {
            Ok(v) => Some(v),
            Err(e) => {
                self.report(value, key, e.to_string());
                None
            }
        }
    }

    /// [`check`](Self::check) for an optional key: `Some(None)` when it is absent.
    fn check_opt<T, U, E: ToString>(
        &mut self,
        value: &Option<S<T>>,
        key: &str,
        parse: impl FnOnce(&T) -> Result<U, E>,
    ) -> Option<Option<U>> {
        match value {
            None => Some(None),
            Some(v) => self.check(v, key, parse).map(Some),
        }
    }

    /// [`check`](Self::check) for an optional key that falls back to `default`.
    fn check_or<T, U, E: ToString>(
        &mut self,
        value: &Option<S<T>>,
        key: &str,
        default: U,
        parse: impl FnOnce(&T) -> Result<U, E>,
    ) -> Option<U> {
        self.check_opt(value, key, parse)
            .map(|v| v.unwrap_or(default))
    }

    /// An optional file or directory path, which must not be empty if given.
    fn opt_path(&mut self, value: &Option<S<String>>, key: &str) -> Option<Option<PathBuf>> {
        self.check_opt(value, key, |p| non_empty(p).map(PathBuf::from))
    }

    fn config(&mut self, raw: RawConfig) -> Option<Config> {
        self.workload_socket = raw
            .identity
            .get_ref()
            .socket
            .as_ref()
            .map(|s| s.get_ref().clone())
            .or_else(|| std::env::var("SPIFFE_ENDPOINT_SOCKET").ok());
        let identity = self.identity(&raw.identity);
        let crypto = self.crypto(&raw.crypto);
        let defaults = self.limits(&raw.limits, Limits::default(), "limits");
        let shutdown_grace = self.check_or(
            &raw.shutdown.grace,
            "shutdown.grace",
            Duration::from_secs(30),
            |s| parse_duration(s),
        );
        let (inbound, outbound) = self.listeners(&raw, defaults.unwrap_or_default());
        let admin = match &raw.admin {
            None => Some(None),
            Some(a) => self.admin(a.get_ref()).map(Some),
        };
        let resumption = self.resumption(&raw.resumption);
        let recheck =
            self.check_or(
                &raw.recheck.mode,
                "recheck.mode",
                RecheckMode::Close,
                |m| match m.as_str() {
                    "close" => Ok(RecheckMode::Close),
                    "dry_run" => Ok(RecheckMode::DryRun),
                    "off" => Ok(RecheckMode::Off),
                    other => Err(format!(
                        "unknown mode {other:?}; expected \"close\", \"dry_run\" or \"off\""
                    )),
                },
            );

        let audit = match &raw.audit {
            None => Some(None),
            Some(a) => self.audit(a.get_ref()).map(Some),
        };

        Some(Config {
            identity: identity?,
            crypto: crypto?,
            inbound,
            outbound,
            shutdown_grace: shutdown_grace?,
            admin: admin?,
            resumption: resumption?,
            recheck: recheck?,
            audit: audit?,
        })
    }

    fn resumption(&mut self, raw: &RawResumption) -> Option<ResumptionConfig> {
        let defaults = ResumptionConfig::default();
        let ticket_key_file = self.opt_path(&raw.ticket_key_file, "resumption.ticket_key_file");
        if let (Some(Some(path)), Some(at)) = (&ticket_key_file, &raw.ticket_key_file) {
            self.secret_file(at.span(), "resumption.ticket_key_file", path);
        }
        let ticket_rotation = self.check_or(
            &raw.ticket_rotation,
            "resumption.ticket_rotation",
            defaults.ticket_rotation,
            |s| duration_at_least(s, Duration::from_secs(1)),
        );
        let session_cache_size = self.check_or(
            &raw.session_cache_size,
            "resumption.session_cache_size",
            defaults.session_cache_size,
            |n| count_up_to(n, MAX_SESSION_CACHE),
        );
        Some(ResumptionConfig {
            ticket_key_file: ticket_key_file?,
            ticket_rotation: ticket_rotation?,
            session_cache_size: session_cache_size?,
        })
    }

    fn audit(&mut self, raw: &RawAudit) -> Option<AuditConfig> {
        let file = self.check(&raw.file, "audit.file", |p| non_empty(p).map(PathBuf::from));
        let on_full = self.check_or(&raw.on_full, "audit.on_full", OnFull::Block, |v| {
            match v.as_str() {
                "block" => Ok(OnFull::Block),
                "drop" => Ok(OnFull::Drop),
                other => Err(format!(
                    "unknown on_full {other:?}; expected \"block\" (nothing is lost) or \"drop\" (never wait)"
                )),
            }
        });
        let queue = self.check_or(&raw.queue, "audit.queue", 65_536, |n| {
            count_up_to(n, 10_000_000)
        });
        let fsync = self.check_or(
            &raw.fsync,
            "audit.fsync",
            FsyncPolicy::Interval,
            |v| match v.as_str() {
                "every_record" => Ok(FsyncPolicy::EveryRecord),
                "interval" => Ok(FsyncPolicy::Interval),
                "never" => Ok(FsyncPolicy::Never),
                other => Err(format!(
                    "unknown fsync {other:?}; expected \"every_record\", \"interval\" or \"never\""
                )),
            },
        );
        let fsync_interval = self.check_or(
            &raw.fsync_interval,
            "audit.fsync_interval",
            Duration::from_secs(1),
            |s| nonzero_duration(s),
        );
        let rotate_bytes = self.check_or(&raw.rotate_bytes, "audit.rotate_bytes", 100 << 20, |n| {
            u64::try_from(*n).map_err(|_| "must be 0 (never) or a size in bytes".to_owned())
        });
        let keep = self.check_or(&raw.keep, "audit.keep", 10, |n| count_up_to(n, 1000));
        let journal = self.check_or(&raw.journal, "audit.journal", false, |b| {
            Ok::<_, String>(*b)
        });
        if let Some(raw_journal) = &raw.journal
            && journal == Some(true)
            && self.check_files
            && !Path::new(crate::audit::journal::SOCKET).exists()
        {
            self.report(
                raw_journal,
                "audit.journal",
                format!(
                    "no journald socket at {}: is systemd-journald running?",
                    crate::audit::journal::SOCKET
                ),
            );
        }
        if let Some(file) = &file
            && let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty())
            && self.check_files
            && !dir.is_dir()
        {
            self.report(
                &raw.file,
                "audit.file",
                format!("{} is not a directory", dir.display()),
            );
        }
        Some(AuditConfig {
            file: file?,
            on_full: on_full?,
            queue: queue?,
            fsync: fsync?,
            fsync_interval: fsync_interval?,
            rotate_bytes: rotate_bytes?,
            keep: keep?,
            journal: journal?,
        })
    }

    fn admin(&mut self, raw: &RawAdmin) -> Option<AdminConfig> {
        let listen = self.listen(&raw.listen, "admin")?;
        if !listen.ip().is_loopback() {
            self.report(
                &raw.listen,
                "admin.listen",
                format!(
                    "{listen} is not a loopback address; the admin endpoint is unauthenticated \
                     and only listens on 127.0.0.0/8 or ::1"
                ),
            );
            return None;
        }
        Some(AdminConfig { listen })
    }
}

/// A path, key reference or name that must not be the empty string.
fn non_empty(s: &str) -> Result<&str, &'static str> {
    if s.is_empty() {
        Err("must not be empty")
    } else {
        Ok(s)
    }
}

/// Checks that a count from the file is between 1 and `max`: every count sizes a table, a
/// semaphore or a pool, so a huge one must be refused here rather than fail to allocate.
fn count_up_to(n: &i64, max: usize) -> Result<usize, String> {
    usize::try_from(*n)
        .ok()
        .filter(|n| (1..=max).contains(n))
        .ok_or_else(|| format!("must be a whole number from 1 to {max}"))
}

/// A duration of at least `min`, for periods that cannot be arbitrarily short.
fn duration_at_least(s: &str, min: Duration) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < min {
        return Err(format!("must be at least {}", format_duration(min)));
    }
    Ok(d)
}

/// A duration longer than zero, for timeouts (zero would fail every connection at once).
fn nonzero_duration(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() {
        return Err("must be longer than zero".into());
    }
    Ok(d)
}
