//! Reading files that hold secrets (private keys, PINs, ticket keys): refused when others can reach them.

use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use zeroize::Zeroizing;

use crate::Error;

/// Largest secret file read: keys, PINs and ticket-key lists are a few KiB at most, and a
/// bigger file is a mistake that must not be read into memory whole.
pub const MAX_SECRET_FILE: u64 = 1 << 20;

/// Reads a secret file whole into a zeroizing buffer, refusing loose permissions.
///
/// World access of any kind, or a group that may rewrite the file, is refused;
/// group read stays allowed for the Debian `ssl-cert` convention.
pub fn read_secret_file(path: &Path) -> Result<Zeroizing<Vec<u8>>, Error> {
    let io_err = |cause| Error::Io {
        path: path.to_owned(),
        cause,
    };
    let file = fs::File::open(path).map_err(io_err)?;
    let mode = file.metadata().map_err(io_err)?.permissions().mode() & 0o7777;
    if mode & 0o027 != 0 {
        return Err(Error::LoosePermissions {
            path: path.to_owned(),
            mode,
        });
    }
    let mut bytes = Zeroizing::new(Vec::new());
    file.take(MAX_SECRET_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(io_err)?;
    if bytes.len() as u64 > MAX_SECRET_FILE {
        return Err(Error::Io {
            path: path.to_owned(),
            cause: std::io::Error::new(
                std::io::ErrorKind::FileTooLarge,
                format!("larger than {MAX_SECRET_FILE} bytes; this is not a key file"),
            ),
        });
    }
    Ok(bytes)
}

/// Writes `text` to `dir/name` with exactly `mode` (the umask could clear bits): for tests.
#[cfg(test)]
pub(crate) fn write_with_mode(dir: &Path, name: &str, mode: u32, text: &str) -> std::path::PathBuf {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(name);
    let mut f = fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(mode)
        .open(&path)
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
    path
}
