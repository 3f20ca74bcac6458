//! Registration with documentation: every script-visible function is registered through
//! `Family::func`, which records its family, signature and one-line doc, so `metaapo api` and the
//! REPL's `:help` are generated from the registrations themselves.

use rhai::{Dynamic, Engine, EvalAltResult, Position, RhaiNativeFunc};
use serde::Serialize;
use std::any::Any;
use std::fmt::Display;

#[derive(Debug, Clone, Serialize)]
pub struct FnDoc {
    pub family: &'static str,
    pub name: String,
    /// Parameters and result, e.g. `(policy: Policy, reference: Policy, pairs: Pairs) -> Map`.
    pub signature: String,
    pub doc: String,
}

/// Registers one API family's functions into the engine.
pub struct Family<'a> {
    engine: &'a mut Engine,
    docs: &'a mut Vec<FnDoc>,
    family: &'static str,
}

impl<'a> Family<'a> {
    pub fn new(engine: &'a mut Engine, docs: &'a mut Vec<FnDoc>, family: &'static str) -> Self {
        Self {
            engine,
            docs,
            family,
        }
    }

    /// Registers `f` as `name`. `signature` lists its parameters and result; its parameter count
    /// must match the function's (checked, so the documentation cannot drift from the code).
    pub fn func<A: 'static, const N: usize, const X: bool, R: Any + Clone, const F: bool>(
        &mut self,
        name: &str,
        signature: &str,
        doc: &str,
        f: impl RhaiNativeFunc<A, N, X, R, F> + 'static,
    ) -> &mut Self {
        let params = signature
            .split_once(')')
            .map(|(p, _)| p.trim_start_matches('('))
            .unwrap_or("");
        let count = if params.trim().is_empty() {
            0
        } else {
            params.split(',').count()
        };
        assert_eq!(
            count, N,
            "`{name}{signature}` documents {count} parameters, the function takes {N}"
        );
        self.engine.register_fn(name, f);
        self.operator(name, signature, doc)
    }

    /// Registers a property getter `obj.name`, documented as `get name`.
    pub fn getter<T: Any + Clone, R: Any + Clone>(
        &mut self,
        type_name: &str,
        name: &str,
        result: &str,
        doc: &str,
        f: impl Fn(&mut T) -> R + 'static,
    ) -> &mut Self {
        self.engine.register_get(name, f);
        self.docs.push(FnDoc {
            family: self.family,
            name: format!("{type_name}.{name}"),
            signature: format!(" -> {result}"),
            doc: doc.to_string(),
        });
        self
    }

    /// Registers a script-visible type under `name`; `print`, `debug` and string interpolation
    /// show it through its `Display`.
    pub fn ty<T: Any + Clone + Display>(&mut self, name: &str) -> &mut Self {
        self.engine
            .register_type_with_name::<T>(name)
            .register_fn("to_string", |v: &mut T| v.to_string())
            .register_fn("to_debug", |v: &mut T| v.to_string());
        self
    }

    /// Documents an operator or indexer registered through [`Family::engine`], so that
    /// `metaapo api` lists it with the functions.
    pub fn operator(&mut self, name: &str, signature: &str, doc: &str) -> &mut Self {
        self.docs.push(FnDoc {
            family: self.family,
            name: name.to_string(),
            signature: signature.to_string(),
            doc: doc.to_string(),
        });
        self
    }

    /// Direct access, for operators and `to_string` hooks (documented with [`Family::operator`]).
    pub fn engine(&mut self) -> &mut Engine {
        self.engine
    }
}

/// A host error as a script error: "`name`: message", positioned at the call by Rhai.
pub fn fail(name: &'static str) -> impl Fn(anyhow::Error) -> Box<EvalAltResult> {
    move |e| error(format!("{name}: {e:#}"))
}

/// A script error with a message.
pub fn error(msg: impl Into<String>) -> Box<EvalAltResult> {
    Box::new(EvalAltResult::ErrorRuntime(
        Dynamic::from(once_each(&msg.into())),
        Position::NONE,
    ))
}

/// Names each function once: the engine and the host may both prefix a message with the
/// same name (`generate: generate: ...`); a prefix repeated right after itself is dropped.
fn once_each(msg: &str) -> String {
    let mut parts: Vec<&str> = vec![];
    for part in msg.split(": ") {
        let name_like = !part.is_empty() && !part.contains(char::is_whitespace);
        if name_like && parts.last() == Some(&part) {
            continue;
        }
        parts.push(part);
    }
    parts.join(": ")
}

pub type Res<T> = Result<T, Box<EvalAltResult>>;
