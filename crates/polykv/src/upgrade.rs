//! `polykv upgrade`: asks the server running on a data directory for a hot upgrade (a request
//! file and SIGUSR2 to the pid in its lock file) and waits for the outcome it records.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use polykv_server::upgrade::control::{self, Request};

#[derive(clap::Args)]
pub struct UpgradeArgs {
    /// The new binary (default: the running server's binary path)
    #[arg(long)]
    binary: Option<PathBuf>,
    /// The running server's data directory
    #[arg(long, env = "POLYKV_DATA_DIR", default_value = "./polykv-data")]
    data_dir: PathBuf,
    /// Seconds to wait for the outcome
    #[arg(long, default_value_t = 120)]
    timeout_secs: u64,
}

pub fn upgrade(args: UpgradeArgs) -> anyhow::Result<()> {
    let dir = &args.data_dir;
    let lock = dir.join("polykv.lock");
    let pid: i32 = std::fs::read_to_string(&lock)
        .with_context(|| {
            format!(
                "no server on {} (cannot read {})",
                dir.display(),
                lock.display()
            )
        })?
        .trim()
        .parse()
        .with_context(|| format!("{} does not hold a pid", lock.display()))?;
    let binary = match args.binary {
        Some(path) => Some(
            std::fs::canonicalize(&path)
                .with_context(|| format!("no binary at {}", path.display()))?,
        ),
        None => None,
    };
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let id = format!("{}-{nanos}", std::process::id());
    let request = Request {
        id: id.clone(),
        binary,
    };
    control::write_json(dir, control::REQUEST_FILE, &request)
        .with_context(|| format!("cannot write the request in {}", dir.display()))?;
    // SAFETY: kill with a pid read from the lock file and a fixed signal.
    if unsafe { libc::kill(pid, libc::SIGUSR2) } != 0 {
        let _ = std::fs::remove_file(dir.join(control::REQUEST_FILE));
        bail!(
            "cannot signal the server (pid {pid}): {}",
            std::io::Error::last_os_error()
        );
    }
    let deadline = Instant::now() + Duration::from_secs(args.timeout_secs);
    while Instant::now() < deadline {
        if let Some(status) = control::read_status(dir).filter(|s| s.id.as_deref() == Some(&id)) {
            if status.ok {
                // The new process names itself in the lock file just after the commit, which
                // can be a moment after the old one reports: return once it has, so that the
                // lock file names the serving process when this command ends.
                while lock_pid(&lock).is_none_or(|now| now == pid) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(10));
                }
                println!("{}", status.message);
                return Ok(());
            }
            bail!(
                "upgrade failed; pid {} still serves: {}",
                status.pid,
                status.message
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!(
        "no outcome within {}s (see the server's log)",
        args.timeout_secs
    )
}

/// The pid the lock file names, if it holds one.
fn lock_pid(lock: &std::path::Path) -> Option<i32> {
    std::fs::read_to_string(lock).ok()?.trim().parse().ok()
}
