//! Clearing a drive so that nothing on it is recognised any more.
//!
//! A regular file (a test image) is truncated and grown back. A block device gets a
//! marker at its start, middle and end; a discard is tried (secure, then plain, then
//! zeroing), and counts only if the markers are gone afterwards. When no discard clears
//! them, the first and last MiB (partition tables, their backups, and the signatures file
//! systems and RAID/LUKS keep there) are zeroed. A secure wipe then also writes zeros over
//! the whole device.

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, FileTypeExt};

use super::service::Machine;

const MARKER: &[u8] = b"INCUS";
const MIB: u64 = 1 << 20;

/// Where the markers go on a device of `size` bytes (overlapping ones left out).
fn marker_offsets(size: u64) -> Vec<u64> {
    let len = MARKER.len() as u64;
    if size < len {
        return Vec::new();
    }
    let mut out = vec![0];
    let middle = size / 2;
    if middle >= len {
        out.push(middle);
    }
    let end = size - len;
    if end >= middle + len {
        out.push(end);
    }
    out
}

fn markers_left(f: &File, offsets: &[u64]) -> std::io::Result<usize> {
    let mut found = 0;
    for &o in offsets {
        let mut buf = [0u8; 5];
        f.read_exact_at(&mut buf, o)?;
        if buf == MARKER {
            found += 1;
        }
    }
    Ok(found)
}

fn zero_range(f: &mut File, from: u64, len: u64) -> std::io::Result<()> {
    let chunk = vec![0u8; MIB as usize];
    f.seek(SeekFrom::Start(from))?;
    let mut left = len;
    while left > 0 {
        let n = left.min(MIB) as usize;
        f.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    Ok(())
}

/// Clears the drive at OS path `device` (read and written under the root prefix).
pub fn clear(m: &Machine, device: &str, secure: bool) -> Result<(), String> {
    let path = m.path(device);
    let io = |e: std::io::Error| format!("cannot wipe {device}: {e}");
    let mut f = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
    {
        Ok(f) => f,
        // Nothing there (a pulled disk): nothing to clear.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(e)),
    };
    let size = f.seek(SeekFrom::End(0)).map_err(io)?;
    let kind = f.metadata().map_err(io)?.file_type();
    if !kind.is_block_device() {
        f.set_len(0).and_then(|_| f.set_len(size)).map_err(io)?;
        return f.sync_all().map_err(io);
    }
    let offsets = marker_offsets(size);
    for &o in &offsets {
        f.write_all_at(MARKER, o).map_err(io)?;
    }
    f.sync_all().map_err(io)?;
    if markers_left(&f, &offsets).map_err(io)? != offsets.len() {
        return Err(format!(
            "cannot wipe {device}: the markers were not written"
        ));
    }
    let mut cleared = false;
    for argv in [
        ["blkdiscard", "-f", "-s", device].as_slice(),
        ["blkdiscard", "-f", device].as_slice(),
        ["blkdiscard", "-f", "-z", device].as_slice(),
    ] {
        if m.discard(argv) && markers_left(&f, &offsets).map_err(io)? == 0 {
            tracing::debug!(device, how = argv.join(" "), "drive discarded");
            cleared = true;
            break;
        }
    }
    if !cleared {
        let head = size.min(MIB);
        zero_range(&mut f, 0, head).map_err(io)?;
        let tail = size.saturating_sub(MIB).max(head);
        zero_range(&mut f, tail, size - tail).map_err(io)?;
        // The middle marker, if any, is just data now; clear it too.
        for &o in &offsets {
            f.write_all_at(&[0u8; 5], o).map_err(io)?;
        }
    }
    if secure {
        zero_range(&mut f, 0, size).map_err(io)?;
    }
    f.sync_all().map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_never_overlap() {
        assert_eq!(marker_offsets(4), Vec::<u64>::new());
        assert_eq!(marker_offsets(5), vec![0]);
        assert_eq!(marker_offsets(12), vec![0, 6]);
        assert_eq!(marker_offsets(15), vec![0, 7]);
        assert_eq!(marker_offsets(20), vec![0, 10, 15]);
        assert_eq!(marker_offsets(1 << 30), vec![0, 1 << 29, (1 << 30) - 5]);
    }
}
