//! SHA-256 of image files, and the `sha256sum` sidecar format.

use std::fs::File;
use std::os::unix::fs::FileExt;

use sha2::{Digest, Sha256};

use crate::progress::{Progress, Unit};

const CHUNK: usize = 8 << 20;

/// Lower-case hex SHA-256 of the file at `path`, with progress: the one
/// whole-file hash of the workspace (build output, fixture, publication).
pub fn sha256_path(path: &std::path::Path, progress: &dyn Progress) -> std::io::Result<String> {
    let file = File::open(path)?;
    let size = file.metadata()?.len();
    sha256_file(&file, size, progress)
}

/// Lower-case hex SHA-256 of the first `size` bytes of `file`.
///
/// Holes (SEEK_DATA / SEEK_HOLE) are hashed as the zeros they read as,
/// without reading them: a read of a hole makes the kernel allocate and
/// zero page-cache pages, which cost more than the hash itself (a 4 GiB
/// image that is 90 % holes hashed in 12.6 s read, 3.3 s skipped; see
/// BENCHMARKS.md, "rebuild").
pub fn sha256_file(file: &File, size: u64, progress: &dyn Progress) -> std::io::Result<String> {
    let length = file.metadata()?.len();
    if length < size {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("file ended at byte {length} while {size} bytes were to be hashed"),
        ));
    }
    let data = crate::holes::data_ranges(file, size, 1)?;
    let mut data = data.iter().peekable();
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    // Never written: its pages stay the kernel's shared zero page.
    let zeros = vec![0u8; CHUNK];
    let mut offset = 0u64;
    progress.start("hashing", size, Unit::Bytes);
    while offset < size {
        if progress.cancelled() {
            progress.stop();
            return Err(std::io::Error::new(
                std::io::ErrorKind::Interrupted,
                format!("hashing stopped at byte {offset} of {size}: interrupted"),
            ));
        }
        while data.next_if(|&&(_, end)| end <= offset).is_some() {}
        let (in_data, until) = match data.peek() {
            Some(&&(start, end)) if start <= offset => (true, end),
            Some(&&(start, _)) => (false, start),
            None => (false, size),
        };
        let want = ((until.min(size) - offset) as usize).min(CHUNK);
        if in_data {
            read_exact_at(file, &mut buf[..want], offset)?;
            hasher.update(&buf[..want]);
        } else {
            hasher.update(&zeros[..want]);
        }
        offset += want as u64;
        progress.advance(want as u64);
    }
    progress.finish();
    Ok(hex(&hasher.finalize()))
}

/// `pread` until `buf` is full; a file that ends early is an `UnexpectedEof`
/// (it shrank since its size was read).
pub(crate) fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!(
                        "file ended at byte {} while reading {} bytes at offset {offset}",
                        offset + done as u64,
                        buf.len()
                    ),
                ))
            }
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// Raw SHA-256 digest of `data`.
pub(crate) fn digest(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// Base64 of the SHA-256 of `data`: the form S3 and EBS take checksums in.
pub(crate) fn base64_sha256(data: &[u8]) -> String {
    aws_smithy_types::base64::encode(digest(data))
}

/// One `sha256sum` line: `<hex>  <name>\n`.
pub(crate) fn sidecar_line(sha256_hex: &str, name: &str) -> String {
    format!("{sha256_hex}  {name}\n")
}

/// The digest of a `sha256sum` file's first line, if it has one.
pub(crate) fn parse_sidecar(text: &str) -> Option<String> {
    let first = text.lines().next()?.split_whitespace().next()?;
    let valid = first.len() == 64 && first.bytes().all(|b| b.is_ascii_hexdigit());
    valid.then(|| first.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::Quiet;
    use std::io::Write;

    #[test]
    fn sha256_file_matches_known_digest_across_chunk_boundaries() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        let data: Vec<u8> = (0..(CHUNK + 12345)).map(|i| (i % 251) as u8).collect();
        f.write_all(&data).unwrap();
        let got = sha256_file(f.as_file(), data.len() as u64, &Quiet).unwrap();
        assert_eq!(got, hex(&Sha256::digest(&data)));
        let empty = tempfile::NamedTempFile::new().unwrap();
        assert_eq!(
            sha256_file(empty.as_file(), 0, &Quiet).unwrap(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn sha256_file_reports_a_file_shorter_than_announced() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(b"short").unwrap();
        let err = sha256_file(f.as_file(), 10, &Quiet).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
        assert!(err.to_string().contains("file ended at byte 5"), "{err}");
    }

    #[test]
    fn holes_hash_as_the_zeros_they_read_as() {
        let f = tempfile::NamedTempFile::new().unwrap();
        let size = 3 * CHUNK as u64 + 4096 * 3 + 17;
        f.as_file().set_len(size).unwrap();
        let mut expected = vec![0u8; size as usize];
        // Data at the start, inside a chunk, across a chunk boundary, a
        // written run of zeros, and the last bytes; holes between them.
        for (at, len, byte) in [
            (0u64, 4096usize, 0x11u8),
            (CHUNK as u64 + 8192, 100, 0x22),
            (2 * CHUNK as u64 - 4096, 8192, 0x33),
            (2 * CHUNK as u64 + 65536, 4096, 0x00),
            (size - 5, 5, 0x44),
        ] {
            let bytes = vec![byte; len];
            std::os::unix::fs::FileExt::write_all_at(f.as_file(), &bytes, at).unwrap();
            expected[at as usize..at as usize + len].copy_from_slice(&bytes);
        }
        let whole = hex(&Sha256::digest(&expected));
        assert_eq!(sha256_file(f.as_file(), size, &Quiet).unwrap(), whole);
        // A prefix ending inside a hole, and one inside data.
        for prefix in [CHUNK as u64 + 4096, 2 * CHUNK as u64] {
            assert_eq!(
                sha256_file(f.as_file(), prefix, &Quiet).unwrap(),
                hex(&Sha256::digest(&expected[..prefix as usize])),
                "first {prefix} bytes"
            );
        }
    }

    #[test]
    fn sidecar_round_trips_in_sha256sum_format() {
        let sha = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let line = sidecar_line(sha, "postgres-ubuntu-2204-x64-1.raw");
        assert_eq!(line, format!("{sha}  postgres-ubuntu-2204-x64-1.raw\n"));
        assert_eq!(parse_sidecar(&line).as_deref(), Some(sha));
        assert_eq!(parse_sidecar(&sha.to_uppercase()).as_deref(), Some(sha));
        for bad in ["", "\n", "abc  file\n", &format!("{}  x", &sha[..63])] {
            assert_eq!(parse_sidecar(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn base64_sha256_is_what_s3_expects() {
        // `printf abc | openssl dgst -sha256 -binary | base64`
        assert_eq!(
            base64_sha256(b"abc"),
            "ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0="
        );
    }
}
