//! How search values are normalised, on both sides (index and query): strings
//! folded for case- and accent-insensitive matching and cut into the blind forms
//! (prefixes, trigrams), dates turned into ranges by their precision, decimals
//! into implicit ranges, quantities into UCUM canonical units, references into
//! targets. The tags that prefix each blind form are defined here, once.

use chrono::{Datelike, NaiveDate, NaiveDateTime, NaiveTime, TimeZone};
use unicode_normalization::char::is_combining_mark;
use unicode_normalization::UnicodeNormalization;

/// Prefixes of a folded string are indexed up to this many characters; a longer
/// starts-with query uses the longest indexed prefix and is verified after
/// decryption (docs/decisions.md).
pub const PREFIX_CAP: usize = 12;

/// Blind-form tags: which normalised form a hashed value is.
pub mod tag {
    /// String: the value exactly as written (`:exact`).
    pub const EXACT: &str = "e:";
    /// String: a prefix of the folded value (default starts-with).
    pub const PREFIX: &str = "p:";
    /// String: a trigram of the folded value (`:contains`).
    pub const TRIGRAM: &str = "g:";
    /// String: the phonetic key of a name part (`phonetic`).
    pub const PHONETIC: &str = "f:";
    /// Token: the code, with or without a system.
    pub const CODE: &str = "c:";
    /// Token: `system|code`.
    pub const SYSTEM_CODE: &str = "s:";
    /// Token: the system alone (`system|`).
    pub const SYSTEM: &str = "y:";
    /// Token: a code that has no system (`|code`).
    pub const NO_SYSTEM: &str = "n:";
    /// Token: a prefix of the folded display or text (`:text`).
    pub const TEXT: &str = "t:";
    /// Token: identifier `type-system|type-code|value` (`:of-type`).
    pub const OF_TYPE: &str = "o:";
    /// Reference: the referenced identifier, as token forms (`:identifier`).
    pub const REF_IDENTIFIER: &str = "i";
    /// Quantity: any unit (the number alone).
    pub const ANY_UNIT: &str = "q:";
    /// Quantity: `system|code` of the unit.
    pub const UNIT_SYSTEM_CODE: &str = "qs:";
    /// Quantity: the unit code or unit text alone.
    pub const UNIT_CODE: &str = "qc:";
    /// Quantity: the UCUM canonical dimensions; the number is in base units.
    pub const UNIT_CANONICAL: &str = "qk:";
    /// Composite: the joined component forms.
    pub const COMPOSITE: &str = "x:";
}

/// Case- and accent-insensitive form (R4 search, string: "case and accent
/// insensitive"): canonical decomposition without combining marks, lower case,
/// runs of white space as one space, trimmed.
pub fn fold(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut space = false;
    for c in s.nfd() {
        if is_combining_mark(c) {
            continue;
        }
        if c.is_whitespace() {
            space = !out.is_empty();
            continue;
        }
        if space {
            out.push(' ');
            space = false;
        }
        for l in c.to_lowercase() {
            out.push(l);
        }
    }
    out
}

/// The first `n` characters.
pub fn first_chars(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Blind forms of one string value: exact, prefixes, and trigrams unless `lean`;
/// no trigram once `out` holds `limit` forms (the caller refuses the resource).
pub fn string_forms(raw: &str, out: &mut Vec<String>, lean: bool, limit: usize) {
    out.push(format!("{}{raw}", tag::EXACT));
    let folded = fold(raw);
    let chars: Vec<char> = folded.chars().collect();
    let mut prefix = String::new();
    for c in chars.iter().take(PREFIX_CAP) {
        prefix.push(*c);
        out.push(format!("{}{prefix}", tag::PREFIX));
    }
    if lean {
        return;
    }
    for w in chars.windows(3) {
        if out.len() >= limit {
            return;
        }
        let g: String = w.iter().collect();
        out.push(format!("{}{g}", tag::TRIGRAM));
    }
}

/// Trigrams of a folded query (`:contains`); empty when shorter than three.
pub fn trigrams(folded: &str) -> Vec<String> {
    let chars: Vec<char> = folded.chars().collect();
    let mut out: Vec<String> = chars
        .windows(3)
        .map(|w| format!("{}{}", tag::TRIGRAM, w.iter().collect::<String>()))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Blind forms for `:text` of a display or text: prefixes of the folded text (R4
/// 3.1.1.4.x: `:text` searches the text as a string search does, starts-with).
pub fn text_forms(raw: &str, out: &mut Vec<String>) {
    let folded = fold(raw);
    let mut prefix = String::new();
    for c in folded.chars().take(PREFIX_CAP) {
        prefix.push(c);
        out.push(format!("{}{prefix}", tag::TEXT));
    }
}

/// A phonetic key (American Soundex) of a name part; None without letters.
pub fn soundex(name: &str) -> Option<String> {
    let letters: Vec<char> = fold(name)
        .chars()
        .filter(|c| c.is_ascii_alphabetic())
        .map(|c| c.to_ascii_uppercase())
        .collect();
    let first = *letters.first()?;
    let code = |c: char| match c {
        'B' | 'F' | 'P' | 'V' => '1',
        'C' | 'G' | 'J' | 'K' | 'Q' | 'S' | 'X' | 'Z' => '2',
        'D' | 'T' => '3',
        'L' => '4',
        'M' | 'N' => '5',
        'R' => '6',
        'H' | 'W' => 'h',
        _ => '0',
    };
    let mut out = String::from(first);
    let mut last = code(first);
    for &c in &letters[1..] {
        let k = code(c);
        if k == 'h' {
            continue; // H and W do not separate equal codes
        }
        if k != '0' && k != last {
            out.push(k);
            if out.len() == 4 {
                break;
            }
        }
        last = k;
    }
    while out.len() < 4 {
        out.push('0');
    }
    Some(out)
}

/// A date, dateTime or instant as the range of instants it stands for, in
/// microseconds since the epoch: `2013` is the whole year, `2013-01-05T10:00` the
/// whole minute. Values without a time zone are taken as UTC.
pub fn date_range(s: &str) -> Option<(i64, i64)> {
    let s = s.trim();
    let (date, time) = match s.split_once('T') {
        Some((d, t)) => (d, Some(t)),
        None => (s, None),
    };
    let parts: Vec<&str> = date.split('-').collect();
    let year: i32 = parts.first()?.parse().ok()?;
    if parts[0].len() != 4 {
        return None;
    }
    let month: Option<u32> = match parts.get(1) {
        Some(m) if m.len() == 2 => Some(m.parse().ok()?),
        Some(_) => return None,
        None => None,
    };
    let day: Option<u32> = match parts.get(2) {
        Some(d) if d.len() == 2 => Some(d.parse().ok()?),
        Some(_) => return None,
        None => None,
    };
    if parts.len() > 3 {
        return None;
    }
    let start_of = |y: i32, m: u32, d: u32| NaiveDate::from_ymd_opt(y, m, d);
    let Some(time) = time else {
        let (lo, hi) = match (month, day) {
            (None, _) => (start_of(year, 1, 1)?, start_of(year + 1, 1, 1)?),
            (Some(m), None) => {
                let next = if m == 12 {
                    start_of(year + 1, 1, 1)?
                } else {
                    start_of(year, m + 1, 1)?
                };
                (start_of(year, m, 1)?, next)
            }
            (Some(m), Some(d)) => {
                let day = start_of(year, m, d)?;
                (day, day.succ_opt()?)
            }
        };
        let lo = lo.and_hms_opt(0, 0, 0)?.and_utc().timestamp_micros();
        let hi = hi.and_hms_opt(0, 0, 0)?.and_utc().timestamp_micros() - 1;
        return Some((lo, hi));
    };
    let day = start_of(year, month?, day?)?;
    // The zone: Z, +hh:mm or -hh:mm at the end; none means UTC.
    let (clock, offset_secs) = if let Some(c) = time.strip_suffix('Z') {
        (c, 0)
    } else if let Some(i) = time.rfind(['+', '-']) {
        let (c, z) = time.split_at(i);
        let sign = if z.starts_with('-') { -1 } else { 1 };
        let (h, m) = z[1..].split_once(':')?;
        let (h, m): (i32, i32) = (h.parse().ok()?, m.parse().ok()?);
        if h > 14 || m > 59 {
            return None;
        }
        (c, sign * (h * 3600 + m * 60))
    } else {
        (time, 0)
    };
    let fields: Vec<&str> = clock.split(':').collect();
    let (hour, minute): (u32, u32) = (fields.first()?.parse().ok()?, fields.get(1)?.parse().ok()?);
    let (second, frac, precision_micros) = match fields.get(2) {
        None => (0u32, 0i64, 60_000_000i64),
        Some(sec) => match sec.split_once('.') {
            None => (sec.parse().ok()?, 0, 1_000_000),
            Some((whole, f)) => {
                if f.is_empty() || !f.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                let digits = f.len().min(6);
                let micros: i64 = format!("{:0<6}", &f[..digits]).parse().ok()?;
                (whole.parse().ok()?, micros, 10i64.pow(6 - digits as u32))
            }
        },
    };
    if fields.len() > 3 || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let naive = NaiveDateTime::new(day, NaiveTime::from_hms_opt(hour, minute, second.min(59))?);
    let offset = chrono::FixedOffset::east_opt(offset_secs)?;
    let t = offset.from_local_datetime(&naive).single()?;
    let lo = t.timestamp_micros() + frac;
    Some((lo, lo + precision_micros - 1))
}

/// Year of a range's start, for messages.
pub fn year_of(micros: i64) -> i32 {
    chrono::DateTime::from_timestamp_micros(micros)
        .map(|t| t.year())
        .unwrap_or(1970)
}

/// A decimal as written, with the half-width of its implicit precision (R4 search,
/// number: "100" covers 99.5 to 100.5, "100.00" 99.995 to 100.005, "1e2" 95 to 105).
pub fn decimal(text: &str) -> Option<(f64, f64)> {
    let t = text.trim();
    if t.is_empty()
        || !t
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'+' | b'e' | b'E'))
    {
        return None;
    }
    let value: f64 = t.parse().ok()?;
    if !value.is_finite() {
        return None;
    }
    let (mantissa, exp) = match t.find(['e', 'E']) {
        Some(i) => (&t[..i], t[i + 1..].parse::<i32>().ok()?),
        None => (t, 0),
    };
    let m = mantissa.trim_start_matches(['-', '+']);
    let half = if exp != 0 || t.contains(['e', 'E']) {
        let significant = m.chars().filter(|c| c.is_ascii_digit()).count() as i32;
        0.5 * 10f64.powi(exp - significant)
    } else {
        let decimals = m.split_once('.').map_or(0, |(_, f)| f.len()) as i32;
        0.5 * 10f64.powi(-decimals)
    };
    Some((value, half))
}

/// A UCUM unit reduced to base units: (factor, dimension key); None when the unit
/// is not understood or has an offset (Celsius).
pub fn ucum_canonical(code: &str) -> Option<(f64, String)> {
    let (factor, dims) = crate::fhirpath::ucum_base(code)?;
    let key = dims
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join(",");
    Some((factor, key))
}

pub const UCUM: &str = "http://unitsofmeasure.org";

/// A parsed reference value: local `Type/id`, or a URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefParts {
    Local { resource_type: String, id: String },
    Url(String),
}

/// Reads a reference as written in a resource or a query: `Type/id`,
/// `Type/id/_history/v`, an absolute URL (local when it starts with this server's
/// base URL), `#contained` (None: contained resources are not indexed).
pub fn parse_reference(
    reference: &str,
    base_url: &str,
    is_type: impl Fn(&str) -> bool,
) -> Option<RefParts> {
    let r = reference.trim();
    if r.is_empty() || r.starts_with('#') {
        return None;
    }
    let local = r
        .strip_prefix(base_url)
        .and_then(|rest| rest.strip_prefix('/'))
        .unwrap_or(r);
    let segments: Vec<&str> = local.split('/').collect();
    let local_ok = !local.contains(':');
    match segments.as_slice() {
        [t, id] | [t, id, "_history", _] if local_ok && is_type(t) && !id.is_empty() => {
            Some(RefParts::Local {
                resource_type: t.to_string(),
                id: id.to_string(),
            })
        }
        _ => Some(RefParts::Url(r.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folding_ignores_case_accents_and_extra_space() {
        assert_eq!(fold("  Émile   ZOLA "), "emile zola");
        assert_eq!(fold("Chalmers"), "chalmers");
        assert_eq!(fold("Ångström"), "angstrom");
    }

    #[test]
    fn dates_cover_their_precision() {
        let (lo, hi) = date_range("2013").unwrap();
        assert_eq!(lo, date_range("2013-01-01T00:00:00Z").unwrap().0);
        assert_eq!(hi + 1, date_range("2014-01-01T00:00:00Z").unwrap().0);
        let (lo, hi) = date_range("2013-02").unwrap();
        assert_eq!(hi + 1 - lo, 28 * 86_400_000_000);
        let (lo, hi) = date_range("2013-01-05T10:00:00+01:00").unwrap();
        assert_eq!(lo, date_range("2013-01-05T09:00:00Z").unwrap().0);
        assert_eq!(hi - lo, 999_999);
        let (lo, hi) = date_range("2013-01-05T10:00:00.5Z").unwrap();
        assert_eq!(hi - lo, 99_999);
        assert_eq!(lo % 1_000_000, 500_000);
        for bad in [
            "2013-13",
            "2013-02-30",
            "13",
            "2013-01-05T25:00",
            "2013/01",
            "x",
        ] {
            assert!(date_range(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn decimals_carry_their_implicit_precision() {
        assert_eq!(decimal("100"), Some((100.0, 0.5)));
        assert_eq!(decimal("100.00"), Some((100.0, 0.005)));
        assert_eq!(decimal("1e2"), Some((100.0, 5.0)));
        assert!(decimal("abc").is_none());
        assert!(decimal("").is_none());
    }

    #[test]
    fn soundex_groups_similar_names() {
        assert_eq!(soundex("Robert").as_deref(), Some("R163"));
        assert_eq!(soundex("Rupert").as_deref(), Some("R163"));
        assert_eq!(soundex("Ashcraft").as_deref(), Some("A261"));
        assert_eq!(soundex("Tymczak").as_deref(), Some("T522"));
        assert_eq!(soundex("123"), None);
    }

    #[test]
    fn references_are_local_or_urls() {
        let is_type = |t: &str| t == "Patient";
        assert_eq!(
            parse_reference("Patient/1", "http://x/fhir", is_type),
            Some(RefParts::Local {
                resource_type: "Patient".into(),
                id: "1".into()
            })
        );
        assert_eq!(
            parse_reference(
                "http://x/fhir/Patient/1/_history/2",
                "http://x/fhir",
                is_type
            ),
            Some(RefParts::Local {
                resource_type: "Patient".into(),
                id: "1".into()
            })
        );
        assert_eq!(
            parse_reference("http://y/fhir/Patient/1", "http://x/fhir", is_type),
            Some(RefParts::Url("http://y/fhir/Patient/1".into()))
        );
        assert_eq!(parse_reference("#c1", "http://x/fhir", is_type), None);
    }
}
