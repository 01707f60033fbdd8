//! What Python prints where minijinja would print otherwise: `str()` of the
//! values a template prints (`True`, `None`, `['a', 1]`, `1e-05`), and
//! `json.dumps` as transformers' `tojson` filter calls it. Chat templates are
//! written against Jinja2 on CPython, so these are the outputs to match.

use std::fmt::Write as _;

use minijinja::value::{Kwargs, Rest, ValueKind};
use minijinja::{Error, ErrorKind, Output, State, Value};

/// Deeper values are refused (a template can nest a list in itself in a
/// loop; recursing without a bound would overflow the stack).
const MAX_DEPTH: usize = 256;

fn invalid(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidOperation, msg.into())
}

fn too_deep() -> Error {
    invalid(format!("value nested more than {MAX_DEPTH} deep"))
}

/// The environment's formatter: `{{ value }}` prints Python's `str(value)`.
/// Strings, undefined and plain objects go through minijinja's own formatter
/// (no auto-escaping is configured, so strings print as they are).
pub(super) fn formatter(out: &mut Output, state: &mut State, value: &Value) -> Result<(), Error> {
    match value.kind() {
        ValueKind::None
        | ValueKind::Bool
        | ValueKind::Number
        | ValueKind::Seq
        | ValueKind::Iterable
        | ValueKind::Map => out
            .write_str(&py_str(value)?)
            .map_err(|_| Error::new(ErrorKind::WriteFailure, "cannot write the output")),
        _ => minijinja::escape_formatter(out, state, value),
    }
}

/// The `string` filter: Python's `str(value)`.
pub(super) fn string_filter(value: &Value) -> Result<Value, Error> {
    Ok(Value::from(py_str(value)?))
}

/// Python's `str(value)`.
pub(super) fn py_str(value: &Value) -> Result<String, Error> {
    match value.kind() {
        ValueKind::String => Ok(value.as_str().unwrap_or_default().to_string()),
        ValueKind::Undefined => Ok(String::new()),
        _ => {
            let mut s = String::new();
            repr(value, &mut s, 0)?;
            Ok(s)
        }
    }
}

/// Python's `repr(value)` appended to `out`.
fn repr(value: &Value, out: &mut String, depth: usize) -> Result<(), Error> {
    if depth > MAX_DEPTH {
        return Err(too_deep());
    }
    match value.kind() {
        ValueKind::None => out.push_str("None"),
        ValueKind::Undefined => out.push_str("Undefined"),
        ValueKind::Bool => out.push_str(if value.is_true() { "True" } else { "False" }),
        ValueKind::Number if value.is_integer() => {
            let _ = write!(out, "{value}");
        }
        ValueKind::Number => out.push_str(&float_repr(f64::try_from(value.clone())?)),
        ValueKind::String => str_repr(value.as_str().unwrap_or_default(), out),
        // Lazy sequences (`[1] + [2]`, a `map` filter's result) print as
        // the lists they are in Jinja2 or as the list they yield.
        ValueKind::Seq | ValueKind::Iterable => {
            let tuple = value.is_tuple();
            out.push(if tuple { '(' } else { '[' });
            let mut n = 0;
            for item in value.try_iter()? {
                if n > 0 {
                    out.push_str(", ");
                }
                repr(&item, out, depth + 1)?;
                n += 1;
            }
            if tuple && n == 1 {
                out.push(',');
            }
            out.push(if tuple { ')' } else { ']' });
        }
        ValueKind::Map => {
            out.push('{');
            for (i, key) in value.try_iter()?.enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                repr(&key, out, depth + 1)?;
                out.push_str(": ");
                repr(&value.get_item(&key)?, out, depth + 1)?;
            }
            out.push('}');
        }
        // Plain objects (namespace, loop, macros) have no Python spelling
        // worth copying (`<Namespace ...>`): minijinja's.
        _ => {
            let _ = write!(out, "{value}");
        }
    }
    Ok(())
}

/// Python's `repr(s)`: single quotes unless the text has one and no double
/// quote; backslash escapes for the quote, `\\`, `\n`, `\r`, `\t` and the
/// characters Python does not print (controls, and the usual separators and
/// format characters: an approximation of `str.isprintable` for those a
/// chat template meets).
fn str_repr(s: &str, out: &mut String) {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if !printable(c) => {
                let u = u32::from(c);
                let _ = match u {
                    0..=0xff => write!(out, "\\x{u:02x}"),
                    0x100..=0xffff => write!(out, "\\u{u:04x}"),
                    _ => write!(out, "\\U{u:08x}"),
                };
            }
            c => out.push(c),
        }
    }
    out.push(quote);
}

/// Whether Python prints `c` as itself in a `repr` (not Cc, Cf, Zl, Zp, Zs
/// other than the space, Co, or a noncharacter; the Cf list is not
/// exhaustive).
fn printable(c: char) -> bool {
    !matches!(u32::from(c),
        0..=0x1f | 0x7f..=0xa0 | 0xad | 0x600..=0x605 | 0x61c | 0x6dd | 0x70f | 0x1680
        | 0x180e | 0x2000..=0x200f | 0x2028..=0x202f | 0x205f..=0x2064 | 0x2066..=0x206f
        | 0x3000 | 0xe000..=0xf8ff | 0xfdd0..=0xfdef | 0xfeff | 0xfff9..=0xfffb
        | 0xfffe..=0xffff | 0xf0000..)
}

/// Python's `repr(x)` of a float: the shortest text that reads back as `x`,
/// positional for 1e-4 <= |x| < 1e16 (with `.0` when integral), else
/// `d.ddde+XX`.
pub(super) fn float_repr(x: f64) -> String {
    if x.is_nan() {
        return "nan".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf" } else { "-inf" }.into();
    }
    // Rust's `{:e}` is the shortest round-trip digits, as Python's repr.
    let sci = format!("{x:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let body = if (-4..16).contains(&exp) {
        let point = exp + 1;
        if point <= 0 {
            format!("0.{}{digits}", "0".repeat(point.unsigned_abs() as usize))
        } else if point as usize >= digits.len() {
            format!("{digits}{}.0", "0".repeat(point as usize - digits.len()))
        } else {
            let (int, frac) = digits.split_at(point as usize);
            format!("{int}.{frac}")
        }
    } else {
        let (first, rest) = digits.split_at(1);
        let dot = if rest.is_empty() { "" } else { "." };
        let esign = if exp < 0 { '-' } else { '+' };
        format!("{first}{dot}{rest}e{esign}{:02}", exp.unsigned_abs())
    };
    format!("{sign}{body}")
}

/// How `json.dumps` lays out its output.
struct JsonStyle {
    ensure_ascii: bool,
    /// `None`: one line; `Some(unit)`: one item per line, indented by `unit`
    /// per level.
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
}

/// transformers' `tojson` filter:
/// `json.dumps(x, ensure_ascii=False, indent=None, separators=None,
/// sort_keys=False)`, the four options by position or by name.
pub(super) fn tojson(
    value: &Value,
    positional: Rest<Value>,
    kwargs: Kwargs,
) -> Result<Value, Error> {
    const NAMES: [&str; 4] = ["ensure_ascii", "indent", "separators", "sort_keys"];
    if positional.len() > NAMES.len() {
        return Err(invalid(format!(
            "tojson() takes at most {} options, {} given",
            NAMES.len(),
            positional.len()
        )));
    }
    // An option by position or by name (not both); None is the default.
    let arg = |name: &str| -> Result<Option<Value>, Error> {
        let i = NAMES.iter().position(|n| *n == name).unwrap_or(NAMES.len());
        let by_position = positional
            .get(i)
            .filter(|v| !v.is_none() && !v.is_undefined());
        let by_name: Option<Value> = kwargs.get(name)?;
        match (by_position, by_name) {
            (Some(_), Some(_)) => Err(invalid(format!(
                "tojson() got multiple values for argument '{name}'"
            ))),
            (p, n) => Ok(p.cloned().or(n)),
        }
    };
    let ensure_ascii = arg("ensure_ascii")?.is_some_and(|v| v.is_true());
    let indent = match arg("indent")? {
        None => None,
        Some(v) if v.kind() == ValueKind::String => Some(v.as_str().unwrap_or_default().into()),
        // Python repeats a space `indent` times (bools are 0 and 1 there).
        Some(v) if v.kind() == ValueKind::Bool => Some(" ".repeat(usize::from(v.is_true()))),
        Some(v) => {
            let n = i64::try_from(v)
                .map_err(|_| invalid("tojson: indent must be an int or a string"))?;
            Some(" ".repeat(usize::try_from(n.clamp(0, 1024)).unwrap_or(0)))
        }
    };
    let (item_sep, key_sep) = match arg("separators")? {
        None if indent.is_some() => (",".to_string(), ": ".to_string()),
        None => (", ".to_string(), ": ".to_string()),
        Some(v) => {
            let parts: Vec<Value> = v
                .try_iter()
                .map_err(|_| invalid("tojson: separators must be a pair of strings"))?
                .collect();
            match parts.as_slice() {
                [a, b] if a.as_str().is_some() && b.as_str().is_some() => (
                    a.as_str().unwrap_or_default().to_string(),
                    b.as_str().unwrap_or_default().to_string(),
                ),
                _ => return Err(invalid("tojson: separators must be a pair of strings")),
            }
        }
    };
    let sort_keys = arg("sort_keys")?.is_some_and(|v| v.is_true());
    kwargs.assert_all_used()?;
    let style = JsonStyle {
        ensure_ascii,
        indent,
        item_sep,
        key_sep,
        sort_keys,
    };
    let mut out = String::new();
    json(value, &style, 0, &mut out)?;
    // Marked safe as Jinja2's `tojson` result is, although no auto-escaping
    // is configured here.
    Ok(Value::from_safe_string(out))
}

fn not_serializable(value: &Value) -> Error {
    invalid(format!(
        "tojson: object of type {} is not JSON serializable",
        value.kind()
    ))
}

fn json(value: &Value, style: &JsonStyle, depth: usize, out: &mut String) -> Result<(), Error> {
    if depth > MAX_DEPTH {
        return Err(too_deep());
    }
    match value.kind() {
        ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
        ValueKind::Number if value.is_integer() => {
            let _ = write!(out, "{value}");
        }
        ValueKind::Number => out.push_str(&json_float(f64::try_from(value.clone())?)),
        ValueKind::String => json_str(value.as_str().unwrap_or_default(), style, out),
        // Iterables too (`[1] + [2]` is one in minijinja, a list in
        // Python); Python would refuse a generator, this writes its items.
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = value.try_iter()?.collect();
            container(out, style, depth, '[', ']', items.len(), |i, out| {
                json(&items[i], style, depth + 1, out)
            })?;
        }
        ValueKind::Map => {
            let mut keys: Vec<(String, Value)> = Vec::new();
            for key in value.try_iter()? {
                keys.push((json_key(&key, style)?, key));
            }
            if style.sort_keys {
                sort_keys(&mut keys)?;
            }
            container(out, style, depth, '{', '}', keys.len(), |i, out| {
                let (text, key) = &keys[i];
                out.push_str(text);
                out.push_str(&style.key_sep);
                json(&value.get_item(key)?, style, depth + 1, out)
            })?;
        }
        _ => return Err(not_serializable(value)),
    }
    Ok(())
}

/// Python sorts the original keys (strings by code point, numbers by value)
/// and refuses to compare a string with a number.
fn sort_keys(keys: &mut [(String, Value)]) -> Result<(), Error> {
    let all = |kind: ValueKind| keys.iter().all(|(_, k)| k.kind() == kind);
    if all(ValueKind::String) {
        keys.sort_by(|a, b| a.1.as_str().cmp(&b.1.as_str()));
    } else if keys
        .iter()
        .all(|(_, k)| matches!(k.kind(), ValueKind::Number | ValueKind::Bool))
    {
        let num = |v: &Value| f64::try_from(v.clone()).unwrap_or(f64::from(u8::from(v.is_true())));
        keys.sort_by(|a, b| num(&a.1).total_cmp(&num(&b.1)));
    } else {
        return Err(invalid(
            "tojson: sort_keys cannot order keys of different types",
        ));
    }
    Ok(())
}

/// `[`/`{` then the items, separated and indented as `json.dumps` does (an
/// empty container stays `[]`/`{}`).
fn container(
    out: &mut String,
    style: &JsonStyle,
    depth: usize,
    open: char,
    close: char,
    len: usize,
    mut item: impl FnMut(usize, &mut String) -> Result<(), Error>,
) -> Result<(), Error> {
    out.push(open);
    if len == 0 {
        out.push(close);
        return Ok(());
    }
    let newline = |out: &mut String, level: usize| {
        if let Some(unit) = &style.indent {
            out.push('\n');
            for _ in 0..level {
                out.push_str(unit);
            }
        }
    };
    for i in 0..len {
        if i > 0 {
            out.push_str(&style.item_sep);
        }
        newline(out, depth + 1);
        item(i, out)?;
    }
    newline(out, depth);
    out.push(close);
    Ok(())
}

/// A key as `json.dumps` writes it: strings as they are; numbers, booleans
/// and None as their JSON text, quoted.
fn json_key(key: &Value, style: &JsonStyle) -> Result<String, Error> {
    let text = match key.kind() {
        ValueKind::String => key.as_str().unwrap_or_default().to_string(),
        ValueKind::None => "null".into(),
        ValueKind::Bool => (if key.is_true() { "true" } else { "false" }).into(),
        ValueKind::Number if key.is_integer() => key.to_string(),
        ValueKind::Number => json_float(f64::try_from(key.clone())?),
        _ => {
            return Err(invalid(format!(
                "tojson: keys must be str, int, float, bool or None, not {}",
                key.kind()
            )))
        }
    };
    let mut out = String::new();
    json_str(&text, style, &mut out);
    Ok(out)
}

/// `float.__repr__`, with JavaScript's names for the non-finite values.
fn json_float(x: f64) -> String {
    if x.is_nan() {
        "NaN".into()
    } else if x.is_infinite() {
        if x > 0.0 { "Infinity" } else { "-Infinity" }.into()
    } else {
        float_repr(x)
    }
}

/// A JSON string as Python writes it: `\"`, `\\`, `\n`, `\r`, `\t`, `\b`,
/// `\f`, other controls as `\u00XX`; with `ensure_ascii`, everything past
/// `~` as `\uXXXX` (UTF-16 surrogate pairs past U+FFFF).
fn json_str(s: &str, style: &JsonStyle, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if u32::from(c) < 0x20 || (style.ensure_ascii && u32::from(c) > 0x7e) => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{u:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_print_as_python_repr() {
        // Expected values from CPython 3.11's repr().
        for (x, want) in [
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (1.0, "1.0"),
            (0.5, "0.5"),
            (1e-05, "1e-05"),
            (0.0001, "0.0001"),
            (1e16, "1e+16"),
            (9999999999999998.0, "9999999999999998.0"),
            (123456789.125, "123456789.125"),
            (0.1 + 0.2, "0.30000000000000004"),
            (-2.5e-310, "-2.5e-310"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
            (f64::NAN, "nan"),
            (f64::NEG_INFINITY, "-inf"),
        ] {
            assert_eq!(float_repr(x), want, "{x}");
        }
        assert_eq!(json_float(f64::INFINITY), "Infinity");
    }

    #[test]
    fn strings_repr_as_python() {
        let r = |s: &str| {
            let mut out = String::new();
            str_repr(s, &mut out);
            out
        };
        assert_eq!(r("it's"), r#""it's""#);
        assert_eq!(r(r#"both ' and ""#), r#"'both \' and "'"#);
        assert_eq!(
            r("a\tb\n\\ \u{1} \u{a0} é 😀"),
            r"'a\tb\n\\ \x01 \xa0 é 😀'"
        );
        assert_eq!(r("\u{2028}\u{feff}"), r"'\u2028\ufeff'");
    }

    #[test]
    fn values_print_as_python_str() {
        let v = Value::from_iter([
            Value::from(1),
            Value::from("two"),
            Value::from(()),
            Value::from(true),
            Value::from(2.5),
        ]);
        assert_eq!(py_str(&v).unwrap(), "[1, 'two', None, True, 2.5]");
        let m = Value::from_pairs([("b", Value::from(1)), ("a", Value::from(false))]);
        assert_eq!(py_str(&m).unwrap(), "{'b': 1, 'a': False}");
        assert_eq!(py_str(&Value::UNDEFINED).unwrap(), "");
        assert_eq!(py_str(&Value::from("x")).unwrap(), "x");
    }

    #[test]
    fn json_strings_escape_as_python() {
        let style = |ensure_ascii| JsonStyle {
            ensure_ascii,
            indent: None,
            item_sep: ", ".into(),
            key_sep: ": ".into(),
            sort_keys: false,
        };
        let j = |s: &str, ascii| {
            let mut out = String::new();
            json_str(s, &style(ascii), &mut out);
            out
        };
        let s = "q\"b\\\u{8}\u{c}\n\r\t\u{1f}\u{7f}é😀";
        assert_eq!(j(s, false), "\"q\\\"b\\\\\\b\\f\\n\\r\\t\\u001f\u{7f}é😀\"");
        assert_eq!(
            j(s, true),
            "\"q\\\"b\\\\\\b\\f\\n\\r\\t\\u001f\\u007f\\u00e9\\ud83d\\ude00\""
        );
    }
}
