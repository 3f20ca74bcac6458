//! Option maps (`#{ beta: 0.1, ... }`) read with types and defaults; a key nobody read is an
//! error that lists the known keys, so a typo never silently falls back to a default.

use super::registry::{error, Res};
use rhai::{Dynamic, Map};
use std::cell::RefCell;

pub struct Opts<'a> {
    what: &'a str,
    map: &'a Map,
    known: RefCell<Vec<&'static str>>,
}

impl<'a> Opts<'a> {
    /// `what` names the call in errors, e.g. "dpo options".
    pub fn new(what: &'a str, map: &'a Map) -> Self {
        Self {
            what,
            map,
            known: RefCell::new(vec![]),
        }
    }

    pub fn get(&self, key: &'static str) -> Option<&Dynamic> {
        self.known.borrow_mut().push(key);
        self.map.get(key)
    }

    pub fn f64(&self, key: &'static str, default: f64) -> Res<f64> {
        Ok(self.opt_f64(key)?.unwrap_or(default))
    }

    pub fn opt_f64(&self, key: &'static str) -> Res<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) if v.is_unit() => Ok(None),
            Some(v) => number(v)
                .map(Some)
                .ok_or_else(|| self.wrong(key, "a number", v)),
        }
    }

    pub fn usize(&self, key: &'static str, default: usize) -> Res<usize> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => match v.as_int() {
                Ok(i) if i >= 0 => Ok(i as usize),
                _ => Err(self.wrong(key, "a non-negative integer", v)),
            },
        }
    }

    pub fn bool(&self, key: &'static str, default: bool) -> Res<bool> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.as_bool().map_err(|_| self.wrong(key, "true or false", v)),
        }
    }

    pub fn string(&self, key: &'static str, default: &str) -> Res<String> {
        match self.get(key) {
            None => Ok(default.to_string()),
            Some(v) if v.is_string() => Ok(v.clone().into_string().unwrap_or_default()),
            Some(v) => Err(self.wrong(key, "a string", v)),
        }
    }

    fn wrong(&self, key: &str, expected: &str, v: &Dynamic) -> Box<rhai::EvalAltResult> {
        error(format!(
            "{}: `{key}` must be {expected}, got {} ({v})",
            self.what,
            v.type_name()
        ))
    }

    /// Fails on any key that no getter asked for.
    pub fn finish(self) -> Res<()> {
        let known = self.known.into_inner();
        let mut unknown: Vec<&str> = self
            .map
            .keys()
            .map(|k| k.as_str())
            .filter(|k| !known.contains(k))
            .collect();
        if unknown.is_empty() {
            return Ok(());
        }
        unknown.sort();
        let mut known = known;
        known.sort();
        known.dedup();
        Err(error(format!(
            "{}: unknown option{} `{}`; known options: {}",
            self.what,
            if unknown.len() > 1 { "s" } else { "" },
            unknown.join("`, `"),
            known.join(", ")
        )))
    }
}

/// An INT or FLOAT as f64.
pub fn number(v: &Dynamic) -> Option<f64> {
    v.as_float()
        .ok()
        .or_else(|| v.as_int().ok().map(|i| i as f64))
}
