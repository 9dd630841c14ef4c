//! sd_notify: telling systemd about the daemon's state (`Type=notify`).
#![allow(unsafe_code)] // audited: sd_notify barrier: pipe2, sendmsg with SCM_RIGHTS and poll, each block with a SAFETY comment

use std::time::Duration;

/// The notify socket systemd gave us, connected; `None` when not started by systemd.
fn notify_socket() -> Option<std::os::unix::net::UnixDatagram> {
    let path = std::env::var_os("NOTIFY_SOCKET")?;
    let sock = match std::os::unix::net::UnixDatagram::unbound() {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "sd_notify: no socket");
            return None;
        }
    };
    let bytes = path.as_encoded_bytes();
    let connected = if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name)
            .and_then(|addr| sock.connect_addr(&addr))
    } else {
        sock.connect(&path)
    };
    match connected {
        Ok(()) => Some(sock),
        Err(e) => {
            tracing::warn!(error = %e, "sd_notify: cannot reach systemd");
            None
        }
    }
}

/// Tells systemd about our state (`Type=notify`), when started by it.
pub fn notify_systemd(state: &str) {
    if let Some(sock) = notify_socket() {
        if let Err(e) = sock.send(state.as_bytes()) {
            tracing::warn!(error = %e, "sd_notify failed");
        }
    }
}

/// Waits until systemd has processed every notification sent before (sd_notify's barrier:
/// `BARRIER=1` with the write end of a pipe, which systemd closes once it got there).
pub fn notify_barrier(timeout: Duration) {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let Some(sock) = notify_socket() else { return };
    let mut fds = [0i32; 2];
    // SAFETY: pipe2 fills two new descriptors, which we own from here on.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return tracing::warn!("sd_notify barrier: no pipe");
    }
    // SAFETY: both descriptors were just created and are not owned elsewhere.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let msg = b"BARRIER=1";
    let fd = write_end.as_raw_fd();
    // SAFETY: a sendmsg with one iovec over `msg` and one SCM_RIGHTS control message
    // carrying `fd`, in a buffer sized with CMSG_SPACE; every pointer outlives the call.
    let sent = unsafe {
        let mut iov = libc::iovec {
            iov_base: msg.as_ptr() as *mut libc::c_void,
            iov_len: msg.len(),
        };
        let space = libc::CMSG_SPACE(std::mem::size_of::<i32>() as u32) as usize;
        let mut control = vec![0u8; space];
        let mut hdr: libc::msghdr = std::mem::zeroed();
        hdr.msg_iov = &mut iov;
        hdr.msg_iovlen = 1;
        hdr.msg_control = control.as_mut_ptr() as *mut libc::c_void;
        hdr.msg_controllen = space as _;
        let cmsg = libc::CMSG_FIRSTHDR(&hdr);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<i32>() as u32) as _;
        std::ptr::copy_nonoverlapping(&fd, libc::CMSG_DATA(cmsg) as *mut i32, 1);
        libc::sendmsg(sock.as_raw_fd(), &hdr, libc::MSG_NOSIGNAL)
    };
    drop(write_end);
    if sent < 0 {
        return tracing::warn!("sd_notify barrier: {}", std::io::Error::last_os_error());
    }
    let mut pfd = libc::pollfd {
        fd: read_end.as_raw_fd(),
        events: 0,
        revents: 0,
    };
    // SAFETY: one valid pollfd; POLLHUP arrives once systemd closed its copy of the pipe.
    let n = unsafe {
        libc::poll(
            &mut pfd,
            1,
            timeout.as_millis().min(i32::MAX as u128) as i32,
        )
    };
    if n <= 0 {
        tracing::warn!("sd_notify barrier: systemd did not answer in time");
    }
}
