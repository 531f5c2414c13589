//! Where a sparse image file holds data: SEEK_DATA / SEEK_HOLE over its extents.

use std::fs::File;
use std::os::fd::AsRawFd;

/// Block-aligned `[start, end)` ranges that may hold data, from SEEK_DATA /
/// SEEK_HOLE: holes of a sparse image are never read. File systems without
/// hole reporting give one range over the whole file.
pub(crate) fn data_ranges(file: &File, size: u64, block: u64) -> std::io::Result<Vec<(u64, u64)>> {
    let fd = file.as_raw_fd();
    let end_of_file = size.div_ceil(block) * block;
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    let mut offset = 0u64;
    while offset < size {
        // SAFETY: lseek on a valid descriptor we own; reads go through pread,
        // so moving the file position does not disturb them.
        let data = unsafe { libc::lseek(fd, offset as libc::off_t, libc::SEEK_DATA) };
        if data < 0 {
            let err = std::io::Error::last_os_error();
            return match err.raw_os_error() {
                Some(libc::ENXIO) => Ok(ranges),
                Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) => Ok(vec![(0, end_of_file)]),
                _ => Err(err),
            };
        }
        let data = data as u64;
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data as libc::off_t, libc::SEEK_HOLE) };
        let hole = if hole < 0 {
            size
        } else {
            (hole as u64).min(size)
        };
        let start = data / block * block;
        let end = (hole.div_ceil(block) * block).min(end_of_file);
        match ranges.last_mut() {
            Some(last) if start <= last.1 => last.1 = last.1.max(end),
            _ => ranges.push((start, end)),
        }
        offset = hole.max(data + 1);
    }
    Ok(ranges)
}
