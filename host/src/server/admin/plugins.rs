//! `GET /plugins`, `GET /plugins/{name}`, `POST /plugins/reload`.

use crate::server::{ApiError, AppState};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde_json::{Value, json};

/// `GET /plugins`: everything about the loaded plugins (the public `/plugins` shows only what
/// producers need): files, hashes, limits and allow-lists, crash state, load failures.
pub(super) async fn plugins(State(state): State<AppState>) -> Json<Value> {
    let reg = state.registry.current();
    let loaded: Vec<_> = reg.plugins().map(|p| full_description(p)).collect();
    let allocator = state.registry.runtime().allocator;
    let conflicts: Vec<Value> = reg
        .conflicts()
        .iter()
        .map(|c| json!({"config_key": c.config_key, "files": c.files, "message": c.message()}))
        .collect();
    Json(json!({
        "dir": reg.dir(),
        "instance_allocator": allocator,
        "plugins": loaded,
        "failed": reg.failures(),
        "conflicts": conflicts,
    }))
}

/// Everything about one loaded plugin: its public description, then file, hash, limits,
/// settings, crash state.
fn full_description(p: &crate::runtime::LoadedPlugin) -> Value {
    let mut full = crate::server::public_description(p);
    let more = json!({
        "id": p.id,
        "file": p.file,
        "sha256": p.sha256,
        "compiled_from_cache": p.from_cache,
        "limits": p.limits,
        "settings": crate::server::parameter_table(&p.settings),
        "files_dir": p.files_dir(),
        "instances_in_use": p.instances_in_use(),
        "consecutive_crashes": p.health.consecutive_crashes(),
        "last_crash": p.health.last_crash(),
    });
    if let Value::Object(more) = more {
        full.extend(more);
    }
    Value::Object(full)
}

/// `GET /plugins/{name}`: one element of `GET /plugins`, by config key or plugin name.
pub(super) async fn plugin_by_name(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let reg = state.registry.current();
    match crate::server::find_plugin(&reg, &name) {
        Some(p) => Ok(Json(full_description(p))),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_plugin",
            format!("no loaded plugin has the config key or name {name:?}; loaded (config keys): {}", reg.keys_list()),
        )),
    }
}

/// `POST /plugins/reload`: rescan the plugins directory now and release quarantined plugins.
pub(super) async fn reload_plugins(State(state): State<AppState>) -> Json<Value> {
    let (registry, released) = state.registry.reload_releasing().await;
    let loaded: Vec<Value> = registry
        .plugins()
        .map(|p| json!({"name": p.info.name, "version": p.info.version, "config_key": p.info.config_key}))
        .collect();
    let failed: Vec<Value> = registry.failures().iter().map(|f| json!({"file": f.file, "error": f.error})).collect();
    Json(json!({"loaded": loaded, "failed": failed, "released": released}))
}
