//! Script errors as a user wants to read them: `file:line:col`, the source line and a caret
//! under the column, then the chain of calls and imports that led there.

use super::limits::Limits;
use super::registry::FnDoc;
use super::resolver::Sources;
use rhai::{EvalAltResult, ParseErrorType, Position};

/// What rendering an error needs besides the error: the sources, the limits in force and the
/// documented functions (to list the forms of a function called with the wrong arguments).
pub struct Context<'a> {
    pub sources: &'a Sources,
    pub limits: &'a Limits,
    pub docs: &'a [FnDoc],
}

/// Renders `err`, raised while running the source named `main`.
pub fn render(err: &EvalAltResult, main: &str, cx: &Context) -> String {
    let sources = cx.sources;
    let mut frames = vec![];
    let mut file = main.to_string();
    let mut e = err;
    loop {
        match e {
            EvalAltResult::ErrorInFunctionCall(name, src, inner, pos) => {
                frames.push((file.clone(), *pos, format!("in a call to `{name}`")));
                if !src.is_empty() {
                    file = src.clone();
                }
                e = inner;
            }
            EvalAltResult::ErrorInModule(name, inner, pos) => {
                frames.push((file.clone(), *pos, format!("importing `{name}`")));
                file = name.clone();
                e = inner;
            }
            _ => break,
        }
    }
    let mut out = format!("error: {}", message(e, cx.limits));
    out += &location(&file, e.position(), sources);
    if let EvalAltResult::ErrorFunctionNotFound(signature, _) = e {
        let name = signature.split([' ', '(']).next().unwrap_or_default();
        let name = name.rsplit("::").next().unwrap_or(name);
        let forms: Vec<String> = cx
            .docs
            .iter()
            .filter(|d| d.name == name || d.name.ends_with(&format!(".{name}")))
            .map(|d| format!("\n    {}{}", d.name, d.signature))
            .collect();
        if !forms.is_empty() {
            out += &format!("\n  `{name}` takes:{}", forms.concat());
        }
    }
    for (file, pos, what) in frames.iter().rev() {
        out += &format!("\n  {what}, at {}", at(file, *pos));
    }
    out
}

fn message(e: &EvalAltResult, limits: &Limits) -> String {
    let past = |what: &str, flag: &str, value: usize| {
        format!("{what}, past the limit of {value} (raise it with --{flag} N)")
    };
    match e {
        EvalAltResult::ErrorRuntime(d, _) if d.is_string() => d.to_string(),
        EvalAltResult::ErrorTerminated(..) => "interrupted".to_string(),
        EvalAltResult::ErrorStackOverflow(_) => past(
            "function calls nest too deep",
            "max-call-depth",
            limits.max_call_depth,
        ),
        EvalAltResult::ErrorDataTooLarge(what, _) => match what.as_str() {
            w if w.starts_with("Size of array") => {
                past("an array grew too large", "max-array", limits.max_array)
            }
            w if w.starts_with("Length of string") => {
                past("a string grew too long", "max-string", limits.max_string)
            }
            w if w.starts_with("Size of object map") => {
                past("a map grew too large", "max-map", limits.max_map)
            }
            w => format!("{w} is too large"),
        },
        EvalAltResult::ErrorParsing(ParseErrorType::LiteralTooLarge(what, max), _) => {
            let flag = match what.as_str() {
                w if w.contains("array") => "max-array",
                w if w.contains("map") => "max-map",
                _ => "max-string",
            };
            past(&format!("a literal is too large ({what})"), flag, *max)
        }
        EvalAltResult::ErrorParsing(ParseErrorType::ExprTooDeep, _) => past(
            "an expression nests too deep",
            "max-expr-depth",
            limits.max_expr_depth,
        ),
        // Display appends " (line L, position C)", which the location line already shows.
        other => {
            let text = other.to_string();
            match text.rfind(" (line ") {
                Some(i) if text.ends_with(')') => text[..i].to_string(),
                _ => text,
            }
        }
    }
}

fn at(file: &str, pos: Position) -> String {
    match (pos.line(), pos.position()) {
        (Some(l), Some(c)) => format!("{file}:{l}:{c}"),
        (Some(l), None) => format!("{file}:{l}"),
        _ => file.to_string(),
    }
}

/// `  --> file:line:col`, the line, and a caret under the column.
fn location(file: &str, pos: Position, sources: &Sources) -> String {
    let mut out = format!("\n  --> {}", at(file, pos));
    let (Some(line), Some(text)) = (pos.line(), sources.get(file)) else {
        return out;
    };
    let Some(src) = text.lines().nth(line - 1) else {
        return out;
    };
    let gutter = line.to_string().len();
    let col = pos.position().unwrap_or(1).max(1);
    let pad: String = src
        .chars()
        .take(col - 1)
        .map(|c| if c == '\t' { '\t' } else { ' ' })
        .collect();
    out += &format!(
        "\n{:gutter$} |\n{line} | {src}\n{:gutter$} | {pad}^",
        "", ""
    );
    out
}
