//! `kvpr serve`: an OpenAI-compatible HTTP server on one serving engine
//! (`serving::Engine`), for contexts whose K/V overflow the device.
//!
//! The engine runs on a thread of its own, which owns the backend and the
//! model; HTTP handlers (axum on tokio) pass it requests over a channel and
//! read each request's text back over a channel of its own. A handler that
//! goes away (a client disconnected) drops its channel, and the engine
//! aborts the request at its next token, freeing its blocks. SIGTERM (or
//! Ctrl-C) stops accepting, lets requests in flight finish for
//! `--shutdown-grace-s`, aborts the rest, and exits 0. Every accepted
//! request ends with a finish reason: `stop`, `length` or `abort`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use serving::{Engine, EngineConfig, Event, FinishReason, RequestParams, ServingError, Step};
use tokio::sync::{mpsc, oneshot};

use super::serve_metrics::Metrics;

#[derive(clap::Args, Clone)]
pub struct ServeArgs {
    /// Model: a .gguf file, a Hugging Face directory, or `preset:NAME` (seeded random weights).
    #[arg(long)]
    pub model: String,
    /// Hardware profile (from `kvpr calibrate`): prices the share of an
    /// offloaded prefix recomputed from activations.
    #[arg(long)]
    pub hardware: PathBuf,
    #[command(flatten)]
    pub dev: super::DeviceFlags,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0: any free port, printed at start).
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// What to do when the K/V cache is full: offload (keep decoding with
    /// the oldest blocks on the host), swap, recompute or partial.
    #[arg(long, default_value = "offload")]
    pub policy: String,
    /// Tokens per K/V block.
    #[arg(long, default_value_t = 16, value_parser = super::num::count::<1, { plans::MAX_CONTEXT }>)]
    pub block_size: usize,
    /// Device memory for the K/V cache and the engine's buffers (e.g.
    /// 2GiB), after the weights; default: --kv-memory-fraction of what is
    /// free after the weights.
    #[arg(long, conflicts_with = "kv_memory_fraction")]
    pub device_memory: Option<String>,
    /// Share of the device memory free after the weights given to the
    /// engine (its K/V pool and step buffers).
    #[arg(long, default_value_t = 0.3)]
    pub kv_memory_fraction: f64,
    /// Host memory for every request's K/V (and activations, under offload
    /// and partial): what bounds the context, not the device.
    #[arg(long, default_value = "4GiB")]
    pub host_memory: String,
    /// The most tokens one request may hold (prompt plus output); default: the model's context.
    #[arg(long, value_parser = super::num::count::<1, { plans::MAX_CONTEXT }>)]
    pub max_model_len: Option<usize>,
    /// The most requests decoding together.
    #[arg(long, default_value_t = 32, value_parser = super::num::count::<1, { plans::MAX_BATCH }>)]
    pub max_running: usize,
    /// The most requests waiting for a place; past it a request gets 429.
    #[arg(long, default_value_t = 256, value_parser = super::num::count::<0, { plans::MAX_REQUESTS }>)]
    pub max_waiting: usize,
    /// Require `Authorization: Bearer KEY` on every /v1 request.
    #[arg(long)]
    pub api_key: Option<String>,
    /// On SIGTERM, how long requests in flight may run before they are aborted.
    #[arg(long, default_value_t = 10.0)]
    pub shutdown_grace_s: f64,
}

/// An error as the OpenAI API gives one: a status and `{"error": {...}}`.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    message: String,
    param: Option<&'static str>,
}

impl ApiError {
    fn bad(param: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            param: Some(param),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let kind = match self.status {
            StatusCode::UNAUTHORIZED => "authentication_error",
            StatusCode::TOO_MANY_REQUESTS => "rate_limit_error",
            s if s.is_server_error() => "server_error",
            _ => "invalid_request_error",
        };
        let body = json!({"error": {
            "message": self.message, "type": kind, "param": self.param, "code": null,
        }});
        (self.status, Json(body)).into_response()
    }
}

/// A request's text as it comes, then how it ended.
enum Out {
    Text(String),
    Done {
        reason: FinishReason,
        completion_tokens: usize,
    },
}

/// What the engine thread is asked.
enum Cmd {
    Add {
        prompt: String,
        max_tokens: usize,
        /// The request's prompt tokens once it is added.
        reply: oneshot::Sender<Result<usize, ApiError>>,
        out: mpsc::UnboundedSender<Out>,
    },
    /// Stop taking requests; abort what still runs after `grace`.
    Shutdown { grace: Duration },
}

struct AppState {
    tx: mpsc::UnboundedSender<Cmd>,
    metrics: Arc<Mutex<Metrics>>,
    model: String,
    api_key: Option<String>,
    next: AtomicU64,
}

/// One request on the engine thread: where its text goes, and how much of
/// its decoded text went already.
struct Route {
    out: mpsc::UnboundedSender<Out>,
    tokens: Vec<u32>,
    sent: usize,
    /// When it was accepted, and when it last produced a token.
    since: Instant,
    last: Option<Instant>,
}

/// The engine thread: loads the model, reports ready (the model's name) or
/// why not, then serves commands until the server is gone.
fn engine_thread(
    args: &ServeArgs,
    rx: &mut mpsc::UnboundedReceiver<Cmd>,
    ready: std::sync::mpsc::Sender<anyhow::Result<String>>,
    metrics: &Mutex<Metrics>,
) -> anyhow::Result<()> {
    // Everything the engine borrows, made here so it outlives the engine;
    // a failure is the server's answer at start.
    let setup = || -> anyhow::Result<_> {
        let policy: scheduler::Policy = args
            .policy
            .parse()
            .map_err(|e: String| anyhow::anyhow!("--policy: {e}"))?;
        let (hw, _) = super::load_profile(&args.hardware)?;
        let be = args.dev.backend()?;
        let source = runtime::ModelSource::parse(&args.model).context("reading --model")?;
        eprintln!("loading {} on {}...", args.model, be.name());
        let model = super::load_model(&source, &be)?;
        let config = engine_config(args, policy, &hw, &be, &model)?;
        Ok((policy, be, model, config))
    };
    let (policy, be, model, config) = match setup() {
        Ok(x) => x,
        Err(e) => {
            let _ = ready.send(Err(e));
            return Ok(());
        }
    };
    let mut engine = match Engine::new(&be, &model, config) {
        Ok(e) => e,
        Err(e) => {
            let _ = ready.send(Err(e.into()));
            return Ok(());
        }
    };
    eprintln!(
        "engine: {} under {}, {} blocks of {} tokens on {}, up to {} tokens a request, {} running at once",
        model.spec().name,
        policy.name(),
        config.capacity_blocks,
        config.block_size,
        be.name(),
        config.max_request_tokens,
        config.max_running
    );
    let _ = ready.send(Ok(model.spec().name.clone()));
    let tok = &model.tokenizer;
    let mut routes: HashMap<usize, Route> = HashMap::new();
    let mut deadline: Option<Instant> = None;
    let start = Instant::now();
    loop {
        // Wait only when nothing runs; then take whatever else has come.
        let first = match routes.is_empty() {
            true if deadline.is_some() => return Ok(()),
            true => match rx.blocking_recv() {
                Some(cmd) => Some(cmd),
                None => return Ok(()),
            },
            false => None,
        };
        let more = std::iter::from_fn(|| rx.try_recv().ok());
        let mut m = lock(metrics);
        for cmd in first.into_iter().chain(more) {
            handle(
                cmd,
                &mut engine,
                &model,
                &mut routes,
                &mut deadline,
                args,
                start,
                &mut m,
            );
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            let ids: Vec<usize> = routes.keys().copied().collect();
            for id in ids {
                if let Some(ev) = engine.abort(id)? {
                    route(&mut engine, tok, &mut routes, ev, &mut m)?;
                }
            }
            observe(&engine, &mut m);
            continue;
        }
        drop(m);
        let step = engine.step(start.elapsed().as_secs_f64())?;
        let mut m = lock(metrics);
        match step {
            Step::Ran(events) => {
                for ev in events {
                    route(&mut engine, tok, &mut routes, ev, &mut m)?;
                }
            }
            Step::Idle { .. } => std::thread::sleep(Duration::from_millis(1)),
            Step::Done => {}
        }
        observe(&engine, &mut m);
    }
}

/// The metrics, whoever held them last (a panic elsewhere leaves them as they were).
fn lock(m: &Mutex<Metrics>) -> std::sync::MutexGuard<'_, Metrics> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The engine's gauges and counters after an iteration.
fn observe(engine: &Engine, m: &mut Metrics) {
    let (running, waiting, preempted) = engine.queue_lengths();
    let c = engine.counters();
    m.running = running;
    m.waiting = waiting;
    m.preempted = preempted;
    m.offloaded = engine.offloaded_requests();
    m.kv_blocks_used = engine.blocks_used();
    m.kv_blocks = engine.capacity_blocks();
    m.bytes_to_device = c.bytes_in;
    m.bytes_to_host = c.bytes_out + c.bytes_x_out;
    m.tokens_recomputed = c.tokens_recomputed + engine.times.reprefilled;
}

/// The engine's shape from the flags and what the device has free.
fn engine_config(
    args: &ServeArgs,
    policy: scheduler::Policy,
    hw: &plans::HardwareProfile,
    be: &kernels::Backend,
    model: &runtime::Model,
) -> anyhow::Result<EngineConfig> {
    let spec = model.spec();
    let esz = be.dtype().bytes();
    let max_len = args.max_model_len.unwrap_or(spec.max_context);
    if max_len > spec.max_context {
        bail!(
            "--max-model-len {max_len}: {} holds {} tokens",
            spec.name,
            spec.max_context
        );
    }
    let shape = plans::PagedShape {
        block_size: args.block_size,
        max_batch: args.max_running,
        keep_activations: policy.keeps_activations(),
        longest: max_len,
    };
    let budget = match &args.device_memory {
        Some(s) => super::parse_size("--device-memory", s)?,
        None => {
            let f = args.kv_memory_fraction;
            if !(f.is_finite() && f > 0.0 && f <= 1.0) {
                bail!("--kv-memory-fraction: {f} is not a share in (0, 1]");
            }
            let free = match be.free_memory()? {
                Some(free) => free,
                None => runtime::available_memory().unwrap_or(8 << 30),
            };
            (free as f64 * f) as u64
        }
    };
    // No more than a full batch of the longest requests can hold: beyond
    // that a pool is memory nobody uses.
    let most = plans::blocks_for(max_len, args.block_size).saturating_mul(args.max_running);
    let capacity = plans::PagedBytes::blocks_within(spec, &shape, esz, budget).min(most);
    let least = plans::blocks_for(
        if policy == scheduler::Policy::Offload {
            1
        } else {
            max_len
        },
        args.block_size,
    );
    if capacity < least.max(1) {
        bail!(
            "{} of device memory holds {capacity} blocks of {} tokens beside the engine's buffers ({}); {} needs {least}: give more memory or a smaller --max-model-len or --max-running",
            plans::human_bytes(budget),
            args.block_size,
            plans::human_bytes(plans::PagedBytes::new(spec, &shape, 0, esz).fixed()),
            policy.name()
        );
    }
    let host = super::parse_size("--host-memory", &args.host_memory)?;
    let per_token = spec
        .store_bytes(usize::from(shape.keep_activations), 1, esz)
        .max(1);
    let host_tokens = usize::try_from(host / per_token).unwrap_or(usize::MAX);
    if host_tokens < max_len {
        bail!(
            "--host-memory {}: holds {host_tokens} tokens of K/V{}, less than one request of --max-model-len {max_len}",
            plans::human_bytes(host),
            if shape.keep_activations { " and activations" } else { "" }
        );
    }
    // The offloaded prefix's recomputed share, priced for a full batch of
    // the longest requests, half prompt (as much as the cache holds) and
    // the rest output.
    let offload_share = match policy {
        scheduler::Policy::Offload => {
            let prompt = (max_len / 2).min(capacity * args.block_size).max(1);
            let output = max_len.saturating_sub(prompt).max(1);
            let reqs = plans::Requests::at_once(args.max_running, prompt, output)
                .context("pricing the offload share")?;
            serving::offload_share(
                spec,
                hw,
                &reqs,
                be.dtype(),
                args.block_size,
                (capacity, args.max_running),
            )
            .map_err(super::pricing_error)?
        }
        _ => 0.0,
    };
    let partial_share = match policy {
        scheduler::Policy::Partial => {
            let half = (max_len / 2).max(1);
            let reqs =
                plans::Requests::at_once(1, half, half).context("pricing the partial share")?;
            serving::resume_share(spec, hw, &reqs, be.dtype(), args.block_size)
                .map_err(super::pricing_error)?
        }
        _ => 0.0,
    };
    Ok(EngineConfig {
        policy,
        block_size: args.block_size,
        capacity_blocks: capacity,
        max_running: args.max_running,
        max_request_tokens: max_len,
        host_tokens,
        partial_share,
        offload_share,
    })
}

#[allow(clippy::too_many_arguments)]
fn handle(
    cmd: Cmd,
    engine: &mut Engine,
    model: &runtime::Model,
    routes: &mut HashMap<usize, Route>,
    deadline: &mut Option<Instant>,
    args: &ServeArgs,
    start: Instant,
    metrics: &mut Metrics,
) {
    match cmd {
        Cmd::Shutdown { grace } => {
            deadline.get_or_insert(Instant::now() + grace);
        }
        Cmd::Add {
            prompt,
            max_tokens,
            reply,
            out,
        } => {
            let result = (|| {
                if deadline.is_some() {
                    return Err(ApiError {
                        status: StatusCode::SERVICE_UNAVAILABLE,
                        message: "the server is shutting down".into(),
                        param: None,
                    });
                }
                if engine.queue_lengths().1 >= args.max_waiting {
                    return Err(ApiError {
                        status: StatusCode::TOO_MANY_REQUESTS,
                        message: format!(
                            "{} requests are waiting already; retry later",
                            args.max_waiting
                        ),
                        param: None,
                    });
                }
                let ids = model
                    .encode_prompt(0, &prompt)
                    .map_err(|e| ApiError::bad("prompt", e.to_string()))?;
                let n = ids.len();
                let params = RequestParams {
                    max_tokens,
                    stop_ids: model.tokenizer.eos_token_ids.clone(),
                };
                engine
                    .add_request(start.elapsed().as_secs_f64(), ids, params)
                    .map_err(|e| match e {
                        ServingError::Full(m) => ApiError {
                            status: StatusCode::TOO_MANY_REQUESTS,
                            message: m,
                            param: None,
                        },
                        ServingError::Request(m) => ApiError::bad("max_tokens", m),
                        ServingError::Sched(e @ scheduler::SchedError::Capacity { .. }) => {
                            ApiError::bad("prompt", e.to_string())
                        }
                        e => ApiError {
                            status: StatusCode::INTERNAL_SERVER_ERROR,
                            message: e.to_string(),
                            param: None,
                        },
                    })
                    .map(|id| (id, n))
            })();
            if let Ok((id, n)) = result {
                metrics.prompt_tokens += n as u64;
                routes.insert(
                    id,
                    Route {
                        out,
                        tokens: Vec::new(),
                        sent: 0,
                        since: Instant::now(),
                        last: None,
                    },
                );
            }
            // A handler gone before the reply: its request runs until its
            // first token finds nobody there.
            let _ = reply.send(result.map(|(_, n)| n));
        }
    }
}

/// Sends an event's text (or end) to its request; aborts a request whose
/// client is gone.
fn route(
    engine: &mut Engine,
    tok: &runtime::Tokenizer,
    routes: &mut HashMap<usize, Route>,
    ev: Event,
    metrics: &mut Metrics,
) -> anyhow::Result<()> {
    match ev {
        Event::Token { id, token } => {
            let Some(r) = routes.get_mut(&id) else {
                return Ok(());
            };
            let now = Instant::now();
            match r.last {
                None => metrics.ttft.observe((now - r.since).as_secs_f64()),
                Some(t) => metrics.tpot.observe((now - t).as_secs_f64()),
            }
            r.last = Some(now);
            metrics.generation_tokens += 1;
            if !tok.is_eos(token) {
                r.tokens.push(token);
            }
            let text = tok.decode(&r.tokens)?;
            // A token that ends inside a character waits for the next.
            if text.len() > r.sent && !text.ends_with('\u{FFFD}') && text.is_char_boundary(r.sent) {
                let delta = text[r.sent..].to_string();
                r.sent = text.len();
                if r.out.send(Out::Text(delta)).is_err() {
                    routes.remove(&id);
                    if engine.abort(id)?.is_some() {
                        metrics.finish(FinishReason::Abort);
                    }
                }
            }
        }
        Event::Finished { id, reason } => {
            metrics.finish(reason);
            if let Some(r) = routes.remove(&id) {
                let text = tok.decode(&r.tokens)?;
                if text.len() > r.sent && text.is_char_boundary(r.sent) {
                    let _ = r.out.send(Out::Text(text[r.sent..].to_string()));
                }
                let completion_tokens = engine.output(id).map_or(0, <[u32]>::len);
                let _ = r.out.send(Out::Done {
                    reason,
                    completion_tokens,
                });
            }
        }
        Event::Preempted { .. } | Event::Offloaded { .. } => {}
    }
    Ok(())
}

fn authorized(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(key) = &state.api_key else {
        return Ok(());
    };
    let given = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(g) if g == key => Ok(()),
        _ => Err(ApiError {
            status: StatusCode::UNAUTHORIZED,
            message: "a valid API key is required: Authorization: Bearer KEY".into(),
            param: None,
        }),
    }
}

/// A completion request's fields, checked; every error names its field.
struct Completion {
    prompt: String,
    max_tokens: usize,
    stream: bool,
}

fn parse_completion(body: &[u8]) -> Result<Completion, ApiError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad("body", format!("the body is not JSON: {e}")))?;
    let obj = v
        .as_object()
        .ok_or_else(|| ApiError::bad("body", "the body must be a JSON object"))?;
    let prompt = match obj.get("prompt") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(a)) if a.len() == 1 && a[0].is_string() => {
            a[0].as_str().unwrap_or_default().to_string()
        }
        Some(_) => {
            return Err(ApiError::bad(
                "prompt",
                "prompt must be a string (or a list of one)",
            ))
        }
        None => return Err(ApiError::bad("prompt", "prompt is required")),
    };
    let max_tokens = match obj.get("max_tokens") {
        None | Some(Value::Null) => 16,
        Some(v) => match v.as_u64() {
            Some(n) if n >= 1 => usize::try_from(n).unwrap_or(usize::MAX),
            _ => {
                return Err(ApiError::bad(
                    "max_tokens",
                    format!("max_tokens must be an integer of at least 1, not {v}"),
                ))
            }
        },
    };
    let stream = match obj.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(v) => {
            return Err(ApiError::bad(
                "stream",
                format!("stream must be true or false, not {v}"),
            ))
        }
    };
    match obj.get("temperature") {
        None | Some(Value::Null) => {}
        Some(v) => match v.as_f64() {
            Some(0.0) => {}
            Some(t) if (0.0..=2.0).contains(&t) => {
                return Err(ApiError::bad(
                    "temperature",
                    format!(
                    "temperature {t}: kvpr serve decodes greedily for now; send 0 or leave it out"
                ),
                ))
            }
            _ => {
                return Err(ApiError::bad(
                    "temperature",
                    format!("temperature must be a number in [0, 2], not {v}"),
                ))
            }
        },
    }
    for (field, neutral) in [("n", json!(1)), ("best_of", json!(1))] {
        if let Some(v) = obj.get(field).filter(|v| !v.is_null() && **v != neutral) {
            return Err(ApiError::bad(
                field,
                format!("{field} {v}: kvpr serve makes one completion a request"),
            ));
        }
    }
    if obj.get("stop").is_some_and(|v| !v.is_null()) {
        return Err(ApiError::bad("stop", "stop sequences are not supported yet; generation stops at the model's end-of-sequence tokens"));
    }
    Ok(Completion {
        prompt,
        max_tokens,
        stream,
    })
}

async fn completions(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match completions_inner(state, headers, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn completions_inner(
    state: Arc<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    authorized(&state, &headers)?;
    let c = parse_completion(&body)?;
    let (out, mut rx) = mpsc::unbounded_channel();
    let (reply, answer) = oneshot::channel();
    let gone = || ApiError {
        status: StatusCode::SERVICE_UNAVAILABLE,
        message: "the engine has stopped".into(),
        param: None,
    };
    state
        .tx
        .send(Cmd::Add {
            prompt: c.prompt,
            max_tokens: c.max_tokens,
            reply,
            out,
        })
        .map_err(|_| gone())?;
    let prompt_tokens = answer.await.map_err(|_| gone())??;
    let name = format!("cmpl-{}", state.next.fetch_add(1, Ordering::Relaxed));
    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let model = state.model.clone();
    let chunk = move |text: &str, reason: Option<FinishReason>| {
        json!({
            "id": name, "object": "text_completion", "created": created, "model": model,
            "choices": [{"index": 0, "text": text, "finish_reason": reason, "logprobs": null}],
        })
    };
    if c.stream {
        let stream = futures_util::stream::unfold((rx, false), move |(mut rx, ended)| {
            let chunk = chunk.clone();
            async move {
                if ended {
                    return None;
                }
                let ev = match rx.recv().await {
                    Some(Out::Text(t)) => {
                        (SseEvent::default().data(chunk(&t, None).to_string()), false)
                    }
                    Some(Out::Done { reason, .. }) => (
                        SseEvent::default().data(chunk("", Some(reason)).to_string()),
                        false,
                    ),
                    None => (SseEvent::default().data("[DONE]"), true),
                };
                Some((Ok::<_, std::convert::Infallible>(ev.0), (rx, ev.1)))
            }
        });
        return Ok(Sse::new(stream).into_response());
    }
    let mut text = String::new();
    loop {
        match rx.recv().await {
            Some(Out::Text(t)) => text.push_str(&t),
            Some(Out::Done {
                reason,
                completion_tokens,
            }) => {
                let mut v = chunk(&text, Some(reason));
                v["usage"] = json!({
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                });
                return Ok(Json(v).into_response());
            }
            None => return Err(gone()),
        }
    }
}

async fn models(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Err(e) = authorized(&state, &headers) {
        return e.into_response();
    }
    Json(json!({"object": "list", "data": [{
        "id": state.model, "object": "model", "created": 0, "owned_by": "kvpr",
    }]}))
    .into_response()
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let text = lock(&state.metrics).render();
    (
        [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
        text,
    )
        .into_response()
}

async fn health() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

/// SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    if !(args.shutdown_grace_s.is_finite() && (0.0..=3600.0).contains(&args.shutdown_grace_s)) {
        bail!(
            "--shutdown-grace-s: {} is not in [0, 3600]",
            args.shutdown_grace_s
        );
    }
    let addr: SocketAddr = format!("{}:{}", args.host, args.port)
        .parse()
        .with_context(|| format!("--host {} --port {}: not an address", args.host, args.port))?;
    let grace = Duration::from_secs_f64(args.shutdown_grace_s);
    let api_key = args.api_key.clone();
    let (tx, mut rx) = mpsc::unbounded_channel::<Cmd>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let shared = Arc::new(Mutex::new(Metrics::default()));
    let for_engine = shared.clone();
    let engine = std::thread::Builder::new()
        .name("kvpr-engine".into())
        .spawn(move || engine_thread(&args, &mut rx, ready_tx, &for_engine))
        .context("starting the engine thread")?;
    let model = match ready_rx.recv() {
        Ok(Ok(name)) => name,
        Ok(Err(e)) => return Err(e),
        Err(_) => match engine.join() {
            Ok(r) => {
                r?;
                bail!("the engine thread stopped before it was ready")
            }
            Err(_) => bail!("the engine thread panicked before it was ready"),
        },
    };
    let state = Arc::new(AppState {
        tx: tx.clone(),
        metrics: shared,
        model,
        api_key,
        next: AtomicU64::new(0),
    });
    let app = Router::new()
        .route("/health", get(health))
        .route("/v1/models", get(models))
        .route("/metrics", get(metrics))
        .route("/v1/completions", post(completions))
        .with_state(state);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("listening on {addr}"))?;
        let local = listener.local_addr()?;
        eprintln!("kvpr serve: listening on http://{local}");
        let on_signal = async move {
            shutdown_signal().await;
            eprintln!("kvpr serve: shutting down (in-flight requests have {grace:?})");
            let _ = tx.send(Cmd::Shutdown { grace });
        };
        axum::serve(listener, app)
            .with_graceful_shutdown(on_signal)
            .await
            .context("serving HTTP")
    })?;
    match engine.join() {
        Ok(r) => r,
        Err(_) => bail!("the engine thread panicked"),
    }
}
