//! `polykv cluster status|add|remove`: the admin API's `/api/cluster` from the command line.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};

#[derive(Args, Debug)]
pub struct ClusterArgs {
    #[command(subcommand)]
    action: Action,
    /// Admin HTTP address of the node to ask (send membership changes to the leader).
    #[arg(long, global = true, default_value = "127.0.0.1:26080")]
    admin: String,
    /// Admin bearer token, if the node needs one.
    #[arg(long, global = true, env = "POLYKV_ADMIN_TOKEN")]
    token: Option<String>,
    /// Print the JSON the node answered.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand, Debug)]
enum Action {
    /// Leader, term and every member with its role, address, applied index and lag.
    Status,
    /// Add a node (as a learner that catches up, then a voter).
    Add {
        id: u64,
        /// The new node's cluster address, host:port.
        addr: String,
    },
    /// Remove a node from the voters.
    Remove { id: u64 },
}

/// One HTTP/1.1 request with `Connection: close`; the status and the body.
fn http(
    admin: &str,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> anyhow::Result<(u16, String)> {
    let mut stream = TcpStream::connect(admin).with_context(|| format!("connect to {admin}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n");
    if let Some(token) = token {
        request.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    let body = body.unwrap_or("");
    if !body.is_empty() {
        request.push_str("Content-Type: application/json\r\n");
    }
    request.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    stream.write_all(request.as_bytes())?;
    let mut response = Vec::new();
    stream
        .take(16 << 20)
        .read_to_end(&mut response)
        .context("read the answer")?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("malformed HTTP answer")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("malformed HTTP status line")?;
    Ok((status, body.to_string()))
}

pub fn run(args: ClusterArgs) -> anyhow::Result<()> {
    let token = args.token.as_deref();
    let (status, body) = match &args.action {
        Action::Status => http(&args.admin, token, "GET", "/api/cluster", None)?,
        Action::Add { id, addr } => {
            let body = serde_json::json!({ "id": id, "addr": addr }).to_string();
            http(
                &args.admin,
                token,
                "POST",
                "/api/cluster/members",
                Some(&body),
            )?
        }
        Action::Remove { id } => http(
            &args.admin,
            token,
            "DELETE",
            &format!("/api/cluster/members/{id}"),
            None,
        )?,
    };
    if status != 200 {
        let message = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(String::from))
            .unwrap_or(body);
        bail!("{} answered {status}: {message}", args.admin);
    }
    if args.json || !matches!(args.action, Action::Status) {
        println!("{}", body.trim());
        return Ok(());
    }
    let v: serde_json::Value = serde_json::from_str(&body).context("the answer is not JSON")?;
    let show = |v: &serde_json::Value| match v {
        serde_json::Value::Null => "-".to_string(),
        other => other.to_string().trim_matches('"').to_string(),
    };
    println!(
        "node {}  leader {}  term {}",
        show(&v["node_id"]),
        show(&v["leader"]),
        show(&v["term"])
    );
    println!(
        "{:>4}  {:<9} {:<24} {:>12} {:>8}",
        "id", "role", "addr", "applied", "lag"
    );
    for m in v["members"].as_array().into_iter().flatten() {
        println!(
            "{:>4}  {:<9} {:<24} {:>12} {:>8}",
            show(&m["id"]),
            show(&m["role"]),
            show(&m["addr"]),
            show(&m["last_applied"]),
            show(&m["lag"])
        );
    }
    Ok(())
}
