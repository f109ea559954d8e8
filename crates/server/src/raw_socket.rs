//! A session's reads and writes as plain system calls.
//!
//! The standard library reaches `recv(2)` and `send(2)` through the C library's wrappers, which
//! are thread-cancellation points: each call switches asynchronous cancellation on and off
//! around the system call. polykv never cancels threads, and at one request per read and one
//! reply per write that switching was about 1 % of a request's CPU at depth 1. These go
//! through `syscall(2)` instead, which is not a cancellation point.

use std::io;
use std::os::fd::RawFd;

/// Receives into `buf` without blocking (the socket's readiness is tokio's to track). Ok(0) is
/// the peer's end of stream.
pub fn recv(fd: RawFd, buf: &mut [std::mem::MaybeUninit<u8>]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the duration of the call, and
    // the kernel writes at most that many; the address arguments are null, as recv(2) passes.
    let n = unsafe {
        libc::syscall(
            libc::SYS_recvfrom,
            fd,
            buf.as_mut_ptr(),
            buf.len(),
            libc::MSG_DONTWAIT,
            std::ptr::null_mut::<libc::sockaddr>(),
            std::ptr::null_mut::<libc::socklen_t>(),
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Sends from `buf` without blocking; a closed peer is an error (`EPIPE`), never a signal.
pub fn send(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for reads of `buf.len()` bytes for the duration of the call; the
    // address arguments are null, as send(2) passes.
    let n = unsafe {
        libc::syscall(
            libc::SYS_sendto,
            fd,
            buf.as_ptr(),
            buf.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            std::ptr::null::<libc::sockaddr>(),
            0 as libc::socklen_t,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsRawFd;

    #[test]
    fn sends_and_receives_over_a_socket_pair() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        assert_eq!(send(a.as_raw_fd(), b"hello").unwrap(), 5);
        let mut buf = [std::mem::MaybeUninit::uninit(); 16];
        let n = recv(b.as_raw_fd(), &mut buf).unwrap();
        // SAFETY: recv initialized the first `n` bytes.
        let got: Vec<u8> = buf[..n]
            .iter()
            .map(|b| unsafe { b.assume_init() })
            .collect();
        assert_eq!(got, b"hello");
        // Nothing more: the call would block, and says so instead.
        let err = recv(b.as_raw_fd(), &mut buf).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        // The peer gone: end of stream, and a send is an error rather than SIGPIPE.
        (&a).flush().unwrap();
        drop(a);
        assert_eq!(recv(b.as_raw_fd(), &mut buf).unwrap(), 0);
        assert!(send(b.as_raw_fd(), b"x").is_err());
    }
}
