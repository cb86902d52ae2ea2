//! Abstract syntax tree produced by the parser: a faithful, position-carrying picture of the
//! expression text. The compiler (`compile.rs`) turns it into an executable plan.

/// Byte offset of a node's first character in the expression text.
pub type Offset = usize;

#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    Empty,
    Boolean(bool),
    String(String),
    /// Integer or decimal, as written.
    Number(String),
    Long(String),
    /// Date/time literal text after `@`.
    DateTime(String),
    /// Number plus unit: a UCUM string or a calendar keyword (`days`, `year`, ...).
    Quantity {
        value: String,
        unit: String,
        calendar: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinOp {
    Mul,
    Div,
    IntDiv,
    Mod,
    Add,
    Sub,
    Concat,
    Union,
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
    Equiv,
    NotEquiv,
    In,
    Contains,
    And,
    Or,
    Xor,
    Implies,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TypeSpec {
    /// Namespace (`FHIR`, `System`) when written qualified.
    pub namespace: Option<String>,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Ast {
    Literal(Literal, Offset),
    /// `%name`
    External(String, Offset),
    /// `$this`, `$index`, `$total`
    Special(String, Offset),
    /// Identifier at the start of a path or after `.`: `base` is None at the start.
    Member {
        base: Option<Box<Ast>>,
        name: String,
        at: Offset,
    },
    /// Function invocation; `base` is None when called without a focus (`exists()`).
    Call {
        base: Option<Box<Ast>>,
        name: String,
        args: Vec<Ast>,
        at: Offset,
    },
    Index {
        base: Box<Ast>,
        index: Box<Ast>,
        at: Offset,
    },
    Unary {
        negate: bool,
        operand: Box<Ast>,
        at: Offset,
    },
    Binary {
        op: BinOp,
        left: Box<Ast>,
        right: Box<Ast>,
        at: Offset,
    },
    Is {
        operand: Box<Ast>,
        spec: TypeSpec,
        at: Offset,
    },
    As {
        operand: Box<Ast>,
        spec: TypeSpec,
        at: Offset,
    },
    /// Parenthesised expression (kept so `(a).b` vs `a.b` type-root rules stay exact).
    Paren(Box<Ast>, Offset),
}

impl Ast {
    pub fn offset(&self) -> Offset {
        match self {
            Ast::Literal(_, at)
            | Ast::External(_, at)
            | Ast::Special(_, at)
            | Ast::Paren(_, at)
            | Ast::Member { at, .. }
            | Ast::Call { at, .. }
            | Ast::Index { at, .. }
            | Ast::Unary { at, .. }
            | Ast::Binary { at, .. }
            | Ast::Is { at, .. }
            | Ast::As { at, .. } => *at,
        }
    }
}
