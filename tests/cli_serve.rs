//! Issue 20: `kvpr serve` answers the OpenAI completions API over HTTP on
//! loopback: health and models, completions whole and streamed (the same
//! text, `[DONE]` at the end, usage counted), many clients at once each
//! with the tokens it gets alone while the K/V overflows a small cache,
//! field-naming 400s, 401 without the key, and SIGTERM drains and exits 0.
//! Every request loop here is bounded; the server listens on 127.0.0.1 only.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};

struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start(extra: &[&str]) -> Server {
        let hw = common::profile("cpu-reference.json");
        let mut child = Command::new(env!("CARGO_BIN_EXE_kvpr"))
            .args([
                "serve",
                "--model",
                "preset:tiny-mha",
                "--hardware",
                hw.to_str().unwrap(),
                "--port",
                "0",
                "--host-memory",
                "64MiB",
            ])
            .args(extra)
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("kvpr serve starts");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let port = loop {
            let line = lines
                .next()
                .expect("kvpr serve says where it listens")
                .unwrap();
            if let Some(at) = line.split("listening on http://127.0.0.1:").nth(1) {
                break at.trim().parse().unwrap();
            }
        };
        // Keep draining its stderr so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Server { child, port }
    }

    /// One HTTP/1.1 request; the status and the body (de-chunked).
    fn call(&self, method: &str, path: &str, body: &str, headers: &[&str]) -> (u16, String) {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        );
        for h in headers {
            req.push_str(h);
            req.push_str("\r\n");
        }
        req.push_str("\r\n");
        req.push_str(body);
        s.write_all(req.as_bytes()).unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).unwrap();
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (head, rest) = text.split_once("\r\n\r\n").expect("a response");
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        let chunked = head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked");
        (
            status,
            if chunked {
                dechunk(rest)
            } else {
                rest.to_string()
            },
        )
    }

    /// A sample of `/metrics` by its full name (labels included).
    fn metric(&self, name: &str) -> f64 {
        let (s, text) = self.call("GET", "/metrics", "", &[]);
        assert_eq!(s, 200);
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in\n{text}"))
    }

    fn complete(&self, body: serde_json::Value) -> (u16, serde_json::Value) {
        let (status, text) = self.call("POST", "/v1/completions", &body.to_string(), &[]);
        (status, serde_json::from_str(&text).unwrap_or_default())
    }

    /// SIGTERM, then its exit status.
    fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        self.child.wait().unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    loop {
        let Some((size, rest)) = s.split_once("\r\n") else {
            return out;
        };
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            return out;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
}

fn text(v: &serde_json::Value) -> String {
    v["choices"][0]["text"].as_str().unwrap().to_string()
}

#[test]
fn completions_whole_streamed_and_concurrent_under_overflow() {
    // The engine's buffers (1.11 MiB) and a pool of 13 blocks of 4 tokens:
    // eight requests of 40 to 61 tokens overflow it many times over.
    let srv = Server::start(&[
        "--block-size",
        "4",
        "--device-memory",
        "1190KiB",
        "--max-running",
        "8",
        "--max-model-len",
        "64",
    ]);
    let (s, health) = srv.call("GET", "/health", "", &[]);
    assert_eq!((s, health.contains("ok")), (200, true), "{health}");
    let (s, models) = srv.call("GET", "/v1/models", "", &[]);
    assert!(s == 200 && models.contains("tiny-mha"), "{models}");

    let prompts: Vec<String> = (0..8)
        .map(|i| format!("request {i}: {}", "kv ".repeat(3 + i)))
        .collect();
    let ask = |p: &str| serde_json::json!({"model": "tiny-mha", "prompt": p, "max_tokens": 20});
    // Alone, one after another.
    let alone: Vec<serde_json::Value> = prompts
        .iter()
        .map(|p| {
            let (s, v) = srv.complete(ask(p));
            assert_eq!(s, 200, "{v}");
            v
        })
        .collect();
    for (p, v) in prompts.iter().zip(&alone) {
        let u = &v["usage"];
        assert_eq!(u["prompt_tokens"], p.len(), "{v}");
        assert_eq!(u["completion_tokens"], 20, "{v}");
        assert_eq!(u["total_tokens"], p.len() + 20, "{v}");
        assert_eq!(v["choices"][0]["finish_reason"], "length");
    }
    // Streamed: the same text, chunk by chunk, then [DONE].
    let mut body = ask(&prompts[3]);
    body["stream"] = serde_json::json!(true);
    let (s, sse) = srv.call("POST", "/v1/completions", &body.to_string(), &[]);
    assert_eq!(s, 200);
    let events: Vec<&str> = sse
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert_eq!(events.last(), Some(&"[DONE]"), "{sse}");
    let chunks: Vec<serde_json::Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let streamed: String = chunks.iter().map(text).collect();
    assert_eq!(streamed, text(&alone[3]));
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "length"
    );
    // All at once, each on its own connection: each gets its text alone.
    let together: Vec<String> = std::thread::scope(|sc| {
        let handles: Vec<_> = prompts
            .iter()
            .map(|p| sc.spawn(|| srv.complete(ask(p))))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                let (s, v) = h.join().unwrap();
                assert_eq!(s, 200, "{v}");
                text(&v)
            })
            .collect()
    });
    let want: Vec<String> = alone.iter().map(text).collect();
    assert_eq!(together, want);
    // Seventeen requests of 20 tokens ended by length, everything freed,
    // and the cache overflowed (K/V crossed the link).
    let finished = srv.metric("kvpr_requests_finished_total{reason=\"length\"}");
    assert_eq!(finished, 17.0);
    assert_eq!(srv.metric("kvpr_generation_tokens_total"), 340.0);
    assert_eq!(srv.metric("kvpr_time_to_first_token_seconds_count"), 17.0);
    assert_eq!(srv.metric("kvpr_kv_blocks_used"), 0.0);
    assert_eq!(srv.metric("kvpr_requests_running"), 0.0);
    assert!(srv.metric("kvpr_link_to_device_bytes_total") > 0.0);
    assert!(srv.terminate().success());
}

/// A client that goes away mid-stream has its request aborted and its
/// blocks freed, and the server goes on serving. The link is paced to
/// 1 MB/s, so each token waits for its offloaded prefix to cross: the
/// request is still running when its client leaves.
#[test]
fn a_client_that_disconnects_has_its_request_aborted_and_its_blocks_freed() {
    let srv = Server::start(&[
        "--block-size",
        "4",
        "--device-memory",
        "1160KiB",
        "--max-model-len",
        "64",
        "--link-gbps",
        "0.001",
        "--max-running",
        "8",
    ]);
    let body = r#"{"prompt": "request: kv kv kv", "max_tokens": 40, "stream": true}"#;
    let mut s = TcpStream::connect(("127.0.0.1", srv.port)).unwrap();
    let req = format!(
        "POST /v1/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    // Read until the first token's event, then leave.
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    while !String::from_utf8_lossy(&got).contains("data: ") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "the stream ended before its first event");
        got.extend_from_slice(&buf[..n]);
    }
    drop(s);
    // The engine notices at the request's next tokens; wait for it, boundedly.
    let mut aborted = 0.0;
    for _ in 0..600 {
        aborted = srv.metric("kvpr_requests_finished_total{reason=\"abort\"}");
        if aborted > 0.0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(aborted, 1.0);
    assert_eq!(
        srv.metric("kvpr_requests_finished_total{reason=\"length\"}"),
        0.0
    );
    assert!(srv.metric("kvpr_generation_tokens_total") < 40.0);
    assert_eq!(srv.metric("kvpr_kv_blocks_used"), 0.0);
    assert_eq!(srv.metric("kvpr_requests_running"), 0.0);
    // And it serves the next request whole.
    let (st, v) = srv.complete(serde_json::json!({"prompt": "again", "max_tokens": 3}));
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["usage"]["completion_tokens"], 3);
    assert!(srv.terminate().success());
}

#[test]
fn bad_requests_get_400_naming_the_field_and_a_key_is_required_when_set() {
    let srv = Server::start(&["--api-key", "sesame"]);
    let key = "Authorization: Bearer sesame";
    let bad = |body: &str, field: &str| {
        let (s, text) = srv.call("POST", "/v1/completions", body, &[key]);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(s, 400, "{body}: {text}");
        assert_eq!(v["error"]["param"], field, "{body}: {text}");
        assert_eq!(v["error"]["type"], "invalid_request_error");
    };
    bad("{not json", "body");
    bad("[1, 2]", "body");
    bad(r#"{"max_tokens": 4}"#, "prompt");
    bad(r#"{"prompt": 7}"#, "prompt");
    bad(r#"{"prompt": "hi", "max_tokens": -1}"#, "max_tokens");
    bad(r#"{"prompt": "hi", "max_tokens": "lots"}"#, "max_tokens");
    bad(r#"{"prompt": "hi", "max_tokens": 100000}"#, "max_tokens");
    bad(r#"{"prompt": "hi", "temperature": 0.7}"#, "temperature");
    bad(r#"{"prompt": "hi", "temperature": "hot"}"#, "temperature");
    bad(r#"{"prompt": "hi", "stream": "yes"}"#, "stream");
    bad(r#"{"prompt": "hi", "n": 2}"#, "n");
    let body = r#"{"prompt": "hi", "max_tokens": 2}"#;
    for headers in [&[][..], &["Authorization: Bearer wrong"][..]] {
        let (s, text) = srv.call("POST", "/v1/completions", body, headers);
        assert_eq!(s, 401, "{text}");
        assert!(text.contains("authentication_error"), "{text}");
    }
    let (s, text) = srv.call("POST", "/v1/completions", body, &[key]);
    assert_eq!(s, 200, "{text}");
    assert!(srv.terminate().success());
}
