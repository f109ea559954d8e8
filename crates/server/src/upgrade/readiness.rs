//! Which of many sockets have input waiting, known at once: the sockets passed ahead of a
//! handover's stop are registered with an epoll instance as they arrive (while the old process
//! still serves), so after the stop one `epoll_wait` lists the few with a request waiting,
//! instead of a poll(2) over every connection inside the pause.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// An epoll instance watching sockets for input, each under a number of the caller's.
pub struct Readiness {
    epoll: OwnedFd,
    watched: usize,
}

impl Readiness {
    pub fn new() -> std::io::Result<Readiness> {
        // SAFETY: epoll_create1 returns a new descriptor we own, or -1.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor no one else owns.
        let epoll = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Readiness { epoll, watched: 0 })
    }

    /// Watches `fd` for input (level-triggered), reported as `key`.
    pub fn watch(&mut self, fd: BorrowedFd<'_>, key: u64) -> std::io::Result<()> {
        let mut event = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLRDHUP) as u32,
            u64: key,
        };
        // SAFETY: both descriptors are open; the kernel copies `event`.
        let r = unsafe {
            libc::epoll_ctl(
                self.epoll.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                fd.as_raw_fd(),
                &mut event,
            )
        };
        if r < 0 {
            return Err(std::io::Error::last_os_error());
        }
        self.watched += 1;
        Ok(())
    }

    /// The keys of the watched sockets with input waiting (or closed by their peer) now.
    pub fn ready(&self) -> std::io::Result<Vec<u64>> {
        let capacity = self.watched.clamp(1, i32::MAX as usize);
        let mut events: Vec<libc::epoll_event> = Vec::with_capacity(capacity);
        // SAFETY: the kernel writes at most `capacity` events into the buffer; `set_len` then
        // covers only what it wrote. Timeout 0: it does not wait.
        let n = unsafe {
            libc::epoll_wait(
                self.epoll.as_raw_fd(),
                events.as_mut_ptr(),
                capacity as i32,
                0,
            )
        };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: see above; 0 <= n <= capacity.
        unsafe { events.set_len(n as usize) };
        Ok(events.iter().map(|e| e.u64).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsFd;

    #[test]
    fn lists_only_the_sockets_with_input_waiting() {
        let (ours, mut peers): (Vec<_>, Vec<_>) = (0..4)
            .map(|_| {
                let (ours, peer) = std::os::unix::net::UnixStream::pair().unwrap();
                (ours, Some(peer))
            })
            .unzip();
        let mut readiness = Readiness::new().unwrap();
        for (key, socket) in ours.iter().enumerate() {
            readiness.watch(socket.as_fd(), key as u64 + 10).unwrap();
        }
        assert!(readiness.ready().unwrap().is_empty());
        // Input on one, the peer of another gone: both are listed, the two quiet ones not.
        let mut writer = peers[1].as_ref().unwrap();
        writer.write_all(b"x").unwrap();
        drop(peers[3].take());
        let mut ready = readiness.ready().unwrap();
        ready.sort();
        assert_eq!(ready, [11, 13]);
    }
}
