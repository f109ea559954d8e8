//! The web console in a real headless Chromium, driven over WebDriver (chromedriver): browse to a
//! key, edit it, check the stored value from outside the browser, then write a key from outside
//! and watch it appear in the console's live feed. Saves a screenshot to
//! `target/console-screenshot.png`.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, http, Server};
use polykv_client::nmdb::{Mode, NmdbClient};
use serde_json::{json, Value};

struct Driver {
    port: u16,
    session: String,
    child: Child,
    _profile: tempfile::TempDir,
}

fn request(port: u16, method: &str, path: &str, body: Option<&Value>) -> Value {
    try_request(port, method, path, body)
        .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"))
}

/// One WebDriver call; never panics (it also runs from `Drop`).
fn try_request(port: u16, method: &str, path: &str, body: Option<&Value>) -> Result<Value, String> {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .map_err(|e| e.to_string())?;
    // Read the head, then exactly Content-Length bytes (chromedriver may keep the connection).
    let mut raw = Vec::new();
    let mut byte = [0u8; 1];
    while !raw.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).map_err(|e| e.to_string())? != 1 {
            return Err("chromedriver closed the connection early".into());
        }
        raw.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&raw).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let mut payload = vec![0u8; length];
    stream.read_exact(&mut payload).map_err(|e| e.to_string())?;
    serde_json::from_slice(&payload)
        .map_err(|e| format!("bad reply {:?}: {e}", String::from_utf8_lossy(&payload)))
}

impl Driver {
    fn start() -> Driver {
        let port = free_port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver not found: scripts/test.sh installs Debian's chromium-driver");
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        let profile = tempfile::tempdir().unwrap();
        let caps = json!({ "capabilities": { "alwaysMatch": { "browserName": "chrome", "goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                     "--no-first-run", "--disable-background-networking", "--disable-component-update",
                     "--disable-sync", "--window-size=1280,800", format!("--user-data-dir={}", profile.path().display())]
        }}}});
        // Built before the session exists, so a failure below still stops chromedriver.
        let mut driver = Driver {
            port,
            session: String::new(),
            child,
            _profile: profile,
        };
        let created = request(port, "POST", "/session", Some(&caps));
        driver.session = created["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {created}"))
            .to_string();
        driver
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        request(
            self.port,
            method,
            &format!("/session/{}{path}", self.session),
            body.as_ref(),
        )["value"]
            .clone()
    }

    /// Waits for an element matching `css` (optionally whose text contains `text`); returns its id.
    fn wait_for(&self, css: &str, text: Option<&str>) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let found = self.call(
                "POST",
                "/elements",
                Some(json!({ "using": "css selector", "value": css })),
            );
            for element in found.as_array().into_iter().flatten() {
                let id = element
                    .as_object()
                    .and_then(|o| o.values().next())
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                let shown = self.call("GET", &format!("/element/{id}/text"), None);
                if text.is_none_or(|t| shown.as_str().unwrap_or_default().contains(t)) {
                    return id;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no element {css} with text {text:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn click(&self, id: &str) {
        self.call("POST", &format!("/element/{id}/click"), Some(json!({})));
    }

    fn type_into(&self, id: &str, text: &str) {
        self.call("POST", &format!("/element/{id}/clear"), Some(json!({})));
        self.call(
            "POST",
            &format!("/element/{id}/value"),
            Some(json!({ "text": text })),
        );
    }

    fn screenshot(&self, path: &std::path::Path) {
        let data = self.call("GET", "/screenshot", None);
        let png = base64_decode(data.as_str().unwrap_or_default());
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        std::fs::write(path, png).unwrap();
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = try_request(
                self.port,
                "DELETE",
                &format!("/session/{}", self.session),
                None,
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let sextets: Vec<u8> = text.bytes().filter_map(value).collect();
    sextets
        .chunks(4)
        .flat_map(|c| {
            let n = c
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, v)| n | (u32::from(*v) << (18 - 6 * i)));
            let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
            bytes.into_iter().take(c.len().saturating_sub(1))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_edits_a_key_and_shows_live_changes() {
    let server = Server::start();
    let port = server.admin_port;
    let mut nmdb = NmdbClient::connect_tcp(&server.nmdb_addr(), Duration::from_secs(10))
        .await
        .unwrap();
    nmdb.set(b"greeting", b"hello", Mode::Sync).await.unwrap();

    let driver = Driver::start();
    driver.call(
        "POST",
        "/url",
        Some(json!({ "url": format!("http://127.0.0.1:{port}/") })),
    );
    let keyspace = driver.wait_for("#keyspaces li", Some("nmdb"));
    driver.click(&keyspace);
    let key = driver.wait_for("#keys li", Some("greeting"));
    driver.click(&key);
    let value = driver.wait_for("#value", None);
    driver.type_into(&value, "edited in the browser");
    let save = driver.wait_for("#save", None);
    driver.click(&save);
    driver.wait_for("#status-msg", Some("saved greeting"));

    // The edit reached the engine: read it with an nmdb client.
    let (value, _) = nmdb.get(b"greeting", Mode::Normal).await.unwrap().unwrap();
    assert_eq!(value.as_ref(), b"edited in the browser");

    // A write made through nmdb shows up in the console's live feed.
    nmdb.set(b"from-nmdb", b"42", Mode::Normal).await.unwrap();
    driver.wait_for("#feed li", Some("from-nmdb = 42"));
    let (status, _) = http(port, "GET", "/health", "").unwrap();
    assert_eq!(status, 200);

    // Cargo's scratch directory for integration tests (under the target directory, wherever
    // CARGO_TARGET_DIR puts it).
    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-screenshot.png");
    driver.screenshot(&shot);
}
