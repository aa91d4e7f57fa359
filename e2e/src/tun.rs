//! TUN devices: one IP packet per read and per write (no packet-info
//! header), non-blocking, driven by tokio.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;

use tokio::io::unix::AsyncFd;

/// `struct ifreq` as TUNSETIFF reads it: a name and the flags.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Opens (creating) the TUN device `name` in the calling thread's network
/// namespace. The device lives while the file is open.
pub fn open(name: &str) -> std::io::Result<File> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(std::io::Error::other(format!(
            "TUN name {name:?} must be 1-15 bytes"
        )));
    }
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/dev/net/tun")?;
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    tunsetiff(&f, &mut req)?;
    Ok(f)
}

#[allow(unsafe_code)] // the TUNSETIFF ioctl has no safe wrapper; `req` is a live ifreq for the call.
fn tunsetiff(f: &File, req: &mut IfReq) -> std::io::Result<()> {
    // SAFETY: TUNSETIFF reads and writes one `struct ifreq`, which `req`
    // is (repr(C), 40 bytes), borrowed mutably for the duration.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), libc::TUNSETIFF, req as *mut IfReq) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// A TUN device's file, readable and writable from async code.
pub struct Tun {
    fd: AsyncFd<File>,
}

impl Tun {
    /// Wraps an opened device (inside a tokio runtime).
    #[allow(unsafe_code)] // AsyncFd::register is unsafe: the fd must stay open while registered.
    pub fn new(f: File) -> std::io::Result<Self> {
        // SAFETY: the File moves into the AsyncFd, which owns it until
        // dropped: its descriptor stays open and the same all that time.
        let fd = unsafe { AsyncFd::register(f) }.map_err(std::io::Error::from)?;
        Ok(Self { fd })
    }

    /// Reads one packet into `buf`; its length.
    pub async fn recv(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            let mut g = self.fd.readable().await?;
            match g.try_io(|f| f.get_ref().read(buf)) {
                Ok(r) => return r,
                Err(_would_block) => continue,
            }
        }
    }

    /// Writes one packet (the kernel takes it at once, or drops it).
    pub async fn send(&self, packet: &[u8]) -> std::io::Result<()> {
        loop {
            let mut g = self.fd.writable().await?;
            match g.try_io(|f| f.get_ref().write(packet)) {
                Ok(r) => return r.map(|_| ()),
                Err(_would_block) => continue,
            }
        }
    }
}
