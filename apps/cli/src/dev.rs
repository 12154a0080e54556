//! A regular file or Linux block device used as one of the clone's devices:
//! positioned reads and writes (O_DIRECT where the file system or device
//! accepts it), `fdatasync` as the flush.

use anyhow::{bail, Context, Result};
use bdev_clone::DeviceInfo;
use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// Alignment of the buffers handed to O_DIRECT I/O (covers 512 and 4096-byte
/// logical blocks).
pub const ALIGN: usize = 4096;

/// Block size used for regular files when the user names none.
pub const DEFAULT_FILE_BLOCK_SIZE: u32 = 512;

pub struct FileDev {
    pub file: File,
    /// What the user typed (for messages).
    pub shown: String,
    /// The canonical path (for identities).
    pub canonical: PathBuf,
    pub block_size: u32,
    pub size: u64,
    pub direct: bool,
    pub dev_ino: (u64, u64),
}

/// How to open a device.
#[derive(Clone, Copy, Debug)]
pub struct OpenHow {
    pub write: bool,
    pub direct: bool,
    /// Block size asked for (None: 512 for files, the logical block size for
    /// block devices).
    pub block_size: Option<u32>,
}

fn logical_block_size(f: &File) -> io::Result<u32> {
    let mut bs: libc::c_int = 0;
    // SAFETY: BLKSSZGET writes one int through the pointer.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), libc::BLKSSZGET, &mut bs) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(bs as u32)
}

/// A zero-filled, `ALIGN`-aligned scratch buffer.
pub struct Aligned {
    raw: Vec<u8>,
    off: usize,
    len: usize,
}

impl Aligned {
    pub fn new(len: usize) -> Aligned {
        let raw = vec![0u8; len + ALIGN];
        let off = raw.as_ptr().align_offset(ALIGN);
        Aligned { raw, off, len }
    }
    pub fn capacity(&self) -> usize {
        self.raw.len() - ALIGN
    }
    pub fn set_len(&mut self, len: usize) {
        assert!(len <= self.capacity());
        self.len = len;
    }
    pub fn as_mut(&mut self) -> &mut [u8] {
        &mut self.raw[self.off..self.off + self.len]
    }
}

impl FileDev {
    /// Opens `path` as the `role` device ("source", "destination", "metadata").
    pub fn open(path: &Path, role: &str, how: OpenHow) -> Result<FileDev> {
        let shown = path.display().to_string();
        let md = std::fs::metadata(path).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                anyhow::anyhow!("{role} '{shown}' does not exist")
            } else {
                anyhow::anyhow!("{role} '{shown}': {e}")
            }
        })?;
        let ft = md.file_type();
        let is_block = ft.is_block_device();
        if !is_block && !ft.is_file() {
            bail!("{role} '{shown}' is neither a regular file nor a block device");
        }
        let canonical = std::fs::canonicalize(path).with_context(|| format!("{role} '{shown}'"))?;
        let open = |direct: bool| {
            let mut o = OpenOptions::new();
            o.read(true).write(how.write);
            if direct {
                o.custom_flags(libc::O_DIRECT);
            }
            o.open(path)
        };
        let mut direct = how.direct;
        let mut file = match open(direct) {
            Ok(f) => f,
            Err(e) if direct && e.raw_os_error() == Some(libc::EINVAL) => {
                direct = false;
                open(false).map_err(|e| anyhow::anyhow!("{role} '{shown}': {e}"))?
            }
            Err(e) => bail!("{role} '{shown}': {e}"),
        };
        let size = if is_block {
            file.seek(SeekFrom::End(0))
                .with_context(|| format!("{role} '{shown}': size"))?
        } else {
            md.len()
        };
        let block_size = if is_block {
            let lbs = logical_block_size(&file)
                .with_context(|| format!("{role} '{shown}': logical block size"))?;
            match how.block_size {
                Some(b) if b % lbs != 0 => bail!(
                    "block size {b} is not a multiple of the logical block size {lbs} of {role} \
                     '{shown}'"
                ),
                Some(b) => b,
                None => lbs,
            }
        } else {
            how.block_size.unwrap_or(DEFAULT_FILE_BLOCK_SIZE)
        };
        if !block_size.is_power_of_two() || block_size < 512 {
            bail!("block size {block_size} is not a power of two of at least 512");
        }
        if size % block_size as u64 != 0 {
            bail!(
                "{role} '{shown}' is {size} bytes, not a multiple of the block size {block_size}"
            );
        }
        if direct && size >= block_size as u64 {
            // Some file systems accept O_DIRECT at open and refuse the I/O
            // (or need a larger alignment than the block size): probe once.
            let mut probe = Aligned::new(block_size as usize);
            if let Err(e) = file.read_exact_at(probe.as_mut(), 0) {
                if e.raw_os_error() == Some(libc::EINVAL) {
                    direct = false;
                    file = open(false).map_err(|e| anyhow::anyhow!("{role} '{shown}': {e}"))?;
                } else {
                    bail!("{role} '{shown}': read failed: {e}");
                }
            }
        }
        Ok(FileDev {
            file,
            shown,
            canonical,
            block_size,
            size,
            direct,
            dev_ino: (md.dev(), md.ino()),
        })
    }

    pub fn info(&self) -> DeviceInfo {
        DeviceInfo {
            block_size: self.block_size,
            num_blocks: self.size / self.block_size as u64,
        }
    }

    /// True when both name the same file or device.
    pub fn same_as(&self, other: &FileDev) -> bool {
        self.dev_ino == other.dev_ino || self.canonical == other.canonical
    }

    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    pub fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(buf, offset)
    }

    /// The device's flush: data and what is needed to read it back durable.
    pub fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// Takes an advisory lock for the whole run (released when the process
    /// exits, also on SIGKILL).
    pub fn lock(&self, exclusive: bool) -> io::Result<bool> {
        let op = if exclusive {
            libc::LOCK_EX
        } else {
            libc::LOCK_SH
        } | libc::LOCK_NB;
        // SAFETY: plain syscall on an open descriptor.
        let r = unsafe { libc::flock(self.file.as_raw_fd(), op) };
        if r == 0 {
            return Ok(true);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            Ok(false)
        } else {
            Err(e)
        }
    }
}

/// The 16-byte identity recorded in the metadata for a device: FNV-1a 128 of
/// its canonical path. Stable across runs and Rust versions; a moved or
/// renamed image is a different device (pass --format to adopt it).
pub fn path_identity(canonical: &Path) -> [u8; 16] {
    use std::os::unix::ffi::OsStrExt;
    const OFFSET: u128 = 0x6c62272e07bb014262b821756295c58d;
    const PRIME: u128 = 0x0000000001000000000000000000013B;
    let mut h = OFFSET;
    for &b in b"bdev-clone path:"
        .iter()
        .chain(canonical.as_os_str().as_bytes())
    {
        h ^= b as u128;
        h = h.wrapping_mul(PRIME);
    }
    h.to_le_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_is_stable() {
        let a = path_identity(Path::new("/tmp/a.img"));
        assert_eq!(a, path_identity(Path::new("/tmp/a.img")));
        assert_ne!(a, path_identity(Path::new("/tmp/b.img")));
        assert_ne!(a, [0; 16]);
    }

    #[test]
    fn aligned_buffers() {
        let mut b = Aligned::new(1000);
        assert_eq!(b.as_mut().as_ptr() as usize % ALIGN, 0);
        assert_eq!(b.as_mut().len(), 1000);
    }
}
