//! Serving workloads: requests that arrive over time, each with an input
//! (a length, or a prompt) and an output length. From a JSONL trace, one
//! request per line:
//!
//! ```text
//! {"arrival_s": 0.0, "input_len": 1500, "output_len": 1024}
//! {"arrival_s": 0.4, "prompt": "Summarise this:", "output_len": 64}
//! ```
//!
//! or made up: `n` requests at once with the same lengths (the SC24 poster's
//! default is 32 requests of 1500 tokens in, 1024 out). Every number is
//! checked; an error names the file, the line and the field.

use std::path::Path;

use serde::Deserialize;

use crate::io::read_text_limited;
use crate::{PlansError, Result, MAX_CONTEXT};

/// The largest trace kvpr reads (a million requests of a few dozen bytes).
const MAX_TRACE_BYTES: u64 = 64 << 20;
/// The most requests in one workload.
pub const MAX_REQUESTS: usize = 1 << 20;
/// The latest arrival a trace may give, in seconds (a day): a replay sleeps
/// until each arrival, so a far-future one would never end.
pub const MAX_ARRIVAL_S: f64 = 86_400.0;

/// One request.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    /// Its place in the workload (the trace's line order).
    pub id: usize,
    /// Seconds from the start of the run.
    pub arrival_s: f64,
    /// Prompt tokens (for a `prompt`, its length once tokenized: 0 until then).
    pub input_len: usize,
    pub output_len: usize,
    /// The prompt text, when the trace gives one instead of a length.
    pub prompt: Option<String>,
}

/// Requests in order of arrival (ties: the trace's order).
#[derive(Clone, Debug, PartialEq)]
pub struct Requests {
    pub requests: Vec<Request>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    arrival_s: f64,
    #[serde(default)]
    input_len: Option<u64>,
    #[serde(default)]
    prompt: Option<String>,
    output_len: u64,
}

impl Requests {
    /// `n` requests arriving together, `input_len` tokens in and
    /// `output_len` out each.
    pub fn at_once(n: usize, input_len: usize, output_len: usize) -> Result<Requests> {
        let bad = |field: &str, reason: String| PlansError::Invalid {
            path: "workload".into(),
            field: field.into(),
            reason,
        };
        if n == 0 || n > MAX_REQUESTS {
            return Err(bad("requests", format!("{n} is not in 1..={MAX_REQUESTS}")));
        }
        check_lens(input_len as u64, output_len as u64).map_err(|(f, r)| bad(f, r))?;
        Ok(Requests {
            requests: (0..n)
                .map(|id| Request {
                    id,
                    arrival_s: 0.0,
                    input_len,
                    output_len,
                    prompt: None,
                })
                .collect(),
        })
    }

    /// A named workload: `poster` (the SC24 poster's default: 32 requests of
    /// 1500 tokens in and 1024 out, all at once) or `ci` (8 requests of 48 in
    /// and 24 out, small enough for a test on two cores).
    pub fn preset(name: &str) -> Result<Requests> {
        match name {
            "poster" => Self::at_once(32, 1500, 1024),
            "ci" => Self::at_once(8, 48, 24),
            other => Err(PlansError::Invalid {
                path: "workload".into(),
                field: "preset".into(),
                reason: format!("unknown workload {other:?}; known: poster, ci"),
            }),
        }
    }

    /// Reads a JSONL trace.
    pub fn load(path: &Path) -> Result<Requests> {
        let text = read_text_limited(path, MAX_TRACE_BYTES)?;
        Self::parse(path, &text)
    }

    /// Parses a JSONL trace read from `path` (used only in messages).
    pub fn parse(path: &Path, text: &str) -> Result<Requests> {
        let at = |line: usize, column: usize, field: &str, message: String| PlansError::Json {
            path: path.to_path_buf(),
            line,
            column,
            field: field.into(),
            message,
        };
        let mut requests = Vec::new();
        // `\r\n` and a lone `\r` end a line as `\n` does.
        let text = text.replace("\r\n", "\n").replace('\r', "\n");
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            if raw.trim().is_empty() {
                continue;
            }
            if requests.len() == MAX_REQUESTS {
                return Err(at(
                    line,
                    1,
                    ".",
                    format!("more than {MAX_REQUESTS} requests"),
                ));
            }
            let strip = |msg: String| {
                msg.rfind(" at line ")
                    .map_or(msg.clone(), |k| msg[..k].to_string())
            };
            let de = &mut serde_json::Deserializer::from_str(raw);
            let l: Line = serde_path_to_error::deserialize(&mut *de).map_err(|e| {
                let field = e.path().to_string();
                let inner = e.into_inner();
                at(line, inner.column(), &field, strip(inner.to_string()))
            })?;
            // Exactly one object per line: `{...} xyz` and `{...} {...}` are
            // refused, not read as one request.
            de.end().map_err(|e| {
                let m = format!("{}: one JSON object per line", strip(e.to_string()));
                at(line, e.column(), ".", m)
            })?;
            if !(l.arrival_s.is_finite() && (0.0..=MAX_ARRIVAL_S).contains(&l.arrival_s)) {
                let m = format!(
                    "{} is not a time in seconds in 0..={MAX_ARRIVAL_S}",
                    l.arrival_s
                );
                return Err(at(line, 1, "arrival_s", m));
            }
            let input_len = match (&l.input_len, &l.prompt) {
                (Some(_), Some(_)) => {
                    let m = "give input_len or prompt, not both".to_string();
                    return Err(at(line, 1, "input_len", m));
                }
                (None, None) => {
                    let m = "missing: give input_len (tokens) or prompt (text)".to_string();
                    return Err(at(line, 1, "input_len", m));
                }
                (None, Some(p)) if p.is_empty() => {
                    return Err(at(line, 1, "prompt", "is empty".into()));
                }
                (None, Some(_)) => 0,
                (Some(n), None) => *n,
            };
            let check_in = if l.prompt.is_some() { 1 } else { input_len };
            if let Err((field, reason)) = check_lens(check_in, l.output_len) {
                return Err(at(line, 1, field, reason));
            }
            requests.push(Request {
                id: requests.len(),
                arrival_s: l.arrival_s,
                input_len: input_len as usize,
                output_len: l.output_len as usize,
                prompt: l.prompt,
            });
        }
        if requests.is_empty() {
            return Err(PlansError::Input {
                path: path.to_path_buf(),
                reason: "no request: one JSON object per line, e.g. {\"arrival_s\": 0, \"input_len\": 128, \"output_len\": 64}".into(),
            });
        }
        // Stable: requests arriving together keep the trace's order.
        requests.sort_by(|a, b| a.arrival_s.total_cmp(&b.arrival_s));
        Ok(Requests { requests })
    }
}

/// Input and output lengths a model could serve; the error names the field.
fn check_lens(input: u64, output: u64) -> std::result::Result<(), (&'static str, String)> {
    let max = MAX_CONTEXT as u64;
    if input == 0 || input > max {
        return Err(("input_len", format!("{input} is not in 1..={max}")));
    }
    if output == 0 || output > max {
        return Err(("output_len", format!("{output} is not in 1..={max}")));
    }
    if input + output > max {
        return Err((
            "output_len",
            format!("{input} + {output} tokens exceed {max}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Requests> {
        Requests::parse(Path::new("t.jsonl"), text)
    }

    #[test]
    fn a_trace_reads_in_order_of_arrival() {
        let r = parse(
            "{\"arrival_s\": 0.5, \"input_len\": 10, \"output_len\": 4}\n\n\
             {\"arrival_s\": 0.0, \"prompt\": \"hello\", \"output_len\": 2}\n\
             {\"arrival_s\": 0.5, \"input_len\": 3, \"output_len\": 1}\n",
        )
        .unwrap();
        let ids: Vec<usize> = r.requests.iter().map(|q| q.id).collect();
        assert_eq!(ids, vec![1, 0, 2]);
        assert_eq!(r.requests[0].prompt.as_deref(), Some("hello"));
        assert_eq!(r.requests[1].input_len, 10);
    }

    /// Issue 12: a malformed line fails with its line number (and the field).
    #[test]
    fn a_malformed_line_names_its_number_and_field() {
        let good = "{\"arrival_s\": 0, \"input_len\": 8, \"output_len\": 4}\n";
        let cases = [
            (
                "{\"arrival_s\": 0, \"input_len\": 8, \"output_len\": 4",
                "t.jsonl:3:",
                "",
            ),
            (
                "{\"arrival_s\": -1, \"input_len\": 8, \"output_len\": 4}",
                "t.jsonl:3:",
                "arrival_s",
            ),
            (
                "{\"arrival_s\": 0, \"input_len\": 0, \"output_len\": 4}",
                "t.jsonl:3:",
                "input_len",
            ),
            (
                "{\"arrival_s\": 0, \"input_len\": 8, \"output_len\": 0}",
                "t.jsonl:3:",
                "output_len",
            ),
            (
                "{\"arrival_s\": 0, \"output_len\": 4}",
                "t.jsonl:3:",
                "input_len",
            ),
            (
                "{\"arrival_s\": 0, \"input_len\": 8, \"prompt\": \"x\", \"output_len\": 4}",
                "t.jsonl:3:",
                "not both",
            ),
            (
                "{\"arrival_s\": 0, \"input_len\": 8, \"output_len\": 4, \"colour\": 1}",
                "t.jsonl:3:",
                "colour",
            ),
            (
                "{\"arrival_s\": \"soon\", \"input_len\": 8, \"output_len\": 4}",
                "t.jsonl:3:",
                "arrival_s",
            ),
            (
                "{\"arrival_s\": 0, \"input_len\": 1e3, \"output_len\": 4}",
                "t.jsonl:3:",
                "input_len",
            ),
            (
                "{\"arrival_s\": 0, \"input_len\": 99999999, \"output_len\": 4}",
                "t.jsonl:3:",
                "input_len",
            ),
        ];
        for (bad, at, field) in cases {
            let text = format!("{good}{good}{bad}\n{good}");
            let e = parse(&text).unwrap_err().to_string();
            assert!(e.starts_with(at) && e.contains(field), "{bad}: {e}");
        }
        let e = parse("\n\n").unwrap_err().to_string();
        assert!(e.contains("no request"), "{e}");
    }

    /// Issue 19, finding 5: one object per line (trailing text or a second
    /// object on a line is an error naming the line), CR and CRLF line
    /// endings count as line ends, and an arrival past a day is refused
    /// (a replay would sleep until it).
    #[test]
    fn one_object_per_line_any_line_ending_and_bounded_arrivals() {
        let good = "{\"arrival_s\": 0, \"input_len\": 8, \"output_len\": 4}";
        for bad in [format!("{good} xyz"), format!("{good} {good}")] {
            let e = parse(&format!("{good}\n{bad}\n")).unwrap_err().to_string();
            assert!(
                e.starts_with("t.jsonl:2:") && e.contains("one JSON object per line"),
                "{bad}: {e}"
            );
        }
        for end in ["\r", "\r\n", "\n"] {
            let r = parse(&[good, good, good].join(end)).unwrap();
            assert_eq!(r.requests.len(), 3, "{end:?}");
        }
        let e = parse(&format!("{good}\r{good} x\r"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("t.jsonl:2:"), "{e}");
        let far = "{\"arrival_s\": 1e308, \"input_len\": 8, \"output_len\": 4}";
        let e = parse(far).unwrap_err().to_string();
        assert!(e.contains("arrival_s") && e.contains("86400"), "{e}");
        parse("{\"arrival_s\": 86400, \"input_len\": 8, \"output_len\": 4}").unwrap();
    }

    #[test]
    fn presets_are_the_posters_and_a_small_one() {
        let p = Requests::preset("poster").unwrap();
        assert_eq!(p.requests.len(), 32);
        assert!(p
            .requests
            .iter()
            .all(|q| q.input_len == 1500 && q.output_len == 1024));
        assert_eq!(Requests::preset("ci").unwrap().requests.len(), 8);
        let e = Requests::preset("huge").unwrap_err().to_string();
        assert!(e.contains("poster, ci"), "{e}");
    }

    #[test]
    fn requests_at_once_check_their_numbers() {
        let r = Requests::at_once(32, 1500, 1024).unwrap();
        assert_eq!(r.requests.len(), 32);
        assert!(r
            .requests
            .iter()
            .all(|q| q.arrival_s == 0.0 && q.input_len == 1500));
        for (n, i, o, field) in [
            (0, 8, 8, "requests"),
            (2, 0, 8, "input_len"),
            (2, 8, 0, "output_len"),
        ] {
            let e = Requests::at_once(n, i, o).unwrap_err().to_string();
            assert!(e.contains(field), "{e}");
        }
    }
}
