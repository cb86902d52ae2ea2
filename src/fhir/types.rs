//! Vocabulary types that cannot be wrong once built: resource types (checked
//! against the loaded model by [`super::Model::resource_type`]), resource ids and
//! version ids.

use std::fmt;

/// A resource type the loaded model defines (what may appear as `resourceType`):
/// only [`super::Model::resource_type`] makes one, so code that holds one need not
/// check it again.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceType(String);

impl ResourceType {
    /// For the model only: `name` is one of its resource types.
    pub(super) fn known(name: &str) -> ResourceType {
        ResourceType(name.to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for ResourceType {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ResourceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl PartialEq<str> for ResourceType {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for ResourceType {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

/// A logical id: 1 to 64 of `[A-Za-z0-9.-]` (FHIR R4 datatypes, `id`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Id(String);

impl Id {
    pub fn parse(s: &str) -> Result<Id, String> {
        if s.is_empty() || s.len() > 64 {
            return Err(format!(
                "id `{}` must be 1 to 64 characters long",
                truncate(s, 80)
            ));
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        {
            return Err(format!(
                "id `{}` may only contain letters, digits, '-' and '.'",
                truncate(s, 80)
            ));
        }
        Ok(Id(s.to_string()))
    }

    /// A new server-assigned id.
    pub fn generate() -> Id {
        Id(uuid::Uuid::new_v4().to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A version id: the server numbers versions 1, 2, 3, ...
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VersionId(pub i64);

impl VersionId {
    pub fn parse(s: &str) -> Result<VersionId, String> {
        match s.parse::<i64>() {
            Ok(v) if v >= 1 && !s.starts_with('+') => Ok(VersionId(v)),
            _ => Err(format!(
                "version id `{}` is not one of this server's versions",
                truncate(s, 80)
            )),
        }
    }
}

impl fmt::Display for VersionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A version ETag (`W/"3"` or `"3"`) -> 3: `If-Match` headers and the `ifMatch`
/// of Bundle entries.
pub fn parse_etag(value: &str) -> Option<i64> {
    let v = value.trim();
    let v = v.strip_prefix("W/").unwrap_or(v);
    let v = v.trim_matches('"');
    v.parse::<i64>().ok().filter(|n| *n >= 1)
}

/// The first character FHIR forbids in a string, uri or other text primitive:
/// R4 2.24.0.1 (string): strings "SHALL NOT contain Unicode character points below
/// 32", except horizontal tab, carriage return and line feed. Such text is not XML
/// 1.0 either, and PostgreSQL refuses NUL in text.
pub fn forbidden_char(s: &str) -> Option<char> {
    s.chars().find(|c| is_forbidden_char(*c))
}

/// See [`forbidden_char`]; also U+FFFE and U+FFFF, which XML 1.0 has no
/// representation for, even as a reference.
pub fn is_forbidden_char(c: char) -> bool {
    (c < '\u{20}' && !matches!(c, '\t' | '\r' | '\n')) || matches!(c, '\u{fffe}' | '\u{ffff}')
}

/// How an error message names a forbidden character (`U+0000`).
pub fn describe_char(c: char) -> String {
    format!("U+{:04X}", c as u32)
}

/// Cuts a client-supplied string for an error message.
pub fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        s.chars().take(max).collect::<String>() + "…"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_the_r4_id_rule() {
        for ok in ["a", "123", "example-1.2", &"x".repeat(64)] {
            assert!(Id::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a b", "a/b", "a_b", "é", &"x".repeat(65)] {
            assert!(Id::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn version_ids_are_positive_integers() {
        assert_eq!(VersionId::parse("3"), Ok(VersionId(3)));
        for bad in ["0", "-1", "x", "", "+1", "1.0"] {
            assert!(VersionId::parse(bad).is_err(), "{bad}");
        }
    }
}
