//! The store's file discipline: private modes, no symlinks followed, directories synced.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use super::{StoreError, DIR_MODE, FILE_MODE};

/// Files of the store: created with [`FILE_MODE`], and never through a symlink (a link planted
/// at `journal.log` would otherwise have the daemon truncate and overwrite its target).
pub(super) fn private_file(options: &mut OpenOptions) -> &mut OpenOptions {
    options.mode(FILE_MODE).custom_flags(libc::O_NOFOLLOW)
}

/// Reads a whole file of the store without following a symlink.
pub(super) fn read_private(path: &Path) -> io::Result<Vec<u8>> {
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    let mut content = Vec::new();
    file.read_to_end(&mut content)?;
    Ok(content)
}

pub(super) fn remove_if_present(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The state directory must be a real directory (not a symlink), owned by the daemon's user and
/// writable by nobody else: whoever can write there can forge a key with a valid checksum.
pub(super) fn check_dir(dir: &Path) -> Result<(), StoreError> {
    let unsafe_dir = |cause: String| StoreError::Unsafe {
        dir: dir.to_path_buf(),
        cause,
    };
    let meta = fs::symlink_metadata(dir).map_err(io_err("reading", dir))?;
    if meta.file_type().is_symlink() {
        return Err(unsafe_dir("it is a symlink".into()));
    }
    if !meta.is_dir() {
        return Err(unsafe_dir("it is not a directory".into()));
    }
    let euid = nix::unistd::geteuid().as_raw();
    if meta.uid() != euid {
        return Err(unsafe_dir(format!(
            "it is owned by uid {}, not by the daemon's uid {euid}",
            meta.uid()
        )));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(unsafe_dir(format!(
            "its mode {mode:04o} lets other users write into it (chmod 0700 it)"
        )));
    }
    if mode & 0o077 != 0 {
        // Readable by others: the keys would leak. Narrow it rather than refuse a directory that
        // an older vxcd (or a umask 022 mkdir) created.
        fs::set_permissions(dir, fs::Permissions::from_mode(DIR_MODE))
            .map_err(io_err("setting the mode of", dir))?;
    }
    Ok(())
}

pub(super) fn io_err<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

pub(super) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("syncing directory", dir))
}
