//! Chat templates: a model's Jinja template turning chat messages into the
//! prompt text, rendered as Hugging Face transformers' `apply_chat_template`
//! renders it (`utils/chat_template_utils.py`, `_compile_jinja_template` and
//! `render_jinja_template`), so that `POST /v1/chat/completions` prompts the
//! model exactly as it was trained.
//!
//! transformers renders with Jinja2's `ImmutableSandboxedEnvironment`,
//! `trim_blocks` and `lstrip_blocks` on, the `loopcontrols` extension, its
//! own `tojson` (`json.dumps` without HTML escaping), `raise_exception`,
//! `strftime_now`, a `{% generation %}` block, and the tokenizer's special
//! tokens, `messages`, `tools`/`documents` (None) and `add_generation_prompt`
//! in the context. Here that is minijinja with the same settings, Python's
//! string/dict methods (`minijinja_contrib::pycompat`), and Python's `str()`
//! for printed values (`chat/py.rs`). `tests/fixtures/chat/cases.json`, written by
//! transformers itself (`scripts/hf-fixtures/make_chat_cases.py`), holds the
//! renderings this module must reproduce byte for byte.
//!
//! Known differences from Jinja2 (none is met by the fixture's templates,
//! which follow the SmolLM2, Llama-3, Mistral, Qwen2.5 and Qwen3 ones):
//! Python's `%` string formatting (`'%s' % x`) is an error; Jinja2 filters minijinja lacks (`wordcount`,
//! `center`, `truncate`, ...) are unknown, at render rather than compile
//! time; a generator or a `namespace` passed to `tojson` is written as a
//! list or an object, not refused (and a namespace prints as a dict);
//! only `bos_token` and `eos_token` of the tokenizer's special tokens are
//! in the context (transformers also passes `unk_token`, `pad_token`, ...);
//! `tools` and `documents` are always None (no tool calling yet).
//!
//! This module renders text only: it does not tokenize, and it does not read
//! a model (the template comes from `runtime::Tokenizer`).

mod py;
mod strftime;

use std::borrow::Cow;

use minijinja::syntax::SyntaxConfig;
use minijinja::value::Rest;
use minijinja::{AutoEscape, Environment, Error, ErrorKind, UndefinedBehavior, Value};

/// The name of the one template in a [`ChatTemplate`]'s environment.
const NAME: &str = "chat_template";

/// One message of a chat.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant`, `tool`, ...: templates decide which
    /// they accept (some refuse with `raise_exception`).
    pub role: String,
    pub content: String,
}

/// What can go wrong making or rendering a chat prompt.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    /// The model ships no chat template.
    #[error(
        "the model has no chat template (GGUF tokenizer.chat_template, or chat_template.jinja \
         or tokenizer_config.json's chat_template in a Hugging Face directory)"
    )]
    NoTemplate,
    /// The template does not compile; `reason` names the line.
    #[error("the chat template does not compile: {reason}")]
    Template { reason: String },
    /// Rendering failed. When the template refused the messages with
    /// `raise_exception(msg)`, `reason` is `msg` exactly (what transformers
    /// raises, and what a server answers with a 400); otherwise it is the
    /// engine's error with the template line.
    #[error("cannot render the chat template: {reason}")]
    Render { reason: String },
}

/// A compiled chat template with the special tokens it renders with.
#[derive(Clone, Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: Option<String>,
    eos_token: Option<String>,
}

/// The error `raise_exception(msg)` returns, found again in the render
/// error's sources to give `msg` back unchanged.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Raised(String);

impl ChatTemplate {
    /// Compiles `template` (once). `bos_token`/`eos_token` are the special
    /// tokens' text; `None` leaves them undefined in the template, as
    /// transformers does for a tokenizer without them.
    pub fn new(
        template: &str,
        bos_token: Option<&str>,
        eos_token: Option<&str>,
    ) -> Result<Self, ChatError> {
        let mut env = Environment::new();
        let syntax = SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| ChatError::Template {
                reason: describe(&e),
            })?;
        env.set_syntax(syntax);
        // Jinja2's default: no escaping, undefined prints as nothing and is
        // false, but an attribute of it is an error.
        env.set_auto_escape_callback(|_| AutoEscape::None);
        env.set_undefined_behavior(UndefinedBehavior::Lenient);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.set_formatter(py::formatter);
        env.add_filter("tojson", py::tojson);
        env.add_filter("string", py::string_filter);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", |fmt: String| strftime::now(&fmt));
        env.add_template_owned(NAME, rewrite_generation_tags(template).into_owned())
            .map_err(|e| ChatError::Template {
                reason: describe(&e),
            })?;
        Ok(ChatTemplate {
            env,
            bos_token: bos_token.map(str::to_string),
            eos_token: eos_token.map(str::to_string),
        })
    }

    /// The template of `tokenizer` with its special tokens
    /// ([`ChatError::NoTemplate`] when the model has none).
    pub fn from_tokenizer(tokenizer: &runtime::Tokenizer) -> Result<Self, ChatError> {
        let template = tokenizer
            .chat_template
            .as_deref()
            .ok_or(ChatError::NoTemplate)?;
        Self::new(
            template,
            tokenizer.bos_token.as_deref(),
            tokenizer.eos_token.as_deref(),
        )
    }

    /// The prompt for `messages`, ending with the assistant's turn opened
    /// (`add_generation_prompt = true`).
    pub fn render(&self, messages: &[ChatMessage]) -> Result<String, ChatError> {
        let render_err = |e: Error| ChatError::Render {
            reason: raised(&e).unwrap_or_else(|| describe(&e)),
        };
        let template = self.env.get_template(NAME).map_err(render_err)?;
        template.render(self.context(messages)).map_err(render_err)
    }

    /// What transformers passes: the messages (role, then content, as the
    /// dicts a Python caller builds), `tools` and `documents` as None, the
    /// special tokens the tokenizer has, `add_generation_prompt`.
    fn context(&self, messages: &[ChatMessage]) -> Value {
        let messages: Vec<Value> = messages
            .iter()
            .map(|m| {
                Value::from_pairs([
                    ("role", Value::from(m.role.as_str())),
                    ("content", Value::from(m.content.as_str())),
                ])
            })
            .collect();
        let mut ctx = vec![
            ("messages", Value::from(messages)),
            ("tools", Value::from(())),
            ("documents", Value::from(())),
            ("add_generation_prompt", Value::from(true)),
        ];
        if let Some(t) = &self.bos_token {
            ctx.push(("bos_token", Value::from(t.as_str())));
        }
        if let Some(t) = &self.eos_token {
            ctx.push(("eos_token", Value::from(t.as_str())));
        }
        Value::from_pairs(ctx)
    }
}

/// `raise_exception(message)`: fails the render with `message` (Python's
/// `str()` of it, as Jinja2's `TemplateError(message)` prints).
fn raise_exception(args: Rest<Value>) -> Result<Value, Error> {
    let message = match args.first() {
        Some(v) => py::py_str(v)?,
        None => String::new(),
    };
    Err(Error::new(ErrorKind::InvalidOperation, message.clone()).with_source(Raised(message)))
}

/// The message of a `raise_exception` anywhere in `e`'s sources.
fn raised(e: &Error) -> Option<String> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(r) = s.downcast_ref::<Raised>() {
            return Some(r.0.clone());
        }
        source = s.source();
    }
    None
}

/// An engine error as one line naming the template line:
/// `line 3: syntax error: unexpected end of input`.
fn describe(e: &Error) -> String {
    let what = match e.detail() {
        Some(d) => format!("{}: {d}", e.kind()),
        None => e.kind().to_string(),
    };
    match e.line() {
        Some(line) => format!("line {line}: {what}"),
        None => what,
    }
}

/// transformers' `{% generation %}...{% endgeneration %}` (its
/// `AssistantTracker` extension) renders its body unchanged when no mask is
/// asked for, as an `{% if true %}...{% endif %}` does, with the same
/// whitespace control. The tags are rewritten so (in place, lines kept);
/// other text is untouched.
fn rewrite_generation_tags(src: &str) -> Cow<'_, str> {
    if !src.contains("generation") {
        return Cow::Borrowed(src);
    }
    let mut out = String::with_capacity(src.len());
    let mut rest = src;
    while let Some(at) = rest.find("{%") {
        out.push_str(&rest[..at]);
        let tag = &rest[at..];
        match generation_tag(tag) {
            Some((len, replacement)) => {
                out.push_str(&replacement);
                rest = &tag[len..];
            }
            None => {
                out.push_str("{%");
                rest = &tag[2..];
            }
        }
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// If `tag` starts with `{%[-+] generation|endgeneration [-+]%}`, its
/// length and the `if true`/`endif` tag with the same markers and spaces.
fn generation_tag(tag: &str) -> Option<(usize, String)> {
    let inner = tag.strip_prefix("{%")?;
    let open_marker = inner.starts_with(['-', '+']);
    let body_start = 2 + usize::from(open_marker);
    let body = &tag[body_start..];
    let lead = body.len() - body.trim_start().len();
    let word = &body[lead..];
    let (name, replacement) = if word.starts_with("endgeneration") {
        ("endgeneration", "endif")
    } else if word.starts_with("generation") {
        ("generation", "if true")
    } else {
        return None;
    };
    let after = &word[name.len()..];
    let trail = after.len() - after.trim_start().len();
    let close = &after[trail..];
    let close_len = if close.starts_with("-%}") || close.starts_with("+%}") {
        3
    } else if close.starts_with("%}") {
        2
    } else {
        return None;
    };
    // `generation_x` or `generation foo` is another tag: leave it.
    if trail == 0 && !close.starts_with(['-', '+', '%']) {
        return None;
    }
    let len = body_start + lead + name.len() + trail + close_len;
    let text = format!(
        "{}{}{replacement}{}{}",
        &tag[..body_start],
        &body[..lead],
        &after[..trail],
        &close[..close_len]
    );
    Some((len, text))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(role: &str, content: &str) -> ChatMessage {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }

    #[test]
    fn renders_with_generation_prompt_and_tokens() {
        let t = ChatTemplate::new(
            "{{ bos_token }}{% for m in messages %}<{{ m.role }}>{{ m.content }}{{ eos_token }}\n\
             {% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}",
            Some("<s>"),
            Some("</s>"),
        )
        .unwrap();
        let got = t
            .render(&[msg("user", "hi"), msg("assistant", "yo")])
            .unwrap();
        assert_eq!(got, "<s><user>hi</s>\n<assistant>yo</s>\n<assistant>");
        // No special tokens: undefined, printed as nothing.
        let t = ChatTemplate::new("[{{ bos_token }}]", None, None).unwrap();
        assert_eq!(t.render(&[]).unwrap(), "[]");
    }

    #[test]
    fn compile_errors_name_the_line() {
        let e = ChatTemplate::new(
            "line 1\n{% for m in messages %}\n{{ m.content }",
            None,
            None,
        )
        .unwrap_err();
        let ChatError::Template { reason } = &e else {
            panic!("{e:?}")
        };
        assert!(reason.starts_with("line 3: syntax error"), "{reason}");
        assert!(e.to_string().contains("does not compile"), "{e}");
    }

    #[test]
    fn raise_exception_gives_its_message_back() {
        let t = ChatTemplate::new(
            "{% if messages[0].role != 'user' %}{{ raise_exception('Roles must start with user!') }}{% endif %}ok",
            None,
            None,
        )
        .unwrap();
        assert_eq!(t.render(&[msg("user", "x")]).unwrap(), "ok");
        match t.render(&[msg("system", "x")]) {
            Err(ChatError::Render { reason }) => assert_eq!(reason, "Roles must start with user!"),
            other => panic!("{other:?}"),
        }
        // Other render errors name the line.
        let t = ChatTemplate::new("a\n{{ messages[0].content.nope.deeper }}", None, None).unwrap();
        match t.render(&[msg("user", "x")]) {
            Err(ChatError::Render { reason }) => assert!(reason.starts_with("line 2:"), "{reason}"),
            other => panic!("{other:?}"),
        }
    }

    /// transformers' `tojson` (`json.dumps`), expected strings from it.
    #[test]
    fn tojson_is_json_dumps() {
        let render = |src: &str| ChatTemplate::new(src, None, None).unwrap().render(&[]);
        let got = render(
            "{{ ([1] + [2])|tojson }} {{ {'b': 1, 'a': [1.5, none]}|tojson(sort_keys=true) }} \
             {{ 'é'|tojson(true) }} {{ {'k': [1]}|tojson(indent='\t') }} \
             {{ {'k': 2}|tojson(none, 1, (';', '=')) }}",
        )
        .unwrap();
        assert_eq!(
            got,
            "[1, 2] {\"a\": [1.5, null], \"b\": 1} \"\\u00e9\" {\n\t\"k\": [\n\t\t1\n\t]\n} {\n \"k\"=2\n}"
        );
        // Python refuses these too (TypeError).
        for src in [
            "{{ x|tojson }}",
            "{{ {'a': 1}|tojson(true, ensure_ascii=false) }}",
        ] {
            assert!(
                matches!(render(src), Err(ChatError::Render { .. })),
                "{src}"
            );
        }
    }

    #[test]
    fn strftime_now_is_today() {
        let t = ChatTemplate::new("{{ strftime_now('%Y-%m-%d') }}", None, None).unwrap();
        let got = t.render(&[]).unwrap();
        let today = strftime::now("%Y-%m-%d").unwrap();
        assert_eq!(got.len(), 10);
        // The day may have turned between the two reads.
        assert!(got <= today, "{got} vs {today}");
    }

    #[test]
    fn strftime_now_with_a_bad_format_is_a_render_error() {
        let t = ChatTemplate::new("{{ strftime_now('%d %Q') }}", None, None).unwrap();
        match t.render(&[]) {
            Err(ChatError::Render { reason }) => assert!(reason.contains("%d %Q"), "{reason}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn generation_tags_become_if_blocks() {
        for (src, want) in [
            (
                "{% generation %}x{% endgeneration %}",
                "{% if true %}x{% endif %}",
            ),
            (
                "{%- generation -%}x{%+ endgeneration\t+%}",
                "{%- if true -%}x{%+ endif\t+%}",
            ),
            (
                "{% generations %}{%generation%}",
                "{% generations %}{%if true%}",
            ),
            (
                "{{ 'generation' }} {% if a %}",
                "{{ 'generation' }} {% if a %}",
            ),
            ("{% generation", "{% generation"),
        ] {
            assert_eq!(rewrite_generation_tags(src), want, "{src}");
        }
        let t = ChatTemplate::new(
            "{% for m in messages %}\n{% generation %}\n[{{ m.content }}]\n{% endgeneration %}\n{% endfor %}",
            None,
            None,
        )
        .unwrap();
        assert_eq!(
            t.render(&[msg("user", "a"), msg("user", "b")]).unwrap(),
            "[a]\n[b]\n"
        );
    }

    #[test]
    fn from_tokenizer_needs_a_template() {
        let tk = runtime::Tokenizer::bytes(256, "preset:x".into());
        assert!(matches!(
            ChatTemplate::from_tokenizer(&tk),
            Err(ChatError::NoTemplate)
        ));
    }

    #[test]
    fn messages_deserialize_and_templates_are_shareable() {
        let m: Vec<ChatMessage> =
            serde_json::from_str(r#"[{"role": "user", "content": "hi", "name": "x"}]"#).unwrap();
        assert_eq!(m, vec![msg("user", "hi")]);
        fn shareable<T: Send + Sync + Clone>() {}
        shareable::<ChatTemplate>();
    }
}
