//! Option maps (`#{ beta: 0.1, ... }`) read with types and defaults; a key nobody read is an
//! error that lists the known keys, so a typo never silently falls back to a default.

use super::api_tensor::number;
use super::registry::{error, Res};
use crate::atomic::Replace;
use rhai::{Dynamic, Map};
use serde::{de::DeserializeOwned, Serialize};
use serde_json::Value;
use std::cell::RefCell;

pub struct Opts<'a> {
    what: &'a str,
    map: &'a Map,
    known: RefCell<Vec<String>>,
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
        self.known.borrow_mut().push(key.to_string());
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

    /// An engine config: its defaults (`T::default()`, the one place they are written) with
    /// the keys of the map that name its fields put over them, each checked against its type.
    pub fn config<T: Default + Serialize + DeserializeOwned>(&self) -> Res<T> {
        let mut fields = default_fields::<T>();
        for (key, slot) in fields.iter_mut() {
            self.known.borrow_mut().push(key.clone());
            if let Some(v) = self.map.get(key.as_str()) {
                *slot = super::values::to_json(v);
            }
        }
        crate::textfile::from_value(Value::Object(fields))
            .map_err(|e| error(format!("{}: {e:#}", self.what)))
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
            .filter(|k| !known.iter().any(|n| n == k))
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

/// A config's fields and defaults as `metaapo api` shows them: `beta (0.1), rpo_alpha (off)`.
pub fn defaults<T: Default + Serialize>() -> String {
    default_fields::<T>()
        .iter()
        .map(|(k, v)| match v {
            Value::Null => format!("{k} (off)"),
            Value::String(s) => format!("{k} ({s:?})"),
            v => format!("{k} ({v})"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `T::default()`'s fields, by name, as JSON.
fn default_fields<T: Default + Serialize>() -> serde_json::Map<String, Value> {
    match serde_json::to_value(T::default()) {
        Ok(Value::Object(fields)) => fields,
        _ => unreachable!("configs serialize to objects"),
    }
}

/// What a refused script save tells the user to do.
pub const OVERWRITE_HINT: &str = "pass save(dir, #{ overwrite: true })";

/// `overwrite` in a save's options, as the replacement rule of [`crate::atomic`].
pub fn replace_rule(what: &str, opts: &Map) -> Res<Replace> {
    let o = Opts::new(what, opts);
    let overwrite = o.bool("overwrite", false)?;
    o.finish()?;
    Ok(if overwrite {
        Replace::SameKind
    } else {
        Replace::Never
    })
}
