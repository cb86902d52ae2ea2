//! Dynamic SQL with bound parameters for the search queries, which diesel's typed
//! query builder cannot express (nested semi-joins whose shape depends on the
//! request). Values are always bound, never spliced into the text. Lists are bound
//! as one array parameter (PostgreSQL `= ANY($1)`, SQLite `json_each(?)`), so a
//! query's text depends only on its shape, and shapes are cached as prepared
//! statements (up to [`SHAPE_LIMIT`] distinct shapes per process; past that, new
//! shapes run unprepared so that clients cannot grow every connection's cache).

use std::collections::HashSet;

use diesel::pg::Pg;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::sql_types::{Array, BigInt, Binary, Double, Text, Untyped};
use diesel::sqlite::Sqlite;
use diesel::{QueryResult, RunQueryDsl};
use once_cell::sync::Lazy;
use parking_lot::Mutex;

use super::pool::Backend;

/// Distinct query texts kept as prepared statements.
const SHAPE_LIMIT: usize = 2_000;

static SHAPES: Lazy<Mutex<HashSet<u64>>> = Lazy::new(|| Mutex::new(HashSet::new()));

#[derive(Debug, Clone)]
pub(crate) enum Bind {
    I64(i64),
    F64(f64),
    Text(String),
    I64s(Vec<i64>),
    F64s(Vec<f64>),
    Texts(Vec<String>),
    Bytes(Vec<u8>),
}

#[derive(Debug, Clone)]
enum Part {
    Text(String),
    Bind(Bind),
}

/// A statement under construction for one backend.
#[derive(Debug, Clone)]
pub(crate) struct Sql {
    backend: Backend,
    parts: Vec<Part>,
    cacheable: bool,
}

impl Sql {
    pub fn new(backend: Backend) -> Sql {
        Sql {
            backend,
            parts: Vec::new(),
            cacheable: true,
        }
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Appends SQL text (never client values).
    pub fn push(&mut self, text: &str) -> &mut Sql {
        match self.parts.last_mut() {
            Some(Part::Text(t)) => t.push_str(text),
            _ => self.parts.push(Part::Text(text.to_string())),
        }
        self
    }

    /// Appends another statement's text and binds (same backend).
    pub fn append(&mut self, other: &Sql) -> &mut Sql {
        for p in &other.parts {
            match p {
                Part::Text(t) => {
                    self.push(t);
                }
                Part::Bind(b) => self.parts.push(Part::Bind(b.clone())),
            }
        }
        self
    }

    pub fn bind(&mut self, b: Bind) -> &mut Sql {
        let b = match (self.backend, b) {
            (Backend::Sqlite, Bind::I64s(v)) => Bind::Text(json_array(v.iter())),
            (Backend::Sqlite, Bind::Texts(v)) => {
                Bind::Text(serde_json::to_string(&v).unwrap_or_else(|_| "[]".to_string()))
            }
            (_, b) => b,
        };
        self.parts.push(Part::Bind(b));
        self
    }

    pub fn i64(&mut self, v: i64) -> &mut Sql {
        self.bind(Bind::I64(v))
    }

    pub fn f64(&mut self, v: f64) -> &mut Sql {
        self.bind(Bind::F64(v))
    }

    pub fn text(&mut self, v: &str) -> &mut Sql {
        self.bind(Bind::Text(v.to_string()))
    }

    /// `column = ?` for one value, `column IN <list>` for several; false for none.
    pub fn in_i64s(&mut self, column: &str, values: &[i64]) -> &mut Sql {
        match values {
            [] => self.push("1 = 0"),
            [one] => self.push(column).push(" = ").i64(*one),
            many => {
                self.push(column);
                match self.backend {
                    Backend::Postgres => self
                        .push(" = ANY(")
                        .bind(Bind::I64s(many.to_vec()))
                        .push(")"),
                    Backend::Sqlite => self
                        .push(" IN (SELECT value FROM json_each(")
                        .bind(Bind::I64s(many.to_vec()))
                        .push("))"),
                }
            }
        }
    }

    /// As [`Sql::in_i64s`] for text values.
    pub fn in_texts(&mut self, column: &str, values: &[String]) -> &mut Sql {
        match values {
            [] => self.push("1 = 0"),
            [one] => self.push(column).push(" = ").text(one),
            many => {
                self.push(column);
                match self.backend {
                    Backend::Postgres => self
                        .push(" = ANY(")
                        .bind(Bind::Texts(many.to_vec()))
                        .push(")"),
                    Backend::Sqlite => self
                        .push(" IN (SELECT value FROM json_each(")
                        .bind(Bind::Texts(many.to_vec()))
                        .push("))"),
                }
            }
        }
    }

    /// The boolean literal of the backend (`false`/`0` are both accepted by each, but
    /// the columns are typed as each backend stores booleans).
    pub fn false_literal(&self) -> &'static str {
        match self.backend {
            Backend::Postgres => "false",
            Backend::Sqlite => "0",
        }
    }

    /// A boolean literal of the backend.
    pub fn boolean(&mut self, value: bool) -> &mut Sql {
        let text = match (self.backend, value) {
            (Backend::Postgres, true) => "true",
            (Backend::Postgres, false) => "false",
            (Backend::Sqlite, true) => "1",
            (Backend::Sqlite, false) => "0",
        };
        self.push(text)
    }

    /// Marks the statement prepared-statement cacheable if its shape is known or the
    /// process has room for another shape.
    pub fn finish(mut self) -> Sql {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        use std::hash::{Hash, Hasher};
        for p in &self.parts {
            if let Part::Text(t) = p {
                t.hash(&mut h);
            } else {
                0u8.hash(&mut h);
            }
        }
        let key = h.finish();
        let mut shapes = SHAPES.lock();
        self.cacheable = shapes.contains(&key) || {
            if shapes.len() < SHAPE_LIMIT {
                shapes.insert(key);
                true
            } else {
                false
            }
        };
        self
    }

    /// Rewrites literal text pieces (never binds).
    pub fn replace_text(mut self, pairs: &[(&str, &str)]) -> Sql {
        for p in &mut self.parts {
            if let Part::Text(t) = p {
                for (from, to) in pairs {
                    if t.contains(from) {
                        *t = t.replace(from, to);
                    }
                }
            }
        }
        self
    }

    /// The text with `?` for binds (for logs and the plan tests).
    pub fn display(&self) -> String {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::Bind(_) => out.push('?'),
            }
        }
        out
    }
}

fn json_array<'a>(v: impl Iterator<Item = &'a i64>) -> String {
    let items: Vec<String> = v.map(|i| i.to_string()).collect();
    format!("[{}]", items.join(","))
}

impl QueryId for Sql {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl Query for Sql {
    type SqlType = Untyped;
}

impl<Conn> RunQueryDsl<Conn> for Sql {}

impl QueryFragment<Sqlite> for Sql {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Sqlite>) -> QueryResult<()> {
        if !self.cacheable {
            out.unsafe_to_cache_prepared();
        }
        for p in &self.parts {
            match p {
                Part::Text(t) => out.push_sql(t),
                Part::Bind(Bind::I64(v)) => out.push_bind_param::<BigInt, _>(v)?,
                Part::Bind(Bind::F64(v)) => out.push_bind_param::<Double, _>(v)?,
                Part::Bind(Bind::Text(v)) => out.push_bind_param::<Text, _>(v)?,
                Part::Bind(Bind::Bytes(v)) => out.push_bind_param::<Binary, _>(v)?,
                // Converted to JSON text by `bind` for SQLite.
                Part::Bind(Bind::I64s(_) | Bind::F64s(_) | Bind::Texts(_)) => {
                    return Err(diesel::result::Error::QueryBuilderError(
                        "array parameter on SQLite".into(),
                    ))
                }
            }
        }
        Ok(())
    }
}

impl QueryFragment<Pg> for Sql {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        if !self.cacheable {
            out.unsafe_to_cache_prepared();
        }
        for p in &self.parts {
            match p {
                Part::Text(t) => out.push_sql(t),
                Part::Bind(Bind::I64(v)) => out.push_bind_param::<BigInt, _>(v)?,
                Part::Bind(Bind::F64(v)) => out.push_bind_param::<Double, _>(v)?,
                Part::Bind(Bind::Text(v)) => out.push_bind_param::<Text, _>(v)?,
                Part::Bind(Bind::Bytes(v)) => out.push_bind_param::<Binary, _>(v)?,
                Part::Bind(Bind::I64s(v)) => out.push_bind_param::<Array<BigInt>, _>(v)?,
                Part::Bind(Bind::F64s(v)) => out.push_bind_param::<Array<Double>, _>(v)?,
                Part::Bind(Bind::Texts(v)) => out.push_bind_param::<Array<Text>, _>(v)?,
            }
        }
        Ok(())
    }
}
