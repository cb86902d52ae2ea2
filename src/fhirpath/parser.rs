//! Recursive-descent (precedence-climbing) parser for the FHIRPath N1 grammar as used by FHIR
//! R4. Precedence, lowest first: `implies` (right associative); `or` `xor`; `and`; `in`
//! `contains`; `=` `~` `!=` `!~`; `<` `<=` `>` `>=`; `|`; `is` `as`; `+` `-` `&`; `*` `/` `div`
//! `mod`; unary `+` `-`; `.` invocation and `[]` indexer.

use super::ast::{Ast, BinOp, Literal, TypeSpec};
use super::error::{FhirPathError, Position, Result};
use super::lexer::{tokenize, Tok, Token};

/// Maximum depth of the syntax tree (nesting plus chained operators and invocations): deeper
/// input is rejected, so compilation and evaluation (both recursive) cannot exhaust the stack.
const MAX_DEPTH: usize = 128;

const CALENDAR_UNITS: [&str; 16] = [
    "year",
    "years",
    "month",
    "months",
    "week",
    "weeks",
    "day",
    "days",
    "hour",
    "hours",
    "minute",
    "minutes",
    "second",
    "seconds",
    "millisecond",
    "milliseconds",
];

/// Parses a complete expression.
pub fn parse(text: &str) -> Result<Ast> {
    let tokens = tokenize(text)?;
    let mut p = Parser {
        text,
        tokens,
        pos: 0,
        depth: 0,
    };
    let ast = p.expression(0)?;
    if !matches!(p.peek(), Tok::Eof) {
        return Err(p.error_here("unexpected input after the end of the expression"));
    }
    Ok(ast)
}

struct Parser<'t> {
    text: &'t str,
    tokens: Vec<Token>,
    pos: usize,
    depth: usize,
}

/// Binding power of an infix operator token (higher binds tighter) and its operator.
fn infix(tok: &Tok) -> Option<(u8, Infix)> {
    let r = match tok {
        Tok::Ident(s) => match s.as_str() {
            "implies" => (1, Infix::Bin(BinOp::Implies)),
            "or" => (2, Infix::Bin(BinOp::Or)),
            "xor" => (2, Infix::Bin(BinOp::Xor)),
            "and" => (3, Infix::Bin(BinOp::And)),
            "in" => (4, Infix::Bin(BinOp::In)),
            "contains" => (4, Infix::Bin(BinOp::Contains)),
            "is" => (8, Infix::Is),
            "as" => (8, Infix::As),
            "div" => (10, Infix::Bin(BinOp::IntDiv)),
            "mod" => (10, Infix::Bin(BinOp::Mod)),
            _ => return None,
        },
        Tok::Sym(s) => match *s {
            "=" => (5, Infix::Bin(BinOp::Eq)),
            "~" => (5, Infix::Bin(BinOp::Equiv)),
            "!=" => (5, Infix::Bin(BinOp::Ne)),
            "!~" => (5, Infix::Bin(BinOp::NotEquiv)),
            "<" => (6, Infix::Bin(BinOp::Lt)),
            "<=" => (6, Infix::Bin(BinOp::Le)),
            ">" => (6, Infix::Bin(BinOp::Gt)),
            ">=" => (6, Infix::Bin(BinOp::Ge)),
            "|" => (7, Infix::Bin(BinOp::Union)),
            "+" => (9, Infix::Bin(BinOp::Add)),
            "-" => (9, Infix::Bin(BinOp::Sub)),
            "&" => (9, Infix::Bin(BinOp::Concat)),
            "*" => (10, Infix::Bin(BinOp::Mul)),
            "/" => (10, Infix::Bin(BinOp::Div)),
            _ => return None,
        },
        _ => return None,
    };
    Some(r)
}

#[derive(Clone, Copy)]
enum Infix {
    Bin(BinOp),
    Is,
    As,
}

impl<'t> Parser<'t> {
    fn peek(&self) -> &Tok {
        &self.tokens[self.pos.min(self.tokens.len() - 1)].tok
    }
    fn peek_at(&self, n: usize) -> &Tok {
        &self.tokens[(self.pos + n).min(self.tokens.len() - 1)].tok
    }
    fn start(&self) -> usize {
        self.tokens[self.pos.min(self.tokens.len() - 1)].start
    }
    fn advance(&mut self) -> Tok {
        let t = self.peek().clone();
        if self.pos < self.tokens.len() - 1 {
            self.pos += 1;
        }
        t
    }
    fn error_here(&self, message: &str) -> FhirPathError {
        let found = match self.peek() {
            Tok::Eof => "end of expression".to_string(),
            Tok::Ident(s) | Tok::Number(s) | Tok::Long(s) => format!("'{s}'"),
            Tok::DelimitedIdent(s) => format!("`{s}`"),
            Tok::Str(s) => format!("string '{s}'"),
            Tok::DateTime(s) => format!("'@{s}'"),
            Tok::Dollar(s) => format!("'${s}'"),
            Tok::Percent(s) => format!("'%{s}'"),
            Tok::Sym(s) => format!("'{s}'"),
        };
        FhirPathError::Syntax {
            position: Position::at(self.text, self.start()),
            message: format!("{message} (found {found})"),
        }
    }
    fn expect_sym(&mut self, sym: &str) -> Result<()> {
        if matches!(self.peek(), Tok::Sym(s) if *s == sym) {
            self.advance();
            Ok(())
        } else {
            Err(self.error_here(&format!("expected '{sym}'")))
        }
    }
    fn is_sym(&self, sym: &str) -> bool {
        matches!(self.peek(), Tok::Sym(s) if *s == sym)
    }

    fn expression(&mut self, min_bp: u8) -> Result<Ast> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.error_here("expression nested too deeply"));
        }
        let saved = self.depth;
        let mut left = self.unary()?;
        while let Some((bp, op)) = infix(self.peek()) {
            if bp < min_bp {
                break;
            }
            self.deeper()?;
            let at = self.start();
            self.advance();
            left = match op {
                Infix::Is | Infix::As => {
                    let spec = self.type_spec()?;
                    if matches!(op, Infix::Is) {
                        Ast::Is {
                            operand: Box::new(left),
                            spec,
                            at,
                        }
                    } else {
                        Ast::As {
                            operand: Box::new(left),
                            spec,
                            at,
                        }
                    }
                }
                Infix::Bin(op) => {
                    // implies is right associative, everything else left associative
                    let next = if op == BinOp::Implies { bp } else { bp + 1 };
                    let right = self.expression(next)?;
                    Ast::Binary {
                        op,
                        left: Box::new(left),
                        right: Box::new(right),
                        at,
                    }
                }
            };
        }
        self.depth = saved - 1;
        Ok(left)
    }

    /// Counts one more level of the syntax tree.
    fn deeper(&mut self) -> Result<()> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.error_here("expression nested too deeply"));
        }
        Ok(())
    }

    fn type_spec(&mut self) -> Result<TypeSpec> {
        let first = self.identifier()?;
        if self.is_sym(".") {
            if let Tok::Ident(_) | Tok::DelimitedIdent(_) = self.peek_at(1) {
                self.advance();
                let name = self.identifier()?;
                return Ok(TypeSpec {
                    namespace: Some(first),
                    name,
                });
            }
        }
        Ok(TypeSpec {
            namespace: None,
            name: first,
        })
    }

    fn identifier(&mut self) -> Result<String> {
        match self.peek().clone() {
            Tok::Ident(s) | Tok::DelimitedIdent(s) => {
                self.advance();
                Ok(s)
            }
            _ => Err(self.error_here("expected an identifier")),
        }
    }

    fn unary(&mut self) -> Result<Ast> {
        if self.is_sym("+") || self.is_sym("-") {
            let at = self.start();
            let negate = self.is_sym("-");
            self.advance();
            self.depth += 1;
            if self.depth > MAX_DEPTH {
                return Err(self.error_here("expression nested too deeply"));
            }
            let operand = self.unary()?;
            self.depth -= 1;
            return Ok(Ast::Unary {
                negate,
                operand: Box::new(operand),
                at,
            });
        }
        let saved = self.depth;
        let mut node = self.term()?;
        loop {
            if self.is_sym(".") || self.is_sym("[") {
                self.deeper()?;
            }
            if self.is_sym(".") {
                self.advance();
                node = self.invocation(Some(node))?;
            } else if self.is_sym("[") {
                let at = self.start();
                self.advance();
                let index = self.expression(0)?;
                self.expect_sym("]")?;
                node = Ast::Index {
                    base: Box::new(node),
                    index: Box::new(index),
                    at,
                };
            } else {
                break;
            }
        }
        self.depth = saved;
        Ok(node)
    }

    /// `identifier` or `identifier(args)` or `$this` etc., applied to `base`.
    fn invocation(&mut self, base: Option<Ast>) -> Result<Ast> {
        let at = self.start();
        match self.peek().clone() {
            Tok::Ident(name) | Tok::DelimitedIdent(name) => {
                let delimited = matches!(self.peek(), Tok::DelimitedIdent(_));
                self.advance();
                if !delimited && self.is_sym("(") {
                    self.advance();
                    let mut args = Vec::new();
                    if !self.is_sym(")") {
                        loop {
                            args.push(self.expression(0)?);
                            if self.is_sym(",") {
                                self.advance();
                                continue;
                            }
                            break;
                        }
                    }
                    self.expect_sym(")")?;
                    return Ok(Ast::Call {
                        base: base.map(Box::new),
                        name,
                        args,
                        at,
                    });
                }
                // after '.', any word is a name: `text.div` is common in FHIR
                Ok(Ast::Member {
                    base: base.map(Box::new),
                    name,
                    at,
                })
            }
            Tok::Dollar(name) if base.is_none() => {
                self.advance();
                match name.as_str() {
                    "this" | "index" | "total" => Ok(Ast::Special(name, at)),
                    _ => Err(FhirPathError::Syntax {
                        position: Position::at(self.text, at),
                        message: format!("unknown special variable '${name}'"),
                    }),
                }
            }
            _ => Err(self.error_here("expected a name or function call")),
        }
    }

    fn term(&mut self) -> Result<Ast> {
        let at = self.start();
        match self.peek().clone() {
            Tok::Sym("(") => {
                self.advance();
                let e = self.expression(0)?;
                self.expect_sym(")")?;
                Ok(Ast::Paren(Box::new(e), at))
            }
            Tok::Sym("{") => {
                self.advance();
                self.expect_sym("}")?;
                Ok(Ast::Literal(Literal::Empty, at))
            }
            Tok::Str(s) => {
                self.advance();
                Ok(Ast::Literal(Literal::String(s), at))
            }
            Tok::Long(s) => {
                self.advance();
                Ok(Ast::Literal(Literal::Long(s), at))
            }
            Tok::Number(n) => {
                self.advance();
                // quantity: number followed by a unit string or a calendar keyword
                match self.peek().clone() {
                    Tok::Str(unit) => {
                        self.advance();
                        Ok(Ast::Literal(
                            Literal::Quantity {
                                value: n,
                                unit,
                                calendar: false,
                            },
                            at,
                        ))
                    }
                    Tok::Ident(unit) if CALENDAR_UNITS.contains(&unit.as_str()) => {
                        self.advance();
                        Ok(Ast::Literal(
                            Literal::Quantity {
                                value: n,
                                unit,
                                calendar: true,
                            },
                            at,
                        ))
                    }
                    _ => Ok(Ast::Literal(Literal::Number(n), at)),
                }
            }
            Tok::DateTime(s) => {
                self.advance();
                Ok(Ast::Literal(Literal::DateTime(s), at))
            }
            Tok::Percent(name) => {
                self.advance();
                Ok(Ast::External(name, at))
            }
            Tok::Ident(s) if (s == "true" || s == "false") && !self.next_is_paren() => {
                self.advance();
                Ok(Ast::Literal(Literal::Boolean(s == "true"), at))
            }
            Tok::Ident(s) if is_reserved(&s) && !self.next_is_paren() => {
                Err(self.error_here("expected an expression"))
            }
            Tok::Ident(_) | Tok::DelimitedIdent(_) | Tok::Dollar(_) => self.invocation(None),
            _ => Err(self.error_here("expected an expression")),
        }
    }

    fn next_is_paren(&self) -> bool {
        matches!(self.peek_at(1), Tok::Sym("("))
    }
}

/// Words that are operators and can only be used as names when back-tick delimited (except
/// the ones the grammar allows as identifiers: `as`, `contains`, `in`, `is`, which are still
/// operators when they appear between two expressions).
fn is_reserved(name: &str) -> bool {
    matches!(
        name,
        "and" | "or" | "xor" | "implies" | "div" | "mod" | "true" | "false"
    )
}
