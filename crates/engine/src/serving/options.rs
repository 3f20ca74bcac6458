//! A server's options as one JSON object, as a world file's `server` holds them: the fields of
//! [`ServerConfig`], [`HttpConfig`] and [`SyncConfig`] side by side, the keys `server(#{...})`
//! takes in a script.

use super::{HttpConfig, Server, ServerConfig, SyncConfig};
use anyhow::{bail, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};

#[derive(Debug, Clone, PartialEq)]
pub struct ServerOptions {
    pub server: ServerConfig,
    pub http: HttpConfig,
    pub sync: SyncConfig,
}

/// `T`'s defaults with the keys of `obj` that name its fields put over them.
fn part<T: Default + Serialize + DeserializeOwned>(
    obj: &Map<String, Value>,
    known: &mut Vec<String>,
) -> Result<T> {
    let Value::Object(mut fields) = serde_json::to_value(T::default())? else {
        unreachable!("configs serialize to objects")
    };
    for (key, slot) in fields.iter_mut() {
        known.push(key.clone());
        if let Some(v) = obj.get(key) {
            *slot = v.clone();
        }
    }
    crate::textfile::from_value(Value::Object(fields))
}

impl ServerOptions {
    /// Reads and checks the options (without connecting).
    pub fn from_value(v: &Value) -> Result<Self> {
        let Some(obj) = v.as_object() else {
            bail!("server options must be an object such as {{\"url\": \"http://127.0.0.1:8000\"}}, got {v}");
        };
        let mut known = vec![];
        let options = Self {
            server: part(obj, &mut known)?,
            http: part(obj, &mut known)?,
            sync: part(obj, &mut known)?,
        };
        let mut unknown: Vec<&str> = obj
            .keys()
            .map(String::as_str)
            .filter(|k| !known.iter().any(|n| n == k))
            .collect();
        if !unknown.is_empty() {
            unknown.sort();
            known.sort();
            bail!(
                "unknown server option `{}`; known options: {}",
                unknown.join("`, `"),
                known.join(", ")
            );
        }
        if options.server.url.is_empty() {
            bail!("server: `url` is required (e.g. \"http://127.0.0.1:8000\")");
        }
        options.sync.check()?;
        Ok(options)
    }

    /// Connects (see [`Server::connect`]).
    pub fn connect(&self) -> Result<Server> {
        Server::connect(&self.server, &self.http, &self.sync)
    }
}
