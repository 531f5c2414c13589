//! Makes the working copy of a base image: a reflink where the file system can, else a copy that keeps holes.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum WorkCopyError {
    #[error("opening {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("creating {path} (it must not exist yet): {source}")]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("copying {from} to {to}: {source}")]
    Copy {
        from: PathBuf,
        to: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// How the copy was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyMethod {
    /// `FICLONE`: shares the base's blocks (btrfs, XFS); instant.
    Reflink,
    /// Data ranges found with `SEEK_DATA`/`SEEK_HOLE` copied, holes kept.
    Sparse,
}

/// Copies `base` to the new file `dst` without ever writing to `base`
/// (opened read-only). `dst` must not exist; it is removed again on failure.
/// Not synced: a work copy is read back through the same page cache (the
/// loop device uses it too) and thrown away after a crash; a caller that
/// keeps the copy across crashes syncs it.
pub fn copy(base: &Path, dst: &Path) -> Result<CopyMethod, WorkCopyError> {
    let src = File::open(base).map_err(|source| WorkCopyError::Open {
        path: base.to_path_buf(),
        source,
    })?;
    let out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dst)
        .map_err(|source| WorkCopyError::Create {
            path: dst.to_path_buf(),
            source,
        })?;
    let result =
        reflink(&src, &out).or_else(|_| sparse_copy(&src, &out).map(|()| CopyMethod::Sparse));
    result.map_err(|source| {
        let _ = std::fs::remove_file(dst);
        WorkCopyError::Copy {
            from: base.to_path_buf(),
            to: dst.to_path_buf(),
            source,
        }
    })
}

fn reflink(src: &File, dst: &File) -> io::Result<CopyMethod> {
    // SAFETY: FICLONE takes the source fd as its integer argument.
    let rc = unsafe { libc::ioctl(dst.as_raw_fd(), libc::FICLONE as _, src.as_raw_fd()) };
    if rc == 0 {
        Ok(CopyMethod::Reflink)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Copies each data range and leaves the holes between them unwritten; the
/// final `set_len` recreates a trailing hole.
fn sparse_copy(src: &File, dst: &File) -> io::Result<()> {
    let len = src.metadata()?.len();
    let mut pos = 0;
    while pos < len {
        let Some(data) = seek_data(src, pos, libc::SEEK_DATA)? else {
            break;
        };
        let hole = seek_data(src, data, libc::SEEK_HOLE)?.unwrap_or(len);
        copy_range(src, dst, data, hole - data)?;
        pos = hole;
    }
    dst.set_len(len)
}

/// `lseek` with SEEK_DATA / SEEK_HOLE; `None` when there is no more data
/// (ENXIO). File systems without hole support report one data range.
fn seek_data(file: &File, from: u64, whence: libc::c_int) -> io::Result<Option<u64>> {
    // SAFETY: lseek on an fd we own; no memory is passed.
    let off = unsafe { libc::lseek(file.as_raw_fd(), from as libc::off_t, whence) };
    if off >= 0 {
        return Ok(Some(off as u64));
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::ENXIO) {
        Ok(None)
    } else {
        Err(err)
    }
}

fn copy_range(mut src: &File, mut dst: &File, offset: u64, len: u64) -> io::Result<()> {
    src.seek(SeekFrom::Start(offset))?;
    dst.seek(SeekFrom::Start(offset))?;
    // std turns this into copy_file_range where the kernel allows it.
    let copied = io::copy(&mut src.take(len), &mut dst)?;
    if copied != len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("source shrank while copying: {copied} of {len} bytes at {offset}"),
        ));
    }
    Ok(())
}

/// Bytes actually allocated on disk for `path` (`st_blocks` × 512).
pub fn allocated_size(path: &Path) -> io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::metadata(path)?.blocks() * 512)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const MIB: u64 = 1 << 20;

    /// A 64 MiB file with data at 1 MiB and 40 MiB and holes elsewhere.
    fn sparse_file(path: &Path) -> Vec<(u64, Vec<u8>)> {
        let f = File::create(path).unwrap();
        f.set_len(64 * MIB).unwrap();
        let chunks = vec![(MIB, vec![0xA5; 256 * 1024]), (40 * MIB, vec![0x5A; 4096])];
        for (at, bytes) in &chunks {
            let mut f = &f;
            f.seek(SeekFrom::Start(*at)).unwrap();
            f.write_all(bytes).unwrap();
        }
        f.sync_all().unwrap();
        chunks
    }

    #[test]
    fn copy_keeps_content_and_holes_and_never_touches_base() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.raw");
        let chunks = sparse_file(&base);
        let base_bytes = std::fs::read(&base).unwrap();
        let base_mtime = std::fs::metadata(&base).unwrap().modified().unwrap();
        let dst = dir.path().join("work.raw");

        copy(&base, &dst).unwrap();

        let copied = std::fs::read(&dst).unwrap();
        assert_eq!(copied.len() as u64, 64 * MIB);
        assert!(copied == base_bytes, "content differs");
        for (at, bytes) in chunks {
            assert_eq!(&copied[at as usize..at as usize + bytes.len()], &bytes[..]);
        }
        assert!(
            allocated_size(&dst).unwrap() < 4 * MIB,
            "holes lost: {} bytes allocated",
            allocated_size(&dst).unwrap()
        );
        assert_eq!(std::fs::read(&base).unwrap(), base_bytes);
        assert_eq!(
            std::fs::metadata(&base).unwrap().modified().unwrap(),
            base_mtime
        );
    }

    #[test]
    fn existing_destination_is_refused_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.raw");
        sparse_file(&base);
        let dst = dir.path().join("work.raw");
        std::fs::write(&dst, b"precious").unwrap();
        let err = copy(&base, &dst).unwrap_err();
        assert!(matches!(err, WorkCopyError::Create { .. }), "{err}");
        assert_eq!(std::fs::read(&dst).unwrap(), b"precious");
        // The base itself as destination: refused the same way.
        assert!(copy(&base, &base).is_err());
        assert_eq!(std::fs::metadata(&base).unwrap().len(), 64 * MIB);
    }

    #[test]
    fn trailing_hole_and_empty_file() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("empty.raw");
        File::create(&base).unwrap().set_len(8 * MIB).unwrap();
        let dst = dir.path().join("copy.raw");
        assert_eq!(copy(&base, &dst).unwrap(), CopyMethod::Sparse);
        assert_eq!(std::fs::metadata(&dst).unwrap().len(), 8 * MIB);
        assert_eq!(allocated_size(&dst).unwrap(), 0);
    }
}
