//! `data-exporter plugin check FILE.wasm`: whether the host can load a component, and why not.
//!
//! The file is compiled and linked by the host's runtime, then loaded as the host loads a
//! plugins directory (grants, `info`, config key, `init`); what each step found is kept:
//! which contract version the component exports, its imports (provided by the host? a
//! capability that needs the operator's grant?), missing or mistyped exports, and the plugin's
//! description when `info` answered.

use super::sandbox::{Options, Sandbox};
use crate::runtime::ContractVersion;
use serde::Serialize;
use serde_json::Value;
use std::path::Path;
use wasmtime::component::types::ComponentItem;

/// What `plugin check` found.
#[derive(Debug, Serialize)]
pub struct Checked {
    /// The file checked.
    pub file: String,
    /// Whether the host would load it (with the default grants plus `--grant`).
    pub loadable: bool,
    /// `component`, `core module` or `not WebAssembly`.
    pub kind: &'static str,
    /// The contract version it targets (`0.1.0`, `0.2.0`, `0.3.0`), when recognised.
    pub contract: Option<String>,
    /// Its imports, each with what the host makes of it.
    pub imports: Vec<Import>,
    /// The names it exports.
    pub exports: Vec<String>,
    /// The capabilities it was checked with.
    pub grants: Vec<String>,
    /// Why it would not load (empty when loadable).
    pub problems: Vec<String>,
    /// What `info` said, as `GET /plugins/{name}` shows it, plus its settings table.
    pub plugin: Option<Value>,
    /// Where its compiled code came from (null: it was not compiled).
    pub code_cache: Option<CodeCache>,
}

/// Where a tool's compiled code came from.
#[derive(Debug, Serialize)]
pub struct CodeCache {
    /// The directory kept between runs (`--code-cache`); null: none (compiled for this run only).
    pub dir: Option<String>,
    /// Whether the compiled code was found there: the component was not compiled again.
    pub hit: bool,
}

impl CodeCache {
    /// One line for people.
    pub fn render(&self) -> String {
        match (&self.dir, self.hit) {
            (Some(dir), true) => format!("compiled code  from the cache ({dir})"),
            (Some(dir), false) => format!("compiled code  compiled now, kept in {dir}"),
            (None, _) => "compiled code  compiled now (no code cache)".to_string(),
        }
    }
}

/// One import of the component.
#[derive(Debug, Serialize)]
pub struct Import {
    /// The WIT name, e.g. `narrows:exporter/http@0.1.0`.
    pub name: String,
    /// Whether the host links it at all.
    pub provided: bool,
    /// The capability it is, when it is one of the host's (`http`, `log`, `files`, `messaging`).
    pub capability: Option<&'static str>,
    /// Whether that capability is granted (by default or by `--grant`).
    pub granted: bool,
}

/// The consumer interfaces the host recognises, by contract version, with the items each must
/// export.
const CONSUMERS: &[(&str, ContractVersion, &[&str])] = &[
    ("narrows:exporter/consumer@0.2.0", ContractVersion::V0_2, &["info", "init", "validate", "destination"]),
    ("narrows:exporter/consumer@0.1.0", ContractVersion::V0_1, &["info", "validate", "deliver"]),
];

/// Interfaces the host links, besides WASI 0.2 (`wasi:*@0.2.*`), which grants nothing.
const PROVIDED: &[&str] = &[
    "narrows:exporter/types@0.1.0",
    "narrows:exporter/http@0.1.0",
    "narrows:exporter/log@0.1.0",
    "narrows:exporter/types@0.2.0",
    "narrows:exporter/files@0.2.0",
    "narrows:exporter/messaging@0.3.0",
];

/// WASI 0.2 packages the host links (with a context that grants nothing).
const WASI: &[&str] = &["wasi:io/", "wasi:clocks/", "wasi:filesystem/", "wasi:random/", "wasi:sockets/", "wasi:cli/"];

fn provided(name: &str) -> bool {
    PROVIDED.contains(&name) || (WASI.iter().any(|p| name.starts_with(p)) && name.contains("@0.2."))
}

/// Check `file` with the default grants plus `grants`, keeping compiled code in `code_cache`.
pub async fn check(file: &Path, grants: &[String], code_cache: Option<&Path>) -> anyhow::Result<Checked> {
    let bytes = std::fs::read(file).map_err(|e| anyhow::anyhow!("reading {}: {e}", file.display()))?;
    let options =
        Options { grants: grants.to_vec(), code_cache: code_cache.map(Path::to_path_buf), ..Options::default() };
    let sandbox = Sandbox::new(file, &options)?;
    let mut c = Checked {
        file: file.display().to_string(),
        loadable: false,
        kind: "component",
        contract: None,
        imports: Vec::new(),
        exports: Vec::new(),
        grants: sandbox.grants.clone(),
        problems: Vec::new(),
        plugin: None,
        code_cache: None,
    };
    match bytes.get(..8) {
        Some([0, b'a', b's', b'm', 1, 0, 0, 0]) => {
            c.kind = "core module";
            c.problems.push(
                "this is a core WebAssembly module, not a component: the host loads components of the \
                 narrows:exporter world. Build Rust plugins with `--target wasm32-wasip2` (the SDK does the rest), \
                 or wrap a module with `wasm-tools component new`"
                    .into(),
            );
            return Ok(c);
        }
        Some([0, b'a', b's', b'm', _, _, 1, 0]) => {}
        _ => {
            c.kind = "not WebAssembly";
            c.problems.push(
                "this is not a WebAssembly file (no `\\0asm` header): pass the `.wasm` component the build \
                 produced, e.g. target/wasm32-wasip2/release/<name>.wasm"
                    .into(),
            );
            return Ok(c);
        }
    }
    let runtime = sandbox.runtime.clone();
    let sha: String = {
        use sha2::Digest;
        sha2::Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect()
    };
    let compiled = {
        let (rt, b, s) = (runtime.clone(), bytes.clone(), sha.clone());
        tokio::task::spawn_blocking(move || rt.compile_component(&b, &s)).await?
    };
    let component = match compiled {
        Ok((component, hit)) => {
            c.code_cache = Some(CodeCache { dir: code_cache.map(|d| d.display().to_string()), hit });
            component
        }
        Err(e) => {
            c.problems.push(format!("not a valid component: {e:#}"));
            return Ok(c);
        }
    };
    let engine = runtime.engine();
    let ty = component.component_type();
    for (name, _) in ty.imports(engine) {
        let capability = crate::runtime::CAPABILITIES.iter().find(|(p, _)| name.starts_with(p)).map(|(_, cap)| *cap);
        let granted = capability.is_some_and(|cap| c.grants.iter().any(|g| g == cap));
        c.imports.push(Import { name: name.to_string(), provided: provided(name), capability, granted });
    }
    let mut consumer = None;
    for (name, item) in ty.exports(engine) {
        c.exports.push(name.to_string());
        if let Some((_, version, items)) = CONSUMERS.iter().find(|(n, _, _)| *n == name) {
            let present: Vec<String> = match &item.ty {
                ComponentItem::ComponentInstance(i) => i.exports(engine).map(|(n, _)| n.to_string()).collect(),
                _ => Vec::new(),
            };
            let missing: Vec<&str> = items.iter().copied().filter(|i| !present.iter().any(|p| p == i)).collect();
            if consumer.is_none() {
                consumer = Some((name.to_string(), *version, missing));
            }
        }
    }
    match &consumer {
        None => c.problems.push(format!(
            "the component exports no narrows:exporter/consumer interface (it exports {}): a plugin exports \
             `consumer` of narrows:exporter@0.2.0 (the SDK's world, wit/0.3/exporter.wit) or @0.1.0",
            if c.exports.is_empty() { "nothing".to_string() } else { quoted(&c.exports) }
        )),
        Some((name, version, missing)) => {
            c.contract = Some(ContractVersion::of(*version, c.imports.iter().map(|i| i.name.as_str())).to_string());
            if !missing.is_empty() {
                c.problems.push(format!(
                    "its export {name} lacks {}: build it against the whole interface (wit/0.3/exporter.wit)",
                    quoted(missing)
                ));
            }
        }
    }
    let unprovided: Vec<&str> = c.imports.iter().filter(|i| !i.provided).map(|i| i.name.as_str()).collect();
    if !unprovided.is_empty() {
        c.problems.push(format!(
            "it imports {}, which the host does not provide: a plugin may import narrows:exporter's http, log, \
             files and messaging, and WASI 0.2 (which grants nothing: no files, sockets or environment). \
             Narrow the world it is built against to what it calls",
            quoted(&unprovided)
        ));
    }
    for i in c.imports.iter().filter(|i| i.capability.is_some() && !i.granted) {
        let cap = i.capability.unwrap_or_default();
        let id = &sandbox.id;
        c.problems.push(format!(
            "it imports the `{cap}` capability ({}), which the host grants only when the operator says so: \
             runtime.plugins.{id}.grants = [\"http\", \"log\", \"{cap}\"]{}. Check it granted with --grant {cap}; \
             if the plugin never calls it, narrow the world it is built against",
            i.name,
            match cap {
                "files" => format!(" with runtime.plugins.{id}.files_dir"),
                "messaging" => format!(" with [runtime.plugins.{id}.messaging]"),
                _ => String::new(),
            }
        ));
    }
    // The host's own linking has the last word (e.g. an interface with a mistyped function).
    if c.problems.is_empty()
        && let Err(e) = runtime.link(&component)
    {
        c.problems.push(format!("the host cannot link it: {e:#}"));
    }
    if !c.problems.is_empty() {
        return Ok(c);
    }
    let registry = sandbox.load(&bytes).await?;
    for f in registry.failures() {
        // Messages name the sandbox's copy: name the file checked instead.
        c.problems.push(f.error.replace(&f.file.display().to_string(), &c.file));
    }
    if let Some(p) = registry.plugins().next() {
        let mut d = crate::runtime::describe::plugin_description(p);
        d["settings"] = Value::Array(crate::runtime::describe::parameter_table(&p.settings));
        c.contract = Some(p.contract.to_string());
        c.plugin = Some(d);
    }
    c.loadable = c.problems.is_empty() && c.plugin.is_some();
    Ok(c)
}

fn quoted(items: &[impl AsRef<str>]) -> String {
    items.iter().map(|i| format!("`{}`", i.as_ref())).collect::<Vec<_>>().join(", ")
}

/// `plugin check` for people.
pub fn render(c: &Checked) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let verdict = if c.loadable { "loadable" } else { "NOT loadable" };
    let _ = writeln!(out, "{}: {verdict}", c.file);
    if c.kind != "component" {
        let _ = writeln!(out, "kind         {}", c.kind);
    }
    if let Some(plugin) = &c.plugin {
        out.push_str(&super::describe::render(plugin));
    } else if let Some(contract) = &c.contract {
        let _ = writeln!(out, "contract     narrows:exporter@{contract}");
    }
    if let Some(cache) = &c.code_cache {
        let _ = writeln!(out, "{}", cache.render());
    }
    if !c.imports.is_empty() {
        let _ = writeln!(out, "\nimports (checked with grants: {}):", c.grants.join(", "));
        let wasi = c.imports.iter().filter(|i| i.provided && i.name.starts_with("wasi:")).count();
        if wasi > 0 {
            let _ =
                writeln!(out, "  {:<44} WASI 0.2, linked with nothing granted", format!("wasi:* ({wasi} interfaces)"));
        }
        for i in c.imports.iter().filter(|i| !(i.provided && i.name.starts_with("wasi:"))) {
            let what = match (i.provided, i.capability, i.granted) {
                (false, _, _) => "NOT PROVIDED by the host".to_string(),
                (true, Some(cap), true) => format!("capability `{cap}`, granted"),
                (true, Some(cap), false) => format!("capability `{cap}`, NOT GRANTED by default"),
                (true, None, _) => "provided".to_string(),
            };
            let _ = writeln!(out, "  {:<44} {what}", i.name);
        }
    }
    if !c.problems.is_empty() {
        let _ = writeln!(out, "\nproblems:");
        for p in &c.problems {
            let _ = writeln!(out, "  - {p}");
        }
    }
    out
}
