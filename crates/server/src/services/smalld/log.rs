//! smalld's request log (smalld.md §6): the block printed for every request. Formatting the
//! log is the server's business, not the wire format's.

use polykv_protocols::smalld::{kind, Request};

/// Printable form for the request log: up to the first `00`, bytes outside 0x20–0x7e as `\xNN`.
pub fn log_text(bytes: &[u8]) -> String {
    let text = &bytes[..bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len())];
    escape(text)
}

/// Every byte outside 0x20–0x7e as `\xNN` (for fields that could not be decoded).
pub fn escape(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for b in bytes {
        if (0x20..=0x7e).contains(b) {
            out.push(char::from(*b));
        } else {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// The request-log name of a type.
pub fn kind_name(kind: u16) -> String {
    match kind {
        kind::SET => "set".into(),
        kind::GET => "get".into(),
        kind::DIGEST => "digest".into(),
        kind::RUN => "run".into(),
        other => format!("unknown ({other})"),
    }
}

/// The request-log block (§6) for a request whose key was right.
pub fn log_block(key: u32, kind: u16, detail: &str, success: bool) -> String {
    format!(
        "Secret key = {key}\nRequest type = {}\nDetail = {detail}\nCompletion = {}\n{}\n",
        kind_name(kind),
        if success { "success" } else { "failure" },
        "-".repeat(26)
    )
}

/// The request-log block for a wrong key: the key line and the separator.
pub fn log_wrong_key(key: u32) -> String {
    format!("Secret key = {key}\n{}\n", "-".repeat(26))
}

/// The Detail of a request (§6).
pub fn detail(request: &Request) -> String {
    match request {
        Request::Set { name, value } => format!("{}: {}", log_text(name), log_text(value)),
        Request::Get { name } => log_text(name),
        Request::Digest { value } => log_text(value),
        Request::Run { program } => log_text(program),
        Request::Invalid { kind, detail } if *kind <= kind::RUN => escape(detail),
        Request::Invalid { .. } => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use polykv_protocols::smalld::decode_request;
    use polykv_protocols::Decoded;

    use super::*;

    fn hex(text: &str) -> Vec<u8> {
        text.split_whitespace()
            .map(|b| u8::from_str_radix(b, 16).expect("hex"))
            .collect()
    }

    #[test]
    fn vector_blocks() {
        // Vector 1: the set of "Alfred E. Newman".
        let set = Request::Set {
            name: "name".into(),
            value: Bytes::from(b"Alfred E. Newman\0".to_vec()),
        };
        assert_eq!(log_block(4242, 0, &detail(&set), true), "Secret key = 4242\nRequest type = set\nDetail = name: Alfred E. Newman\nCompletion = success\n--------------------------\n");
        // S3: unknown type.
        assert_eq!(log_block(1, 7, "", false), "Secret key = 1\nRequest type = unknown (7)\nDetail = \nCompletion = failure\n--------------------------\n");
        // Vector 3: get of an unset name.
        assert_eq!(
            log_block(4242, 1, &detail(&Request::Get { name: "nome".into() }), false),
            "Secret key = 4242\nRequest type = get\nDetail = nome\nCompletion = failure\n--------------------------\n"
        );
        // Vector 5: run hosts.
        assert_eq!(
            log_block(4242, 3, &detail(&Request::Run { program: "hosts".into() }), true),
            "Secret key = 4242\nRequest type = run\nDetail = hosts\nCompletion = success\n--------------------------\n"
        );
    }

    #[test]
    fn log_escaping() {
        assert_eq!(log_text(b"a\tb\x7f\0hidden"), "a\\x09b\\x7f");
        assert_eq!(escape(b"x\0y"), "x\\x00y");
        assert_eq!(
            log_wrong_key(4243),
            "Secret key = 4243\n--------------------------\n"
        );
        // S4 log block: the bytes received after the header, escaped.
        let partial = hex("6e 61 6d 65 00 aa bb cc");
        assert_eq!(
            log_block(4242, 0, &escape(&partial), false),
            "Secret key = 4242\nRequest type = set\nDetail = name\\x00\\xaa\\xbb\\xcc\nCompletion = failure\n--------------------------\n"
        );
    }

    #[test]
    fn s5_detail_prints_the_undecodable_field_escaped() {
        let no_nul = [&hex("00 00 10 92 00 01 00 00")[..], b"abcdefghijklmnop"].concat();
        let Decoded::Frame(request, 24) = decode_request(&no_nul) else {
            panic!()
        };
        assert_eq!(detail(&request), "abcdefghijklmnop");
        let empty = hex("00 00 10 92 00 03 00 00 00 41 00 00 00 00 00 00");
        let Decoded::Frame(request, 16) = decode_request(&empty) else {
            panic!()
        };
        assert_eq!(detail(&request), "\\x00A\\x00\\x00\\x00\\x00\\x00\\x00");
    }

    #[test]
    fn log_details_of_every_type() {
        let set = Request::Set {
            name: "n".into(),
            value: Bytes::from_static(b"caf\xc3\xa9\n\0tail"),
        };
        assert_eq!(detail(&set), "n: caf\\xc3\\xa9\\x0a");
        let digest_request = Request::Digest {
            value: Bytes::from_static(b"Alfred E. Newman\0"),
        };
        assert_eq!(
            log_block(4242, 2, &detail(&digest_request), true),
            "Secret key = 4242\nRequest type = digest\nDetail = Alfred E. Newman\nCompletion = success\n--------------------------\n"
        );
        assert_eq!(kind_name(65535), "unknown (65535)");
        assert_eq!(
            detail(&Request::Invalid {
                kind: 9,
                detail: Bytes::new()
            }),
            ""
        );
        // Wrong key: the key is printed unsigned.
        assert_eq!(
            log_wrong_key(u32::MAX),
            "Secret key = 4294967295\n--------------------------\n"
        );
    }
}
