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
    /// What it said on stderr before it listened.
    banner: String,
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
        let mut banner = String::new();
        let port = loop {
            let line = lines
                .next()
                .unwrap_or_else(|| panic!("kvpr serve stopped before it listened:\n{banner}"))
                .unwrap();
            banner.push_str(&line);
            banner.push('\n');
            if let Some(at) = line.split("listening on http://127.0.0.1:").nth(1) {
                break at.trim().parse().unwrap();
            }
        };
        // Keep draining its stderr so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Server {
            child,
            port,
            banner,
        }
    }

    /// The device blocks its engine has, from its banner.
    fn blocks(&self) -> usize {
        self.banner
            .split(" blocks of ")
            .next()
            .and_then(|s| s.rsplit(", ").next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no block count in\n{}", self.banner))
    }

    /// Opens a streamed completion and reads until `until` has come;
    /// returns the connection, held open.
    fn open_stream(&self, body: &str, until: &str) -> TcpStream {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        let req = format!(
            "POST /v1/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 512];
        while !String::from_utf8_lossy(&got).contains(until) {
            let n = s.read(&mut buf).unwrap();
            assert!(
                n > 0,
                "the stream ended before {until:?}: {}",
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&buf[..n]);
        }
        s
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
    let ask = |p: &str| serde_json::json!({"model": "tiny-mha", "prompt": p, "max_tokens": 20, "temperature": 0});
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
    // Read until the first token's event, then leave.
    drop(srv.open_stream(body, "data: "));
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
    bad(r#"{"prompt": "hi", "temperature": 2.5}"#, "temperature");
    bad(r#"{"prompt": "hi", "temperature": -0.1}"#, "temperature");
    bad(r#"{"prompt": "hi", "temperature": "hot"}"#, "temperature");
    bad(r#"{"prompt": "hi", "top_p": 0}"#, "top_p");
    bad(r#"{"prompt": "hi", "top_p": 1.5}"#, "top_p");
    bad(r#"{"prompt": "hi", "top_k": 0.5}"#, "top_k");
    bad(r#"{"prompt": "hi", "top_k": -2}"#, "top_k");
    bad(r#"{"prompt": "hi", "seed": "x"}"#, "seed");
    bad(r#"{"prompt": "hi", "stop": ""}"#, "stop");
    bad(r#"{"prompt": "hi", "stop": [1]}"#, "stop");
    bad(r#"{"prompt": "hi", "stream": "yes"}"#, "stream");
    bad(
        r#"{"prompt": "hi", "stream_options": {"include_usage": true}}"#,
        "stream_options",
    );
    bad(
        r#"{"prompt": "hi", "stream": true, "return_token_ids": true}"#,
        "return_token_ids",
    );
    bad(r#"{"prompt": "hi", "n": 2}"#, "n");
    bad(
        r#"{"prompt": "hi", "presence_penalty": 0.5}"#,
        "presence_penalty",
    );
    bad(r#"{"prompt": "hi", "logprobs": 2}"#, "logprobs");
    bad(r#"{"prompt": "hi", "logit_bias": {"5": 10}}"#, "logit_bias");
    // Neutral values of what kvpr does not implement are taken.
    let neutral = r#"{"prompt": "hi", "max_tokens": 2, "n": 1, "presence_penalty": 0.0, "logprobs": null, "echo": false, "top_k": -1}"#;
    let (s, text) = srv.call("POST", "/v1/completions", neutral, &[key]);
    assert_eq!(s, 200, "{text}");
    // Chat: its fields, and a preset has no chat template to render with.
    let chat_bad = |body: &str, field: &str, needle: &str| {
        let (s, text) = srv.call("POST", "/v1/chat/completions", body, &[key]);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(s, 400, "{body}: {text}");
        assert_eq!(v["error"]["param"], field, "{body}: {text}");
        assert!(text.contains(needle), "{body}: {text}");
    };
    chat_bad(r#"{"max_tokens": 4}"#, "messages", "required");
    chat_bad(r#"{"messages": []}"#, "messages", "non-empty");
    chat_bad(
        r#"{"messages": [{"role": 1, "content": "x"}]}"#,
        "messages",
        "messages[0]",
    );
    chat_bad(
        r#"{"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}"#,
        "messages",
        "text models",
    );
    chat_bad(
        r#"{"messages": [{"role": "user", "content": "hi"}]}"#,
        "messages",
        "--chat-template",
    );
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

/// The greedy tokens `kvpr run` gives `prompt` alone on the server's preset.
fn solo_tokens(prompt: &str, new_tokens: usize) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let hw = common::profile("cpu-reference.json");
    let out = dir.path().join("solo.json");
    let o = common::kvpr(
        &[
            "run",
            "--model",
            "preset:tiny-mha",
            "--hardware",
            hw.to_str().unwrap(),
            "--prompt",
            prompt,
            "--max-new-tokens",
            &new_tokens.to_string(),
            "--summary-json",
            out.to_str().unwrap(),
        ],
        dir.path(),
    );
    assert!(o.status.success(), "{}", common::stderr(&o));
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out).unwrap()).unwrap();
    v["tokens"][0].clone()
}

/// A chat template for a preset (which has none of its own).
const TEMPLATE: &str = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}\n";

fn with_template(dir: &std::path::Path) -> String {
    let path = dir.join("chat.jinja");
    std::fs::write(&path, TEMPLATE).unwrap();
    path.display().to_string()
}

/// Per-request sampling (a seed repeats itself, alone or among others),
/// stop strings (the text ends before the first, whole or streamed), and
/// chat rendered with the template, whole and streamed, with usage.
#[test]
fn sampling_stop_strings_and_chat() {
    let dir = tempfile::tempdir().unwrap();
    let tpl = with_template(dir.path());
    let srv = Server::start(&["--chat-template", &tpl, "--block-size", "4"]);
    let complete = |v: serde_json::Value| {
        let (s, v) = srv.complete(v);
        assert_eq!(s, 200, "{v}");
        v
    };
    // Seeded draws: the same alone, again, and among other requests.
    let seeded = serde_json::json!({"prompt": "sample kv", "max_tokens": 16, "temperature": 0.9, "top_k": 50, "seed": 7});
    let once = text(&complete(seeded.clone()));
    assert_eq!(text(&complete(seeded.clone())), once);
    let greedy = text(&complete(
        serde_json::json!({"prompt": "sample kv", "max_tokens": 16, "temperature": 0}),
    ));
    assert_ne!(once, greedy, "temperature 0.9 drew the greedy tokens");
    let mut other = seeded.clone();
    other["seed"] = serde_json::json!(8);
    let together: Vec<String> = std::thread::scope(|sc| {
        let hs: Vec<_> = [seeded.clone(), other.clone(), seeded.clone()]
            .into_iter()
            .map(|b| sc.spawn(|| text(&complete(b))))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!((&together[0], &together[2]), (&once, &once));
    assert_ne!(together[1], once, "the seed made no difference");

    // Stop strings: cut before the first, and the reason is "stop".
    let long = serde_json::json!({"prompt": "stop here kv", "max_tokens": 24, "temperature": 0});
    let full = text(&complete(long.clone()));
    let chars: Vec<char> = full.chars().collect();
    assert!(chars.len() >= 12, "{full:?}");
    let stop: String = chars[6..8].iter().collect();
    let want = &full[..full.find(&stop).unwrap()];
    let mut cut = long.clone();
    cut["stop"] = serde_json::json!(["\u{1}never", stop]);
    let v = complete(cut.clone());
    assert_eq!(
        (text(&v).as_str(), &v["choices"][0]["finish_reason"]),
        (want, &serde_json::json!("stop"))
    );
    assert!(
        v["usage"]["completion_tokens"].as_u64().unwrap() < 24,
        "{v}"
    );
    cut["stream"] = serde_json::json!(true);
    let (s, sse) = srv.call("POST", "/v1/completions", &cut.to_string(), &[]);
    assert_eq!(s, 200);
    let chunks: Vec<serde_json::Value> = sse
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|e| *e != "[DONE]")
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert_eq!(chunks.iter().map(text).collect::<String>(), want);
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "stop"
    );

    // Chat: the template's text completed, as a chat message.
    let messages = serde_json::json!([
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "kv "}, {"type": "text", "text": "cache?"}]},
    ]);
    let rendered = "<|system|>Be brief.\n<|user|>kv cache?\n<|assistant|>";
    let plain =
        complete(serde_json::json!({"prompt": rendered, "max_tokens": 10, "temperature": 0}));
    let body = serde_json::json!({"messages": messages, "max_tokens": 10, "temperature": 0});
    let (s, t) = srv.call("POST", "/v1/chat/completions", &body.to_string(), &[]);
    assert_eq!(s, 200, "{t}");
    let chat: serde_json::Value = serde_json::from_str(&t).unwrap();
    assert_eq!(chat["object"], "chat.completion");
    assert_eq!(chat["choices"][0]["message"]["role"], "assistant");
    assert_eq!(
        chat["choices"][0]["message"]["content"],
        text(&plain).as_str()
    );
    assert_eq!(chat["usage"], plain["usage"]);
    let mut streamed = body.clone();
    streamed["stream"] = serde_json::json!(true);
    streamed["stream_options"] = serde_json::json!({"include_usage": true});
    let (s, sse) = srv.call("POST", "/v1/chat/completions", &streamed.to_string(), &[]);
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
    assert_eq!(chunks[0]["object"], "chat.completion.chunk");
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let content: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, text(&plain));
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"], serde_json::json!([]));
    assert_eq!(last["usage"], plain["usage"]);
    assert!(srv.terminate().success());
}

/// 429 when the queue is full, deterministically: one request runs (its
/// first token seen) on a link paced to 1 MB/s, which its offloaded
/// prefix crosses every step, so it runs on for long; a second is
/// accepted and waits (`--max-running 1`); a third finds the queue of one
/// full.
#[test]
fn a_full_queue_answers_429() {
    let srv = Server::start(&[
        "--block-size",
        "4",
        "--device-memory",
        "1300KiB",
        "--max-model-len",
        "256",
        "--link-gbps",
        "0.001",
        "--max-running",
        "1",
        "--max-waiting",
        "1",
        "--shutdown-grace-s",
        "0",
    ]);
    // The cache holds less than half the first prompt (120 tokens; a
    // token's K/V is 1 KiB): from its first step, every step moves at
    // least 72 KiB at 1 MB/s, and its 120 tokens take at least 8 s.
    assert!(srv.blocks() * 4 <= 48, "{}", srv.banner);
    let long = format!(
        r#"{{"prompt": "{}", "max_tokens": 120, "stream": true}}"#,
        "kv ".repeat(40)
    );
    let long = long.as_str();
    let first = srv.open_stream(long, "data: ");
    // Its headers come once it is queued.
    let second = srv.open_stream(long, "200 OK");
    let (s, text) = srv.call(
        "POST",
        "/v1/completions",
        r#"{"prompt": "third", "max_tokens": 2}"#,
        &[],
    );
    assert_eq!(s, 429, "{text}");
    assert!(text.contains("rate_limit_error"), "{text}");
    drop((first, second));
    assert!(srv.terminate().success());
}

/// 64 clients at once, prompts of mixed lengths, on a cache of a quarter
/// of what they hold: every request completes exactly once, with the
/// tokens `kvpr run` gives its prompt alone.
#[test]
fn sixty_four_clients_on_a_quarter_of_the_cache_each_get_their_solo_tokens() {
    let srv = Server::start(&[
        "--block-size",
        "4",
        "--device-memory",
        "2680KiB",
        "--max-model-len",
        "64",
        "--max-running",
        "16",
    ]);
    let prompts: Vec<String> = (0..8)
        .map(|i| format!("{i}{}", " kv".repeat(1 + 2 * i)))
        .collect();
    let new_tokens = 12;
    let held: usize = (0..64)
        .map(|c| (prompts[c % 8].len() + new_tokens).div_ceil(4))
        .sum();
    assert!(
        srv.blocks() * 4 <= held,
        "{} blocks is more than a quarter of the {held} the requests hold",
        srv.blocks()
    );
    let solo: Vec<serde_json::Value> = prompts.iter().map(|p| solo_tokens(p, new_tokens)).collect();
    let got: Vec<serde_json::Value> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..64)
            .map(|c| {
                let (srv, p) = (&srv, &prompts[c % 8]);
                sc.spawn(move || {
                    let (s, v) = srv.complete(serde_json::json!({
                        "prompt": p, "max_tokens": new_tokens, "temperature": 0, "return_token_ids": true,
                    }));
                    assert_eq!(s, 200, "client {c}: {v}");
                    assert_eq!(v["choices"][0]["finish_reason"], "length", "client {c}: {v}");
                    v["choices"][0]["token_ids"].clone()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (c, g) in got.iter().enumerate() {
        assert_eq!(g, &solo[c % 8], "client {c}");
    }
    // Each once: 64 finished by length, every token counted once.
    assert_eq!(
        srv.metric("kvpr_requests_finished_total{reason=\"length\"}"),
        64.0
    );
    assert_eq!(
        srv.metric("kvpr_generation_tokens_total"),
        64.0 * new_tokens as f64
    );
    assert_eq!(srv.metric("kvpr_kv_blocks_used"), 0.0);
    assert!(srv.metric("kvpr_link_to_device_bytes_total") > 0.0);
    assert!(srv.terminate().success());
}

/// The real `openai` Python package (`make openai`) against `kvpr serve`:
/// completions, chat, streaming, stop strings, seeds and the client's own
/// error types (tests/openai_client.py).
#[test]
fn the_openai_python_client_works_against_kvpr_serve() {
    let Some(client) = common::openai_client() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let tpl = with_template(dir.path());
    let srv = Server::start(&["--api-key", "sesame", "--chat-template", &tpl]);
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/openai_client.py");
    let o = Command::new("python3")
        .arg(&script)
        .args([
            &format!("http://127.0.0.1:{}/v1", srv.port),
            "sesame",
            "tiny-mha",
        ])
        .env("PYTHONPATH", &client)
        .output()
        .expect("python3 runs");
    assert!(
        o.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(srv.terminate().success());
}

/// A request whose prompt is four times the device's whole K/V capacity
/// is served, not refused: its oldest blocks go to the host at prefill and
/// cross the link every step, and its tokens are those `kvpr run` gives
/// the prompt with nothing offloaded.
#[test]
fn a_prompt_four_times_the_device_cache_completes_with_its_unpressured_tokens() {
    let srv = Server::start(&[
        "--block-size",
        "4",
        "--device-memory",
        "1300KiB",
        "--max-model-len",
        "256",
        "--max-running",
        "1",
    ]);
    let prompt = format!("long{}", " kv".repeat(4 * srv.blocks() * 4 / 3));
    assert!(prompt.len() >= 4 * srv.blocks() * 4, "{}", srv.banner);
    let solo = solo_tokens(&prompt, 16);
    let (s, v) = srv.complete(serde_json::json!({
        "prompt": prompt, "max_tokens": 16, "temperature": 0, "return_token_ids": true,
    }));
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["choices"][0]["token_ids"], solo);
    assert!(srv.metric("kvpr_link_to_device_bytes_total") > 0.0);
    assert!(srv.metric("kvpr_link_to_host_bytes_total") > 0.0);
    assert_eq!(srv.metric("kvpr_kv_blocks_used"), 0.0);
    assert!(srv.terminate().success());
}
