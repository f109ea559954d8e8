//! The CPU time a server on this machine spends, every thread included, read from Linux's
//! `/proc`. The server is found by the TCP port it listens on, so polykv and the peers it is
//! compared with are measured the same way, without any help from them.

use std::path::Path;

/// A server process on this machine whose CPU time can be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerCpu {
    pid: u32,
}

impl ServerCpu {
    /// The process listening on `addr`'s TCP port, if it is on this machine and readable.
    pub fn find(addr: &str) -> Option<ServerCpu> {
        let port: u16 = addr.rsplit_once(':')?.1.parse().ok()?;
        let inodes: Vec<u64> = ["/proc/net/tcp", "/proc/net/tcp6"]
            .iter()
            .filter_map(|table| std::fs::read_to_string(table).ok())
            .flat_map(|text| {
                text.lines()
                    .skip(1)
                    .filter_map(|line| listening_inode(line, port))
                    .collect::<Vec<_>>()
            })
            .collect();
        if inodes.is_empty() {
            return None;
        }
        let wanted: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
        for process in std::fs::read_dir("/proc").ok()?.flatten() {
            let Some(pid) = process.file_name().to_str().and_then(|n| n.parse().ok()) else {
                continue;
            };
            if owns_socket(&process.path(), &wanted) {
                return Some(ServerCpu { pid });
            }
        }
        None
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// User plus system CPU seconds the process has used so far.
    pub fn seconds(&self) -> Option<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).ok()?;
        cpu_seconds(&stat, clock_ticks_per_second())
    }
}

fn owns_socket(process: &Path, wanted: &[String]) -> bool {
    let Ok(fds) = std::fs::read_dir(process.join("fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path())
            .ok()
            .and_then(|target| target.to_str().map(|t| wanted.iter().any(|w| w == t)))
            .unwrap_or(false)
    })
}

/// The socket inode of a `/proc/net/tcp` line that listens on `port`.
fn listening_inode(line: &str, port: u16) -> Option<u64> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let local_port = u16::from_str_radix(fields.get(1)?.rsplit_once(':')?.1, 16).ok()?;
    // State 0A is LISTEN.
    if local_port != port || *fields.get(3)? != "0A" {
        return None;
    }
    fields.get(9)?.parse().ok()
}

/// utime + stime of a `/proc/PID/stat` line, in seconds. The fields are counted after the
/// command name's closing parenthesis, since the name may hold spaces.
fn cpu_seconds(stat: &str, ticks_per_second: f64) -> Option<f64> {
    let after_name = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // After the name: state(0) ppid(1) ... utime(11) stime(12).
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / ticks_per_second)
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf reads a system constant; no pointers.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_listening_line_and_skips_others() {
        let listen = "   3: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 123456 1 0000000000000000 100 0 0 10 0";
        assert_eq!(listening_inode(listen, 8080), Some(123456));
        assert_eq!(listening_inode(listen, 8081), None);
        let established = listen.replace(" 0A ", " 01 ");
        assert_eq!(listening_inode(&established, 8080), None);
        assert_eq!(listening_inode("garbage", 8080), None);
    }

    #[test]
    fn reads_user_and_system_time_past_a_name_with_spaces() {
        let stat = "42 (polykv worker) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 1000";
        assert_eq!(cpu_seconds(stat, 100.0), Some(3.0));
        assert_eq!(cpu_seconds("42 (x) S 1", 100.0), None);
    }

    #[test]
    fn finds_this_process_by_its_listening_port() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let found = ServerCpu::find(&addr).expect("the listener's process");
        assert_eq!(found.pid(), std::process::id());
        assert!(found.seconds().is_some_and(|s| s >= 0.0));
        drop(listener);
        assert_eq!(ServerCpu::find("127.0.0.1:notaport"), None);
    }
}
