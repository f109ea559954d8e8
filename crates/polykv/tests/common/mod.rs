//! Starting the real `polykv` binary on free loopback ports for end-to-end tests.

#![allow(dead_code)]

pub mod cluster;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_polykv");

/// A free TCP port on 127.0.0.1 (bound and released; the kernel does not hand it out again at
/// once).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A free UDP port on 127.0.0.1 (bound and released).
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running server, killed on drop.
pub struct Server {
    pub child: Option<Child>,
    pub data_dir: PathBuf,
    pub admin_port: u16,
    pub nmdb_port: u16,
    pub smalld_port: u16,
    pub minority_port: u16,
    pub opencluster_port: u16,
    pub jsonkv_port: u16,
    pub jsonkv_udp_port: u16,
    pub jsonkv_rpc_port: u16,
    pub agent_port: u16,
    pub log: PathBuf,
    _dir: Option<tempfile::TempDir>,
}

#[derive(Default)]
pub struct Options {
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub data_dir: Option<PathBuf>,
}

impl Server {
    pub fn start() -> Server {
        Self::start_with(Options::default())
    }

    /// [`Server::start_with`] these command-line arguments and the default options.
    pub fn start_with_args(args: &[&str]) -> Server {
        Self::start_with(Options {
            args: args.iter().map(|arg| arg.to_string()).collect(),
            ..Options::default()
        })
    }

    pub fn start_with(options: Options) -> Server {
        let (dir, data_dir) = match options.data_dir {
            Some(path) => (None, path),
            None => {
                let dir = tempfile::tempdir().unwrap();
                let path = dir.path().join("data");
                (Some(dir), path)
            }
        };
        let mut dir = dir;
        // A port picked free can be taken before the server binds it (by another test's outgoing
        // connection, say): the server then exits at once with "cannot listen", and we try again
        // with new ports.
        for attempt in 0..5 {
            let admin_port = free_port();
            let nmdb_port = free_port();
            let smalld_port = free_port();
            let minority_port = free_port();
            let opencluster_port = free_port();
            let jsonkv_port = free_port();
            let jsonkv_udp_port = free_udp_port();
            let jsonkv_rpc_port = free_port();
            let agent_port = free_port();
            let log = data_dir.with_extension(format!("log{admin_port}"));
            let mut args = vec![
                "--smalld-port".to_string(),
                smalld_port.to_string(),
                "--minority-port".to_string(),
                minority_port.to_string(),
                "--opencluster-port".to_string(),
                opencluster_port.to_string(),
                "--jsonkv-port".to_string(),
                jsonkv_port.to_string(),
                "--jsonkv-udp-port".to_string(),
                jsonkv_udp_port.to_string(),
                "--jsonkv-rpc-port".to_string(),
                jsonkv_rpc_port.to_string(),
                "--jsonkv-agent-port".to_string(),
                agent_port.to_string(),
            ];
            args.extend(options.args.iter().cloned());
            let child = spawn(&data_dir, admin_port, nmdb_port, &args, &options.env, &log);
            let mut server = Server {
                child: Some(child),
                data_dir: data_dir.clone(),
                admin_port,
                nmdb_port,
                smalld_port,
                minority_port,
                opencluster_port,
                jsonkv_port,
                jsonkv_udp_port,
                jsonkv_rpc_port,
                agent_port,
                log,
                _dir: None,
            };
            match server.wait_ready() {
                Ok(()) => {
                    server._dir = dir.take();
                    return server;
                }
                Err(log) if log.contains("cannot listen") && attempt < 4 => continue,
                Err(log) => panic!("server did not become ready; log:\n{log}"),
            }
        }
        unreachable!("the last attempt panics or returns")
    }

    /// Waits until the admin port answers /health; the log if the server exited or timed out.
    pub fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok((200, _)) = http(self.admin_port, "GET", "/health", "") {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(_)) = child.try_wait() {
                    self.child = None;
                    return Err(self.log_text());
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(self.log_text())
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn minority_addr(&self) -> String {
        format!("127.0.0.1:{}", self.minority_port)
    }

    pub fn opencluster_addr(&self) -> String {
        format!("127.0.0.1:{}", self.opencluster_port)
    }

    pub fn jsonkv_addr(&self) -> String {
        format!("127.0.0.1:{}", self.jsonkv_port)
    }

    pub fn jsonkv_udp_addr(&self) -> String {
        format!("127.0.0.1:{}", self.jsonkv_udp_port)
    }

    pub fn jsonkv_rpc_addr(&self) -> String {
        format!("127.0.0.1:{}", self.jsonkv_rpc_port)
    }

    pub fn agent_addr(&self) -> String {
        format!("127.0.0.1:{}", self.agent_port)
    }

    pub fn smalld_addr(&self) -> String {
        format!("127.0.0.1:{}", self.smalld_port)
    }

    pub fn nmdb_addr(&self) -> String {
        format!("127.0.0.1:{}", self.nmdb_port)
    }

    /// Resident memory of the server process, in MiB.
    pub fn rss_mib(&self) -> u64 {
        let pid = self.child.as_ref().map(|c| c.id()).unwrap_or(0);
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|kb| kb.parse::<u64>().ok())
            })
            .map_or(0, |kb| kb / 1024)
    }

    pub fn signal(&self, signal: i32) {
        if let Some(child) = &self.child {
            unsafe { libc::kill(child.id() as i32, signal) };
        }
    }

    /// Sends SIGTERM and waits for the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        self.signal(libc::SIGTERM);
        self.wait_exit(Duration::from_secs(30))
    }

    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                self.child = None;
                panic!("server did not exit within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn spawn(
    data_dir: &Path,
    admin_port: u16,
    nmdb_port: u16,
    args: &[String],
    env: &[(String, String)],
    log: &Path,
) -> Child {
    let log_file = std::fs::File::create(log).unwrap();
    let mut command = Command::new(BIN);
    command
        .arg("serve")
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--admin-port")
        .arg(admin_port.to_string())
        .arg("--nmdb-port")
        .arg(nmdb_port.to_string())
        .arg("--nmdb-udp-port")
        .arg(nmdb_port.to_string())
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().unwrap())
        .stderr(log_file);
    for (k, v) in env {
        command.env(k, v);
    }
    command.spawn().unwrap()
}

/// A minimal HTTP/1.1 client: returns (status, body).
pub fn http(port: u16, method: &str, path: &str, body: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\nContent-Type: application/json\r\n\r\n{body}",
        body.len()
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// Runs `polykv ARGS` to completion: (exit code, stdout, stderr).
pub fn run_cli(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut command = Command::new(BIN);
    command.args(args);
    for (k, v) in env {
        command.env(k, v);
    }
    let out = command.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Bytes from hex text, in groups of any even length separated by spaces or `|` (the spec
/// vectors' notation).
pub fn hex(text: &str) -> Vec<u8> {
    text.replace('|', " ")
        .split_whitespace()
        .flat_map(|g| {
            (0..g.len())
                .step_by(2)
                .map(move |i| u8::from_str_radix(&g[i..i + 2], 16).unwrap())
        })
        .collect()
}

/// Sends `request` (hex) and checks that exactly `want` (hex) comes back within 10 s.
pub async fn exchange(stream: &mut tokio::net::TcpStream, request: &str, want: &str) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream.write_all(&hex(request)).await.unwrap();
    let want = hex(want);
    let mut got = vec![0u8; want.len()];
    tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut got))
        .await
        .expect("reply in time")
        .expect("reply");
    assert_eq!(got, want, "reply to {request}");
}

/// A server process started by an upgrade (not the test's child): killed when the test ends.
pub struct Adopted(pub i32);

impl Drop for Adopted {
    fn drop(&mut self) {
        // SAFETY: kill with a pid read from a data directory's lock file and a fixed signal.
        unsafe { libc::kill(self.0, libc::SIGKILL) };
    }
}

/// The pid serving a data directory (from its lock file).
pub fn serving_pid(data_dir: &std::path::Path) -> i32 {
    std::fs::read_to_string(data_dir.join("polykv.lock"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}
