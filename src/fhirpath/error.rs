//! Errors of the FHIRPath engine: syntax errors (from the lexer and parser), semantic errors
//! (from compilation: unknown functions, wrong argument counts, unknown types) and evaluation
//! errors (singleton violations, type mismatches at run time). Each carries the position in the
//! expression text where the problem was found, so a person can fix the expression.

use thiserror::Error;

/// A position in the expression text: byte offset plus 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Position {
    pub offset: usize,
    pub line: usize,
    pub column: usize,
}

impl Position {
    /// Computes line and column of `offset` in `text`.
    pub fn at(text: &str, offset: usize) -> Position {
        let offset = offset.min(text.len());
        let mut line = 1;
        let mut column = 1;
        for (i, c) in text.char_indices() {
            if i >= offset {
                break;
            }
            if c == '\n' {
                line += 1;
                column = 1;
            } else {
                column += 1;
            }
        }
        Position {
            offset,
            line,
            column,
        }
    }
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}, column {}", self.line, self.column)
    }
}

/// Everything that can go wrong compiling or evaluating a FHIRPath expression.
#[derive(Debug, Clone, Error, PartialEq)]
pub enum FhirPathError {
    /// The text is not a FHIRPath expression.
    #[error("FHIRPath syntax error at {position}: {message}")]
    Syntax { position: Position, message: String },
    /// The expression parses but cannot be compiled (unknown function, wrong arity, unknown
    /// type, a path that cannot exist on the known input type).
    #[error("FHIRPath semantic error at {position}: {message}")]
    Semantic { position: Position, message: String },
    /// Evaluation failed (e.g. a singleton was required but the collection had several items).
    #[error("FHIRPath evaluation error at {position}: {message}")]
    Evaluation { position: Position, message: String },
}

impl FhirPathError {
    /// The position in the expression text the error refers to.
    pub fn position(&self) -> Position {
        match self {
            FhirPathError::Syntax { position, .. }
            | FhirPathError::Semantic { position, .. }
            | FhirPathError::Evaluation { position, .. } => *position,
        }
    }

    /// The message without the position.
    pub fn message(&self) -> &str {
        match self {
            FhirPathError::Syntax { message, .. }
            | FhirPathError::Semantic { message, .. }
            | FhirPathError::Evaluation { message, .. } => message,
        }
    }
}

pub type Result<T> = std::result::Result<T, FhirPathError>;
