//! String functions (FHIRPath 2.0 section 5.6 and the 2.1 additions used by FHIR): `indexOf`,
//! `lastIndexOf`, `substring`, `startsWith`, `endsWith`, `contains`, `upper`, `lower`,
//! `replace`, `matches`, `matchesFull`, `replaceMatches`, `length`, `toChars`, `trim`, `split`,
//! `join`, `encode`/`decode` (base64, urlbase64, hex), `escape`/`unescape` (html, json).
//! Positions count characters, not bytes. Regular expressions are compiled once per pattern
//! and cached; `.` matches newlines (single-line mode), as the specification asks.

use std::collections::HashMap;

use base64::Engine;
use once_cell::sync::Lazy;
use parking_lot::RwLock;
use regex::Regex;

use super::{boolean, Call};
use crate::fhirpath::compile::Func;
use crate::fhirpath::error::Result;
use crate::fhirpath::value::{Collection, Item};

static REGEXES: Lazy<RwLock<HashMap<(String, bool), Regex>>> =
    Lazy::new(|| RwLock::new(HashMap::new()));

/// Bound on cached patterns (patterns computed from data could otherwise grow it without limit).
const REGEX_CACHE_LIMIT: usize = 4096;

/// Compiles (or fetches) a regex; `full` anchors it to the whole string.
pub fn regex(pattern: &str, full: bool) -> std::result::Result<Regex, String> {
    if let Some(r) = REGEXES.read().get(&(pattern.to_string(), full)) {
        return Ok(r.clone());
    }
    let source = if full {
        format!("(?s)^(?:{pattern})$")
    } else {
        format!("(?s){pattern}")
    };
    let r = Regex::new(&source).map_err(|e| format!("invalid regular expression: {e}"))?;
    let mut w = REGEXES.write();
    if w.len() >= REGEX_CACHE_LIMIT {
        w.clear();
    }
    w.insert((pattern.to_string(), full), r.clone());
    Ok(r)
}

fn string<'a>(s: String) -> Result<Collection<'a>> {
    Ok(vec![Item::string(s)])
}

fn char_index(hay: &str, byte: usize) -> i64 {
    hay[..byte].chars().count() as i64
}

pub fn call<'a>(func: Func, c: &Call<'_, 'a, '_>) -> Result<Collection<'a>> {
    if func == Func::Join {
        let sep = c.arg_string(0)?;
        let mut parts = Vec::with_capacity(c.input.len());
        for it in c.input {
            match it.as_text(c.ev.model) {
                Some(t) => parts.push(t.as_str().to_string()),
                None => return Err(c.error("join() expects a collection of strings")),
            }
        }
        return string(parts.join(sep.as_ref().map(|s| s.as_str()).unwrap_or("")));
    }
    let Some(s) = c.input_string()? else {
        return Ok(Vec::new());
    };
    let s = s.as_str();
    match func {
        Func::IndexOf | Func::LastIndexOf => {
            let Some(sub) = c.arg_string(0)? else {
                return Ok(Vec::new());
            };
            let found = if func == Func::IndexOf {
                s.find(sub.as_str())
            } else {
                s.rfind(sub.as_str())
            };
            Ok(vec![Item::Integer(
                found.map(|b| char_index(s, b)).unwrap_or(-1),
            )])
        }
        Func::Substring => {
            let Some(start) = c.arg_integer(0)? else {
                return Ok(Vec::new());
            };
            let len = s.chars().count() as i64;
            if start < 0 || start >= len {
                return Ok(Vec::new());
            }
            let take = match c.args.len() {
                1 => len - start,
                _ => match c.arg_integer(1)? {
                    Some(l) => l.max(0),
                    None => len - start,
                },
            };
            string(s.chars().skip(start as usize).take(take as usize).collect())
        }
        Func::StartsWith | Func::EndsWith | Func::Contains => {
            let Some(sub) = c.arg_string(0)? else {
                return Ok(Vec::new());
            };
            let sub = sub.as_str();
            boolean(match func {
                Func::StartsWith => s.starts_with(sub),
                Func::EndsWith => s.ends_with(sub),
                _ => s.contains(sub),
            })
        }
        Func::Upper => string(s.to_uppercase()),
        Func::Lower => string(s.to_lowercase()),
        Func::Replace => {
            let (Some(pat), Some(rep)) = (c.arg_string(0)?, c.arg_string(1)?) else {
                return Ok(Vec::new());
            };
            if pat.as_str().is_empty() {
                let mut out = String::with_capacity(s.len() * 2);
                out.push_str(rep.as_str());
                for ch in s.chars() {
                    out.push(ch);
                    out.push_str(rep.as_str());
                }
                return string(out);
            }
            string(s.replace(pat.as_str(), rep.as_str()))
        }
        Func::Matches | Func::MatchesFull => {
            let Some(pat) = c.arg_string(0)? else {
                return Ok(Vec::new());
            };
            let r = regex(pat.as_str(), func == Func::MatchesFull).map_err(|m| c.error(m))?;
            boolean(r.is_match(s))
        }
        Func::ReplaceMatches => {
            let (Some(pat), Some(rep)) = (c.arg_string(0)?, c.arg_string(1)?) else {
                return Ok(Vec::new());
            };
            if pat.as_str().is_empty() {
                return string(s.to_string());
            }
            let r = regex(pat.as_str(), false).map_err(|m| c.error(m))?;
            string(r.replace_all(s, rep.as_str()).into_owned())
        }
        Func::Length => Ok(vec![Item::Integer(s.chars().count() as i64)]),
        Func::ToChars => Ok(s.chars().map(|ch| Item::string(ch.to_string())).collect()),
        Func::Trim => string(s.trim().to_string()),
        Func::Split => {
            let Some(sep) = c.arg_string(0)? else {
                return Ok(Vec::new());
            };
            if sep.as_str().is_empty() {
                return Ok(s.chars().map(|ch| Item::string(ch.to_string())).collect());
            }
            Ok(s.split(sep.as_str())
                .map(|p| Item::string(p.to_string()))
                .collect())
        }
        Func::Encode | Func::Decode => {
            let Some(fmt) = c.arg_string(0)? else {
                return Ok(Vec::new());
            };
            let out = if func == Func::Encode {
                encode(s, fmt.as_str())
            } else {
                decode(s, fmt.as_str())
            };
            match out {
                Ok(Some(v)) => string(v),
                Ok(None) => Ok(Vec::new()),
                Err(m) => Err(c.error(m)),
            }
        }
        Func::Escape | Func::Unescape => {
            let Some(fmt) = c.arg_string(0)? else {
                return Ok(Vec::new());
            };
            let out = match (func, fmt.as_str()) {
                (Func::Escape, "html") => escape_html(s),
                (Func::Escape, "json") => escape_json(s),
                (Func::Unescape, "html") => unescape_html(s),
                (Func::Unescape, "json") => unescape_json(s),
                (_, other) => return Err(c.error(format!("unknown escape format '{other}'"))),
            };
            string(out)
        }
        _ => Err(c.error("internal: not a string function")),
    }
}

fn encode(s: &str, fmt: &str) -> std::result::Result<Option<String>, String> {
    Ok(Some(match fmt {
        "base64" => base64::engine::general_purpose::STANDARD.encode(s),
        "urlbase64" => base64::engine::general_purpose::URL_SAFE.encode(s),
        "hex" => hex::encode(s),
        other => return Err(format!("unknown encoding '{other}'")),
    }))
}

fn decode(s: &str, fmt: &str) -> std::result::Result<Option<String>, String> {
    let bytes = match fmt {
        "base64" => base64::engine::general_purpose::STANDARD.decode(s).ok(),
        "urlbase64" => base64::engine::general_purpose::URL_SAFE.decode(s).ok(),
        "hex" => hex::decode(s).ok(),
        other => return Err(format!("unknown encoding '{other}'")),
    };
    Ok(bytes.and_then(|b| String::from_utf8(b).ok()))
}

fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn unescape_html(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

fn escape_json(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

fn unescape_json(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(ch) = chars.next() {
        if ch != '\\' {
            out.push(ch);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('t') => out.push('\t'),
            Some('b') => out.push('\u{8}'),
            Some('f') => out.push('\u{c}'),
            Some('u') => {
                let code: String = chars.by_ref().take(4).collect();
                match u32::from_str_radix(&code, 16).ok().and_then(char::from_u32) {
                    Some(c) => out.push(c),
                    None => out.push('\u{fffd}'),
                }
            }
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}
