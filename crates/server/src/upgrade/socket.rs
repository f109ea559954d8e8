//! The handover socket: a Unix stream socket in the data directory, mode 0600, that accepts
//! only a peer of the same user (checked with SO_PEERCRED). Frames (see `wire`) carry at most
//! [`MAX_FDS`] file descriptors each, passed with SCM_RIGHTS. Blocking I/O with timeouts: the
//! conversation is short and runs on a blocking thread.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::Duration;

use super::wire::{self, Message, HEADER_LEN, MAX_FDS};

/// Control buffer for MAX_FDS descriptors (CMSG_SPACE(250 * 4) = 1016 bytes), 8-byte aligned.
const CONTROL_WORDS: usize = 128;

#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("handover socket: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Wire(#[from] wire::WireError),
    #[error("handover peer is uid {peer}, not this server's uid {ours}")]
    Stranger { peer: u32, ours: u32 },
    #[error("handover peer closed the socket")]
    Closed,
    #[error("handover peer timed out: nothing (or only part of a message) within the time limit")]
    TimedOut,
    #[error("handover frame carried {0} descriptors (at most {MAX_FDS})")]
    Descriptors(usize),
}

fn cvt(r: libc::c_int) -> std::io::Result<libc::c_int> {
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Binds and listens at `path` with mode 0600: the mode is set between bind and listen, so
/// no one can connect while the file is more open.
pub fn listen(path: &Path) -> Result<UnixListener, SocketError> {
    let _ = std::fs::remove_file(path);
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: plain socket calls on a descriptor we own; the address is bounds-checked.
    unsafe {
        let mut addr: libc::sockaddr_un = std::mem::zeroed();
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        if bytes.len() >= addr.sun_path.len() {
            return Err(SocketError::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("socket path too long: {}", path.display()),
            )));
        }
        for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
            *dst = *src as libc::c_char;
        }
        let fd = cvt(libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
        ))?;
        let owned = OwnedFd::from_raw_fd(fd);
        cvt(libc::bind(
            fd,
            std::ptr::addr_of!(addr).cast(),
            std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
        ))?;
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        cvt(libc::listen(fd, 4))?;
        Ok(UnixListener::from(owned))
    }
}

/// The peer's (pid, uid).
pub fn peer(stream: &UnixStream) -> Result<(i32, u32), SocketError> {
    // SAFETY: getsockopt writes at most `len` bytes into `cred`.
    unsafe {
        let mut cred: libc::ucred = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
        cvt(libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            std::ptr::addr_of_mut!(cred).cast(),
            &mut len,
        ))?;
        Ok((cred.pid, cred.uid))
    }
}

/// Refuses a peer of another user.
pub fn check_peer(stream: &UnixStream) -> Result<i32, SocketError> {
    let (pid, uid) = peer(stream)?;
    // SAFETY: getuid cannot fail.
    let ours = unsafe { libc::getuid() };
    if uid != ours {
        return Err(SocketError::Stranger { peer: uid, ours });
    }
    Ok(pid)
}

/// Bounds every read and write of the conversation.
pub fn set_timeout(stream: &UnixStream, limit: Duration) -> Result<(), SocketError> {
    stream.set_read_timeout(Some(limit))?;
    stream.set_write_timeout(Some(limit))?;
    Ok(())
}

/// Sends one message, with `fds` (at most [`MAX_FDS`]) attached to its first byte.
pub fn send(
    stream: &UnixStream,
    message: &Message,
    fds: &[BorrowedFd<'_>],
) -> Result<(), SocketError> {
    send_as(stream, wire::VERSION, message, fds)
}

/// [`send`] in handover format `version` (the peer's).
pub fn send_as(
    stream: &UnixStream,
    version: u16,
    message: &Message,
    fds: &[BorrowedFd<'_>],
) -> Result<(), SocketError> {
    if fds.len() > MAX_FDS {
        return Err(SocketError::Descriptors(fds.len()));
    }
    let frame = wire::encode_as(message, version)?;
    let mut sent = 0;
    if !fds.is_empty() {
        let raw: Vec<RawFd> = fds.iter().map(|fd| fd.as_raw_fd()).collect();
        sent = send_with_fds(stream, &frame, &raw)?;
    }
    (&*stream).write_all(&frame[sent..])?;
    Ok(())
}

fn send_with_fds(stream: &UnixStream, frame: &[u8], fds: &[RawFd]) -> std::io::Result<usize> {
    let mut control = [0u64; CONTROL_WORDS];
    let data_len = std::mem::size_of_val(fds) as u32;
    // SAFETY: the control buffer is aligned and large enough for MAX_FDS descriptors (checked
    // by the caller); the iovec points into `frame`.
    unsafe {
        let space = libc::CMSG_SPACE(data_len) as usize;
        debug_assert!(space <= std::mem::size_of_val(&control));
        let mut iov = libc::iovec {
            iov_base: frame.as_ptr() as *mut libc::c_void,
            iov_len: frame.len(),
        };
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(data_len) as _;
        let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
        for (i, fd) in fds.iter().enumerate() {
            std::ptr::write_unaligned(data.add(i), *fd);
        }
        loop {
            let n = libc::sendmsg(stream.as_raw_fd(), &msg, libc::MSG_NOSIGNAL);
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

/// Receives one message and the descriptors that came with it. The header is checked (magic,
/// version, length bound) before the body is allocated.
pub fn recv(stream: &UnixStream) -> Result<(Message, Vec<OwnedFd>), SocketError> {
    recv_versioned(stream).map(|(_, message, fds)| (message, fds))
}

/// [`recv`], with the handover format the frame came in.
pub fn recv_versioned(stream: &UnixStream) -> Result<(u16, Message, Vec<OwnedFd>), SocketError> {
    let mut header = [0u8; HEADER_LEN];
    let (n, fds) = recv_with_fds(stream, &mut header)?;
    if n == 0 {
        return Err(SocketError::Closed);
    }
    read_exact(stream, &mut header[n..])?;
    let (version, len) = wire::decode_header_versioned(&header)?;
    let mut body = vec![0u8; len];
    read_exact(stream, &mut body)?;
    Ok((version, wire::decode_body(&body)?, fds))
}

fn read_exact(stream: &UnixStream, buf: &mut [u8]) -> Result<(), SocketError> {
    (&*stream).read_exact(buf).map_err(io_error)
}

/// A read timeout shows as WouldBlock (SO_RCVTIMEO) or TimedOut.
fn io_error(e: std::io::Error) -> SocketError {
    match e.kind() {
        std::io::ErrorKind::UnexpectedEof => SocketError::Closed,
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => SocketError::TimedOut,
        _ => SocketError::Io(e),
    }
}

/// One recvmsg into `buf`: the bytes read and any descriptors (owned, close-on-exec).
fn recv_with_fds(
    stream: &UnixStream,
    buf: &mut [u8],
) -> Result<(usize, Vec<OwnedFd>), SocketError> {
    let mut control = [0u64; CONTROL_WORDS];
    // SAFETY: the kernel writes at most msg_controllen bytes of control data and `buf.len()`
    // bytes of data; every descriptor it passed is taken into an OwnedFd exactly once.
    unsafe {
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control) as _;
        let n = loop {
            let n = libc::recvmsg(stream.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC);
            if n >= 0 {
                break n as usize;
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(io_error(e));
            }
        };
        let mut fds = Vec::new();
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                let bytes = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                for i in 0..bytes / std::mem::size_of::<RawFd>() {
                    fds.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i))));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
        if msg.msg_flags & libc::MSG_CTRUNC != 0 {
            return Err(SocketError::Descriptors(MAX_FDS + 1));
        }
        Ok((n, fds))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn socket_is_private_and_passes_descriptors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("upgrade.sock");
        let listener = listen(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let client = UnixStream::connect(&path).unwrap();
        let (server, _) = listener.accept().unwrap();
        assert_eq!(check_peer(&server).unwrap(), std::process::id() as i32);
        set_timeout(&server, Duration::from_secs(5)).unwrap();

        // A descriptor passed over: a pipe written on one side is read through the copy.
        let (mut reader, writer) = std::io::pipe().unwrap();
        let message = Message::Listener {
            name: "nmdb tcp".into(),
            udp: false,
        };
        send(&client, &message, &[writer.as_fd()]).unwrap();
        send(&client, &Message::Ready, &[]).unwrap();
        drop(writer);
        let (got, fds) = recv(&server).unwrap();
        assert_eq!(got, message);
        let mut copy = std::fs::File::from(fds.into_iter().next().expect("a descriptor"));
        copy.write_all(b"hi").unwrap();
        drop(copy);
        let mut text = String::new();
        reader.read_to_string(&mut text).unwrap();
        assert_eq!(text, "hi");
        let (got, fds) = recv(&server).unwrap();
        assert_eq!(got, Message::Ready);
        assert!(fds.is_empty());

        // A full batch of descriptors in one frame.
        let pipes: Vec<_> = (0..MAX_FDS).map(|_| std::io::pipe().unwrap()).collect();
        let fds: Vec<_> = pipes.iter().map(|(_, w)| w.as_fd()).collect();
        send(&client, &Message::Proceed, &fds).unwrap();
        let (got, received) = recv(&server).unwrap();
        assert_eq!((got, received.len()), (Message::Proceed, MAX_FDS));
        let too_many: Vec<_> = pipes
            .iter()
            .chain(&pipes[..1])
            .map(|(_, w)| w.as_fd())
            .collect();
        assert!(matches!(
            send(&client, &Message::Proceed, &too_many),
            Err(SocketError::Descriptors(_))
        ));
    }

    #[test]
    fn truncated_and_garbage_input_is_refused() {
        let (a, b) = UnixStream::pair().unwrap();
        set_timeout(&b, Duration::from_secs(5)).unwrap();
        let frame = wire::encode(&Message::Ready).unwrap();
        (&a).write_all(&frame[..frame.len() - 1]).unwrap();
        drop(a);
        assert!(matches!(recv(&b), Err(SocketError::Closed)));

        let (a, b) = UnixStream::pair().unwrap();
        (&a).write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        assert!(matches!(
            recv(&b),
            Err(SocketError::Wire(wire::WireError::Magic))
        ));
    }
}
