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
use futures_util::StreamExt;
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
    /// A Jinja chat template for /v1/chat/completions, in place of the
    /// model's own (`tokenizer.chat_template` in a GGUF, `chat_template` in
    /// tokenizer_config.json).
    #[arg(long)]
    pub chat_template: Option<PathBuf>,
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
        /// Every token the request produced (EOS included): their count
        /// is the usage's, and `return_token_ids` returns them.
        tokens: Vec<u32>,
    },
}

/// What the engine thread is asked.
enum Cmd {
    Add {
        /// The prompt's text, and whether the tokenizer adds its special
        /// tokens (BOS): not to a rendered chat, whose template has them.
        prompt: String,
        special: bool,
        gen: Gen,
        /// The request's prompt tokens once it is added.
        reply: oneshot::Sender<Result<Vec<u32>, ApiError>>,
        out: mpsc::UnboundedSender<Out>,
    },
    /// Stop taking requests; abort what still runs after `grace`.
    Shutdown { grace: Duration },
}

struct AppState {
    tx: mpsc::UnboundedSender<Cmd>,
    metrics: Arc<Mutex<Metrics>>,
    model: String,
    /// The chat template, or why there is none (the chat API's 400).
    chat: Result<serving::ChatTemplate, String>,
    api_key: Option<String>,
    /// Requests so far (their ids), and the server's seed: a request that
    /// samples without a `seed` gets one made from both.
    next: AtomicU64,
    seed: u64,
}

/// What the engine thread reports once the model is loaded.
struct Ready {
    model: String,
    chat: Result<serving::ChatTemplate, String>,
}

/// One request on the engine thread: where its text goes, and how much of
/// its decoded text went already.
struct Route {
    out: mpsc::UnboundedSender<Out>,
    tokens: Vec<u32>,
    /// The text released so far, against the request's stop strings.
    stop: serving::StopText,
    /// When it was accepted, and when it last produced a token.
    since: Instant,
    last: Option<Instant>,
}

/// The engine thread: loads the model, reports ready (its name and chat template) or
/// why not, then serves commands until the server is gone.
fn engine_thread(
    args: &ServeArgs,
    rx: &mut mpsc::UnboundedReceiver<Cmd>,
    ready: std::sync::mpsc::Sender<anyhow::Result<Ready>>,
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
    let chat = match chat_template(args, &model.tokenizer) {
        Ok(c) => c,
        Err(e) => {
            let _ = ready.send(Err(e));
            return Ok(());
        }
    };
    let _ = ready.send(Ok(Ready {
        model: model.spec().name.clone(),
        chat,
    }));
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

/// The chat template: `--chat-template`'s file, else the model's own; or
/// why the chat API is not offered. A template that does not compile is
/// refused at start.
fn chat_template(
    args: &ServeArgs,
    tok: &runtime::Tokenizer,
) -> anyhow::Result<Result<serving::ChatTemplate, String>> {
    let (text, from) = match &args.chat_template {
        Some(path) => (
            std::fs::read_to_string(path)
                .with_context(|| format!("--chat-template {}", path.display()))?,
            format!("--chat-template {}", path.display()),
        ),
        None => match &tok.chat_template {
            Some(t) => (t.clone(), "the model's chat template".to_string()),
            None => {
                return Ok(Err(
                    "the model has no chat template: start kvpr serve with --chat-template FILE (a Jinja template), or use /v1/completions".into(),
                ))
            }
        },
    };
    let t = serving::ChatTemplate::new(&text, tok.bos_token.as_deref(), tok.eos_token.as_deref())
        .with_context(|| format!("{from} does not compile"))?;
    Ok(Ok(t))
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
    // What the link hides under a step of a full batch at half the longest context.
    let offload_admit_blocks = match policy {
        scheduler::Policy::Offload => serving::offload_admit_blocks(
            spec,
            hw,
            be.dtype(),
            args.block_size,
            (args.max_running, (max_len / 2).max(1)),
        )
        .map_err(super::pricing_error)?,
        _ => 0,
    };
    Ok(EngineConfig {
        offload_admit_blocks,
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
            special,
            gen,
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
                if engine.not_started() >= args.max_waiting {
                    return Err(ApiError {
                        status: StatusCode::TOO_MANY_REQUESTS,
                        message: format!(
                            "{} requests are waiting already; retry later",
                            args.max_waiting
                        ),
                        param: None,
                    });
                }
                let field = if special { "prompt" } else { "messages" };
                let ids = model
                    .encode_prompt_with(0, &prompt, special)
                    .map_err(|e| ApiError::bad(field, e.to_string()))?;
                let n = ids.len();
                let prompt_ids = ids.clone();
                // Without max_tokens, as much as the request may hold.
                let max_tokens = gen
                    .max_tokens
                    .unwrap_or_else(|| engine.max_request_tokens().saturating_sub(n).max(1));
                let params = RequestParams {
                    max_tokens,
                    stop_ids: model.tokenizer.eos_token_ids.clone(),
                    sampling: gen.sampling,
                };
                engine
                    .add_request(start.elapsed().as_secs_f64(), ids, params)
                    .map_err(|e| match e {
                        ServingError::Full(m) => ApiError {
                            status: StatusCode::TOO_MANY_REQUESTS,
                            message: m,
                            param: None,
                        },
                        ServingError::Request { field: f, reason } => {
                            let param = match f.as_str() {
                                "prompt" => field,
                                "temperature" => "temperature",
                                "top_k" => "top_k",
                                "top_p" => "top_p",
                                _ => "max_tokens",
                            };
                            ApiError::bad(param, reason)
                        }
                        ServingError::Sched(e @ scheduler::SchedError::Capacity { .. }) => {
                            ApiError::bad("prompt", e.to_string())
                        }
                        e => ApiError {
                            status: StatusCode::INTERNAL_SERVER_ERROR,
                            message: e.to_string(),
                            param: None,
                        },
                    })
                    .map(|id| (id, prompt_ids))
            })();
            if let Ok((id, ids)) = &result {
                let id = *id;
                metrics.prompt_tokens += ids.len() as u64;
                routes.insert(
                    id,
                    Route {
                        out,
                        tokens: Vec::new(),
                        stop: serving::StopText::new(gen.stops),
                        since: Instant::now(),
                        last: None,
                    },
                );
            }
            // A handler gone before the reply: its request runs until its
            // first token finds nobody there.
            let _ = reply.send(result.map(|(_, ids)| ids));
        }
    }
}

/// Sends an event's text (or end) to its request; ends a request whose
/// text reached a stop string, and aborts one whose client is gone.
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
            if text.ends_with('\u{FFFD}') {
                return Ok(());
            }
            let (delta, stopped) = r.stop.update(&text);
            let gone = !delta.is_empty() && r.out.send(Out::Text(delta.to_string())).is_err();
            if gone {
                routes.remove(&id);
            }
            let reason = match (gone, stopped) {
                (true, _) => FinishReason::Abort,
                (false, true) => FinishReason::Stop,
                (false, false) => return Ok(()),
            };
            if let Some(ev) = engine.end(id, reason)? {
                route(engine, tok, routes, ev, metrics)?;
            }
        }
        Event::Finished { id, reason } => {
            metrics.finish(reason);
            if let Some(mut r) = routes.remove(&id) {
                let text = tok.decode(&r.tokens)?;
                let rest = r.stop.finish(&text);
                if !rest.is_empty() {
                    let _ = r.out.send(Out::Text(rest.to_string()));
                }
                let tokens = engine.output(id).map(<[u32]>::to_vec).unwrap_or_default();
                let _ = r.out.send(Out::Done { reason, tokens });
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

/// What a generation request asks for besides its prompt, checked; shared
/// by completions and chat.
struct Gen {
    /// None: as many as the request may hold.
    max_tokens: Option<usize>,
    sampling: runtime::Sampling,
    stops: Vec<String>,
}

/// A request's fields, checked; every error names its field.
struct Request {
    prompt: Prompt,
    gen: Gen,
    stream: bool,
    /// `stream_options.include_usage`: a last chunk with the usage.
    stream_usage: bool,
    /// vLLM's `return_token_ids`: the prompt's and the completion's token
    /// ids beside the text (a whole response only).
    token_ids: bool,
}

enum Prompt {
    Text(String),
    Chat(Vec<serving::ChatMessage>),
}

/// Which API a request came through.
#[derive(Clone, Copy, PartialEq)]
enum Api {
    Completions,
    Chat,
}

type Fields = serde_json::Map<String, Value>;

fn parse_request(body: &[u8], api: Api, seed: u64) -> Result<Request, ApiError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad("body", format!("the body is not JSON: {e}")))?;
    let obj = v
        .as_object()
        .ok_or_else(|| ApiError::bad("body", "the body must be a JSON object"))?;
    let prompt = match api {
        Api::Completions => Prompt::Text(parse_prompt(obj)?),
        Api::Chat => Prompt::Chat(parse_messages(obj)?),
    };
    let stream = flag(obj, "stream")?;
    let stream_usage = match obj.get("stream_options") {
        None | Some(Value::Null) => false,
        Some(Value::Object(o)) if stream => flag(o, "include_usage")?,
        Some(Value::Object(_)) => {
            return Err(ApiError::bad(
                "stream_options",
                "stream_options is only allowed with stream: true",
            ))
        }
        Some(v) => {
            return Err(ApiError::bad(
                "stream_options",
                format!("stream_options must be an object, not {v}"),
            ))
        }
    };
    // Chat's newer name for max_tokens wins where both are given.
    let max_tokens = match api {
        Api::Chat
            if obj
                .get("max_completion_tokens")
                .is_some_and(|v| !v.is_null()) =>
        {
            count(obj, "max_completion_tokens")?
        }
        Api::Chat => count(obj, "max_tokens")?,
        Api::Completions => Some(count(obj, "max_tokens")?.unwrap_or(16)),
    };
    let token_ids = flag(obj, "return_token_ids")?;
    if token_ids && stream {
        return Err(ApiError::bad(
            "return_token_ids",
            "return_token_ids is given with a whole response, not a stream",
        ));
    }
    refuse_unsupported(obj, api)?;
    Ok(Request {
        token_ids,
        prompt,
        gen: Gen {
            max_tokens,
            sampling: parse_sampling(obj, seed)?,
            stops: parse_stops(obj)?,
        },
        stream,
        stream_usage,
    })
}

fn parse_prompt(obj: &Fields) -> Result<String, ApiError> {
    match obj.get("prompt") {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(a)) if a.len() == 1 && a[0].is_string() => {
            Ok(a[0].as_str().unwrap_or_default().to_string())
        }
        Some(_) => Err(ApiError::bad(
            "prompt",
            "prompt must be a string (or a list of one)",
        )),
        None => Err(ApiError::bad("prompt", "prompt is required")),
    }
}

/// Chat messages: a role and text content each (a string, or a list of
/// text parts, joined).
fn parse_messages(obj: &Fields) -> Result<Vec<serving::ChatMessage>, ApiError> {
    let list = match obj.get("messages") {
        Some(Value::Array(a)) if !a.is_empty() => a,
        Some(_) => {
            return Err(ApiError::bad(
                "messages",
                "messages must be a non-empty list of {role, content} objects",
            ))
        }
        None => return Err(ApiError::bad("messages", "messages is required")),
    };
    list.iter()
        .enumerate()
        .map(|(i, m)| {
            let bad = |why: String| ApiError::bad("messages", format!("messages[{i}]: {why}"));
            let role = m
                .get("role")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("role must be a string".into()))?;
            let content = match m.get("content") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Null) | None => String::new(),
                Some(Value::Array(parts)) => parts
                    .iter()
                    .map(|p| match (p.get("type").and_then(Value::as_str), p.get("text")) {
                        (Some("text"), Some(Value::String(t))) => Ok(t.as_str()),
                        _ => Err(bad(format!(
                            "content part {p}: kvpr serves text models; only {{\"type\": \"text\", \"text\": ...}} parts are taken"
                        ))),
                    })
                    .collect::<Result<Vec<_>, _>>()?
                    .concat(),
                Some(v) => return Err(bad(format!("content must be a string or a list of text parts, not {v}"))),
            };
            Ok(serving::ChatMessage {
                role: role.to_string(),
                content,
            })
        })
        .collect()
}

fn flag(obj: &Fields, field: &'static str) -> Result<bool, ApiError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(v) => Err(ApiError::bad(
            field,
            format!("{field} must be true or false, not {v}"),
        )),
    }
}

/// An integer of at least 1, or absent.
fn count(obj: &Fields, field: &'static str) -> Result<Option<usize>, ApiError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) if n >= 1 => Ok(Some(usize::try_from(n).unwrap_or(usize::MAX))),
            _ => Err(ApiError::bad(
                field,
                format!("{field} must be an integer of at least 1, not {v}"),
            )),
        },
    }
}

/// The OpenAI API's sampling fields (and vLLM's `top_k`). As in the OpenAI
/// API, `temperature` defaults to 1; a request without a `seed` gets
/// `seed`, one the server makes for it.
fn parse_sampling(obj: &Fields, seed: u64) -> Result<runtime::Sampling, ApiError> {
    let number = |field: &'static str| -> Result<Option<f64>, ApiError> {
        match obj.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| ApiError::bad(field, format!("{field} must be a number, not {v}"))),
        }
    };
    let t = number("temperature")?.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&t) {
        return Err(ApiError::bad(
            "temperature",
            format!("temperature {t} is not in [0, 2]"),
        ));
    }
    let top_p = number("top_p")?;
    if let Some(p) = top_p.filter(|p| !(*p > 0.0 && *p <= 1.0)) {
        return Err(ApiError::bad(
            "top_p",
            format!("top_p {p} is not in (0, 1]"),
        ));
    }
    // vLLM's convention: -1 (or 0) keeps every token.
    let top_k = match obj.get("top_k") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_i64() {
            Some(-1 | 0) => None,
            Some(k) if k >= 1 => Some(usize::try_from(k).unwrap_or(usize::MAX)),
            _ => {
                return Err(ApiError::bad(
                    "top_k",
                    format!("top_k must be an integer of at least 1 (or -1: all), not {v}"),
                ))
            }
        },
    };
    let seed = match obj.get("seed") {
        None | Some(Value::Null) => seed,
        Some(v) => match (v.as_u64(), v.as_i64()) {
            (Some(s), _) => s,
            (None, Some(s)) => s as u64,
            _ => {
                return Err(ApiError::bad(
                    "seed",
                    format!("seed must be an integer, not {v}"),
                ))
            }
        },
    };
    // Below the sampler's range a draw is the argmax anyway.
    let (lo, _) = runtime::Sampling::TEMPERATURE_RANGE;
    Ok(match t < f64::from(lo) {
        true => runtime::Sampling::GREEDY,
        false => runtime::Sampling {
            temperature: t as f32,
            top_k,
            top_p: top_p.map(|p| p as f32),
            seed,
        },
    })
}

/// The most stop strings a request may give.
const MAX_STOPS: usize = 16;

fn parse_stops(obj: &Fields) -> Result<Vec<String>, ApiError> {
    let stops = match obj.get("stop") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) if a.len() <= MAX_STOPS => a
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| ApiError::bad("stop", "stop must be a string or a list of strings"))?,
        Some(_) => {
            return Err(ApiError::bad(
                "stop",
                format!("stop must be a string or a list of up to {MAX_STOPS} strings"),
            ))
        }
    };
    if stops.iter().any(String::is_empty) {
        return Err(ApiError::bad("stop", "a stop string must not be empty"));
    }
    Ok(stops)
}

/// Fields kvpr does not implement are refused by name unless they hold
/// their neutral value: a request never silently gets another function.
fn refuse_unsupported(obj: &Fields, api: Api) -> Result<(), ApiError> {
    let neutral: &[(&str, Value)] = &[
        ("n", json!(1)),
        ("best_of", json!(1)),
        ("presence_penalty", json!(0)),
        ("frequency_penalty", json!(0)),
        ("repetition_penalty", json!(1)),
        ("echo", json!(false)),
        ("logprobs", json!(false)),
        ("top_logprobs", json!(0)),
        ("logit_bias", json!({})),
        ("suffix", json!("")),
        ("tools", json!([])),
        ("response_format", json!({"type": "text"})),
    ];
    for (field, value) in neutral {
        let Some(v) = obj.get(*field).filter(|v| !v.is_null()) else {
            continue;
        };
        // Numbers compare by value (0 and 0.0 alike); completions' logprobs
        // is a count (0: none).
        let same = v == value
            || v.as_f64().is_some_and(|x| Some(x) == value.as_f64())
            || (*field == "logprobs" && api == Api::Completions && v.as_u64() == Some(0));
        if !same {
            return Err(ApiError::bad(
                field,
                format!("{field} {v}: kvpr serve does not implement {field}; leave it out"),
            ));
        }
    }
    Ok(())
}

async fn completions(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match generate(state, headers, body, Api::Completions).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn chat_completions(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match generate(state, headers, body, Api::Chat).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn generate(
    state: Arc<AppState>,
    headers: HeaderMap,
    body: Bytes,
    api: Api,
) -> Result<Response, ApiError> {
    authorized(&state, &headers)?;
    let n = state.next.fetch_add(1, Ordering::Relaxed);
    let req = parse_request(
        &body,
        api,
        state.seed ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15),
    )?;
    let (prompt, special) = match req.prompt {
        Prompt::Text(t) => (t, true),
        Prompt::Chat(messages) => {
            let template = match &state.chat {
                Ok(t) => t,
                Err(why) => return Err(ApiError::bad("messages", why.clone())),
            };
            let text = template
                .render(&messages)
                .map_err(|e| ApiError::bad("messages", e.to_string()))?;
            (text, false)
        }
    };
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
            prompt,
            special,
            gen: req.gen,
            reply,
            out,
        })
        .map_err(|_| gone())?;
    let prompt_ids = answer.await.map_err(|_| gone())??;
    let prompt_tokens = prompt_ids.len();
    let name = match api {
        Api::Completions => format!("cmpl-{n}"),
        Api::Chat => format!("chatcmpl-{n}"),
    };
    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let model = state.model.clone();
    let usage = move |completion_tokens: usize| {
        json!({
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        })
    };
    // One body: a whole response, or a chunk of a stream.
    let body = move |text: Option<&str>, reason: Option<FinishReason>, first: bool| {
        let (object, choice) = match (api, req.stream) {
            (Api::Completions, _) => (
                "text_completion",
                json!({"index": 0, "text": text.unwrap_or(""), "finish_reason": reason, "logprobs": null}),
            ),
            (Api::Chat, false) => (
                "chat.completion",
                json!({"index": 0, "message": {"role": "assistant", "content": text.unwrap_or("")},
                       "finish_reason": reason, "logprobs": null}),
            ),
            (Api::Chat, true) => {
                let mut delta = json!({});
                if first {
                    delta["role"] = json!("assistant");
                }
                if let Some(t) = text {
                    delta["content"] = json!(t);
                }
                (
                    "chat.completion.chunk",
                    json!({"index": 0, "delta": delta, "finish_reason": reason, "logprobs": null}),
                )
            }
        };
        json!({"id": name, "object": object, "created": created, "model": model, "choices": [choice]})
    };
    if req.stream {
        let include_usage = req.stream_usage;
        // Each message of the engine becomes one or two events; the stream
        // ends with `[DONE]` once the engine has said how the request ended.
        let stream =
            futures_util::stream::unfold((rx, true, false), move |(mut rx, first, ended)| {
                let body = body.clone();
                async move {
                    if ended {
                        return None;
                    }
                    let data = |v: Value| SseEvent::default().data(v.to_string());
                    let (events, ended) = match rx.recv().await {
                        Some(Out::Text(t)) => (vec![data(body(Some(&t), None, first))], false),
                        Some(Out::Done { reason, tokens }) => {
                            let mut last = vec![data(body(None, Some(reason), first))];
                            if include_usage {
                                let mut v = body(None, None, false);
                                v["choices"] = json!([]);
                                v["usage"] = usage(tokens.len());
                                last.push(data(v));
                            }
                            last.push(SseEvent::default().data("[DONE]"));
                            (last, true)
                        }
                        // The engine went away without an end: the stream ends
                        // without `[DONE]`, so the client sees it was cut.
                        None => return None,
                    };
                    let events = futures_util::stream::iter(
                        events.into_iter().map(Ok::<_, std::convert::Infallible>),
                    );
                    Some((events, (rx, false, ended)))
                }
            })
            .flatten();
        return Ok(Sse::new(stream).into_response());
    }
    let mut text = String::new();
    loop {
        match rx.recv().await {
            Some(Out::Text(t)) => text.push_str(&t),
            Some(Out::Done { reason, tokens }) => {
                let mut v = body(Some(&text), Some(reason), true);
                v["usage"] = usage(tokens.len());
                if req.token_ids {
                    v["prompt_token_ids"] = json!(prompt_ids);
                    v["choices"][0]["token_ids"] = json!(tokens);
                }
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
    let ready = match ready_rx.recv() {
        Ok(Ok(ready)) => ready,
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
        model: ready.model,
        chat: ready.chat,
        api_key,
        next: AtomicU64::new(0),
        seed: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
    });
    let app = Router::new()
        .route("/health", get(health))
        .route("/v1/models", get(models))
        .route("/metrics", get(metrics))
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
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
