//! The `disk.raw` tarball GCE imports: one GNU sparse member, gzip-compressed.
//!
//! GCE reads the image from a gzip'd tar holding exactly `disk.raw` and asks for
//! GNU tar's old sparse format (`tar --format=oldgnu -Sczf`,
//! <https://cloud.google.com/compute/docs/import/import-existing-image>), so the
//! holes of a multi-GiB image cost nothing to pack, upload or unpack. The `tar`
//! crate reads GNU sparse members but does not write them, so the headers are
//! written here, after GNU tar's `tar.h` (the "Basic Tar Format" chapter of the
//! GNU tar manual, <https://www.gnu.org/software/tar/manual/html_node/Standard.html>):
//!
//! - a 512-byte header of type `S` (GNUTYPE_SPARSE) with the `"ustar  \0"` magic
//!   of the old GNU format; `size` counts only the bytes stored; at offset 386
//!   the first 4 sparse entries (`offset[12]`, `numbytes[12]`), at 482
//!   `isextended`, at 483 `realsize[12]` (the file's apparent size);
//! - while `isextended`, 512-byte extension headers of 21 entries, each with its
//!   own `isextended` at 504;
//! - then the stored bytes of every entry, back to back, padded to 512.
//!
//! Numbers are octal; a value that does not fit (an offset or size of 8 GiB or
//! more) is written in GNU's base-256 form (high bit of the first byte set, the
//! value big-endian in the rest), as GNU tar does. A file ending in a hole gets a
//! last entry `(size, 0)`, as GNU tar writes it, so extraction restores the
//! length.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use flate2::write::GzEncoder;
use flate2::Compression;

use crate::hash::read_exact_at;
use crate::holes::data_ranges;
use crate::progress::{Progress, Unit};

/// The member name GCE requires.
pub const MEMBER: &str = "disk.raw";

const BLOCK: usize = 512;
/// GNU tar pads an archive to whole records of 20 blocks.
const RECORD: u64 = 20 * BLOCK as u64;
const IN_HEADER: usize = 4;
const IN_EXTENSION: usize = 21;

/// What was packed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packed {
    /// The image's apparent size.
    pub size: u64,
    /// Bytes stored in the tarball (the data ranges), before compression.
    pub stored: u64,
    /// Size of the `.tar.gz`.
    pub compressed: u64,
}

/// Writes `image` as `disk.raw` in a GNU sparse tar, gzip'd, to `out`.
/// Holes (SEEK_HOLE) are recorded as sparse; every allocated byte is stored,
/// zeros included. Setting `stop` makes it return `Interrupted` at the next MiB.
pub fn pack(
    image: &Path,
    out: &Path,
    progress: &dyn Progress,
    stop: &AtomicBool,
) -> io::Result<Packed> {
    let file = File::open(image)?;
    let meta = file.metadata()?;
    let size = meta.len();
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let entries = sparse_map(&file, size)?;
    let stored: u64 = entries.iter().map(|e| e.1).sum();

    let sink = io::BufWriter::with_capacity(1 << 20, File::create(out)?);
    let mut gz = GzEncoder::new(sink, Compression::default());
    for block in headers(&entries, size, stored, mtime) {
        gz.write_all(&block)?;
    }
    progress.start("packing", stored, Unit::Bytes);
    let mut buf = vec![0u8; 1 << 20];
    for &(offset, len) in &entries {
        let mut at = offset;
        while at < offset + len {
            if stop.load(Ordering::Relaxed) {
                return Err(io::Error::new(
                    io::ErrorKind::Interrupted,
                    "packing stopped",
                ));
            }
            let n = ((offset + len - at) as usize).min(buf.len());
            read_exact_at(&file, &mut buf[..n], at)?;
            gz.write_all(&buf[..n])?;
            at += n as u64;
            progress.advance(n as u64);
        }
    }
    let data_end = (BLOCK as u64) * (1 + extension_count(entries.len()) as u64) + stored;
    let padded = data_end.div_ceil(BLOCK as u64) * BLOCK as u64;
    // Two zero blocks end the archive; then zeros up to a whole record.
    let end = (padded + 2 * BLOCK as u64).div_ceil(RECORD) * RECORD;
    io::copy(&mut io::repeat(0).take(end - data_end), &mut gz)?;
    let mut sink = gz.finish()?;
    sink.flush()?;
    let compressed = sink.get_ref().metadata()?.len();
    sink.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    progress.finish();
    Ok(Packed {
        size,
        stored,
        compressed,
    })
}

/// `(offset, length)` of every data range, clamped to the file, with GNU tar's
/// closing `(size, 0)` entry when the file ends in a hole (or is all hole).
fn sparse_map(file: &File, size: u64) -> io::Result<Vec<(u64, u64)>> {
    let mut entries: Vec<(u64, u64)> = data_ranges(file, size, BLOCK as u64)?
        .into_iter()
        .filter_map(|(start, end)| {
            let end = end.min(size);
            (end > start).then_some((start, end - start))
        })
        .collect();
    if entries.last().is_none_or(|&(o, l)| o + l < size) {
        entries.push((size, 0));
    }
    Ok(entries)
}

fn extension_count(entries: usize) -> usize {
    entries.saturating_sub(IN_HEADER).div_ceil(IN_EXTENSION)
}

/// The member header and its extension headers, 512 bytes each.
fn headers(entries: &[(u64, u64)], size: u64, stored: u64, mtime: u64) -> Vec<[u8; BLOCK]> {
    let mut h = [0u8; BLOCK];
    h[..MEMBER.len()].copy_from_slice(MEMBER.as_bytes());
    number(&mut h[100..108], 0o644);
    number(&mut h[108..116], 0);
    number(&mut h[116..124], 0);
    number(&mut h[124..136], stored);
    number(&mut h[136..148], mtime);
    h[156] = b'S';
    h[257..265].copy_from_slice(b"ustar  \0");
    h[265..269].copy_from_slice(b"root");
    h[297..301].copy_from_slice(b"root");
    for (i, &(offset, len)) in entries.iter().take(IN_HEADER).enumerate() {
        let at = 386 + i * 24;
        number(&mut h[at..at + 12], offset);
        number(&mut h[at + 12..at + 24], len);
    }
    h[482] = u8::from(entries.len() > IN_HEADER);
    number(&mut h[483..495], size);
    // The checksum is taken with its own field as eight spaces; written as six
    // octal digits, NUL, space.
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());

    let mut blocks = vec![h];
    let rest = entries.get(IN_HEADER..).unwrap_or_default();
    let chunks: Vec<&[(u64, u64)]> = rest.chunks(IN_EXTENSION).collect();
    for (n, chunk) in chunks.iter().enumerate() {
        let mut x = [0u8; BLOCK];
        for (i, &(offset, len)) in chunk.iter().enumerate() {
            number(&mut x[i * 24..i * 24 + 12], offset);
            number(&mut x[i * 24 + 12..i * 24 + 24], len);
        }
        x[504] = u8::from(n + 1 < chunks.len());
        blocks.push(x);
    }
    blocks
}

/// A numeric field: octal digits and a NUL when they fit, else base-256.
fn number(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    if digits >= 22 || value < 1u64 << (3 * digits) {
        let text = format!("{value:0digits$o}");
        field[..digits].copy_from_slice(text.as_bytes());
        field[digits] = 0;
    } else {
        field.fill(0);
        field[0] = 0x80;
        let bytes = value.to_be_bytes();
        let n = bytes.len().min(field.len() - 1);
        let len = field.len();
        field[len - n..].copy_from_slice(&bytes[bytes.len() - n..]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::Quiet;
    use std::os::unix::fs::FileExt;

    #[test]
    fn numbers_are_octal_until_they_do_not_fit_then_base_256() {
        for (value, want) in [
            (0u64, b"00000000000\0".to_vec()),
            (0o644, b"00000000644\0".to_vec()),
            ((8 << 30) - 1, b"77777777777\0".to_vec()),
            (8 << 30, vec![0x80, 0, 0, 0, 0, 0, 0, 0x02, 0, 0, 0, 0]),
        ] {
            let mut f = [0xffu8; 12];
            number(&mut f, value);
            assert_eq!(f.to_vec(), want, "{value}");
        }
    }

    /// A sparse image: data at 0, zeros written (allocated) at 1 MiB, data at
    /// 3 MiB, and so many small data ranges that extension headers are needed;
    /// it ends in a hole.
    fn sparse_image(path: &Path) -> Vec<u8> {
        let f = File::create(path).unwrap();
        let size = 64u64 << 20;
        f.set_len(size).unwrap();
        f.write_all_at(&[0xab; 4096], 0).unwrap();
        f.write_all_at(&[0u8; 8192], 1 << 20).unwrap();
        f.write_all_at(b"the end of the third range", 3 << 20)
            .unwrap();
        for i in 0..40u64 {
            f.write_all_at(&[i as u8 + 1; 512], (8 << 20) + i * (64 << 10))
                .unwrap();
        }
        f.sync_all().unwrap();
        std::fs::read(path).unwrap()
    }

    /// [`sparse_image`] packed in a new folder: the folder, the image's
    /// content, the tarball, and what [`pack`] reported.
    fn packed_image() -> (tempfile::TempDir, Vec<u8>, std::path::PathBuf, Packed) {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("img.raw");
        let content = sparse_image(&image);
        let out = dir.path().join("img.tar.gz");
        let packed = pack(&image, &out, &Quiet, &AtomicBool::new(false)).unwrap();
        (dir, content, out, packed)
    }

    #[test]
    fn pack_writes_a_gnu_sparse_member_that_reads_back_as_the_image() {
        let (_dir, content, out, packed) = packed_image();
        assert_eq!(packed.size, 64 << 20);
        assert!(
            packed.stored < 1 << 20,
            "holes must not be stored: {packed:?}"
        );

        let mut tar_bytes = Vec::new();
        flate2::read::GzDecoder::new(File::open(&out).unwrap())
            .read_to_end(&mut tar_bytes)
            .unwrap();
        assert_eq!(tar_bytes.len() as u64 % RECORD, 0);
        assert_eq!(tar_bytes[156], b'S');
        assert_eq!(&tar_bytes[257..265], b"ustar  \0");

        let mut archive = tar::Archive::new(&tar_bytes[..]);
        let mut members = archive.entries().unwrap();
        let mut member = members.next().unwrap().unwrap();
        assert_eq!(member.path().unwrap().to_str(), Some(MEMBER));
        assert_eq!(member.header().entry_type(), tar::EntryType::GNUSparse);
        assert_eq!(member.size(), 64 << 20);
        let mut read = Vec::new();
        member.read_to_end(&mut read).unwrap();
        assert!(
            read == content,
            "the member's content differs from the image"
        );
        drop(member);
        assert!(members.next().is_none());
    }

    /// GNU tar is the format's reference: it must list the member with the
    /// image's size and extract it byte for byte, holes as holes.
    #[test]
    fn gnu_tar_extracts_the_member_as_the_image() {
        let (dir, content, out, _) = packed_image();
        let extract = dir.path().join("x");
        std::fs::create_dir(&extract).unwrap();
        let run = |args: &[&str]| {
            let o = std::process::Command::new("tar")
                .args(args)
                .current_dir(&extract)
                .output()
                .expect("running tar (GNU tar, Debian's essential package)");
            assert!(
                o.status.success(),
                "tar {args:?}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            String::from_utf8_lossy(&o.stdout).into_owned()
        };
        let listed = run(&["-tvzf", out.to_str().unwrap()]);
        assert!(
            listed.contains(&(64u64 << 20).to_string()) && listed.trim_end().ends_with(MEMBER),
            "{listed}"
        );
        run(&["-xSzf", out.to_str().unwrap()]);
        let extracted = extract.join(MEMBER);
        assert!(
            std::fs::read(&extracted).unwrap() == content,
            "GNU tar extracted something else"
        );
        use std::os::unix::fs::MetadataExt;
        let allocated = std::fs::metadata(&extracted).unwrap().blocks() * 512;
        assert!(
            allocated < 8 << 20,
            "extracted with {allocated} bytes allocated: holes were filled"
        );
    }

    /// Offsets and the real size past 8 GiB do not fit 11 octal digits and
    /// are written base-256; GNU tar must read them back.
    #[test]
    fn gnu_tar_reads_offsets_and_sizes_past_8_gib() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("big.raw");
        let f = File::create(&image).unwrap();
        let size = 9u64 << 30;
        f.set_len(size).unwrap();
        let far = (8u64 << 30) + (256 << 20);
        f.write_all_at(b"beyond eight gibibytes", far).unwrap();
        f.write_all_at(b"first", 0).unwrap();
        drop(f);
        let out = dir.path().join("big.tar.gz");
        let packed = pack(&image, &out, &Quiet, &AtomicBool::new(false)).unwrap();
        assert!(packed.stored <= 8192, "{packed:?}");
        let o = std::process::Command::new("tar")
            .args(["-xSzf", out.to_str().unwrap()])
            .current_dir(dir.path())
            .output()
            .expect("running tar");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let x = File::open(dir.path().join(MEMBER)).unwrap();
        assert_eq!(x.metadata().unwrap().len(), size);
        let mut buf = [0u8; 22];
        x.read_exact_at(&mut buf, far).unwrap();
        assert_eq!(&buf, b"beyond eight gibibytes");
        x.read_exact_at(&mut buf[..5], 0).unwrap();
        assert_eq!(&buf[..5], b"first");
    }

    #[test]
    fn an_all_hole_image_is_one_empty_entry_at_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("empty.raw");
        File::create(&image).unwrap().set_len(1 << 20).unwrap();
        let entries = sparse_map(&File::open(&image).unwrap(), 1 << 20).unwrap();
        assert_eq!(entries, [(1 << 20, 0)]);
    }
}
