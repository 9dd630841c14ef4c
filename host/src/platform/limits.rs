//! The process's open-file limit (`RLIMIT_NOFILE`).
//!
//! Every client connection holds a file descriptor. systemd starts services with a soft
//! limit of 1024 (the unit raises it with `LimitNOFILE=`); the daemon also raises its soft
//! limit to the hard one at start, and sizes its connection cap below what it ends up with.

use std::io;

fn get() -> io::Result<libc::rlimit> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit for the duration of the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(lim)
}

/// The current soft limit on open files (1024 if it cannot be read; "unlimited" counts as
/// `u64::MAX`).
pub fn open_files() -> u64 {
    get().map(|l| l.rlim_cur).unwrap_or(1024)
}

/// Raises the soft limit on open files to the hard limit; returns the soft limit in force
/// afterwards. A failure leaves the limit as it was (and is returned).
pub fn raise_open_files() -> io::Result<u64> {
    let mut lim = get()?;
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: `lim` is a valid rlimit; setrlimit only reads it.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(get()?.rlim_cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raising_reaches_the_hard_limit() {
        let hard = get().unwrap().rlim_max;
        assert_eq!(raise_open_files().unwrap(), hard);
        assert_eq!(open_files(), hard);
    }
}
