//! Lexer: turns FHIRPath text into tokens (identifiers, literals, operators), skipping
//! whitespace and comments. Date/time literals (`@2014-01`, `@T10:30`) are recognised here with
//! their partial precision kept as text; the parser builds typed values from them.

use super::error::{FhirPathError, Position, Result};

#[derive(Debug, Clone, PartialEq)]
pub enum Tok {
    /// Plain identifier (may be a keyword such as `and`, `is`, `true`; the parser decides).
    Ident(String),
    /// Back-tick delimited identifier: never a keyword.
    DelimitedIdent(String),
    Str(String),
    /// Integer or decimal number, as written.
    Number(String),
    /// Long number literal (`12L`).
    Long(String),
    /// `@...` date / dateTime / time literal without the `@`.
    DateTime(String),
    /// `$this`, `$index`, `$total` (name without `$`).
    Dollar(String),
    /// `%name` or `%'name'` / `%\`name\`` (name without `%`).
    Percent(String),
    Sym(&'static str),
    Eof,
}

#[derive(Debug, Clone)]
pub struct Token {
    pub tok: Tok,
    pub start: usize,
}

const SYMBOLS: [&str; 22] = [
    "<=", ">=", "!=", "!~", ".", "[", "]", "(", ")", "{", "}", ",", "+", "-", "*", "/", "|", "=",
    "~", "<", ">", "&",
];

fn err(text: &str, at: usize, message: impl Into<String>) -> FhirPathError {
    FhirPathError::Syntax {
        position: Position::at(text, at),
        message: message.into(),
    }
}

/// Splits `text` into tokens; the last token is always `Eof`.
pub fn tokenize(text: &str) -> Result<Vec<Token>> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        if c == b'/' && bytes.get(i + 1) == Some(&b'/') {
            while i < bytes.len() && bytes[i] != b'\n' {
                i += 1;
            }
            continue;
        }
        if c == b'/' && bytes.get(i + 1) == Some(&b'*') {
            match text[i + 2..].find("*/") {
                Some(end) => {
                    i = i + 2 + end + 2;
                    continue;
                }
                None => return Err(err(text, i, "unterminated comment")),
            }
        }
        let start = i;
        if c.is_ascii_alphabetic() || c == b'_' {
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                i += 1;
            }
            out.push(Token {
                tok: Tok::Ident(text[start..i].to_string()),
                start,
            });
            continue;
        }
        if c == b'`' {
            let (s, next) = read_quoted(text, i, b'`')?;
            out.push(Token {
                tok: Tok::DelimitedIdent(s),
                start,
            });
            i = next;
            continue;
        }
        if c == b'\'' {
            let (s, next) = read_quoted(text, i, b'\'')?;
            out.push(Token {
                tok: Tok::Str(s),
                start,
            });
            i = next;
            continue;
        }
        if c.is_ascii_digit() {
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
            if i + 1 < bytes.len() && bytes[i] == b'.' && bytes[i + 1].is_ascii_digit() {
                i += 1;
                while i < bytes.len() && bytes[i].is_ascii_digit() {
                    i += 1;
                }
            } else if i < bytes.len() && bytes[i] == b'L' {
                out.push(Token {
                    tok: Tok::Long(text[start..i].to_string()),
                    start,
                });
                i += 1;
                continue;
            }
            out.push(Token {
                tok: Tok::Number(text[start..i].to_string()),
                start,
            });
            continue;
        }
        if c == b'@' {
            i += 1;
            let s = i;
            i = scan_datetime(bytes, i);
            if i == s {
                return Err(err(text, start, "invalid date/time literal after '@'"));
            }
            out.push(Token {
                tok: Tok::DateTime(text[s..i].to_string()),
                start,
            });
            continue;
        }
        if c == b'$' {
            i += 1;
            let s = i;
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                i += 1;
            }
            if i == s {
                return Err(err(text, start, "expected a name after '$'"));
            }
            out.push(Token {
                tok: Tok::Dollar(text[s..i].to_string()),
                start,
            });
            continue;
        }
        if c == b'%' {
            i += 1;
            match bytes.get(i) {
                Some(b'`') | Some(b'\'') => {
                    let (s, next) = read_quoted(text, i, bytes[i])?;
                    i = next;
                    out.push(Token {
                        tok: Tok::Percent(s),
                        start,
                    });
                }
                _ => {
                    let s = i;
                    while i < bytes.len()
                        && (bytes[i].is_ascii_alphanumeric()
                            || bytes[i] == b'_'
                            || bytes[i] == b'-')
                    {
                        i += 1;
                    }
                    if i == s {
                        return Err(err(text, start, "expected a name after '%'"));
                    }
                    out.push(Token {
                        tok: Tok::Percent(text[s..i].to_string()),
                        start,
                    });
                }
            }
            continue;
        }
        match SYMBOLS.iter().find(|s| text[i..].starts_with(**s)) {
            Some(sym) => {
                out.push(Token {
                    tok: Tok::Sym(sym),
                    start,
                });
                i += sym.len();
            }
            None => {
                let ch = text[i..].chars().next().unwrap_or('?');
                return Err(err(text, i, format!("unexpected character '{ch}'")));
            }
        }
    }
    out.push(Token {
        tok: Tok::Eof,
        start: text.len(),
    });
    Ok(out)
}

/// Scans the body of a date/time literal (after `@`), returning the end offset.
fn scan_datetime(b: &[u8], mut i: usize) -> usize {
    let digits = |b: &[u8], i: usize, n: usize| -> bool {
        b.len() >= i + n && b[i..i + n].iter().all(|c| c.is_ascii_digit())
    };
    let scan_time = |b: &[u8], mut i: usize| -> usize {
        // hh(:mm(:ss(.fff)?)?)?
        if !digits(b, i, 2) {
            return i;
        }
        i += 2;
        if b.get(i) == Some(&b':') && digits(b, i + 1, 2) {
            i += 3;
            if b.get(i) == Some(&b':') && digits(b, i + 1, 2) {
                i += 3;
                if b.get(i) == Some(&b'.') && digits(b, i + 1, 1) {
                    i += 1;
                    while i < b.len() && b[i].is_ascii_digit() {
                        i += 1;
                    }
                }
            }
        }
        i
    };
    if b.get(i) == Some(&b'T') {
        let end = scan_time(b, i + 1);
        return if end == i + 1 { i } else { end };
    }
    if !digits(b, i, 4) {
        return i;
    }
    i += 4;
    if b.get(i) == Some(&b'-') && digits(b, i + 1, 2) {
        i += 3;
        if b.get(i) == Some(&b'-') && digits(b, i + 1, 2) {
            i += 3;
        }
    }
    if b.get(i) == Some(&b'T') {
        i += 1;
        i = scan_time(b, i);
        // time zone
        if b.get(i) == Some(&b'Z') {
            i += 1;
        } else if matches!(b.get(i), Some(b'+') | Some(b'-'))
            && digits(b, i + 1, 2)
            && b.get(i + 3) == Some(&b':')
            && digits(b, i + 4, 2)
        {
            i += 6;
        }
    }
    i
}

/// Reads a quoted string or delimited identifier starting at `i` (the opening quote),
/// resolving escapes. Returns the text and the offset after the closing quote.
fn read_quoted(text: &str, i: usize, quote: u8) -> Result<(String, usize)> {
    let mut out = String::new();
    let mut chars = text[i + 1..].char_indices();
    while let Some((off, c)) = chars.next() {
        let at = i + 1 + off;
        if c as u32 == quote as u32 {
            return Ok((out, at + 1));
        }
        if c == '\\' {
            let Some((_, e)) = chars.next() else {
                break;
            };
            match e {
                '\'' | '"' | '`' | '\\' | '/' => out.push(e),
                'f' => out.push('\u{c}'),
                'n' => out.push('\n'),
                'r' => out.push('\r'),
                't' => out.push('\t'),
                'u' => {
                    let mut code = String::new();
                    for _ in 0..4 {
                        match chars.next() {
                            Some((_, h)) if h.is_ascii_hexdigit() => code.push(h),
                            _ => return Err(err(text, at, "invalid \\u escape")),
                        }
                    }
                    let n = u32::from_str_radix(&code, 16)
                        .map_err(|_| err(text, at, "invalid \\u escape"))?;
                    out.push(char::from_u32(n).unwrap_or('\u{fffd}'));
                }
                other => return Err(err(text, at, format!("invalid escape '\\{other}'"))),
            }
            continue;
        }
        out.push(c);
    }
    Err(err(text, i, "unterminated string or delimited identifier"))
}
