//! End-to-end tests of the daemon itself: health, metrics, configuration precedence, the data
//! directory lock, a taken port, and graceful shutdown.

mod common;

use std::time::Duration;

use common::{free_port, http, run_cli, Options, Server};

#[test]
fn health_and_metrics_answer() {
    let server = Server::start();
    let (status, body) = http(server.admin_port, "GET", "/health", "").unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("\"status\":\"ok\""), "{body}");
    let (status, body) = http(server.admin_port, "GET", "/metrics", "").unwrap();
    assert_eq!(status, 200);
    for name in [
        "polykv_cache_bytes",
        "polykv_journal_syncs_total",
        "polykv_keyspace_keys",
        "polykv_requests_total{protocol=\"nmdb\",op=\"get\"} 0",
        "polykv_request_duration_seconds_bucket{protocol=\"nmdb\",op=\"get\",le=\"+Inf\"} 0",
    ] {
        assert!(body.contains(name), "{name} missing from /metrics");
    }
    let (status, body) = http(server.admin_port, "GET", "/nope", "").unwrap();
    assert_eq!(status, 404);
    assert!(body.contains("error"));
}

#[test]
fn configuration_precedence_flag_env_file_default() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("polykv.toml");
    std::fs::write(
        &file,
        "max_connections = 11\nshutdown_timeout_secs = 12\n[nmdb]\nport = 13\nudp_port = 14\n",
    )
    .unwrap();
    let file = file.to_str().unwrap();
    let (code, out, err) = run_cli(
        &["config", "--config", file, "--nmdb-port", "1000"],
        &[
            ("POLYKV_NMDB_PORT", "2000"),
            ("POLYKV_NMDB_UDP_PORT", "3000"),
            ("POLYKV_MAX_CONNECTIONS", "4000"),
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("port = 1000"),
        "flag beats env and file:\n{out}"
    );
    assert!(out.contains("udp_port = 3000"), "env beats file:\n{out}");
    assert!(
        out.contains("max_connections = 4000"),
        "env beats file:\n{out}"
    );
    assert!(
        out.contains("shutdown_timeout_secs = 12"),
        "file beats default:\n{out}"
    );
    assert!(
        out.contains("reaper_interval_ms = 1000"),
        "defaults fill the rest:\n{out}"
    );

    let (code, _, err) = run_cli(&["config", "--nmdb-port", "nope"], &[]);
    assert_eq!(code, 1);
    assert!(
        err.contains("--nmdb-port") && err.contains("integer"),
        "{err}"
    );
    let (code, _, err) = run_cli(&["config"], &[("POLYKV_NMDB_READ_ONLY", "maybe")]);
    assert_eq!(code, 1);
    assert!(err.contains("POLYKV_NMDB_READ_ONLY"), "{err}");
}

#[test]
fn second_server_on_the_same_data_dir_is_refused() {
    let first = Server::start();
    let log = first.data_dir.with_extension("second.log");
    let mut second = common::spawn(&first.data_dir, free_port(), free_port(), &[], &[], &log);
    let status = second.wait().unwrap();
    assert_eq!(status.code(), Some(1));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("in use by another polykv server"), "{text}");
    assert!(text.contains("polykv.lock"), "{text}");
}

#[test]
fn taken_port_is_refused_clearly() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let mut child = common::spawn(&dir.path().join("d"), port, free_port(), &[], &[], &log);
    assert_eq!(child.wait().unwrap().code(), Some(1));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains(&format!("cannot listen on 127.0.0.1:{port}")),
        "{text}"
    );
}

#[test]
fn sigterm_and_sigint_exit_zero_and_release_the_lock() {
    for signal in [libc::SIGTERM, libc::SIGINT] {
        let mut server = Server::start();
        server.signal(signal);
        assert_eq!(
            server.wait_exit(Duration::from_secs(20)),
            Some(0),
            "{}",
            server.log_text()
        );
        assert!(
            server.log_text().contains("store synced"),
            "{}",
            server.log_text()
        );
        // The lock is released: the same directory serves again.
        let again = Server::start_with(Options {
            data_dir: Some(server.data_dir.clone()),
            ..Options::default()
        });
        drop(again);
    }
}

#[test]
fn data_format_is_recorded_and_a_newer_one_refused_untouched() {
    let server = Server::start();
    let recorded = std::fs::read_to_string(server.data_dir.join("FORMAT")).unwrap();
    assert!(recorded.starts_with("polykv data format "), "{recorded:?}");
    drop(server);

    // A directory from a newer format: refused, naming the format, and nothing written.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("FORMAT"), "polykv data format 999\n").unwrap();
    let log = dir.path().join("log");
    let mut child = common::spawn(&data, free_port(), free_port(), &[], &[], &log);
    assert_eq!(child.wait().unwrap().code(), Some(1));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("data format 999"), "{text}");
    let left: Vec<_> = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["FORMAT"], "nothing else created");
}
