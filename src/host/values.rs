//! Script values to engine values and back: texts (a string, or `#{role, content}` messages),
//! and JSON, which `log`, `params.json`, checkpoints' state and option maps go through.

use super::api_tensor::Tensor;
use super::registry::{error, Res};
use crate::data::encode::Text;
use crate::data::pairs::ROLES;
use crate::model::template::Message;
use rhai::{Array, Dynamic, Map};
use serde_json::Value;

/// A script value as JSON; a one-element tensor becomes its number, a larger one an array.
pub fn to_json(v: &Dynamic) -> Value {
    if let Ok(i) = v.as_int() {
        return i.into();
    }
    if let Ok(f) = v.as_float() {
        return serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number);
    }
    if let Ok(b) = v.as_bool() {
        return b.into();
    }
    if v.is_string() {
        return v.to_string().into();
    }
    if let Some(t) = v.clone().try_cast::<Tensor>() {
        return match t.values() {
            Ok(vals) if vals.len() == 1 => to_json(&Dynamic::from_float(vals[0])),
            Ok(vals) => vals
                .into_iter()
                .map(|x| to_json(&Dynamic::from_float(x)))
                .collect(),
            Err(_) => Value::Null,
        };
    }
    if let Some(a) = v.read_lock::<Array>() {
        return a.iter().map(to_json).collect();
    }
    if let Some(m) = v.read_lock::<Map>() {
        return Value::Object(map_to_json(&m));
    }
    if v.is_unit() {
        return Value::Null;
    }
    v.to_string().into()
}

/// JSON as a script value (objects become maps), e.g. a checkpoint's state or a sub-run's
/// metrics.
pub fn from_json(v: &Value) -> anyhow::Result<Dynamic> {
    rhai::serde::to_dynamic(v).map_err(|e| anyhow::anyhow!("{e}"))
}

pub fn map_to_json(m: &Map) -> serde_json::Map<String, Value> {
    m.iter().map(|(k, v)| (k.to_string(), to_json(v))).collect()
}

pub fn text_to_dynamic(t: &Text) -> Dynamic {
    match t {
        Text::Plain(s) => s.clone().into(),
        Text::Chat(msgs) => {
            let arr: Array = msgs
                .iter()
                .map(|m| {
                    let mut map = Map::new();
                    map.insert("role".into(), m.role.clone().into());
                    map.insert("content".into(), m.content.clone().into());
                    map.into()
                })
                .collect();
            arr.into()
        }
    }
}

pub fn dynamic_to_text(v: &Dynamic, what: &str) -> Res<Text> {
    if v.is_string() {
        return Ok(Text::Plain(v.to_string()));
    }
    if let Some(arr) = v.read_lock::<Array>() {
        return arr
            .iter()
            .map(|m| {
                let map = m.read_lock::<Map>();
                let field = |k: &str| map.as_ref().and_then(|m| m.get(k)).map(|v| v.to_string());
                match (field("role"), field("content")) {
                    (Some(role), Some(_)) if !ROLES.contains(&role.as_str()) => {
                        Err(error(format!(
                            "{what}: {role:?} is not a chat role (one of {})",
                            ROLES.join(", ")
                        )))
                    }
                    (Some(role), Some(content)) => Ok(Message::new(&role, &content)),
                    _ => Err(error(format!("{what}: messages need `role` and `content`"))),
                }
            })
            .collect::<Res<Vec<_>>>()
            .map(Text::Chat);
    }
    Err(error(format!(
        "{what}: expected a string or an array of #{{role, content}} messages, got {}",
        v.type_name()
    )))
}
