//! The values FHIRPath computes with. An `Item` is either a `Node` (a borrowed element of the
//! input JSON together with its FHIR type, never copied) or a System value computed by the
//! expression (Boolean, Integer, Decimal, String, Date, DateTime, Time, Quantity). This file
//! also holds the conversions from FHIR primitives to System values and the equality,
//! equivalence and ordering rules between items.

use std::cmp::Ordering;
use std::rc::Rc;
use std::str::FromStr;

use rust_decimal::Decimal;
use serde_json::Value;

use super::datetime::{DateTime, Time};
use super::model::ModelInfo;
use super::quantity::Quantity;

/// Text that is borrowed from the input or the compiled expression, or computed.
#[derive(Debug, Clone)]
pub enum Text<'a> {
    Borrowed(&'a str),
    Shared(Rc<str>),
}

impl Text<'_> {
    pub fn as_str(&self) -> &str {
        match self {
            Text::Borrowed(s) => s,
            Text::Shared(s) => s,
        }
    }
}

impl From<String> for Text<'_> {
    fn from(s: String) -> Self {
        Text::Shared(Rc::from(s))
    }
}

/// An element of the input: the JSON value plus the `_name` companion object that holds `id`
/// and `extension` of a primitive, and its FHIR type.
#[derive(Debug, Clone, Copy)]
pub struct Node<'a> {
    /// The JSON value; None for a primitive that has only an id/extension (`_given` without
    /// `given`).
    pub json: Option<&'a Value>,
    /// The `_name` companion of a primitive.
    pub ext: Option<&'a Value>,
    /// FHIR type code, or "" when unknown.
    pub ty: &'a str,
}

/// The System types of FHIRPath.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SysType {
    Boolean,
    Integer,
    Long,
    Decimal,
    String,
    Date,
    DateTime,
    Time,
    Quantity,
}

impl SysType {
    pub fn from_name(name: &str) -> Option<SysType> {
        Some(match name {
            "Boolean" => SysType::Boolean,
            "Integer" => SysType::Integer,
            "Long" => SysType::Long,
            "Decimal" => SysType::Decimal,
            "String" => SysType::String,
            "Date" => SysType::Date,
            "DateTime" => SysType::DateTime,
            "Time" => SysType::Time,
            "Quantity" => SysType::Quantity,
            _ => return None,
        })
    }
    pub fn name(self) -> &'static str {
        match self {
            SysType::Boolean => "Boolean",
            SysType::Integer => "Integer",
            SysType::Long => "Long",
            SysType::Decimal => "Decimal",
            SysType::String => "String",
            SysType::Date => "Date",
            SysType::DateTime => "DateTime",
            SysType::Time => "Time",
            SysType::Quantity => "Quantity",
        }
    }
}

/// One item of a FHIRPath collection.
#[derive(Debug, Clone)]
pub enum Item<'a> {
    Node(Node<'a>),
    Boolean(bool),
    Integer(i64),
    Long(i64),
    Decimal(Decimal),
    String(Text<'a>),
    Date(DateTime),
    DateTime(DateTime),
    Time(Time),
    Quantity(Rc<Quantity>),
    /// The result of `type()`: namespace (`System`, `FHIR`) and type name.
    TypeInfo(&'static str, Text<'a>),
}

/// A collection (ordered, may contain duplicates).
pub type Collection<'a> = Vec<Item<'a>>;

/// The System type a FHIR primitive type maps to (FHIR specification, section "Using
/// FHIRPath with FHIR": primitives are implicitly converted to System values).
pub fn primitive_system_type(model: &dyn ModelInfo, ty: &str) -> Option<SysType> {
    let mut t = ty;
    for _ in 0..8 {
        let s = match t {
            "boolean" => SysType::Boolean,
            "integer" | "positiveInt" | "unsignedInt" => SysType::Integer,
            "integer64" => SysType::Long,
            "decimal" => SysType::Decimal,
            "date" => SysType::Date,
            "dateTime" | "instant" => SysType::DateTime,
            "time" => SysType::Time,
            "string" | "code" | "id" | "markdown" | "uri" | "url" | "canonical" | "oid"
            | "uuid" | "base64Binary" | "xhtml" => SysType::String,
            _ => match model.base_type(t) {
                Some(b) => {
                    t = b;
                    continue;
                }
                None => return None,
            },
        };
        return Some(s);
    }
    None
}

/// Parses a JSON number into an Integer or Decimal item, keeping the written precision.
fn number_item<'a>(n: &serde_json::Number, want: Option<SysType>) -> Option<Item<'a>> {
    let text = n.as_str();
    let integral = !text.contains(['.', 'e', 'E']);
    match want {
        Some(SysType::Decimal) => Decimal::from_str(text)
            .or_else(|_| Decimal::from_scientific(text))
            .ok()
            .map(Item::Decimal),
        Some(SysType::Long) => text.parse().ok().map(Item::Long),
        _ if integral => text.parse().ok().map(Item::Integer),
        _ => Decimal::from_str(text)
            .or_else(|_| Decimal::from_scientific(text))
            .ok()
            .map(Item::Decimal),
    }
}

impl<'a> Node<'a> {
    /// The System value of a primitive node (None for complex nodes and value-less
    /// primitives).
    pub fn primitive(&self, model: &dyn ModelInfo) -> Option<Item<'a>> {
        let json = self.json?;
        let want = if self.ty.is_empty() {
            None
        } else {
            primitive_system_type(model, self.ty)
        };
        match json {
            Value::Bool(b) => Some(Item::Boolean(*b)),
            Value::Number(n) => number_item(n, want),
            Value::String(s) => match want {
                Some(SysType::Date) => DateTime::parse(s)
                    .filter(|d| d.is_date_only())
                    .map(Item::Date)
                    .or(Some(Item::String(Text::Borrowed(s)))),
                Some(SysType::DateTime) => DateTime::parse(s)
                    .map(Item::DateTime)
                    .or(Some(Item::String(Text::Borrowed(s)))),
                Some(SysType::Time) => super::datetime::parse_time(s)
                    .map(Item::Time)
                    .or(Some(Item::String(Text::Borrowed(s)))),
                Some(SysType::Integer) => s.parse().ok().map(Item::Integer),
                Some(SysType::Decimal) => Decimal::from_str(s).ok().map(Item::Decimal),
                _ => Some(Item::String(Text::Borrowed(s))),
            },
            _ => None,
        }
    }

    /// A FHIR Quantity (or a type derived from it) as a System Quantity.
    pub fn quantity(&self) -> Option<Quantity> {
        let obj = self.json?.as_object()?;
        let value = match obj.get("value")? {
            Value::Number(n) => Decimal::from_str(n.as_str()).ok()?,
            _ => return None,
        };
        let ucum = obj
            .get("system")
            .and_then(Value::as_str)
            .is_none_or(|s| s == "http://unitsofmeasure.org");
        let unit = if ucum {
            obj.get("code").or_else(|| obj.get("unit"))
        } else {
            obj.get("unit")
        };
        let unit = unit.and_then(Value::as_str).unwrap_or("1");
        Some(Quantity::new(value, unit))
    }
}

impl<'a> Item<'a> {
    pub fn string(s: String) -> Item<'a> {
        Item::String(Text::from(s))
    }

    /// For a node, its System value if it is a primitive (or a Quantity); otherwise itself.
    pub fn to_system(&self, model: &dyn ModelInfo) -> Option<Item<'a>> {
        match self {
            Item::Node(n) => {
                if let Some(Value::Object(_)) = n.json {
                    if n.ty == "Quantity"
                        || super::model::is_a(model, n.ty, "Quantity")
                        || (n.ty.is_empty() && n.json.and_then(|j| j.get("value")).is_some())
                    {
                        return n.quantity().map(|q| Item::Quantity(Rc::new(q)));
                    }
                    return None;
                }
                n.primitive(model)
            }
            other => Some(other.clone()),
        }
    }

    /// The System type of a computed value (None for nodes).
    pub fn sys_type(&self) -> Option<SysType> {
        Some(match self {
            Item::Node(_) => return None,
            Item::Boolean(_) => SysType::Boolean,
            Item::Integer(_) => SysType::Integer,
            Item::Long(_) => SysType::Long,
            Item::Decimal(_) => SysType::Decimal,
            Item::String(_) => SysType::String,
            Item::Date(_) => SysType::Date,
            Item::DateTime(_) => SysType::DateTime,
            Item::Time(_) => SysType::Time,
            Item::Quantity(_) => SysType::Quantity,
            Item::TypeInfo(..) => return None,
        })
    }

    /// Text of a String item (or of a string-valued primitive node).
    pub fn as_text(&self, model: &dyn ModelInfo) -> Option<Text<'a>> {
        match self {
            Item::String(t) => Some(t.clone()),
            Item::Node(_) => match self.to_system(model)? {
                Item::String(t) => Some(t),
                _ => None,
            },
            _ => None,
        }
    }

    /// Renders a value the way `toString()` does (None for complex nodes).
    pub fn to_fhirpath_string(&self, model: &dyn ModelInfo) -> Option<String> {
        Some(match self.to_system(model)? {
            Item::Node(_) | Item::TypeInfo(..) => return None,
            Item::Boolean(b) => b.to_string(),
            Item::Integer(i) | Item::Long(i) => i.to_string(),
            Item::Decimal(d) => d.to_string(),
            Item::String(s) => s.as_str().to_string(),
            Item::Date(d) | Item::DateTime(d) => d.to_iso(),
            Item::Time(t) => t.to_iso(),
            Item::Quantity(q) => q.to_string(),
        })
    }

    /// The item as a JSON value (nodes are copied; System values rendered as FHIR JSON).
    pub fn to_json(&self) -> Value {
        match self {
            Item::Node(n) => match n.json {
                Some(v) => v.clone(),
                None => n.ext.cloned().unwrap_or(Value::Null),
            },
            Item::TypeInfo(ns, name) => {
                let mut m = serde_json::Map::new();
                m.insert("namespace".into(), Value::String((*ns).to_string()));
                m.insert("name".into(), Value::String(name.as_str().to_string()));
                Value::Object(m)
            }
            Item::Boolean(b) => Value::Bool(*b),
            Item::Integer(i) | Item::Long(i) => Value::from(*i),
            Item::Decimal(d) => decimal_json(d),
            Item::String(s) => Value::String(s.as_str().to_string()),
            Item::Date(d) | Item::DateTime(d) => Value::String(d.to_iso()),
            Item::Time(t) => Value::String(t.to_iso()),
            Item::Quantity(q) => {
                let mut m = serde_json::Map::new();
                m.insert("value".into(), decimal_json(&q.value));
                m.insert("unit".into(), Value::String(q.unit.clone()));
                if super::ucum::canonical(q.ucum_unit()).is_some() {
                    m.insert(
                        "system".into(),
                        Value::String("http://unitsofmeasure.org".into()),
                    );
                    m.insert("code".into(), Value::String(q.ucum_unit().to_string()));
                }
                Value::Object(m)
            }
        }
    }
}

/// A decimal as a JSON number with its scale kept (arbitrary_precision).
pub fn decimal_json(d: &Decimal) -> Value {
    serde_json::from_str::<Value>(&d.to_string()).unwrap_or(Value::Null)
}

/// Numeric view for Integer/Long/Decimal.
pub fn as_decimal(item: &Item) -> Option<Decimal> {
    match item {
        Item::Integer(i) | Item::Long(i) => Some(Decimal::from(*i)),
        Item::Decimal(d) => Some(*d),
        _ => None,
    }
}

/// `=` between two single items: Some(bool), or None when the result is empty (date/time
/// values of different precision, incomparable quantities).
pub fn equals(a: &Item, b: &Item, model: &dyn ModelInfo, tz: i32) -> Option<bool> {
    if let (Item::Node(x), Item::Node(y)) = (a, b) {
        if let (Some(Value::Object(_)), Some(Value::Object(_))) = (x.json, y.json) {
            if !is_quantity_node(model, x) || !is_quantity_node(model, y) {
                return Some(x.json == y.json);
            }
        }
    }
    let (Some(a), Some(b)) = (a.to_system(model), b.to_system(model)) else {
        return Some(false);
    };
    Some(match (&a, &b) {
        (Item::Boolean(x), Item::Boolean(y)) => x == y,
        (Item::String(x), Item::String(y)) => x.as_str() == y.as_str(),
        (Item::Date(x) | Item::DateTime(x), Item::Date(y) | Item::DateTime(y)) => {
            return x.compare(y, tz).map(|o| o == Ordering::Equal)
        }
        (Item::Time(x), Item::Time(y)) => return x.compare(y).map(|o| o == Ordering::Equal),
        (Item::Quantity(x), Item::Quantity(y)) => return x.equals(y),
        (Item::Quantity(x), _) | (_, Item::Quantity(x))
            if as_decimal(&b).is_some() || as_decimal(&a).is_some() =>
        {
            // a quantity with unit '1' equals a plain number
            let n = as_decimal(&a).or_else(|| as_decimal(&b))?;
            x.unit == "1" && x.value == n
        }
        _ => match (as_decimal(&a), as_decimal(&b)) {
            (Some(x), Some(y)) => x == y,
            _ => false,
        },
    })
}

fn is_quantity_node(model: &dyn ModelInfo, n: &Node) -> bool {
    super::model::is_a(model, n.ty, "Quantity")
}

/// The form in which two strings are compared for `~`. N1 String Equivalence: "the strings
/// are the same value while ignoring case and locale, and normalizing whitespace. Normalizing
/// whitespace means that all whitespace characters are treated as equivalent, with whitespace
/// characters as defined in the Whitespace lexical category" (`WS: [ \r\n\t]`): each
/// whitespace character matches any one whitespace character; runs are not merged and the ends
/// are not trimmed (`'a  b' ~ 'a b'` is false).
fn equivalence_form(s: &str) -> String {
    s.chars()
        .map(|c| {
            if matches!(c, '\r' | '\n' | '\t') {
                ' '
            } else {
                c
            }
        })
        .collect::<String>()
        .to_lowercase()
}

/// `~` between decimals. N1 Equivalence, Decimal: "comparison is done on values rounded to the
/// precision of the least precise operand. Trailing zeroes after the decimal are ignored in
/// determining precision" (`1.10 ~ 1.14` is true: `1.10` has the precision of `1.1`).
pub fn decimal_equivalent(x: Decimal, y: Decimal) -> bool {
    decimal_equivalent_at(x, y, x.normalize().scale().min(y.normalize().scale()))
}

/// `x` and `y` rounded to `scale` decimal places are equal. A midpoint rounds away from zero
/// (`1.25` to `1.3`), as `round()` does and fhirpath.js does, not to the even neighbour.
pub fn decimal_equivalent_at(x: Decimal, y: Decimal, scale: u32) -> bool {
    let round = |d: Decimal| {
        d.round_dp_with_strategy(scale, rust_decimal::RoundingStrategy::MidpointAwayFromZero)
    };
    round(x) == round(y)
}

/// `~` between two single items.
pub fn equivalent(a: &Item, b: &Item, model: &dyn ModelInfo, tz: i32) -> bool {
    if let (Item::Node(x), Item::Node(y)) = (a, b) {
        if let (Some(Value::Object(ox)), Some(Value::Object(oy))) = (x.json, y.json) {
            if !is_quantity_node(model, x) || !is_quantity_node(model, y) {
                return json_equivalent_obj(ox, oy);
            }
        }
    }
    let (Some(a), Some(b)) = (a.to_system(model), b.to_system(model)) else {
        return false;
    };
    match (&a, &b) {
        (Item::Boolean(x), Item::Boolean(y)) => x == y,
        (Item::String(x), Item::String(y)) => {
            equivalence_form(x.as_str()) == equivalence_form(y.as_str())
        }
        (Item::Date(x) | Item::DateTime(x), Item::Date(y) | Item::DateTime(y)) => {
            x.compare(y, tz) == Some(Ordering::Equal)
        }
        (Item::Time(x), Item::Time(y)) => x.compare(y) == Some(Ordering::Equal),
        (Item::Quantity(x), Item::Quantity(y)) => x.equivalent(y),
        _ => match (as_decimal(&a), as_decimal(&b)) {
            (Some(x), Some(y)) => decimal_equivalent(x, y),
            _ => false,
        },
    }
}

fn json_equivalent_obj(
    a: &serde_json::Map<String, Value>,
    b: &serde_json::Map<String, Value>,
) -> bool {
    let keys = |m: &serde_json::Map<String, Value>| m.keys().filter(|k| k.as_str() != "id").count();
    if keys(a) != keys(b) {
        return false;
    }
    a.iter()
        .filter(|(k, _)| k.as_str() != "id")
        .all(|(k, v)| match b.get(k) {
            Some(w) => json_equivalent(v, w),
            None => false,
        })
}

fn json_equivalent(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::String(x), Value::String(y)) => equivalence_form(x) == equivalence_form(y),
        (Value::Object(x), Value::Object(y)) => json_equivalent_obj(x, y),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().all(|i| y.iter().any(|j| json_equivalent(i, j)))
        }
        _ => a == b,
    }
}

/// Ordering between two single items for `<`, `>` ...: Ok(None) when the result is empty,
/// Err when the types cannot be compared.
pub fn compare(
    a: &Item,
    b: &Item,
    model: &dyn ModelInfo,
    tz: i32,
) -> Result<Option<Ordering>, String> {
    let (Some(x), Some(y)) = (a.to_system(model), b.to_system(model)) else {
        return Err("cannot compare complex values".into());
    };
    match (&x, &y) {
        (Item::String(p), Item::String(q)) => Ok(Some(p.as_str().cmp(q.as_str()))),
        (Item::Date(p) | Item::DateTime(p), Item::Date(q) | Item::DateTime(q)) => {
            Ok(p.compare(q, tz))
        }
        (Item::Time(p), Item::Time(q)) => Ok(p.compare(q)),
        (Item::Quantity(p), Item::Quantity(q)) => Ok(p.compare(q)),
        (Item::Boolean(_), _) | (_, Item::Boolean(_)) => {
            Err("cannot compare Boolean values with < or >".into())
        }
        _ => match (as_decimal(&x), as_decimal(&y)) {
            (Some(p), Some(q)) => Ok(Some(p.cmp(&q))),
            _ => Err(format!(
                "cannot compare {} with {}",
                type_label(&x),
                type_label(&y)
            )),
        },
    }
}

pub fn type_label(i: &Item) -> &'static str {
    match i.sys_type() {
        Some(t) => t.name(),
        None => "a FHIR element",
    }
}
