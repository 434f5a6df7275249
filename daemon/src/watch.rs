//! Noticing that certificate, key, bundle or CRL files changed, without reading half-written ones.
//!
//! Polling `stat` once a second is cheap for a handful of files, works on every
//! filesystem (including bind mounts and Kubernetes-style symlink swaps), and
//! needs no extra dependency. A change is acted on only once the files have
//! looked the same for two polls in a row, so a writer that rewrites a file in
//! place is not caught halfway; if it still is, the reload fails validation,
//! the old identity keeps serving, and the next change triggers a new attempt.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::SystemTime;

/// What identifies one version of a file: modification time, size and inode.
type Stamp = Option<(SystemTime, u64, u64)>;

/// Watches a set of files for settled changes.
#[derive(Debug, Default)]
pub struct FileWatch {
    files: Vec<PathBuf>,
    /// The versions the running configuration was loaded from.
    applied: Vec<Stamp>,
    /// Versions seen at the previous poll that differ from `applied`.
    pending: Option<Vec<Stamp>>,
}

impl FileWatch {
    /// Watches `files`, taking their current versions as the loaded ones.
    pub fn new(files: Vec<PathBuf>) -> Self {
        let applied = stamps(&files);
        Self {
            files,
            applied,
            pending: None,
        }
    }

    /// The files watched.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// True once the files changed since they were loaded and then held still for one poll.
    pub fn poll(&mut self) -> bool {
        let now = stamps(&self.files);
        if now == self.applied {
            self.pending = None;
            return false;
        }
        if self.pending.as_ref() == Some(&now) {
            // Taken as loaded whether or not the reload succeeds: a broken file is retried
            // when it changes again, not every second.
            self.applied = now;
            self.pending = None;
            return true;
        }
        self.pending = Some(now);
        false
    }
}

fn stamps(files: &[PathBuf]) -> Vec<Stamp> {
    files
        .iter()
        .map(|f| {
            // Follow symlinks: an atomic symlink swap changes what the path names.
            let meta = std::fs::metadata(f).ok()?;
            Some((meta.modified().ok()?, meta.len(), meta.ino()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_counts_once_it_has_settled_and_only_once() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("svid.pem");
        std::fs::write(&file, "v1").unwrap();
        let mut watch = FileWatch::new(vec![file.clone()]);
        assert!(!watch.poll(), "nothing changed");

        std::fs::write(&file, "version two").unwrap();
        assert!(
            !watch.poll(),
            "first sight of a change: wait for it to settle"
        );
        assert!(watch.poll(), "unchanged since the last poll: act");
        assert!(!watch.poll(), "acted on already");
    }

    #[test]
    fn a_file_still_being_written_is_not_acted_on() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("svid.pem");
        std::fs::write(&file, "v1").unwrap();
        let mut watch = FileWatch::new(vec![file.clone()]);
        std::fs::write(&file, "half").unwrap();
        assert!(!watch.poll());
        std::fs::write(&file, "half and the rest").unwrap();
        assert!(!watch.poll(), "it changed again since the last poll");
        assert!(watch.poll());
    }

    #[test]
    fn an_atomic_rename_is_a_change_and_a_missing_file_is_one_too() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("svid.pem");
        std::fs::write(&file, "v1").unwrap();
        let mut watch = FileWatch::new(vec![file.clone()]);
        let tmp = dir.path().join("svid.pem.tmp");
        std::fs::write(&tmp, "v1").unwrap(); // same size and maybe same mtime: the inode differs
        std::fs::rename(&tmp, &file).unwrap();
        assert!(!watch.poll());
        assert!(watch.poll());
        std::fs::remove_file(&file).unwrap();
        assert!(!watch.poll());
        assert!(watch.poll());
    }
}
