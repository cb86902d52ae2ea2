//! Compiler: turns the parser's AST into an executable plan. Function names are resolved to a
//! `Func` at compile time (with their argument counts checked), literals are converted to typed
//! values once, and type specifiers of `is`/`as`/`ofType` are pre-split. A compiled `Plan` is
//! immutable, `Send + Sync`, and evaluated many times.

use std::str::FromStr;

use rust_decimal::Decimal;

use super::ast::{Ast, BinOp, Literal, TypeSpec};
use super::datetime::{parse_time, DateTime};
use super::error::{FhirPathError, Position, Result};
use super::quantity::Quantity;
use super::value::SysType;

/// A literal value in the plan.
#[derive(Debug, Clone, PartialEq)]
pub enum Lit {
    Empty,
    Boolean(bool),
    Integer(i64),
    Long(i64),
    Decimal(Decimal),
    String(String),
    Date(DateTime),
    DateTime(DateTime),
    Time(super::datetime::Time),
    Quantity(Quantity),
}

/// A type named in `is`, `as`, `ofType`.
#[derive(Debug, Clone, PartialEq)]
pub struct TypeRef {
    pub namespace: Option<String>,
    pub name: String,
    /// The System type this name denotes when not qualified as FHIR.
    pub system: Option<SysType>,
}

impl TypeRef {
    fn from_spec(spec: &TypeSpec) -> TypeRef {
        let system = match spec.namespace.as_deref() {
            Some("FHIR") => None,
            _ => SysType::from_name(&spec.name),
        };
        TypeRef {
            namespace: spec.namespace.clone(),
            name: spec.name.clone(),
            system,
        }
    }
    pub fn display(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{ns}.{}", self.name),
            None => self.name.clone(),
        }
    }
}

macro_rules! funcs {
    ($( $variant:ident = $name:literal ($min:literal, $max:literal) ),* $(,)?) => {
        /// Every function the engine knows, resolved at compile time.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Func { $( $variant ),* }

        impl Func {
            /// Looks up a function by name: (function, min args, max args).
            pub fn lookup(name: &str) -> Option<(Func, usize, usize)> {
                match name {
                    $( $name => Some((Func::$variant, $min, $max)), )*
                    _ => None,
                }
            }
            pub fn name(self) -> &'static str {
                match self { $( Func::$variant => $name ),* }
            }
        }
    };
}

funcs! {
    Empty = "empty"(0, 0),
    Exists = "exists"(0, 1),
    All = "all"(1, 1),
    AllTrue = "allTrue"(0, 0),
    AnyTrue = "anyTrue"(0, 0),
    AllFalse = "allFalse"(0, 0),
    AnyFalse = "anyFalse"(0, 0),
    SubsetOf = "subsetOf"(1, 1),
    SupersetOf = "supersetOf"(1, 1),
    Count = "count"(0, 0),
    Distinct = "distinct"(0, 0),
    IsDistinct = "isDistinct"(0, 0),
    Where = "where"(1, 1),
    Select = "select"(1, 1),
    Repeat = "repeat"(1, 1),
    RepeatAll = "repeatAll"(1, 1),
    OfType = "ofType"(1, 1),
    Single = "single"(0, 0),
    First = "first"(0, 0),
    Last = "last"(0, 0),
    Tail = "tail"(0, 0),
    Skip = "skip"(1, 1),
    Take = "take"(1, 1),
    Intersect = "intersect"(1, 1),
    Exclude = "exclude"(1, 1),
    Union = "union"(1, 1),
    Combine = "combine"(1, 1),
    Iif = "iif"(2, 3),
    ToBoolean = "toBoolean"(0, 0),
    ConvertsToBoolean = "convertsToBoolean"(0, 0),
    ToInteger = "toInteger"(0, 0),
    ConvertsToInteger = "convertsToInteger"(0, 0),
    ToLong = "toLong"(0, 0),
    ConvertsToLong = "convertsToLong"(0, 0),
    ToDecimal = "toDecimal"(0, 0),
    ConvertsToDecimal = "convertsToDecimal"(0, 0),
    ToStringFn = "toString"(0, 0),
    ConvertsToString = "convertsToString"(0, 0),
    ToDate = "toDate"(0, 0),
    ConvertsToDate = "convertsToDate"(0, 0),
    ToDateTime = "toDateTime"(0, 0),
    ConvertsToDateTime = "convertsToDateTime"(0, 0),
    ToTime = "toTime"(0, 0),
    ConvertsToTime = "convertsToTime"(0, 0),
    ToQuantity = "toQuantity"(0, 1),
    ConvertsToQuantity = "convertsToQuantity"(0, 1),
    IndexOf = "indexOf"(1, 1),
    LastIndexOf = "lastIndexOf"(1, 1),
    Substring = "substring"(1, 2),
    StartsWith = "startsWith"(1, 1),
    EndsWith = "endsWith"(1, 1),
    Contains = "contains"(1, 1),
    Upper = "upper"(0, 0),
    Lower = "lower"(0, 0),
    Replace = "replace"(2, 2),
    Matches = "matches"(1, 2),
    MatchesFull = "matchesFull"(1, 2),
    ReplaceMatches = "replaceMatches"(2, 3),
    Length = "length"(0, 0),
    ToChars = "toChars"(0, 0),
    Trim = "trim"(0, 0),
    Split = "split"(1, 1),
    Join = "join"(0, 1),
    Encode = "encode"(1, 1),
    Decode = "decode"(1, 1),
    Escape = "escape"(1, 1),
    Unescape = "unescape"(1, 1),
    Abs = "abs"(0, 0),
    Ceiling = "ceiling"(0, 0),
    Exp = "exp"(0, 0),
    Floor = "floor"(0, 0),
    Ln = "ln"(0, 0),
    Log = "log"(1, 1),
    Power = "power"(1, 1),
    Round = "round"(0, 1),
    Sqrt = "sqrt"(0, 0),
    Truncate = "truncate"(0, 0),
    Children = "children"(0, 0),
    Descendants = "descendants"(0, 0),
    Trace = "trace"(1, 2),
    Now = "now"(0, 0),
    Today = "today"(0, 0),
    TimeOfDay = "timeOfDay"(0, 0),
    Aggregate = "aggregate"(1, 2),
    Sort = "sort"(0, 16),
    Not = "not"(0, 0),
    Is = "is"(1, 1),
    As = "as"(1, 1),
    Type = "type"(0, 0),
    LowBoundary = "lowBoundary"(0, 1),
    HighBoundary = "highBoundary"(0, 1),
    Precision = "precision"(0, 0),
    Comparable = "comparable"(1, 1),
    Extension = "extension"(1, 1),
    HasExtension = "hasExtension"(1, 1),
    HasValue = "hasValue"(0, 0),
    GetValue = "getValue"(0, 0),
    Resolve = "resolve"(0, 0),
    MemberOf = "memberOf"(1, 1),
    ConformsTo = "conformsTo"(1, 1),
    HtmlChecks = "htmlChecks"(0, 0),
    HtmlChecks2 = "htmlChecks2"(0, 0),
    ElementDefinition = "elementDefinition"(0, 0),
    Slice = "slice"(2, 2),
    CheckModifiers = "checkModifiers"(1, 1),
    Subsumes = "subsumes"(1, 1),
    SubsumedBy = "subsumedBy"(1, 1),
}

impl Func {
    /// Functions whose single argument is a type specifier.
    fn takes_type(self) -> bool {
        matches!(self, Func::Is | Func::As | Func::OfType)
    }
}

/// The operation of one plan node.
#[derive(Debug, Clone)]
pub enum Op {
    Literal(Lit),
    This,
    Index,
    Total,
    External(String),
    Member {
        base: Option<Box<Plan>>,
        name: String,
    },
    Call {
        base: Option<Box<Plan>>,
        func: Func,
        args: Vec<Plan>,
        ty: Option<TypeRef>,
    },
    Indexer {
        base: Box<Plan>,
        index: Box<Plan>,
    },
    Negate(Box<Plan>),
    Binary {
        op: BinOp,
        left: Box<Plan>,
        right: Box<Plan>,
    },
    Is(Box<Plan>, TypeRef),
    As(Box<Plan>, TypeRef),
}

/// A compiled expression node with its position in the source text.
#[derive(Debug, Clone)]
pub struct Plan {
    pub op: Op,
    pub pos: Position,
}

/// Compiles an AST (from `text`) into a plan.
pub fn compile(text: &str, ast: &Ast) -> Result<Plan> {
    let c = Compiler { text };
    c.node(ast)
}

struct Compiler<'t> {
    text: &'t str,
}

impl Compiler<'_> {
    fn pos(&self, at: usize) -> Position {
        Position::at(self.text, at)
    }
    fn semantic(&self, at: usize, message: String) -> FhirPathError {
        FhirPathError::Semantic {
            position: self.pos(at),
            message,
        }
    }

    fn boxed(&self, a: &Ast) -> Result<Box<Plan>> {
        Ok(Box::new(self.node(a)?))
    }

    fn node(&self, ast: &Ast) -> Result<Plan> {
        let at = ast.offset();
        let op = match ast {
            Ast::Paren(inner, _) => return self.node(inner),
            Ast::Literal(l, _) => Op::Literal(self.literal(l, at)?),
            Ast::External(name, _) => Op::External(name.clone()),
            Ast::Special(name, _) => match name.as_str() {
                "this" => Op::This,
                "index" => Op::Index,
                _ => Op::Total,
            },
            Ast::Member { base, name, .. } => Op::Member {
                base: base.as_deref().map(|b| self.boxed(b)).transpose()?,
                name: name.clone(),
            },
            Ast::Call {
                base, name, args, ..
            } => {
                let Some((func, min, max)) = Func::lookup(name) else {
                    return Err(self.semantic(at, format!("unknown function '{name}'")));
                };
                if args.len() < min || args.len() > max {
                    let expected = if min == max {
                        format!("{min}")
                    } else {
                        format!("{min} to {max}")
                    };
                    return Err(self.semantic(
                        at,
                        format!(
                            "function '{name}' takes {expected} argument(s), {} given",
                            args.len()
                        ),
                    ));
                }
                let base = base.as_deref().map(|b| self.boxed(b)).transpose()?;
                if func.takes_type() {
                    let spec = type_spec_of(&args[0]).ok_or_else(|| {
                        self.semantic(
                            args[0].offset(),
                            format!("function '{name}' expects a type name"),
                        )
                    })?;
                    Op::Call {
                        base,
                        func,
                        args: Vec::new(),
                        ty: Some(TypeRef::from_spec(&spec)),
                    }
                } else {
                    let args = args
                        .iter()
                        .map(|a| self.node(a))
                        .collect::<Result<Vec<_>>>()?;
                    // a literal pattern is compiled now: errors surface at compile time and the
                    // regex cache is warm before the first evaluation
                    if matches!(
                        func,
                        Func::Matches | Func::MatchesFull | Func::ReplaceMatches
                    ) {
                        if let Some(Plan {
                            op: Op::Literal(Lit::String(pattern)),
                            pos,
                        }) = args.first()
                        {
                            super::functions::regex(pattern, func == Func::MatchesFull).map_err(
                                |m| FhirPathError::Semantic {
                                    position: *pos,
                                    message: m,
                                },
                            )?;
                        }
                    }
                    Op::Call {
                        base,
                        func,
                        args,
                        ty: None,
                    }
                }
            }
            Ast::Index { base, index, .. } => Op::Indexer {
                base: self.boxed(base)?,
                index: self.boxed(index)?,
            },
            Ast::Unary {
                negate, operand, ..
            } => {
                let inner = self.node(operand)?;
                if !negate {
                    return Ok(inner);
                }
                // fold negative numeric literals
                match inner.op {
                    Op::Literal(Lit::Integer(i)) => Op::Literal(Lit::Integer(-i)),
                    Op::Literal(Lit::Long(i)) => Op::Literal(Lit::Long(-i)),
                    Op::Literal(Lit::Decimal(d)) => Op::Literal(Lit::Decimal(-d)),
                    Op::Literal(Lit::Quantity(q)) => Op::Literal(Lit::Quantity(Quantity {
                        value: -q.value,
                        unit: q.unit,
                    })),
                    _ => Op::Negate(Box::new(inner)),
                }
            }
            Ast::Binary {
                op, left, right, ..
            } => Op::Binary {
                op: *op,
                left: self.boxed(left)?,
                right: self.boxed(right)?,
            },
            Ast::Is { operand, spec, .. } => Op::Is(self.boxed(operand)?, TypeRef::from_spec(spec)),
            Ast::As { operand, spec, .. } => Op::As(self.boxed(operand)?, TypeRef::from_spec(spec)),
        };
        Ok(Plan {
            op,
            pos: self.pos(at),
        })
    }

    fn literal(&self, l: &Literal, at: usize) -> Result<Lit> {
        let bad = |what: &str| self.semantic(at, format!("invalid {what} literal"));
        Ok(match l {
            Literal::Empty => Lit::Empty,
            Literal::Boolean(b) => Lit::Boolean(*b),
            Literal::String(s) => Lit::String(s.clone()),
            Literal::Number(n) => {
                if n.contains('.') {
                    Lit::Decimal(Decimal::from_str(n).map_err(|_| bad("decimal"))?)
                } else {
                    match n.parse::<i64>() {
                        Ok(i) if i <= i32::MAX as i64 => Lit::Integer(i),
                        _ => Lit::Decimal(Decimal::from_str(n).map_err(|_| bad("number"))?),
                    }
                }
            }
            Literal::Long(n) => Lit::Long(n.parse().map_err(|_| bad("long"))?),
            Literal::DateTime(s) => {
                if let Some(t) = s.strip_prefix('T') {
                    Lit::Time(parse_time(t).ok_or_else(|| bad("time"))?)
                } else {
                    let d = DateTime::parse(s).ok_or_else(|| bad("date/time"))?;
                    if s.contains('T') {
                        Lit::DateTime(d)
                    } else {
                        Lit::Date(d)
                    }
                }
            }
            Literal::Quantity { value, unit, .. } => Lit::Quantity(Quantity::new(
                Decimal::from_str(value).map_err(|_| bad("quantity"))?,
                unit.clone(),
            )),
        })
    }
}

/// Reads a type specifier written as an argument (`Quantity`, `FHIR.Patient`, `System.String`).
fn type_spec_of(a: &Ast) -> Option<TypeSpec> {
    match a {
        Ast::Member {
            base: None, name, ..
        } => Some(TypeSpec {
            namespace: None,
            name: name.clone(),
        }),
        Ast::Member {
            base: Some(b),
            name,
            ..
        } => match b.as_ref() {
            Ast::Member {
                base: None,
                name: ns,
                ..
            } => Some(TypeSpec {
                namespace: Some(ns.clone()),
                name: name.clone(),
            }),
            _ => None,
        },
        Ast::Paren(inner, _) => type_spec_of(inner),
        _ => None,
    }
}
