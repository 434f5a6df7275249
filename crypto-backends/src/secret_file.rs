//! Reading files that hold secrets (private keys, PINs, ticket keys): refused when others can reach them.

use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use zeroize::Zeroizing;

use crate::Error;

/// Reads a secret file whole into a zeroizing buffer, refusing loose permissions.
///
/// World access of any kind, or a group that may rewrite the file, is refused;
/// group read stays allowed for the Debian `ssl-cert` convention.
pub fn read_secret_file(path: &Path) -> Result<Zeroizing<Vec<u8>>, Error> {
    let io_err = |source| Error::Io {
        path: path.to_owned(),
        source,
    };
    let mut file = fs::File::open(path).map_err(io_err)?;
    let mode = file.metadata().map_err(io_err)?.permissions().mode() & 0o7777;
    if mode & 0o027 != 0 {
        return Err(Error::LoosePermissions {
            path: path.to_owned(),
            mode,
        });
    }
    let mut bytes = Zeroizing::new(Vec::new());
    file.read_to_end(&mut bytes).map_err(io_err)?;
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
