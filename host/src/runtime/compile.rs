//! Compiling a plugin in a child process held to `runtime.compile_memory_mib` of memory and
//! `COMPILE_CPU_SECONDS` of CPU, so a pathological module cannot exhaust the host: the child
//! is the host's own binary (`data-exporter compile-plugin`), which reads the component on
//! stdin and writes the compiled code on stdout.

use super::RuntimeConfig;
use anyhow::Context;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// CPU seconds one compilation may use before the kernel stops it.
pub const COMPILE_CPU_SECONDS: u64 = 60;

/// The `data-exporter` binary, when this process is it: set by `main`. Without it (a library
/// embedding, the in-process tests) plugins compile in-process, bounded in time only.
static COMPILER: OnceLock<PathBuf> = OnceLock::new();

/// Compile new plugin files in child processes of `exe`, which must be the `data-exporter` binary.
pub fn compile_in_child_processes(exe: PathBuf) {
    let _ = COMPILER.set(exe);
}

/// Compile `wasm` in a child process; the compiled code (`Component::serialize`), or why not.
/// `None` when no compiler binary is set.
pub fn in_child(cfg: &RuntimeConfig, wasm: &[u8]) -> Option<anyhow::Result<Vec<u8>>> {
    let exe = COMPILER.get()?;
    Some(run_child(exe, cfg, wasm))
}

fn run_child(exe: &Path, cfg: &RuntimeConfig, wasm: &[u8]) -> anyhow::Result<Vec<u8>> {
    use std::os::unix::process::{CommandExt, ExitStatusExt};
    let settings = serde_json::to_string(cfg)?;
    let memory = cfg.compile_memory_mib.saturating_mul(1024 * 1024);
    let mut cmd = Command::new(exe);
    cmd.arg("compile-plugin")
        .arg(settings)
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: only async-signal-safe calls (setrlimit) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            limit(libc::RLIMIT_DATA, memory)?;
            limit(libc::RLIMIT_CPU, COMPILE_CPU_SECONDS)
        });
    }
    let mut child = cmd.spawn().with_context(|| format!("starting the plugin compiler {}", exe.display()))?;
    let mut stdin = child.stdin.take().expect("piped");
    let input = wasm.to_vec();
    // Feed stdin from a thread: the child may write before it has read everything.
    let feeder = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output()?;
    let _ = feeder.join();
    if out.status.success() {
        return Ok(out.stdout);
    }
    let said = String::from_utf8_lossy(&out.stderr);
    let said = said.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim();
    let mib = cfg.compile_memory_mib;
    match out.status.signal() {
        Some(libc::SIGXCPU | libc::SIGKILL) => anyhow::bail!(
            "compiling used more than {COMPILE_CPU_SECONDS} s of CPU and was stopped; the module is too large or \
             pathological"
        ),
        _ if said.contains("out of memory") || said.contains("memory allocation") => {
            anyhow::bail!(
                "compiling needed more than runtime.compile_memory_mib ({mib} MiB) and was stopped; raise it if \
                 the plugin is trusted"
            )
        }
        Some(sig) => anyhow::bail!(
            "the compiler process died of signal {sig} (memory cap runtime.compile_memory_mib = {mib} MiB): {said}"
        ),
        None => anyhow::bail!(
            "{}",
            if said.is_empty() { format!("the plugin compiler exited with {}", out.status) } else { said.to_string() }
        ),
    }
}

fn limit(resource: libc::__rlimit_resource_t, value: u64) -> std::io::Result<()> {
    let rl = libc::rlimit { rlim_cur: value as libc::rlim_t, rlim_max: value as libc::rlim_t };
    // SAFETY: plain syscall on a valid struct.
    if unsafe { libc::setrlimit(resource, &rl) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The child's side (`data-exporter compile-plugin <runtime settings JSON>`): component bytes on
/// stdin, compiled code on stdout, errors on stderr.
pub fn child_main(settings: &str) -> anyhow::Result<()> {
    let cfg: RuntimeConfig = serde_json::from_str(settings).context("reading the runtime settings")?;
    let engine = wasmtime::Engine::new(&super::engine::compile_config(&cfg))?;
    let mut wasm = Vec::new();
    std::io::stdin().read_to_end(&mut wasm)?;
    let component = wasmtime::component::Component::new(&engine, &wasm).map_err(|e| anyhow::anyhow!("{e:#}"))?;
    let code = component.serialize()?;
    std::io::stdout().write_all(&code)?;
    Ok(())
}
