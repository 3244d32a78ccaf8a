//! A loaded plugin described as JSON, as the API's `/plugins` and the toolkit's `plugin check`
//! show it: what it is, its parameters, its contract. Pure: it reads only the loaded plugin.

use super::LoadedPlugin;
use crate::bindings::{ParamType, Parameter};
use serde_json::json;

/// A plugin's public description (an element of `GET /plugins`), for the admin API and tools.
pub fn plugin_description(p: &LoadedPlugin) -> serde_json::Value {
    serde_json::Value::Object(public_description(p))
}

/// What anyone may know of a loaded plugin: name, version, config key, description,
/// parameters, and whether it is quarantined.
pub fn public_description(p: &LoadedPlugin) -> serde_json::Map<String, serde_json::Value> {
    let mut m = serde_json::Map::new();
    m.insert("name".into(), json!(p.info.name));
    m.insert("version".into(), json!(p.info.version));
    m.insert("config_key".into(), json!(p.info.config_key));
    m.insert("description".into(), json!(p.info.description));
    m.insert("parameters".into(), json!(parameters(p)));
    m.insert("contract".into(), json!(p.contract));
    m.insert("quarantined".into(), json!(p.health.quarantined()));
    m
}

/// A plugin's destination parameters, for people and tools.
fn parameters(p: &LoadedPlugin) -> Vec<serde_json::Value> {
    parameter_table(&p.info.parameters)
}

/// A parameter table (destination fields or settings) as `/plugins` shows it, for the admin
/// API and tools.
pub fn parameter_table(params: &[Parameter]) -> Vec<serde_json::Value> {
    params
        .iter()
        .map(|q| {
            json!({
                "name": q.name,
                "type": param_type_name(q.type_),
                "required": q.required,
                "default": q.default.as_deref().and_then(|d| serde_json::from_str::<serde_json::Value>(d).ok()),
                "usage": q.usage,
                "secret": q.secret,
            })
        })
        .collect()
}

fn param_type_name(t: ParamType) -> &'static str {
    use ParamType as T;
    match t {
        T::String => "string",
        T::Boolean => "boolean",
        T::Integer => "integer",
        T::Number => "number",
        T::Object => "object",
        T::Array => "array",
    }
}
