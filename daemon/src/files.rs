//! Writing files so that readers only ever see the old or the new contents.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Writes a sibling temp file with `mode` from the start, syncs it, then renames it over `path`.
///
/// The file never exists with looser permissions than `mode`, and a crash
/// leaves either the previous file or the new one, never a partial write.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    Staged::write(path, contents, mode)?.commit()
}

/// New contents written and synced to a temp file beside `path`, not yet renamed over it.
///
/// Staging every file of a set first (a certificate and its key) means the
/// likely failures (missing directory, permissions, full disk) happen before
/// any of them is replaced; dropping an uncommitted `Staged` removes its temp file.
#[derive(Debug)]
pub struct Staged {
    tmp: PathBuf,
    path: PathBuf,
    committed: bool,
}

impl Staged {
    /// Writes `contents` with `mode` to a temp file in `path`'s directory and syncs it.
    pub fn write(path: &Path, contents: &[u8], mode: u32) -> io::Result<Self> {
        // The whole file name plus a suffix, not a replaced extension: `web.pem` and
        // `web.key` staged together must not share a temp file.
        let mut name = path.file_name().unwrap_or_default().to_owned();
        name.push(format!(".tmp.{}", std::process::id()));
        let staged = Self {
            tmp: path.with_file_name(name),
            path: path.to_owned(),
            committed: false,
        };
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&staged.tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
        Ok(staged)
    }

    /// Renames the temp file over the target path.
    pub fn commit(mut self) -> io::Result<()> {
        fs::rename(&self.tmp, &self.path)?;
        self.committed = true;
        Ok(())
    }

    /// The file this will replace.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.committed {
            // Best effort: a leftover temp file is harmless, and the error being reported matters more.
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_staged_file_replaces_its_target_only_when_committed() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("web.pem"), dir.path().join("web.key"));
        fs::write(&cert, "old").unwrap();
        // Same stem, staged side by side: their temp files must not collide.
        let staged_cert = Staged::write(&cert, b"new", 0o644).unwrap();
        let staged_key = Staged::write(&key, b"key", 0o600).unwrap();
        assert_eq!(fs::read_to_string(&cert).unwrap(), "old");
        drop(staged_key);
        staged_cert.commit().unwrap();
        assert_eq!(fs::read_to_string(&cert).unwrap(), "new");
        assert!(!key.exists());
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "no temp file is left behind");
        assert!(Staged::write(&dir.path().join("missing/web.pem"), b"x", 0o644).is_err());
    }
}
