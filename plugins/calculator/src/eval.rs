//! Tokenizer, parser and evaluator. Columns are 1-based character positions.

use std::fmt;

/// Longest expression accepted, in characters.
pub const MAX_LEN: usize = 1000;
/// Deepest nesting of parentheses, unary operators and calls.
pub const MAX_DEPTH: usize = 64;

/// Functions: name and arity (`None` = one or more).
pub const FUNCTIONS: &[(&str, Option<usize>)] = &[
    ("sqrt", Some(1)),
    ("abs", Some(1)),
    ("round", None),
    ("floor", Some(1)),
    ("ceil", Some(1)),
    ("trunc", Some(1)),
    ("min", None),
    ("max", None),
    ("exp", Some(1)),
    ("ln", Some(1)),
    ("log", None),
    ("log10", Some(1)),
    ("log2", Some(1)),
    ("sin", Some(1)),
    ("cos", Some(1)),
    ("tan", Some(1)),
    ("asin", Some(1)),
    ("acos", Some(1)),
    ("atan", Some(1)),
    ("atan2", Some(2)),
    ("hypot", Some(2)),
    ("pow", Some(2)),
];

/// Constants.
pub const CONSTANTS: &[(&str, f64)] = &[
    ("pi", std::f64::consts::PI),
    ("e", std::f64::consts::E),
    ("tau", std::f64::consts::TAU),
];

/// A value: a number or the result of a comparison.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    /// A number.
    Num(f64),
    /// A comparison result.
    Bool(bool),
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Value::Bool(b) => write!(f, "{b}"),
            Value::Num(n) if n == n.trunc() && n.abs() < 1e15 => write!(f, "{}", n as i64),
            Value::Num(n) => write!(f, "{n}"),
        }
    }
}

/// An evaluation error with its column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CalcError {
    /// What went wrong.
    pub message: String,
    /// 1-based column, when it is about one place.
    pub column: Option<usize>,
}

impl fmt::Display for CalcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.column {
            Some(c) => write!(f, "{} at column {c}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for CalcError {}

fn err<T>(message: impl Into<String>, column: usize) -> Result<T, CalcError> {
    Err(CalcError {
        message: message.into(),
        column: Some(column),
    })
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Num(f64),
    Ident(String),
    Op(&'static str),
    LParen,
    RParen,
    Comma,
    End,
}

impl Tok {
    fn describe(&self) -> String {
        match self {
            Tok::Num(n) => format!("number {n}"),
            Tok::Ident(s) => format!("name `{s}`"),
            Tok::Op(o) => format!("'{o}'"),
            Tok::LParen => "'('".into(),
            Tok::RParen => "')'".into(),
            Tok::Comma => "','".into(),
            Tok::End => "end of input".into(),
        }
    }
}

fn tokenize(src: &str) -> Result<Vec<(Tok, usize)>, CalcError> {
    let chars: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    const OPS: [&str; 14] = [
        "**", "//", "==", "!=", "<=", ">=", "+", "-", "*", "/", "%", "<", ">", "^",
    ];
    while i < chars.len() {
        let c = chars[i];
        let col = i + 1;
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        if c.is_ascii_digit() || (c == '.' && chars.get(i + 1).is_some_and(|d| d.is_ascii_digit()))
        {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_digit() || chars[i] == '.' || chars[i] == '_')
            {
                i += 1;
            }
            if i < chars.len() && (chars[i] == 'e' || chars[i] == 'E') {
                let mut j = i + 1;
                if j < chars.len() && (chars[j] == '+' || chars[j] == '-') {
                    j += 1;
                }
                if j < chars.len() && chars[j].is_ascii_digit() {
                    i = j;
                    while i < chars.len() && chars[i].is_ascii_digit() {
                        i += 1;
                    }
                }
            }
            let text: String = chars[start..i].iter().filter(|c| **c != '_').collect();
            let n: f64 = text.parse().map_err(|_| CalcError {
                message: format!(
                    "malformed number `{}`",
                    chars[start..i].iter().collect::<String>()
                ),
                column: Some(col),
            })?;
            out.push((Tok::Num(n), col));
            continue;
        }
        if c.is_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            out.push((Tok::Ident(chars[start..i].iter().collect()), col));
            continue;
        }
        match c {
            '(' => out.push((Tok::LParen, col)),
            ')' => out.push((Tok::RParen, col)),
            ',' => out.push((Tok::Comma, col)),
            _ => {
                let two: String = chars[i..(i + 2).min(chars.len())].iter().collect();
                let op = OPS
                    .iter()
                    .find(|op| two.starts_with(**op))
                    .ok_or_else(|| CalcError {
                        message: format!("unexpected character '{c}'"),
                        column: Some(col),
                    })?;
                if *op == "^" {
                    return err("'^' is not an operator here: use ** for powers", col);
                }
                out.push((Tok::Op(op), col));
                i += op.len();
                continue;
            }
        }
        i += 1;
    }
    out.push((Tok::End, chars.len() + 1));
    Ok(out)
}

struct Parser {
    toks: Vec<(Tok, usize)>,
    pos: usize,
    depth: usize,
}

impl Parser {
    fn peek(&self) -> &(Tok, usize) {
        &self.toks[self.pos.min(self.toks.len() - 1)]
    }

    fn next(&mut self) -> (Tok, usize) {
        let t = self.peek().clone();
        self.pos += 1;
        t
    }

    fn enter(&mut self, col: usize) -> Result<(), CalcError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return err(format!("nesting deeper than {MAX_DEPTH} levels"), col);
        }
        Ok(())
    }

    fn expect_rparen(&mut self, open_col: usize) -> Result<(), CalcError> {
        match self.next() {
            (Tok::RParen, _) => Ok(()),
            (Tok::End, col) => err(
                format!("expected ')' to close the '(' from column {open_col}, found end of input"),
                col,
            ),
            (t, col) => err(format!("expected ')' but found {}", t.describe()), col),
        }
    }

    fn comparison(&mut self) -> Result<Value, CalcError> {
        let left = self.additive()?;
        if let (Tok::Op(op @ ("==" | "!=" | "<" | "<=" | ">" | ">=")), col) = self.peek().clone() {
            self.pos += 1;
            let right = self.additive()?;
            let (a, b) = (num(left, col)?, num(right, col)?);
            let r = match op {
                "==" => a == b,
                "!=" => a != b,
                "<" => a < b,
                "<=" => a <= b,
                ">" => a > b,
                _ => a >= b,
            };
            if let (Tok::Op("==" | "!=" | "<" | "<=" | ">" | ">="), c) = self.peek() {
                return err("chained comparisons are not supported", *c);
            }
            return Ok(Value::Bool(r));
        }
        Ok(left)
    }

    fn additive(&mut self) -> Result<Value, CalcError> {
        let mut acc = self.term()?;
        while let (Tok::Op(op @ ("+" | "-")), col) = self.peek().clone() {
            self.pos += 1;
            let rhs = self.term()?;
            let (a, b) = (num(acc, col)?, num(rhs, col)?);
            acc = Value::Num(finite(if op == "+" { a + b } else { a - b }, col)?);
        }
        Ok(acc)
    }

    fn term(&mut self) -> Result<Value, CalcError> {
        let mut acc = self.unary()?;
        while let (Tok::Op(op @ ("*" | "/" | "//" | "%")), col) = self.peek().clone() {
            self.pos += 1;
            let rhs = self.unary()?;
            let (a, b) = (num(acc, col)?, num(rhs, col)?);
            if op != "*" && b == 0.0 {
                return err(
                    if op == "%" {
                        "modulo by zero"
                    } else {
                        "division by zero"
                    },
                    col,
                );
            }
            let v = match op {
                "*" => a * b,
                "/" => a / b,
                "//" => (a / b).floor(),
                _ => a - b * (a / b).floor(), // Python's sign rule: the result has b's sign
            };
            acc = Value::Num(finite(v, col)?);
        }
        Ok(acc)
    }

    fn unary(&mut self) -> Result<Value, CalcError> {
        if let (Tok::Op(op @ ("-" | "+")), col) = self.peek().clone() {
            self.pos += 1;
            self.enter(col)?;
            let v = num(self.unary()?, col)?;
            self.depth -= 1;
            return Ok(Value::Num(if op == "-" { -v } else { v }));
        }
        self.power()
    }

    fn power(&mut self) -> Result<Value, CalcError> {
        let base = self.primary()?;
        if let (Tok::Op("**"), col) = self.peek().clone() {
            self.pos += 1;
            self.enter(col)?;
            let exp = num(self.unary()?, col)?;
            self.depth -= 1;
            let b = num(base, col)?;
            if b == 0.0 && exp < 0.0 {
                return err("zero cannot be raised to a negative power", col);
            }
            if b < 0.0 && exp.fract() != 0.0 {
                return err(
                    "a negative number cannot be raised to a fractional power",
                    col,
                );
            }
            return Ok(Value::Num(finite(b.powf(exp), col)?));
        }
        Ok(base)
    }

    fn primary(&mut self) -> Result<Value, CalcError> {
        match self.next() {
            (Tok::Num(n), _) => Ok(Value::Num(n)),
            (Tok::LParen, col) => {
                self.enter(col)?;
                let v = self.comparison()?;
                self.expect_rparen(col)?;
                self.depth -= 1;
                Ok(v)
            }
            (Tok::Ident(name), col) => {
                if let (Tok::LParen, open) = self.peek().clone() {
                    self.pos += 1;
                    self.enter(open)?;
                    let mut args = Vec::new();
                    if !matches!(self.peek().0, Tok::RParen) {
                        loop {
                            let arg_col = self.peek().1;
                            args.push(num(self.comparison()?, arg_col)?);
                            if let (Tok::Comma, _) = self.peek() {
                                self.pos += 1;
                                continue;
                            }
                            break;
                        }
                    }
                    self.expect_rparen(open)?;
                    self.depth -= 1;
                    return call(&name, &args, col).map(Value::Num);
                }
                match CONSTANTS.iter().find(|(n, _)| *n == name) {
                    Some((_, v)) => Ok(Value::Num(*v)),
                    None if FUNCTIONS.iter().any(|(n, _)| *n == name) => err(
                        format!("function `{name}` needs arguments in parentheses"),
                        col,
                    ),
                    None => err(format!("unknown name `{name}`"), col),
                }
            }
            (Tok::End, col) => err("unexpected end of input", col),
            (t, col) => err(format!("unexpected {}", t.describe()), col),
        }
    }
}

fn num(v: Value, col: usize) -> Result<f64, CalcError> {
    match v {
        Value::Num(n) => Ok(n),
        Value::Bool(_) => err("a comparison result cannot be used as a number", col),
    }
}

fn finite(v: f64, col: usize) -> Result<f64, CalcError> {
    if v.is_finite() {
        Ok(v)
    } else if v.is_nan() {
        err("the result is not a number", col)
    } else {
        err("the result is too large (overflow)", col)
    }
}

fn call(name: &str, args: &[f64], col: usize) -> Result<f64, CalcError> {
    let Some((_, arity)) = FUNCTIONS.iter().find(|(n, _)| *n == name) else {
        return err(format!("unknown function `{name}`"), col);
    };
    match arity {
        Some(n) if args.len() != *n => {
            return err(
                format!(
                    "`{name}` takes {n} argument{}, got {}",
                    if *n == 1 { "" } else { "s" },
                    args.len()
                ),
                col,
            );
        }
        None if args.is_empty() => {
            return err(format!("`{name}` needs at least one argument"), col);
        }
        _ => {}
    }
    let a = args[0];
    let domain = |ok: bool, what: &str| {
        if ok {
            Ok(())
        } else {
            err(format!("math domain error: {what}"), col)
        }
    };
    let v = match name {
        "sqrt" => {
            domain(a >= 0.0, "sqrt of a negative number")?;
            a.sqrt()
        }
        "abs" => a.abs(),
        "round" => match args {
            [x] => x.round(),
            [x, d] => {
                domain(
                    d.fract() == 0.0 && d.abs() <= 15.0,
                    "round's digits must be a whole number from -15 to 15",
                )?;
                let f = 10f64.powi(*d as i32);
                (x * f).round() / f
            }
            _ => return err("`round` takes 1 or 2 arguments", col),
        },
        "floor" => a.floor(),
        "ceil" => a.ceil(),
        "trunc" => a.trunc(),
        "min" => args.iter().copied().fold(f64::INFINITY, f64::min),
        "max" => args.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        "exp" => a.exp(),
        "ln" => {
            domain(a > 0.0, "ln of a number that is not positive")?;
            a.ln()
        }
        "log" => match args {
            [x] => {
                domain(*x > 0.0, "log of a number that is not positive")?;
                x.ln()
            }
            [x, b] => {
                domain(
                    *x > 0.0 && *b > 0.0 && *b != 1.0,
                    "log needs a positive number and a positive base other than 1",
                )?;
                x.ln() / b.ln()
            }
            _ => return err("`log` takes 1 or 2 arguments", col),
        },
        "log10" => {
            domain(a > 0.0, "log10 of a number that is not positive")?;
            a.log10()
        }
        "log2" => {
            domain(a > 0.0, "log2 of a number that is not positive")?;
            a.log2()
        }
        "sin" => a.sin(),
        "cos" => a.cos(),
        "tan" => a.tan(),
        "asin" => {
            domain(
                (-1.0..=1.0).contains(&a),
                "asin needs a number from -1 to 1",
            )?;
            a.asin()
        }
        "acos" => {
            domain(
                (-1.0..=1.0).contains(&a),
                "acos needs a number from -1 to 1",
            )?;
            a.acos()
        }
        "atan" => a.atan(),
        "atan2" => a.atan2(args[1]),
        "hypot" => a.hypot(args[1]),
        "pow" => {
            let b = args[1];
            domain(
                !(a == 0.0 && b < 0.0),
                "zero cannot be raised to a negative power",
            )?;
            domain(
                !(a < 0.0 && b.fract() != 0.0),
                "a negative number cannot be raised to a fractional power",
            )?;
            a.powf(b)
        }
        _ => return err(format!("unknown function `{name}`"), col),
    };
    finite(v, col)
}

/// Evaluates one expression.
///
/// # Errors
/// A [`CalcError`] saying what is wrong and at which column.
pub fn evaluate(src: &str) -> Result<Value, CalcError> {
    let len = src.chars().count();
    if len > MAX_LEN {
        return Err(CalcError {
            message: format!("the expression is {len} characters long; the limit is {MAX_LEN}"),
            column: None,
        });
    }
    if src.trim().is_empty() {
        return Err(CalcError {
            message: "the expression is empty".into(),
            column: None,
        });
    }
    let mut p = Parser {
        toks: tokenize(src)?,
        pos: 0,
        depth: 0,
    };
    let v = p.comparison()?;
    match p.next() {
        (Tok::End, _) => Ok(v),
        (t, col) => err(format!("unexpected {}", t.describe()), col),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> String {
        evaluate(s)
            .unwrap_or_else(|e| panic!("{s}: {e}"))
            .to_string()
    }

    fn bad(s: &str) -> String {
        evaluate(s).unwrap_err().to_string()
    }

    #[test]
    fn arithmetic_and_precedence() {
        assert_eq!(ok("1 + 2 * 3"), "7");
        assert_eq!(ok("(1 + 2) * 3"), "9");
        assert_eq!(ok("2 ** 3 ** 2"), "512");
        assert_eq!(ok("-2 ** 2"), "-4");
        assert_eq!(ok("2 ** -1"), "0.5");
        assert_eq!(ok("7 // 2"), "3");
        assert_eq!(ok("-7 // 2"), "-4");
        assert_eq!(ok("-7 % 3"), "2");
        assert_eq!(ok("7.5 % 2"), "1.5");
        assert_eq!(ok("1e3 + 2.5E-1"), "1000.25");
        assert_eq!(ok(".5 + 1_000"), "1000.5");
        assert_eq!(ok("--3"), "3");
        assert_eq!(ok("10 / 4"), "2.5");
    }

    #[test]
    fn functions_constants_and_comparisons() {
        assert_eq!(ok("sqrt(16) + abs(-2)"), "6");
        assert_eq!(ok("round(2.567, 2)"), "2.57");
        assert_eq!(ok("min(3, 1, 2) + max(4, 9)"), "10");
        assert_eq!(ok("log(8, 2)"), "3");
        assert_eq!(ok("floor(pi) + ceil(e)"), "6");
        assert_eq!(ok("atan2(1, 1) * 4 == pi"), "true");
        assert_eq!(ok("2 + 2 > 5"), "false");
        assert_eq!(ok("cos(0)"), "1");
    }

    #[test]
    fn errors_say_what_and_where() {
        assert_eq!(bad("(1 + 2))"), "unexpected ')' at column 8");
        assert_eq!(bad("1 / (2 - 2)"), "division by zero at column 3");
        assert_eq!(bad("5 % 0"), "modulo by zero at column 3");
        assert_eq!(bad("foo(1)"), "unknown function `foo` at column 1");
        assert_eq!(bad("1 + x"), "unknown name `x` at column 5");
        assert_eq!(
            bad("sqrt(-1)"),
            "math domain error: sqrt of a negative number at column 1"
        );
        assert_eq!(
            bad("(1 + 2"),
            "expected ')' to close the '(' from column 1, found end of input at column 7"
        );
        assert_eq!(
            bad("2 ^ 3"),
            "'^' is not an operator here: use ** for powers at column 3"
        );
        assert_eq!(bad("1 +"), "unexpected end of input at column 4");
        assert_eq!(bad("1 $ 2"), "unexpected character '$' at column 3");
        assert_eq!(
            bad("atan2(1)"),
            "`atan2` takes 2 arguments, got 1 at column 1"
        );
        assert_eq!(
            bad("1 < 2 < 3"),
            "chained comparisons are not supported at column 7"
        );
        assert_eq!(bad(""), "the expression is empty");
    }

    #[test]
    fn limits_keep_inputs_cheap() {
        assert_eq!(
            bad("10 ** 400"),
            "the result is too large (overflow) at column 4"
        );
        assert_eq!(
            bad("10 ** 10 ** 10"),
            "the result is too large (overflow) at column 4"
        );
        assert!(bad(&"1+".repeat(600)).contains("the limit is 1000"));
        let deep = format!("{}1{}", "(".repeat(100), ")".repeat(100));
        assert!(
            bad(&deep).contains("nesting deeper than 64 levels"),
            "{}",
            bad(&deep)
        );
        let minus = format!("{}1", "-".repeat(200));
        assert!(bad(&minus).contains("nesting deeper than 64 levels"));
        assert_eq!(ok(&format!("{}1{}", "(".repeat(60), ")".repeat(60))), "1");
    }
}
