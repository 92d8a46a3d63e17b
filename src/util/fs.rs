//! Files as qwm reads and writes them.
//!
//! Inputs are read only from regular files, checked on the opened descriptor (not the path, which
//! can change in between), and opened without blocking, so a FIFO or device named as a manifest,
//! a config or a report is refused at once instead of hanging the run; each read has a size
//! bound. Outputs go to a fresh temporary file created exclusively (`O_EXCL`, a random name) in
//! the destination's folder and are then renamed over the destination: a symlink planted at the
//! destination or at a predictable temporary name is replaced, never written through, and a
//! failed write leaves the old file whole.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;

/// Size bound of the text files qwm reads (manifests, configs, reports, results).
pub const MAX_TEXT_BYTES: u64 = 256 << 20;

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

/// Open `path` for reading if it is a regular file (symlinks to one are followed); anything else
/// (a FIFO, a socket, a device, a folder) is an error, and opening it never blocks.
pub fn open_regular(path: &Path) -> io::Result<File> {
    let mut opts = std::fs::OpenOptions::new();
    opts.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // Opening a FIFO for reading blocks until a writer comes; O_NONBLOCK returns at once
        // (and changes nothing for the regular files that pass the check below).
        opts.custom_flags(libc::O_NONBLOCK);
    }
    let file = opts.open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        let kind = if meta.is_dir() {
            "a folder"
        } else {
            "not a regular file (a FIFO, socket or device)"
        };
        return Err(invalid(format!("is {kind}")));
    }
    Ok(file)
}

/// The bytes of a regular file of at most `max` bytes.
pub fn read_regular(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    let file = open_regular(path)?;
    let len = file.metadata()?.len();
    if len > max {
        return Err(invalid(format!(
            "is {len} bytes, more than the {max} bytes qwm reads from such a file"
        )));
    }
    let mut out = Vec::with_capacity(len as usize);
    // A file that grows while being read is cut at the bound plus one byte, then refused.
    file.take(max + 1).read_to_end(&mut out)?;
    if out.len() as u64 > max {
        return Err(invalid(format!("grew past {max} bytes while being read")));
    }
    Ok(out)
}

/// The UTF-8 text of a regular file of at most [`MAX_TEXT_BYTES`].
pub fn read_text(path: &Path) -> io::Result<String> {
    String::from_utf8(read_regular(path, MAX_TEXT_BYTES)?)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "is not UTF-8 text"))
}

/// The folder a file named `path` lives in (`.` for a bare name).
fn folder(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Write `bytes` to `path` through a fresh temporary file in the same folder, renamed over
/// `path` once complete (see the module docs).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut tmp = tempfile::Builder::new()
        .prefix(".qwm-")
        .suffix(".tmp")
        .tempfile_in(folder(path))?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_data()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Fail now, not after hours of work, when no file can be written in `path`'s folder (creates
/// and removes one temporary file there; `path` itself is not touched).
pub fn check_writable(path: &Path) -> io::Result<()> {
    tempfile::Builder::new()
        .prefix(".qwm-")
        .suffix(".tmp")
        .tempfile_in(folder(path))
        .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_are_read_and_within_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("a.txt");
        std::fs::write(&f, "hello").unwrap();
        assert_eq!(read_text(&f).unwrap(), "hello");
        assert!(read_regular(&f, 4)
            .unwrap_err()
            .to_string()
            .contains("5 bytes"));
        assert!(read_text(dir.path())
            .unwrap_err()
            .to_string()
            .contains("folder"));
        #[cfg(unix)]
        {
            let fifo = dir.path().join("fifo");
            let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
            // SAFETY: a valid NUL-terminated path; mkfifo only creates the node.
            assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
            let e = read_text(&fifo).unwrap_err();
            assert!(e.to_string().contains("not a regular file"), "{e}");
        }
    }

    #[test]
    fn writes_replace_planted_symlinks_instead_of_following_them() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "keep").unwrap();
        let out = dir.path().join("out.json");
        #[cfg(unix)]
        std::os::unix::fs::symlink(&victim, &out).unwrap();
        write_atomic(&out, b"new").unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "new");
        check_writable(&out).unwrap();
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "new");
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 2);
        assert!(check_writable(&dir.path().join("no/such/folder/x")).is_err());
    }
}
