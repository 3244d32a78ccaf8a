//! The outbound HTTP capability: per-plugin pooled reqwest clients, TLS options, the allow-list, typed errors.
//!
//! One seam exists for authoring tools: an [`AuthoringStub`] installed with
//! [`HttpCapability::with_authoring_stub`] sees each request once every check passed and may
//! answer it instead of the network (`data-exporter plugin test`). The host never installs one.

use super::outbound::{Denied, OwnListeners, Policy, PolicyResolver, StaticHosts, TARGET_PORT};
use super::secrets::{Bound, Credential, Origin};
// URLs are shown by their origin only: user info, path and query may carry secrets.
use crate::bindings::http::{Method, Request, RequestError, Response};
use crate::redact::url_origin as redact;
use anyhow::Context;
use std::sync::Arc;
use std::time::Duration;

/// TLS material and settings shared by every plugin's clients.
pub struct HttpCapability {
    ca: Vec<reqwest::Certificate>,
    identity: Option<reqwest::Identity>,
    hosts: StaticHosts,
    cfg: HttpConfig,
    own: Arc<OwnListeners>,
    client_cert_origins: Arc<[Origin]>,
    stub: Option<Arc<dyn AuthoringStub>>,
}

/// A request as the host is about to send it: after the allow-list, TLS and credential rules,
/// with the host's own `Authorization` (a secret reference's) among the headers.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// `GET`, `POST`, ...
    pub method: &'static str,
    /// The full URL, as the plugin gave it (it may carry secrets: redact before showing it).
    pub url: String,
    /// Headers in order.
    pub headers: Vec<(String, String)>,
    /// Basic-auth user and password, when set.
    pub basic_auth: Option<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

/// A test and authoring stub for plugins' outbound HTTP (`data-exporter plugin test`): it sees
/// every request that passed the host's checks, and answers it or lets it go to the network.
/// Only authoring tools install one ([`HttpCapability::with_authoring_stub`]); the serving host
/// never does. With a stub, the allow-list still judges the URL, but names are then resolved
/// (and their addresses judged) only for the requests the stub lets through.
pub trait AuthoringStub: Send + Sync + 'static {
    /// `Some(response)` answers `request` without the network; `None` sends it.
    fn request(&self, plugin: &str, request: &Outgoing) -> Option<Response>;
    /// What came back for a request this stub let through.
    fn answered(&self, plugin: &str, result: Result<&Response, &RequestError>);
}

/// One plugin's HTTP: one pooled client per TLS mode, resolving names only to
/// addresses its outbound policy allows.
pub struct PluginHttp {
    /// Index: `verify as usize * 2 + client_cert as usize`; `None` where mTLS
    /// is asked for but no client certificate is configured.
    clients: [Option<reqwest::Client>; 4],
    policy: Arc<Policy>,
    timeout: Duration,
    max_response_bytes: usize,
    client_cert_origins: Arc<[Origin]>,
    stub: Option<Arc<dyn AuthoringStub>>,
}

impl HttpCapability {
    /// Load the CA bundle and client certificate. Fails, naming the file, when
    /// they cannot be read or parsed.
    pub fn new(cfg: &HttpConfig) -> anyhow::Result<Self> {
        let ca = match &cfg.ca_file {
            Some(path) => {
                let pem = std::fs::read(path).with_context(|| format!("reading http.ca_file {}", path.display()))?;
                let certs = reqwest::Certificate::from_pem_bundle(&pem)
                    .with_context(|| format!("http.ca_file {} is not a PEM certificate bundle", path.display()))?;
                anyhow::ensure!(!certs.is_empty(), "http.ca_file {} holds no certificate", path.display());
                certs
            }
            None => Vec::new(),
        };
        let identity = match (&cfg.client_cert_file, &cfg.client_key_file) {
            (Some(cert), Some(key)) => {
                let mut pem =
                    std::fs::read(cert).with_context(|| format!("reading http.client_cert_file {}", cert.display()))?;
                pem.push(b'\n');
                pem.extend(
                    std::fs::read(key).with_context(|| format!("reading http.client_key_file {}", key.display()))?,
                );
                Some(reqwest::Identity::from_pem(&pem).with_context(|| {
                    format!(
                        "http.client_cert_file {} and http.client_key_file {} are not a PEM certificate and its key",
                        cert.display(),
                        key.display()
                    )
                })?)
            }
            (None, None) => None,
            _ => anyhow::bail!("set both http.client_cert_file and http.client_key_file for mutual TLS, or neither"),
        };
        let hosts = Arc::new(cfg.hosts.iter().map(|(name, ips)| (name.to_ascii_lowercase(), ips.clone())).collect());
        let client_cert_origins = cfg
            .client_cert_origins
            .iter()
            .map(|o| Origin::parse(o).map_err(|e| anyhow::anyhow!("http.client_cert_origins: {e}")))
            .collect::<anyhow::Result<Vec<_>>>()?
            .into();
        let cap = HttpCapability {
            ca,
            identity,
            hosts,
            cfg: cfg.clone(),
            own: Arc::default(),
            client_cert_origins,
            stub: None,
        };
        // Build one set now so a bad certificate or key stops start-up, not the first request.
        cap.for_plugin(Policy::parse("check", &[], cap.own_listeners()).expect("no rules parse"))?;
        Ok(cap)
    }

    /// For authoring tools only (`data-exporter plugin test`): every plugin's checked requests go
    /// to `stub` first, which answers them or lets them through.
    pub fn with_authoring_stub(mut self, stub: Arc<dyn AuthoringStub>) -> Self {
        self.stub = Some(stub);
        self
    }

    /// The host's own listeners: every plugin's policy refuses them (register each once bound).
    pub fn own_listeners(&self) -> Arc<OwnListeners> {
        self.own.clone()
    }

    /// The clients of one plugin, enforcing `policy`.
    pub fn for_plugin(&self, policy: Policy) -> anyhow::Result<PluginHttp> {
        let policy = Arc::new(policy);
        let cfg = &self.cfg;
        let build = |verify: bool, client_cert: bool| -> anyhow::Result<Option<reqwest::Client>> {
            if client_cert && self.identity.is_none() {
                return Ok(None);
            }
            let mut b = reqwest::Client::builder()
                .use_rustls_tls()
                .dns_resolver(Arc::new(PolicyResolver { policy: policy.clone(), hosts: self.hosts.clone() }))
                .connect_timeout(Duration::from_millis(cfg.connect_timeout_ms))
                .pool_max_idle_per_host(cfg.pool_max_idle_per_host)
                .redirect(reqwest::redirect::Policy::none())
                .no_proxy()
                .user_agent(concat!("data-exporter/", env!("CARGO_PKG_VERSION")))
                .danger_accept_invalid_certs(!verify);
            for c in &self.ca {
                b = b.add_root_certificate(c.clone());
            }
            if client_cert {
                b = b.identity(self.identity.clone().expect("checked above"));
            }
            Ok(Some(b.build().context("building the HTTP client")?))
        };
        Ok(PluginHttp {
            clients: [build(false, false)?, build(false, true)?, build(true, false)?, build(true, true)?],
            policy,
            timeout: Duration::from_millis(cfg.timeout_ms),
            max_response_bytes: cfg.max_response_bytes,
            client_cert_origins: self.client_cert_origins.clone(),
            stub: self.stub.clone(),
        })
    }
}

impl PluginHttp {
    /// Perform `req` for plugin `plugin`, with the destination's secret when it names one
    /// (attached only if the request's origin is one the operator bound the secret to).
    pub async fn send(&self, plugin: &str, req: Request, secret: Option<&Bound>) -> Result<Response, RequestError> {
        let url = reqwest::Url::parse(&req.url)
            .map_err(|e| RequestError::InvalidRequest(format!("bad URL {:?}: {e}", redact(&req.url))))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(RequestError::InvalidRequest(format!(
                "URL scheme `{}` is not supported: use http:// or https://",
                url.scheme()
            )));
        }
        let shown = redact(url.as_str());
        let host = url.host().ok_or_else(|| RequestError::InvalidRequest(format!("{shown} has no host")))?;
        let port = url.port_or_known_default().unwrap_or(0);
        self.policy.check_url(&host, port).map_err(|d| RequestError::Denied(d.0))?;
        if req.headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
            return Err(RequestError::Denied(
                "plugins may not set the Host header: the host sends the URL's host, which the allow-list checked"
                    .into(),
            ));
        }
        let tls = req.tls;
        let mut req = req;
        if let Some(secret) = secret {
            if req.basic_auth.is_some()
                || req.headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("authorization"))
                || !url.username().is_empty()
                || url.password().is_some()
            {
                return Err(RequestError::Denied(
                    "this destination uses a secret reference: the host sets Authorization, the plugin may not \
                     (nor put credentials in the URL)"
                        .into(),
                ));
            }
            if url.scheme() == "https" && !tls.verify_server {
                return Err(RequestError::Denied(format!(
                    "the destination's secret `{}` is sent only over verified TLS: this request to {shown} skips \
                     certificate verification (checkCert=false); trust the server's CA with http.ca_file instead",
                    secret.name
                )));
            }
            if !secret.may_go_to(&url) {
                return Err(RequestError::Denied(format!(
                    "the destination's secret `{}` is not bound to {shown}: the host sends a secret only to the \
                     origins the operator lists for it in secret_origins.{}",
                    secret.name, secret.name
                )));
            }
            match &secret.credential {
                Credential::Basic { user, password } => req.basic_auth = Some((user.clone(), password.clone())),
                Credential::Bearer(token) => req.headers.push(("authorization".into(), format!("Bearer {token}"))),
            }
        }
        let client = self.clients[tls.verify_server as usize * 2 + tls.client_certificate as usize]
            .as_ref()
            .ok_or_else(|| {
                RequestError::Tls(format!(
                    "{shown}: mutual TLS was requested but the operator configured no client certificate \
                     (set http.client_cert_file and http.client_key_file)"
                ))
            })?;
        if tls.client_certificate
            && url.scheme() == "https"
            && !self.client_cert_origins.iter().any(|o| o.matches(&url))
        {
            return Err(RequestError::Denied(format!(
                "{shown}: the host presents its client certificate only to the origins the operator lists in \
                 http.client_cert_origins, and this is not one"
            )));
        }
        // Checked here, so a recording stub refuses what a real send would.
        for (name, value) in &req.headers {
            reqwest::header::HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| RequestError::InvalidRequest(format!("invalid header name {name:?}")))?;
            reqwest::header::HeaderValue::from_str(value)
                .map_err(|_| RequestError::InvalidRequest(format!("invalid value for header `{name}`")))?;
        }
        let Some(stub) = &self.stub else { return self.transmit(plugin, client, url, req, port, &shown).await };
        let outgoing = Outgoing {
            method: method_name(req.method),
            url: url.to_string(),
            headers: req.headers.clone(),
            basic_auth: req.basic_auth.clone(),
            body: req.body.clone().unwrap_or_default(),
        };
        if let Some(answer) = stub.request(plugin, &outgoing) {
            return Ok(answer);
        }
        let result = self.transmit(plugin, client, url, req, port, &shown).await;
        stub.answered(plugin, result.as_ref());
        result
    }

    /// Send a checked request and read the answer, bounded.
    async fn transmit(
        &self,
        plugin: &str,
        client: &reqwest::Client,
        url: reqwest::Url,
        req: Request,
        port: u16,
        shown: &str,
    ) -> Result<Response, RequestError> {
        let tls = req.tls;
        let method = match req.method {
            Method::Get => reqwest::Method::GET,
            Method::Head => reqwest::Method::HEAD,
            Method::Post => reqwest::Method::POST,
            Method::Put => reqwest::Method::PUT,
            Method::Patch => reqwest::Method::PATCH,
            Method::Delete => reqwest::Method::DELETE,
        };
        let timeout =
            req.timeout_ms.map(|ms| Duration::from_millis(ms.into())).unwrap_or(self.timeout).min(self.timeout);
        let mut builder = client.request(method, url).timeout(timeout);
        for (name, value) in &req.headers {
            let name = reqwest::header::HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| RequestError::InvalidRequest(format!("invalid header name {name:?}")))?;
            let value = reqwest::header::HeaderValue::from_str(value)
                .map_err(|_| RequestError::InvalidRequest(format!("invalid value for header `{name}`")))?;
            builder = builder.header(name, value);
        }
        if let Some((user, password)) = &req.basic_auth {
            builder = builder.basic_auth(user, Some(password));
        }
        if let Some(body) = req.body {
            builder = builder.body(body);
        }
        let started = std::time::Instant::now();
        // The resolver judges each address with the port it will be reached on.
        let mut resp =
            TARGET_PORT.scope(port, builder.send()).await.map_err(|e| classify(shown, e, tls.verify_server))?;
        let status = resp.status().as_u16();
        let headers = resp
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect();
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| classify(shown, e, tls.verify_server))? {
            if body.len() + chunk.len() > self.max_response_bytes {
                return Err(RequestError::ResponseTooLarge(format!(
                    "{shown}: response body exceeds http.max_response_bytes ({} bytes)",
                    self.max_response_bytes
                )));
            }
            body.extend_from_slice(&chunk);
        }
        tracing::debug!(plugin, url = %shown, status, elapsed_ms = started.elapsed().as_millis() as u64, "http request");
        Ok(Response { status, headers, body })
    }
}

/// The `http` capability of one plugin instance: the plugin's clients, and the secret of the
/// call in progress when its destination names one.
pub struct HttpCtx {
    plugin: String,
    http: Arc<PluginHttp>,
    /// Lent for one call ([`HttpCtx::lend`]), taken back when it returns ([`HttpCtx::take_back`]).
    credential: Option<Arc<Bound>>,
}

impl HttpCtx {
    /// `plugin`'s HTTP through `http`, with no secret.
    pub fn new(plugin: &str, http: Arc<PluginHttp>) -> Self {
        HttpCtx { plugin: plugin.to_string(), http, credential: None }
    }

    /// Lend the secret of the call about to start (what its destination names, if anything).
    pub fn lend(&mut self, credential: Option<Arc<Bound>>) {
        self.credential = credential;
    }

    /// The call returned: no request after it carries its secret.
    pub fn take_back(&mut self) {
        self.credential = None;
    }

    /// The secret lent now, if any.
    #[cfg(test)]
    pub fn lent(&self) -> Option<&Bound> {
        self.credential.as_deref()
    }
}

impl crate::bindings::http::Host for HttpCtx {
    async fn send(&mut self, request: Request) -> Result<Response, RequestError> {
        self.http.send(&self.plugin, request, self.credential.as_deref()).await
    }
}

fn method_name(m: Method) -> &'static str {
    match m {
        Method::Get => "GET",
        Method::Head => "HEAD",
        Method::Post => "POST",
        Method::Put => "PUT",
        Method::Patch => "PATCH",
        Method::Delete => "DELETE",
    }
}

/// Map a reqwest error to the WIT error kind, with the full cause chain (and no URL secrets).
fn classify(shown: &str, err: reqwest::Error, verified: bool) -> RequestError {
    let mut msg = format!("{shown}: ");
    let inner = err.without_url();
    msg.push_str(&inner.to_string());
    let mut src = std::error::Error::source(&inner);
    let mut tls = false;
    let mut denied = None;
    while let Some(s) = src {
        if let Some(d) = s.downcast_ref::<Denied>() {
            denied = Some(d.0.clone());
        }
        let text = s.to_string();
        if !msg.contains(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        tls |= is_tls_error(s);
        src = s.source();
    }
    if let Some(d) = denied {
        RequestError::Denied(d)
    } else if inner.is_timeout() {
        RequestError::Timeout(msg)
    } else if tls {
        if verified && msg.contains("certificate") {
            msg.push_str(
                "; if the server's certificate comes from a private CA, add that CA to the host's http.ca_file, \
                 or set checkCert=false in the destination to skip verification",
            );
        }
        RequestError::Tls(msg)
    } else if inner.is_connect() {
        RequestError::Connect(msg)
    } else if inner.is_builder() {
        RequestError::InvalidRequest(msg)
    } else {
        RequestError::Protocol(msg)
    }
}

/// Whether an error in the cause chain is a TLS failure. rustls errors reach
/// us wrapped in `io::Error`s, sometimes twice, which `source()` does not unwrap.
fn is_tls_error(e: &(dyn std::error::Error + 'static)) -> bool {
    if e.downcast_ref::<rustls::Error>().is_some() {
        return true;
    }
    match e.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()) {
        Some(inner) => is_tls_error(inner),
        None => false,
    }
}

/// Outbound HTTP on behalf of plugins: timeouts, limits, TLS material.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Time allowed to establish a connection (TCP and TLS), in milliseconds.
    pub connect_timeout_ms: u64,
    /// Default and maximum total time of one request, in milliseconds. A plugin
    /// may ask for less, never more.
    pub timeout_ms: u64,
    /// Largest response body handed to a plugin, in bytes.
    pub max_response_bytes: usize,
    /// Idle keep-alive connections kept per destination host.
    pub pool_max_idle_per_host: usize,
    /// Extra CA certificates (PEM bundle) trusted when a destination asks for
    /// verification (`checkCert`), in addition to the system's roots.
    pub ca_file: Option<std::path::PathBuf>,
    /// Client certificate chain (PEM) presented when a destination asks for
    /// mutual TLS (`mutualTLS`). Plugins never see it.
    pub client_cert_file: Option<std::path::PathBuf>,
    /// Private key (PEM) of `client_cert_file`. Keep it readable only by the service user.
    pub client_key_file: Option<std::path::PathBuf>,
    /// Origins (`https://host:port`) the client certificate may be presented to, when a
    /// destination asks for mutual TLS. A destination is producer input: without this list
    /// the certificate is presented nowhere, and the refusal names this setting.
    pub client_cert_origins: Vec<String>,
    /// Fixed addresses for host names, consulted before DNS (like /etc/hosts, for plugins'
    /// requests only), e.g. `hosts = { "opensearch.internal" = ["10.0.4.2"] }`. The outbound
    /// allow-list applies to these addresses exactly as to resolved ones.
    pub hosts: std::collections::BTreeMap<String, Vec<std::net::IpAddr>>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            connect_timeout_ms: 5_000,
            timeout_ms: 30_000,
            max_response_bytes: 16 * 1024 * 1024,
            pool_max_idle_per_host: 32,
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
            client_cert_origins: Vec::new(),
            hosts: Default::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn shown_urls_carry_no_credentials_or_query() {
        assert_eq!(redact("https://u:secret@os:9200/_bulk?token=abc"), "https://os:9200");
        assert_eq!(redact("https://hooks.example/services/T0/B0/SECRET"), "https://hooks.example");
        assert_eq!(redact("http://[::1]:8080/x"), "http://[::1]:8080");
        assert_eq!(redact("not a url"), "<unparseable URL>");
    }

    mod send {
        use super::super::*;
        use crate::bindings::http::{Host, Tls};
        use crate::capabilities::secrets::SecretStore;
        use axum::http::HeaderMap;

        /// A server on loopback answering every request with its `authorization` header (or
        /// `none`), and `big` bytes at `/big`.
        async fn echo() -> std::net::SocketAddr {
            let app = axum::Router::new()
                .route("/big", axum::routing::get(|| async { vec![b'x'; 64 * 1024] }))
                .fallback(|headers: HeaderMap| async move {
                    headers.get("authorization").map(|v| v.to_str().unwrap().to_string()).unwrap_or("none".into())
                });
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(async move { axum::serve(listener, app).await });
            addr
        }

        fn http(rules: &[&str], cfg: &HttpConfig) -> Arc<PluginHttp> {
            let cap = HttpCapability::new(cfg).unwrap();
            let rules: Vec<String> = rules.iter().map(|r| r.to_string()).collect();
            Arc::new(cap.for_plugin(Policy::parse("p", &rules, cap.own_listeners()).unwrap()).unwrap())
        }

        fn get(url: String) -> Request {
            Request {
                method: Method::Get,
                url,
                headers: vec![],
                body: None,
                basic_auth: None,
                tls: Tls { verify_server: true, client_certificate: false },
                timeout_ms: None,
            }
        }

        /// Secret `s` (basic auth `exporter:pw`), bound to `origin`.
        fn secret(dir: &std::path::Path, origin: String) -> Bound {
            std::fs::create_dir_all(dir.join("s")).unwrap();
            std::fs::write(dir.join("s/username"), "exporter").unwrap();
            std::fs::write(dir.join("s/password"), "pw").unwrap();
            let origins = [("s".to_string(), vec![origin])].into();
            SecretStore::new(Some(dir), &origins).unwrap().load("s").unwrap()
        }

        #[tokio::test]
        async fn loopback_is_reached_only_when_an_ip_rule_names_it() {
            let addr = echo().await;
            let allowed = PluginHttp::send(
                &http(&["127.0.0.0/8"], &HttpConfig::default()),
                "p",
                get(format!("http://{addr}/x")),
                None,
            )
            .await
            .unwrap();
            assert_eq!((allowed.status, allowed.body.as_slice()), (200, &b"none"[..]));
            match http(&["*"], &HttpConfig::default()).send("p", get(format!("http://{addr}/x")), None).await {
                Err(RequestError::Denied(why)) => assert!(why.contains("127.0.0.1"), "{why}"),
                other => panic!("{other:?}"),
            }
        }

        #[tokio::test]
        async fn a_secret_is_attached_only_to_the_origins_bound_to_it_and_only_during_its_call() {
            let addr = echo().await;
            let dir = tempfile::tempdir().unwrap();
            let mut ctx = HttpCtx::new("p", http(&["127.0.0.0/8"], &HttpConfig::default()));
            ctx.lend(Some(Arc::new(secret(dir.path(), format!("http://{addr}")))));
            let sent = ctx.send(get(format!("http://{addr}/x"))).await.unwrap();
            assert_eq!(sent.body, b"Basic ZXhwb3J0ZXI6cHc=", "exporter:pw, set by the host");
            // Another origin (the same server under another name) is refused, naming the setting.
            match ctx.send(get(format!("http://localhost:{}/x", addr.port()))).await {
                Err(RequestError::Denied(why)) => assert!(why.contains("secret_origins.s"), "{why}"),
                other => panic!("{other:?}"),
            }
            // The plugin may not set its own Authorization next to the host's.
            let mut own = get(format!("http://{addr}/x"));
            own.headers.push(("Authorization".into(), "Bearer mine".into()));
            assert!(matches!(ctx.send(own).await, Err(RequestError::Denied(_))));
            ctx.take_back();
            assert_eq!(ctx.send(get(format!("http://{addr}/x"))).await.unwrap().body, b"none");
        }

        #[tokio::test]
        async fn a_response_past_max_response_bytes_is_refused() {
            let addr = echo().await;
            let cfg = HttpConfig { max_response_bytes: 1024, ..HttpConfig::default() };
            match http(&["127.0.0.0/8"], &cfg).send("p", get(format!("http://{addr}/big")), None).await {
                Err(RequestError::ResponseTooLarge(why)) => assert!(why.contains("http.max_response_bytes"), "{why}"),
                other => panic!("{other:?}"),
            }
        }
    }
}
