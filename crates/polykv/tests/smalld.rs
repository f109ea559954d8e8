//! smalld end to end: the real binary and the project's smalld client.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use common::{hex, Options, Server};
use polykv_client::smalld::SmalldClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const KEY: u32 = 4242;

fn server() -> Server {
    Server::start_with(Options {
        args: vec!["--smalld-secret-key".into(), KEY.to_string()],
        ..Options::default()
    })
}

fn client(server: &Server, key: u32) -> SmalldClient {
    SmalldClient::new(&server.smalld_addr(), key, Duration::from_secs(10))
}

#[tokio::test]
async fn every_request_type_and_the_acceptance_scenario() {
    let server = server();
    let c = client(&server, KEY);
    assert!(c.set(b"name", b"Alfred E. Newman\0").await.unwrap());
    assert_eq!(
        c.get(b"name").await.unwrap().unwrap().as_ref(),
        b"Alfred E. Newman\0"
    );
    assert_eq!(c.get(b"nome").await.unwrap(), None);
    let digest = c.digest(b"Alfred E. Newman\0").await.unwrap().unwrap();
    assert_eq!(
        digest.as_ref(),
        b"a7b47dc97e99389e3b09850c3a8843e28f8c29a8ee78b3ce6aee19ba5daf1a05  -\n\0"
    );
    let hosts = std::fs::read("/etc/hosts").unwrap();
    assert_eq!(
        c.run(b"hosts").await.unwrap().unwrap().as_ref(),
        &hosts[..hosts.len().min(100)]
    );
    let services = std::fs::read("/etc/services").ok();
    match services {
        Some(s) => assert_eq!(
            c.run(b"service").await.unwrap().unwrap().as_ref(),
            &s[..s.len().min(100)]
        ),
        None => assert_eq!(c.run(b"service").await.unwrap(), None),
    }
    let inet_available = [
        "/sbin/ifconfig",
        "/sbin/ip",
        "/usr/sbin/ip",
        "/bin/ip",
        "/usr/bin/ip",
    ]
    .iter()
    .any(|p| std::path::Path::new(p).exists());
    let inet = c.run(b"inet").await.unwrap();
    assert_eq!(inet.is_some(), inet_available);
    if let Some(out) = inet {
        assert!(!out.is_empty() && out.len() <= 100);
    }
    assert_eq!(c.run(b"inot").await.unwrap(), None);
    assert!(c.set(b"foo", b"I prefer Python to C\0").await.unwrap());
    assert_eq!(
        c.get(b"foo").await.unwrap().unwrap().as_ref(),
        b"I prefer Python to C\0"
    );
    assert_eq!(
        c.get(b"PATH").await.unwrap(),
        None,
        "names are not environment variables"
    );

    // The request log: four lines and the separator per request.
    let log = server.log_text();
    assert!(log.contains("Secret key = 4242\nRequest type = set\nDetail = name: Alfred E. Newman\nCompletion = success\n--------------------------\n"), "{log}");
    assert!(
        log.contains("Request type = get\nDetail = nome\nCompletion = failure\n"),
        "{log}"
    );
    assert!(
        log.contains("Request type = run\nDetail = inot\nCompletion = failure\n"),
        "{log}"
    );
}

#[tokio::test]
async fn golden_bytes_and_garbage_after_the_name() {
    let server = server();
    let c = client(&server, KEY);
    let set = hex("00 00 10 92 00 00 00 00  6e 61 6d 65 00 de ad be ef 01 02 03 04 05 06 07  00 11  41 6c 66 72 65 64 20 45 2e 20 4e 65 77 6d 61 6e 00");
    assert_eq!(c.raw(&set).await.unwrap(), [0, 0, 0, 0]);
    let get = hex("00 00 10 92 00 01 00 00  6e 61 6d 65 00 ff ee dd cc bb aa 99 88 77 66 55");
    assert_eq!(
        c.raw(&get).await.unwrap(),
        hex("00 00 00 00 00 11 41 6c 66 72 65 64 20 45 2e 20 4e 65 77 6d 61 6e 00")
    );
    // Bytes after the complete request are ignored.
    let mut trailing = get.clone();
    trailing.extend_from_slice(&[9; 50]);
    assert_eq!(c.raw(&trailing).await.unwrap().len(), 23);
    // Failure replies are exactly FF 00 00 00.
    assert_eq!(
        c.raw(&hex("00 00 10 92 00 03 00 00 69 6e 6f 74 00 00 00 00"))
            .await
            .unwrap(),
        [0xff, 0, 0, 0]
    );
    assert_eq!(
        c.raw(&hex("00 00 10 92 00 09 00 00")).await.unwrap(),
        [0xff, 0, 0, 0],
        "unknown type"
    );
    let long = [
        &hex("00 00 10 92 00 00 00 00")[..],
        b"n\0..............",
        &[0, 101],
    ]
    .concat();
    assert_eq!(
        c.raw(&long).await.unwrap(),
        [0xff, 0, 0, 0],
        "value over 100 bytes, not read"
    );
    assert!(server.log_text().contains("Request type = unknown (9)"));
}

#[tokio::test]
async fn wrong_key_closes_without_a_byte() {
    let server = server();
    let wrong = client(&server, KEY + 1);
    assert_eq!(
        wrong
            .raw(&hex(
                "00 00 10 93 00 01 00 00 6e 61 6d 65 00 00 00 00 00 00 00 00 00 00 00 00"
            ))
            .await
            .unwrap(),
        Vec::<u8>::new()
    );
    assert!(matches!(
        wrong.get(b"name").await,
        Err(polykv_client::ClientError::Closed)
    ));
    assert!(server
        .log_text()
        .contains("Secret key = 4243\n--------------------------\n"));
}

#[tokio::test]
async fn hostile_run_names_are_refused() {
    let server = server();
    let c = client(&server, KEY);
    for program in [
        &b"hosts;id"[..7],
        b"../bin",
        b"/bin/sh",
        b"$(id)",
        b"`id`",
        b"inet ",
        b"HOSTS",
        b"a|b",
        b"hos ts",
    ] {
        assert_eq!(
            c.run(program).await.unwrap(),
            None,
            "{:?}",
            String::from_utf8_lossy(program)
        );
    }
    // An over-long program field (no NUL within 8 bytes).
    assert_eq!(
        c.raw(&hex("00 00 10 92 00 03 00 00 68 6f 73 74 73 73 73 73"))
            .await
            .unwrap(),
        [0xff, 0, 0, 0]
    );
}

#[tokio::test]
async fn run_can_be_disabled() {
    let server =
        Server::start_with_args(&["--smalld-secret-key", "7", "--smalld-run-enabled", "false"]);
    assert_eq!(client(&server, 7).run(b"hosts").await.unwrap(), None);
}

#[tokio::test]
async fn a_silent_client_is_closed_after_the_request_timeout() {
    let server = Server::start_with_args(&[
        "--smalld-secret-key",
        "7",
        "--smalld-request-timeout-secs",
        "1",
    ]);
    for partial in [&[][..], &[0, 0, 0, 7, 0, 1, 0, 0, b'a'][..]] {
        let mut stream = TcpStream::connect(server.smalld_addr()).await.unwrap();
        stream.write_all(partial).await.unwrap();
        let started = Instant::now();
        let mut buf = [0u8; 8];
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .unwrap();
        assert!(matches!(read, Ok(0) | Err(_)), "closed without a reply");
        assert!(started.elapsed() >= Duration::from_millis(800));
    }
    assert!(
        server
            .log_text()
            .contains("Detail = a\nCompletion = failure"),
        "{}",
        server.log_text()
    );
}

#[tokio::test]
async fn values_survive_restart_and_the_generated_key_is_private() {
    let mut server = Server::start();
    let key_file = server.data_dir.join("smalld.key");
    let key: u32 = std::fs::read_to_string(&key_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(
        std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(
        server.log_text().contains(&format!("secret_key={key}")),
        "the generated key is printed at startup"
    );
    assert!(client(&server, key).set(b"kept", b"42").await.unwrap());
    assert_eq!(server.terminate(), Some(0));
    let server = Server::start_with(Options {
        data_dir: Some(server.data_dir.clone()),
        ..Options::default()
    });
    assert!(
        !server.log_text().contains(&format!("secret_key={key}")),
        "printed only when generated"
    );
    assert_eq!(
        client(&server, key)
            .get(b"kept")
            .await
            .unwrap()
            .unwrap()
            .as_ref(),
        b"42"
    );
}

#[test]
fn client_verbs_speak_smalld() {
    let server = server();
    let addr = server.smalld_addr();
    let cli = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--proto", "smalld", "--addr", &addr, "--secret-key", "4242"]);
        common::run_cli(&all, &[])
    };
    assert_eq!(cli(&["set", "motd", "hello", "--nul"]).1.trim(), "OK");
    assert_eq!(cli(&["get", "motd"]).1.trim(), "hello");
    let (code, _, err) = cli(&["incr", "motd", "1"]);
    assert_eq!(code, 1);
    assert!(err.contains("smalld has no incr verb"), "{err}");
    let (code, _, err) = common::run_cli(
        &[
            "get",
            "motd",
            "--proto",
            "smalld",
            "--addr",
            &addr,
            "--secret-key",
            "1",
        ],
        &[],
    );
    assert_eq!(code, 1);
    assert!(err.contains("secret key is wrong"), "{err}");
}
