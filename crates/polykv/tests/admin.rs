//! End-to-end tests of the admin JSON API against the real binary.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{http, Options, Server};

#[test]
fn put_get_list_delete_and_errors() {
    let server = Server::start();
    let port = server.admin_port;
    let (status, body) = http(
        port,
        "PUT",
        "/api/keyspaces/cfg/keys/app/name",
        r#"{"value":"polykv"}"#,
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"version\""));
    let (status, body) = http(port, "GET", "/api/keyspaces/cfg/keys/app/name", "").unwrap();
    assert_eq!(status, 200);
    assert!(
        body.contains("\"value\":\"polykv\"")
            && body.contains("\"type\":\"bytes\"")
            && body.contains("\"value_hex\":\"706f6c796b76\""),
        "{body}"
    );
    let (status, _) = http(
        port,
        "PUT",
        "/api/keyspaces/cfg/keys/n",
        r#"{"type":"i64","value":-5,"durability":"async"}"#,
    )
    .unwrap();
    assert_eq!(status, 200);
    let (_, body) = http(port, "GET", "/api/keyspaces/cfg/keys/n", "").unwrap();
    assert!(
        body.contains("\"value\":-5") && body.contains("\"type\":\"i64\""),
        "{body}"
    );
    let (status, _) = http(
        port,
        "PUT",
        "/api/keyspaces/cfg/keys/00ff?encoding=hex",
        r#"{"value_hex":"0001"}"#,
    )
    .unwrap();
    assert_eq!(status, 200);
    let (_, body) = http(port, "GET", "/api/keyspaces/cfg/keys/00ff?encoding=hex", "").unwrap();
    assert!(
        body.contains("\"key_hex\":\"00ff\"") && !body.contains("\"key\":"),
        "{body}"
    );

    // Keyspaces and pagination.
    let (_, body) = http(port, "GET", "/api/keyspaces", "").unwrap();
    assert!(body.contains("\"name\":\"cfg\""), "{body}");
    for i in 0..5 {
        http(
            port,
            "PUT",
            &format!("/api/keyspaces/cfg/keys/page/{i}"),
            r#"{"value":"x"}"#,
        )
        .unwrap();
    }
    let (_, body) = http(
        port,
        "GET",
        "/api/keyspaces/cfg/keys?prefix=page/&limit=3",
        "",
    )
    .unwrap();
    assert!(
        body.contains("page/0") && body.contains("page/2") && !body.contains("page/3"),
        "{body}"
    );
    assert!(body.contains("\"next\":{\"after\":\"page/2\"}"), "{body}");
    let (_, body) = http(
        port,
        "GET",
        "/api/keyspaces/cfg/keys?prefix=page/&after=page/2&limit=3",
        "",
    )
    .unwrap();
    assert!(
        body.contains("page/3") && body.contains("page/4") && body.contains("\"next\":null"),
        "{body}"
    );

    // Delete.
    let (status, body) = http(port, "DELETE", "/api/keyspaces/cfg/keys/app/name", "").unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"deleted\":true"));
    let (status, _) = http(port, "GET", "/api/keyspaces/cfg/keys/app/name", "").unwrap();
    assert_eq!(status, 404);
    let (status, _) = http(port, "DELETE", "/api/keyspaces/cfg/keys/app/name", "").unwrap();
    assert_eq!(status, 404);

    // Errors are JSON with a message and a proper status.
    for (method, path, body, want) in [
        ("GET", "/api/keyspaces/nope/keys/k", "", 404),
        ("GET", "/api/keyspaces/cfg/keys/zz?encoding=hex", "", 400),
        ("GET", "/api/keyspaces/cfg/keys/k?encoding=base64", "", 400),
        (
            "PUT",
            "/api/keyspaces/cfg/keys/k",
            r#"{"type":"i32","value":"x"}"#,
            400,
        ),
        (
            "PUT",
            "/api/keyspaces/cfg/keys/k",
            r#"{"type":"float","value":1}"#,
            400,
        ),
        (
            "PUT",
            "/api/keyspaces/cfg/keys/k",
            r#"{"value":"x","durability":"maybe"}"#,
            400,
        ),
        (
            "PUT",
            "/api/keyspaces/bad%20name/keys/k",
            r#"{"value":"x"}"#,
            400,
        ),
        ("POST", "/api/read-only", "", 400),
    ] {
        let (status, text) = http(port, method, path, body).unwrap();
        assert_eq!(status, want, "{method} {path}: {text}");
        assert!(text.contains("\"error\""), "{method} {path}: {text}");
    }
}

#[test]
fn stats_and_read_only_switch() {
    let server = Server::start();
    let port = server.admin_port;
    let (_, body) = http(port, "GET", "/api/stats", "").unwrap();
    assert!(
        body.contains("\"cache\"") && body.contains("\"read_only\":false"),
        "{body}"
    );
    // The log and its checkpoints are reported with the engine.
    let stats: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(stats["log"]["checkpoint_seq"].is_u64(), "{body}");
    assert!(stats["log"]["backlog_bytes"].is_u64(), "{body}");
    let (status, body) = http(port, "POST", "/api/read-only?on=true", "").unwrap();
    assert_eq!((status, body.contains("true")), (200, true));
    let (_, body) = http(port, "GET", "/api/read-only", "").unwrap();
    assert!(body.contains("\"read_only\":true"));
    // SIGUSR1 turns it on too (and the admin API turns it off).
    http(port, "POST", "/api/read-only?on=false", "").unwrap();
    server.signal(libc::SIGUSR1);
    let mut on = false;
    for _ in 0..100 {
        let (_, body) = http(port, "GET", "/api/read-only", "").unwrap();
        if body.contains("true") {
            on = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(on, "SIGUSR1 switched read-only on");
}

#[test]
fn watch_streams_changes_as_server_sent_events() {
    let server = Server::start();
    let port = server.admin_port;
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET /api/keyspaces/feed/watch?prefix=a/ HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    .unwrap();
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    // Wait for the subscription to exist before writing.
    loop {
        line.clear();
        reader.read_line(&mut line).unwrap();
        if line.starts_with("event: subscribed") {
            break;
        }
    }
    http(
        port,
        "PUT",
        "/api/keyspaces/feed/keys/b/ignored",
        r#"{"value":"0"}"#,
    )
    .unwrap();
    http(
        port,
        "PUT",
        "/api/keyspaces/feed/keys/a/1",
        r#"{"value":"one"}"#,
    )
    .unwrap();
    http(port, "DELETE", "/api/keyspaces/feed/keys/a/1", "").unwrap();
    let mut data = Vec::new();
    while data.len() < 2 {
        line.clear();
        reader.read_line(&mut line).unwrap();
        if let Some(d) = line.strip_prefix("data: ") {
            if d.contains("\"op\"") {
                data.push(d.trim().to_string());
            }
        }
    }
    assert!(
        data[0].contains("\"op\":\"set\"")
            && data[0].contains("\"key\":\"a/1\"")
            && data[0].contains("\"value\":\"one\""),
        "{data:?}"
    );
    assert!(
        data[1].contains("\"op\":\"delete\"") && data[1].contains("\"key\":\"a/1\""),
        "{data:?}"
    );
}

#[test]
fn configured_token_is_required() {
    let server = Server::start_with(Options {
        args: vec!["--admin-token".into(), "s3cret".into()],
        ..Options::default()
    });
    let port = server.admin_port;
    let (status, _) = http(port, "GET", "/health", "").unwrap();
    assert_eq!(status, 200, "health needs no token");
    let (status, body) = http(port, "GET", "/api/keyspaces", "").unwrap();
    assert_eq!(status, 401);
    assert!(body.contains("Bearer"));
    let authed = |token: &str| {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        write!(stream, "GET /api/keyspaces HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n").unwrap();
        let mut first = String::new();
        BufReader::new(stream).read_line(&mut first).unwrap();
        first
    };
    assert!(authed("s3cret").contains("200"));
    assert!(authed("s3cre").contains("401"));
}

#[test]
fn an_open_watch_feed_does_not_hold_up_shutdown() {
    // A feed that never ends by itself: the shutdown must end it, not wait out its deadline.
    let mut server = Server::start_with(Options {
        args: vec!["--shutdown-timeout-secs".into(), "120".into()],
        ..Options::default()
    });
    let stream = TcpStream::connect(("127.0.0.1", server.admin_port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut reader = BufReader::new(stream);
    write!(
        reader.get_mut(),
        "GET /api/keyspaces/feed/watch?prefix=a/ HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    .unwrap();
    let mut line = String::new();
    while !line.starts_with("event: subscribed") {
        line.clear();
        reader.read_line(&mut line).unwrap();
    }
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait_exit(Duration::from_secs(60)), Some(0));
}
