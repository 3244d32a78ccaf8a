//! A small W3C WebDriver client over reqwest: headless Debian chromium driven by chromedriver on
//! a free port, one browser per test (at most two at once: the suite runs on two cores).

use crate::helpers::{eventually, free_port};
use base64::Engine;
use serde_json::{Value, json};
use std::time::Duration;

/// Debian's chromium, as `tests/servers/deps.sh` installs it.
const CHROMIUM: &str = "/usr/bin/chromium";
/// How long a page may take to show what a test waits for.
pub const PATIENCE: Duration = Duration::from_secs(30);
/// The W3C name of an element reference in JSON.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

static BROWSERS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

/// A browser session; the browser and its driver end when it is dropped.
pub struct Browser {
    session: String,
    client: reqwest::Client,
    _driver: tokio::process::Child,
    _permit: tokio::sync::SemaphorePermit<'static>,
}

/// How to install what the browser tests need, for failure messages.
const INSTALL: &str =
    "run `tests/servers/deps.sh` (as `make test` does), or `apt-get install chromium chromium-driver`";

impl Browser {
    /// A fresh headless chromium with a window of `width` x `height` CSS pixels.
    pub async fn start(width: u32, height: u32) -> Browser {
        assert!(
            std::path::Path::new(CHROMIUM).exists(),
            "the browser tests need Debian's chromium at {CHROMIUM}, which is missing: {INSTALL}"
        );
        let permit = BROWSERS.acquire().await.unwrap();
        let port = free_port();
        let driver = tokio::process::Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("starting chromedriver ({e}): the browser tests need it: {INSTALL}"));
        let client = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{port}");
        eventually(PATIENCE, "chromedriver to be ready", async || {
            let status = client.get(format!("{base}/status")).send().await.map_err(|e| e.to_string())?;
            let v: Value = status.json().await.map_err(|e| e.to_string())?;
            if v["value"]["ready"] == true { Ok(()) } else { Err(v.to_string()) }
        })
        .await;
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--no-first-run", "--hide-scrollbars", "--force-device-scale-factor=1",
                         "--window-size=1280,900"],
            },
        }}});
        let resp = client.post(format!("{base}/session")).json(&caps).send().await.unwrap();
        let v: Value = resp.json().await.unwrap();
        let id = v["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("chromedriver did not start chromium: {v}; {INSTALL}"))
            .to_string();
        let browser = Browser { session: format!("{base}/session/{id}"), client, _driver: driver, _permit: permit };
        browser.viewport(width, height).await;
        browser
    }

    async fn command(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Result<Value, Value> {
        let mut req = self.client.request(method, format!("{}{path}", self.session));
        if let Some(body) = body {
            req = req.json(&body);
        }
        let v: Value = req.send().await.unwrap().json().await.unwrap();
        match v["value"].get("error") {
            Some(_) => Err(v["value"].clone()),
            None => Ok(v["value"].clone()),
        }
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        self.command(reqwest::Method::POST, path, Some(body))
            .await
            .unwrap_or_else(|e| panic!("WebDriver {path} failed: {e}"))
    }

    /// Show pages as a screen of `width` x `height` CSS pixels, a phone's below 500 (chromium's
    /// windows are at least 500 wide: the size is emulated, as the developer tools do).
    pub async fn viewport(&self, width: u32, height: u32) {
        let metrics = json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 500});
        self.post("/goog/cdp/execute", json!({"cmd": "Emulation.setDeviceMetricsOverride", "params": metrics})).await;
    }

    /// Open `url`.
    pub async fn goto(&self, url: &str) {
        self.post("/url", json!({"url": url})).await;
    }

    /// The page's address now.
    pub async fn url(&self) -> String {
        self.command(reqwest::Method::GET, "/url", None).await.unwrap().as_str().unwrap().to_string()
    }

    /// Run `script` (a function body; `arguments` are `args`) in the page; its return value.
    pub async fn run(&self, script: &str, args: Value) -> Value {
        self.post("/execute/sync", json!({"script": script, "args": args})).await
    }

    /// Run `script` whose last argument is a callback; what it was called with.
    pub async fn run_async(&self, script: &str, args: Value) -> Value {
        self.post("/execute/async", json!({"script": script, "args": args})).await
    }

    async fn find(&self, css: &str) -> Option<Value> {
        let v =
            self.command(reqwest::Method::POST, "/element", Some(json!({"using": "css selector", "value": css}))).await;
        v.ok().map(|e| e[ELEMENT].clone())
    }

    /// Wait until an element matches `css` and is displayed.
    pub async fn wait_for(&self, css: &str) {
        eventually(PATIENCE, &format!("an element {css} shown"), async || {
            let Some(id) = self.find(css).await else { return Err("none".to_string()) };
            let id = id.as_str().unwrap();
            match self.command(reqwest::Method::GET, &format!("/element/{id}/displayed"), None).await {
                Ok(Value::Bool(true)) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await
    }

    /// The text shown by the first element matching `css` (empty when none).
    pub async fn text(&self, css: &str) -> String {
        let Some(id) = self.find(css).await else { return String::new() };
        let id = id.as_str().unwrap();
        self.command(reqwest::Method::GET, &format!("/element/{id}/text"), None)
            .await
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    }

    /// Wait until the element matching `css` shows text containing `want`; the text.
    pub async fn wait_text(&self, css: &str, want: &str) -> String {
        eventually(PATIENCE, &format!("{css} to show {want:?}"), async || {
            let t = self.text(css).await;
            if t.contains(want) { Ok(t) } else { Err(t) }
        })
        .await
    }

    /// Click the element matching `css` (waiting until it is shown).
    pub async fn click(&self, css: &str) {
        self.wait_for(css).await;
        let id = self.find(css).await.unwrap();
        self.post(&format!("/element/{}/click", id.as_str().unwrap()), json!({})).await;
    }

    /// Type `text` into the field matching `css` (waiting until it is shown), after clearing it.
    pub async fn type_into(&self, css: &str, text: &str) {
        self.wait_for(css).await;
        let id = self.find(css).await.unwrap();
        let id = id.as_str().unwrap();
        self.post(&format!("/element/{id}/clear"), json!({})).await;
        self.post(&format!("/element/{id}/value"), json!({"text": text})).await;
    }

    /// Choose the option with value `value` of the select matching `css`.
    pub async fn select(&self, css: &str, value: &str) {
        self.click(&format!("{css} option[value=\"{value}\"]")).await;
    }

    /// A PNG of the viewport, written to `path`.
    pub async fn screenshot(&self, path: &std::path::Path) {
        let b64 = self.command(reqwest::Method::GET, "/screenshot", None).await.unwrap();
        let png = base64::engine::general_purpose::STANDARD.decode(b64.as_str().unwrap()).unwrap();
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
    }

    /// axe-core's serious and critical violations on the page as it is (rule, impact, help, the
    /// nodes' selectors), from `host/ui/node_modules/axe-core` (`npm ci` there: `make test`).
    pub async fn axe_serious(&self) -> Vec<Value> {
        let file = crate::helpers::repo_root().join("host/ui/node_modules/axe-core/axe.min.js");
        let source = std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("reading {} ({e}): run `npm ci` in host/ui (`make test` does)", file.display()));
        if self.run("return typeof window.axe", json!([])).await != "object" {
            self.run(&format!("{source}\nreturn typeof window.axe;"), json!([])).await;
        }
        let found = self
            .run_async(
                "const done = arguments[arguments.length - 1];
                 axe.run(document, {resultTypes: ['violations']})
                   .then(r => done(r.violations
                       .filter(v => v.impact === 'serious' || v.impact === 'critical')
                       .map(v => ({id: v.id, impact: v.impact, help: v.help,
                                   nodes: v.nodes.map(n => n.target.join(' ') + ': ' + n.failureSummary)}))))
                   .catch(e => done([{id: 'axe-failed', help: String(e)}]));",
                json!([]),
            )
            .await;
        found.as_array().unwrap().clone()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // End the session so chromium exits with its driver (which is killed on drop).
        let url = self.session.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let _ = tokio::time::timeout(Duration::from_secs(5), reqwest::Client::new().delete(url).send()).await;
            });
        })
        .join();
    }
}
