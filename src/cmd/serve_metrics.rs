//! `GET /metrics` of `kvpr serve`, in Prometheus' text format: the engine
//! thread updates one [`Metrics`] after every iteration and every request's
//! end; the handler renders it.

use std::fmt::Write;

use serving::FinishReason;

/// Upper bounds of the latency histograms' buckets, s.
const BUCKETS: [f64; 14] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

#[derive(Clone, Debug, Default)]
pub struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    pub fn observe(&mut self, v: f64) {
        for (c, &b) in self.counts.iter_mut().zip(&BUCKETS) {
            if v <= b {
                *c += 1;
            }
        }
        self.count += 1;
        self.sum += v;
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (c, b) in self.counts.iter().zip(&BUCKETS) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {c}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum {}\n{name}_count {}", self.sum, self.count);
    }
}

/// What the server reports.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    pub running: usize,
    pub waiting: usize,
    pub preempted: usize,
    /// Running requests with blocks on the host (`offload`).
    pub offloaded: usize,
    pub kv_blocks_used: usize,
    pub kv_blocks: usize,
    pub bytes_to_device: u64,
    pub bytes_to_host: u64,
    pub tokens_recomputed: u64,
    pub generation_tokens: u64,
    pub prompt_tokens: u64,
    /// Requests finished, by reason: stop, length, abort.
    pub finished: [u64; 3],
    pub ttft: Histogram,
    pub tpot: Histogram,
}

impl Metrics {
    pub fn finish(&mut self, reason: FinishReason) {
        let i = match reason {
            FinishReason::Stop => 0,
            FinishReason::Length => 1,
            FinishReason::Abort => 2,
        };
        self.finished[i] += 1;
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut one = |name: &str, kind: &str, help: &str, v: String| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
            );
        };
        one(
            "kvpr_requests_running",
            "gauge",
            "Requests decoding.",
            self.running.to_string(),
        );
        one(
            "kvpr_requests_waiting",
            "gauge",
            "Requests waiting for their first place.",
            self.waiting.to_string(),
        );
        one(
            "kvpr_requests_preempted",
            "gauge",
            "Requests preempted, waiting to resume.",
            self.preempted.to_string(),
        );
        one(
            "kvpr_requests_offloaded",
            "gauge",
            "Running requests with K/V blocks in host memory.",
            self.offloaded.to_string(),
        );
        one(
            "kvpr_kv_blocks_used",
            "gauge",
            "Device K/V blocks in use.",
            self.kv_blocks_used.to_string(),
        );
        one(
            "kvpr_kv_blocks",
            "gauge",
            "Device K/V blocks in all.",
            self.kv_blocks.to_string(),
        );
        one(
            "kvpr_link_to_device_bytes_total",
            "counter",
            "Bytes copied host to device (K/V and activations).",
            self.bytes_to_device.to_string(),
        );
        one(
            "kvpr_link_to_host_bytes_total",
            "counter",
            "Bytes copied device to host.",
            self.bytes_to_host.to_string(),
        );
        one(
            "kvpr_tokens_recomputed_total",
            "counter",
            "Tokens whose K/V were computed again (from activations, or by prefilling again).",
            self.tokens_recomputed.to_string(),
        );
        one(
            "kvpr_generation_tokens_total",
            "counter",
            "Tokens generated (tokens/s: its rate).",
            self.generation_tokens.to_string(),
        );
        one(
            "kvpr_prompt_tokens_total",
            "counter",
            "Prompt tokens of the requests accepted.",
            self.prompt_tokens.to_string(),
        );
        let _ = writeln!(
            out,
            "# HELP kvpr_requests_finished_total Requests ended, by reason.\n# TYPE kvpr_requests_finished_total counter"
        );
        for (r, n) in ["stop", "length", "abort"].iter().zip(self.finished) {
            let _ = writeln!(out, "kvpr_requests_finished_total{{reason=\"{r}\"}} {n}");
        }
        self.ttft.render(
            &mut out,
            "kvpr_time_to_first_token_seconds",
            "From a request's arrival to its first token.",
        );
        self.tpot.render(
            &mut out,
            "kvpr_time_per_output_token_seconds",
            "Between successive tokens of a request.",
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text_with_cumulative_buckets() {
        let mut m = Metrics::default();
        m.ttft.observe(0.003);
        m.ttft.observe(0.2);
        m.finish(FinishReason::Abort);
        let t = m.render();
        assert!(
            t.contains("kvpr_time_to_first_token_seconds_bucket{le=\"0.001\"} 0"),
            "{t}"
        );
        assert!(
            t.contains("kvpr_time_to_first_token_seconds_bucket{le=\"0.005\"} 1"),
            "{t}"
        );
        assert!(
            t.contains("kvpr_time_to_first_token_seconds_bucket{le=\"0.25\"} 2"),
            "{t}"
        );
        assert!(
            t.contains("kvpr_time_to_first_token_seconds_bucket{le=\"+Inf\"} 2"),
            "{t}"
        );
        assert!(
            t.contains("kvpr_time_to_first_token_seconds_count 2"),
            "{t}"
        );
        assert!(
            t.contains("kvpr_requests_finished_total{reason=\"abort\"} 1"),
            "{t}"
        );
        // Every sample line is `name[{labels}] value`.
        for l in t.lines().filter(|l| !l.starts_with('#')) {
            let (_, v) = l.rsplit_once(' ').unwrap();
            assert!(v.parse::<f64>().is_ok(), "{l}");
        }
    }
}
