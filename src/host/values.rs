//! Script values as JSON and back: what `log`, `params.json`, checkpoints' state and option maps
//! over engine configs go through.

use super::api_tensor::Tensor;
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
