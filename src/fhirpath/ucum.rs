//! A small UCUM unit parser and converter: enough of the Unified Code for Units of Measure to
//! compare and convert the quantities that occur in clinical data (`1 'kg' = 1000 'g'`,
//! `1 'cm' < 1 '[in_i]'`, `mg/dL`, `mm[Hg]`, `/min`, `kg/m2`). A unit is reduced to a factor
//! and a vector of base dimensions; two units are comparable when their dimensions agree.
//! Units with an offset (Celsius, Fahrenheit) are only comparable with themselves.

use rust_decimal::Decimal;
use std::str::FromStr;

/// Base dimensions: length, mass, time, angle, temperature, charge, luminosity, amount.
pub type Dims = [i8; 8];

/// A unit reduced to base units: `value_in_base = value * factor`.
#[derive(Debug, Clone, PartialEq)]
pub struct Canonical {
    pub factor: Decimal,
    pub dims: Dims,
}

const L: Dims = [1, 0, 0, 0, 0, 0, 0, 0];
const M: Dims = [0, 1, 0, 0, 0, 0, 0, 0];
const T: Dims = [0, 0, 1, 0, 0, 0, 0, 0];
const A: Dims = [0, 0, 0, 1, 0, 0, 0, 0];
const K: Dims = [0, 0, 0, 0, 1, 0, 0, 0];
const Q: Dims = [0, 0, 0, 0, 0, 1, 0, 0];
const CD: Dims = [0, 0, 0, 0, 0, 0, 1, 0];
const MOL: Dims = [0, 0, 0, 0, 0, 0, 0, 1];
const ONE: Dims = [0; 8];

fn dims(parts: &[(Dims, i8)]) -> Dims {
    let mut out = ONE;
    for (d, e) in parts {
        for i in 0..8 {
            out[i] += d[i] * e;
        }
    }
    out
}

/// Atoms: code, factor to base (as decimal text), dimensions, whether metric (takes prefixes).
fn atom(code: &str) -> Option<(&'static str, Dims, bool)> {
    let vol = dims(&[(L, 3)]);
    let r = match code {
        "m" => ("1", L, true),
        "g" => ("1", M, true),
        "s" => ("1", T, true),
        "rad" => ("1", A, true),
        "K" => ("1", K, true),
        "C" => ("1", Q, true),
        "cd" => ("1", CD, true),
        "mol" => ("602213670000000000000000", MOL, true),
        "eq" => ("602213670000000000000000", MOL, true),
        "min" => ("60", T, false),
        "h" => ("3600", T, false),
        "d" => ("86400", T, false),
        "wk" => ("604800", T, false),
        "a" => ("31557600", T, false),
        "mo" => ("2629800", T, false),
        "L" | "l" => ("0.001", vol, true),
        "[in_i]" => ("0.0254", L, false),
        "[ft_i]" => ("0.3048", L, false),
        "[yd_i]" => ("0.9144", L, false),
        "[mi_i]" => ("1609.344", L, false),
        "[lb_av]" => ("453.59237", M, false),
        "[oz_av]" => ("28.349523125", M, false),
        "[gr]" => ("0.06479891", M, false),
        "t" => ("1000000", M, true),
        "u" => ("0.0000000000000000000000016605402", M, true),
        "%" => ("0.01", ONE, false),
        "[ppm]" => ("0.000001", ONE, false),
        "[pi]" => (
            "3.1415926535897932384626433832795028841971693993751058209749445923",
            ONE,
            false,
        ),
        "1" => ("1", ONE, false),
        "N" => ("1000", dims(&[(M, 1), (L, 1), (T, -2)]), true),
        "Pa" => ("1000", dims(&[(M, 1), (L, -1), (T, -2)]), true),
        "J" => ("1000", dims(&[(M, 1), (L, 2), (T, -2)]), true),
        "W" => ("1000", dims(&[(M, 1), (L, 2), (T, -3)]), true),
        "Hz" => ("1", dims(&[(T, -1)]), true),
        "cal" => ("4184", dims(&[(M, 1), (L, 2), (T, -2)]), true),
        "[Cal]" => ("4184000", dims(&[(M, 1), (L, 2), (T, -2)]), false),
        "bar" => ("100000000", dims(&[(M, 1), (L, -1), (T, -2)]), true),
        "m[Hg]" => ("133322000", dims(&[(M, 1), (L, -1), (T, -2)]), true),
        "m[H2O]" => ("9806650", dims(&[(M, 1), (L, -1), (T, -2)]), true),
        "atm" => ("101325000", dims(&[(M, 1), (L, -1), (T, -2)]), false),
        "A" => ("1", dims(&[(Q, 1), (T, -1)]), true),
        "V" => (
            "1000",
            dims(&[(M, 1), (L, 2), (T, -3), (Q, -1), (T, 1)]),
            true,
        ),
        "U" => ("10036894500000000", dims(&[(MOL, 1), (T, -1)]), true),
        "[iU]" | "[IU]" => ("1", ONE, true),
        "deg" => (
            "0.017453292519943295769236907684886127134428718885417254560971914",
            A,
            false,
        ),
        "ar" => ("100", dims(&[(L, 2)]), true),
        "[degF]" | "Cel" => return None,
        _ => return None,
    };
    Some(r)
}

const PREFIXES: [(&str, &str); 20] = [
    ("da", "10"),
    ("Y", "1000000000000000000000000"),
    ("Z", "1000000000000000000000"),
    ("E", "1000000000000000000"),
    ("P", "1000000000000000"),
    ("T", "1000000000000"),
    ("G", "1000000000"),
    ("M", "1000000"),
    ("k", "1000"),
    ("h", "100"),
    ("d", "0.1"),
    ("c", "0.01"),
    ("m", "0.001"),
    ("u", "0.000001"),
    ("n", "0.000000001"),
    ("p", "0.000000000001"),
    ("f", "0.000000000000001"),
    ("a", "0.000000000000000001"),
    ("z", "0.000000000000000000001"),
    ("y", "0.000000000000000000000001"),
];

fn dec(s: &str) -> Option<Decimal> {
    Decimal::from_str(s).ok()
}

fn simple_unit(code: &str) -> Option<Canonical> {
    if let Some((f, d, _)) = atom(code) {
        return Some(Canonical {
            factor: dec(f)?,
            dims: d,
        });
    }
    for (p, pf) in PREFIXES {
        if let Some(rest) = code.strip_prefix(p) {
            if let Some((f, d, true)) = atom(rest) {
                return Some(Canonical {
                    factor: dec(f)?.checked_mul(dec(pf)?)?,
                    dims: d,
                });
            }
        }
    }
    None
}

/// Reduces a UCUM unit expression to base units. None when the unit is not understood.
pub fn canonical(unit: &str) -> Option<Canonical> {
    let mut p = UnitParser {
        s: unit.as_bytes(),
        text: unit,
        i: 0,
    };
    let c = p.term()?;
    if p.i != p.s.len() {
        return None;
    }
    Some(c)
}

struct UnitParser<'u> {
    s: &'u [u8],
    text: &'u str,
    i: usize,
}

impl UnitParser<'_> {
    fn term(&mut self) -> Option<Canonical> {
        let mut acc = Canonical {
            factor: Decimal::ONE,
            dims: ONE,
        };
        let mut divide = false;
        if self.s.get(self.i) == Some(&b'/') {
            divide = true;
            self.i += 1;
        }
        loop {
            let c = self.component()?;
            acc = combine(&acc, &c, divide)?;
            match self.s.get(self.i) {
                Some(b'.') => {
                    divide = false;
                    self.i += 1;
                }
                Some(b'/') => {
                    divide = true;
                    self.i += 1;
                }
                _ => return Some(acc),
            }
        }
    }

    fn component(&mut self) -> Option<Canonical> {
        match self.s.get(self.i)? {
            b'(' => {
                self.i += 1;
                let c = self.term()?;
                if self.s.get(self.i) != Some(&b')') {
                    return None;
                }
                self.i += 1;
                self.exponent(c)
            }
            b'{' => {
                let end = self.text[self.i..].find('}')?;
                self.i += end + 1;
                Some(Canonical {
                    factor: Decimal::ONE,
                    dims: ONE,
                })
            }
            _ => {
                let start = self.i;
                // an atom runs until '.', '/', '(', ')', or a trailing exponent
                let mut depth = 0;
                while self.i < self.s.len() {
                    let b = self.s[self.i];
                    if b == b'[' {
                        depth += 1;
                    } else if b == b']' {
                        depth -= 1;
                    } else if depth == 0 && matches!(b, b'.' | b'/' | b'(' | b')' | b'{') {
                        break;
                    }
                    self.i += 1;
                }
                let word = &self.text[start..self.i];
                if word.is_empty() {
                    return None;
                }
                // all digits: a number factor (e.g. 10*3 is handled as 10 and exponent)
                if let Some(rest) = word
                    .strip_prefix("10*")
                    .or_else(|| word.strip_prefix("10^"))
                {
                    let e: i32 = rest.parse().ok()?;
                    let mut f = Decimal::ONE;
                    for _ in 0..e.unsigned_abs() {
                        f = f.checked_mul(Decimal::TEN)?;
                    }
                    if e < 0 {
                        f = Decimal::ONE.checked_div(f)?;
                    }
                    return Some(Canonical {
                        factor: f,
                        dims: ONE,
                    });
                }
                if word.bytes().all(|b| b.is_ascii_digit()) {
                    return Some(Canonical {
                        factor: dec(word)?,
                        dims: ONE,
                    });
                }
                // split off a trailing signed exponent
                let bytes = word.as_bytes();
                let mut e = bytes.len();
                while e > 0 && bytes[e - 1].is_ascii_digit() {
                    e -= 1;
                }
                if e > 0 && e < bytes.len() && matches!(bytes[e - 1], b'-' | b'+') {
                    e -= 1;
                }
                let (code, exp) = if e < bytes.len() && e > 0 {
                    (&word[..e], word[e..].parse::<i32>().ok()?)
                } else {
                    (word, 1)
                };
                let base = simple_unit(code)?;
                power(&base, exp)
            }
        }
    }

    fn exponent(&mut self, c: Canonical) -> Option<Canonical> {
        let start = self.i;
        if matches!(self.s.get(self.i), Some(b'-') | Some(b'+')) {
            self.i += 1;
        }
        while self.i < self.s.len() && self.s[self.i].is_ascii_digit() {
            self.i += 1;
        }
        if self.i == start {
            return Some(c);
        }
        let e: i32 = self.text[start..self.i].parse().ok()?;
        power(&c, e)
    }
}

fn power(c: &Canonical, e: i32) -> Option<Canonical> {
    let mut f = Decimal::ONE;
    for _ in 0..e.unsigned_abs() {
        f = f.checked_mul(c.factor)?;
    }
    if e < 0 {
        f = Decimal::ONE.checked_div(f)?;
    }
    let e8 = i8::try_from(e).ok()?;
    let mut d = ONE;
    for (out, dim) in d.iter_mut().zip(c.dims) {
        *out = dim.checked_mul(e8)?;
    }
    Some(Canonical { factor: f, dims: d })
}

fn combine(a: &Canonical, b: &Canonical, divide: bool) -> Option<Canonical> {
    let mut d = a.dims;
    for (out, dim) in d.iter_mut().zip(b.dims) {
        *out = if divide {
            out.checked_sub(dim)?
        } else {
            out.checked_add(dim)?
        };
    }
    let factor = if divide {
        a.factor.checked_div(b.factor)?
    } else {
        a.factor.checked_mul(b.factor)?
    };
    Some(Canonical { factor, dims: d })
}

/// Converts `value` from unit `from` to unit `to`; None when not convertible.
pub fn convert(value: Decimal, from: &str, to: &str) -> Option<Decimal> {
    if from == to {
        return Some(value);
    }
    let a = canonical(from)?;
    let b = canonical(to)?;
    if a.dims != b.dims {
        return None;
    }
    value.checked_mul(a.factor)?.checked_div(b.factor)
}

/// True when both units are understood and have the same dimensions.
pub fn comparable(from: &str, to: &str) -> bool {
    if from == to {
        return true;
    }
    matches!((canonical(from), canonical(to)), (Some(a), Some(b)) if a.dims == b.dims)
}
