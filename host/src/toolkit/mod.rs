//! Tools for plugin authors and operators: scaffold a plugin (`new`), check a component
//! (`check`), run one against recorded inputs (`test`), show a plugin's description
//! (`describe`), watch what reaches consumers (`tap`) and send a test report now (`probe`).
//!
//! `check` and `test` load the component with the host's own runtime (`crate::runtime`) in a
//! throw-away [`sandbox::Sandbox`]; `tap` and `probe` run inside a serving host, behind the admin
//! API.

pub mod check;
pub mod cli;
pub mod describe;
pub mod new;
pub mod probe;
pub mod sandbox;
pub mod tap;
pub mod test;

use serde_json::{Value, json};

/// Parameter names treated as secrets even when no plugin says so.
pub fn looks_secret(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    ["password", "secret", "token", "key", "credential", "auth"].iter().any(|w| n.contains(w)) && n != "secretref"
}

/// A destination (JSON object text) fit to show an operator: the values of `secret` parameters
/// (and of fields named like secrets) replaced by `"***"`, every URL cut to its origin
/// (`crate::redact::public_reason`). Unparseable text is shown as a placeholder.
pub fn redact_destination(destination: &str, secret_params: &[String]) -> Value {
    let Ok(mut v) = serde_json::from_str::<Value>(destination) else {
        return json!("<not JSON>");
    };
    hide_secrets(&mut v, secret_params);
    crate::redact::public_json(&mut v);
    v
}

/// In a destination: the values of `secret` parameters, and of fields named like secrets at any
/// depth (headers, say), replaced by `"***"`. URLs are left whole.
pub fn hide_secrets(v: &mut Value, secret_params: &[String]) {
    if let Some(obj) = v.as_object_mut() {
        for (k, val) in obj.iter_mut() {
            if (secret_params.contains(k) || looks_secret(k)) && !val.as_str().is_some_and(str::is_empty) {
                *val = json!("***");
            } else {
                hide_nested(val);
            }
        }
    }
}

/// Inside a destination's objects and arrays (headers, say): values under secret-looking keys
/// become `"***"`, at any depth.
fn hide_nested(v: &mut Value) {
    match v {
        Value::Object(obj) => {
            for (k, val) in obj.iter_mut() {
                if looks_secret(k) && !val.is_null() {
                    *val = json!("***");
                } else {
                    hide_nested(val);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(hide_nested),
        _ => {}
    }
}

/// The names of a plugin's `secret` destination parameters.
pub fn secret_params(info: &crate::bindings::PluginInfo) -> Vec<String> {
    info.parameters.iter().filter(|p| p.secret).map(|p| p.name.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_nested_in_a_destination_are_hidden_too() {
        let shown = redact_destination(
            r#"{"url":"https://hooks.example/x","headers":{"x-api-key":"k1","DD-API-KEY":"k2","Authorization":"Bearer t","accept":"json"},"list":[{"token":"t2"}]}"#,
            &[],
        );
        let text = shown.to_string();
        for secret in ["k1", "k2", "Bearer t", "t2"] {
            assert!(!text.contains(secret), "{secret} shown: {text}");
        }
        assert_eq!(shown["headers"]["accept"], "json");
    }

    #[test]
    fn destinations_lose_secrets_and_url_paths() {
        let shown = redact_destination(
            r#"{"host_port":"https://u:pw@os:9200/x?token=1","password":"hunter2","apiKey":"k","username":"","secretRef":"os"}"#,
            &["password".to_string()],
        );
        assert_eq!(
            shown,
            json!({"host_port": "https://os:9200", "password": "***", "apiKey": "***", "username": "", "secretRef": "os"})
        );
        assert_eq!(redact_destination("nope", &[]), json!("<not JSON>"));
    }
}
