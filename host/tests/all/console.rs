//! The operator's web console (`/ui/` on the admin listener) in a real browser (headless Debian
//! chromium through chromedriver: `browser.rs`), against a real host and, where named, the real
//! OpenSearch-API server: logging in, reports arriving in Live and Overview, a dead letter
//! replayed into OpenSearch, a destination tested through the form, a quarantine released,
//! markup from reports and plugins shown as text, nothing shown without the token, every view
//! accessible (axe-core) at 1280x800 and 390x844 and photographed for the README.

use crate::browser::Browser;
use crate::fault_injector::{Fault, FaultInjector};
use crate::helpers::*;
use serde_json::{Value, json};
use std::time::Duration;

/// Every view of the console, by its route.
const VIEWS: &[&str] = &["overview", "consumers", "reports", "dead-letters", "live", "test", "tenants"];

/// A browser of `width` x `height` on `app`'s console, logged in through `#token=`, showing `view`.
async fn console(app: &TestApp, width: u32, height: u32, view: &str) -> Browser {
    let b = Browser::start(width, height).await;
    b.goto(&format!("{}/ui/#token={}", app.admin_url, app.admin_token)).await;
    b.wait_text("#view-title", "Overview").await;
    show(&b, app, view).await;
    b
}

/// Show `view` (its title once shown).
async fn show(b: &Browser, app: &TestApp, view: &str) {
    b.goto(&format!("{}/ui/#/{view}", app.admin_url)).await;
    b.wait_for(&format!("section.view[data-view=\"{view}\"]")).await;
}

/// The addresses the page fetched (its resource timing entries) that are not the console's files.
async fn data_fetched(b: &Browser) -> Vec<String> {
    let all = b.run("return performance.getEntriesByType('resource').map(e => e.name)", json!([])).await;
    all.as_array().unwrap().iter().map(|u| u.as_str().unwrap().to_string()).filter(|u| !u.contains("/ui/")).collect()
}

/// A report sent to OpenSearch through `app`, delivered; its id.
async fn delivered_report(app: &TestApp, index: &str, payload: &Value) -> String {
    let dest = json!({"host_port": servers().os_url, "index": index});
    let (status, r) = app.forward_wait(report_data("openSearch", dest, payload)).await;
    assert_eq!(status, 200, "{r}");
    r["id"].as_str().unwrap().to_string()
}

/// A dead letter at the hostile plugin (its `echo` fails for good at once, naming the
/// destination's keys); its report id.
async fn dead_letter(app: &TestApp, destination: Value, payload: &Value) -> String {
    let (status, r) = app.forward_wait(report_data("hostile", destination, payload)).await;
    assert_eq!(status, 502, "{r}");
    r["id"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn the_console_is_served_on_the_admin_listener_only_with_its_security_headers() {
    let app = spawn_app().await;
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let get = async |url: String| client.get(url).send().await.unwrap();
    let headers_ok = |r: &reqwest::Response| {
        let h = r.headers();
        let csp = h["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("default-src 'none'") && csp.contains("script-src 'self'"), "{csp}");
        assert!(!csp.contains("unsafe"), "{csp}");
        assert!(csp.contains("frame-ancestors 'none'") && csp.contains("connect-src 'self'"), "{csp}");
        assert_eq!(h["x-frame-options"], "DENY");
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert_eq!(h["referrer-policy"], "no-referrer");
        assert_eq!(h["cache-control"], "no-cache");
        assert!(h.get("set-cookie").is_none());
    };

    // Every file of host/ui (but npm's) is served, as it is in the repository, without a token.
    let dir = repo_root().join("host/ui");
    let mut files = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if ["node_modules", "package.json", "package-lock.json", ".gitignore"].contains(&name.as_str()) {
            continue;
        }
        let resp = get(format!("{}/ui/{name}", app.admin_url)).await;
        assert_eq!(resp.status(), 200, "host/ui/{name} is not served: add it to ASSETS in host/src/server/ui.rs");
        headers_ok(&resp);
        let ty = resp.headers()["content-type"].to_str().unwrap().to_string();
        let want = match name.rsplit_once('.').unwrap().1 {
            "js" => "text/javascript",
            "css" => "text/css",
            "html" => "text/html",
            other => panic!("host/ui/{name}: a file of type {other} the console does not serve"),
        };
        assert!(ty.starts_with(want), "{name}: {ty}");
        let served = resp.bytes().await.unwrap();
        assert!(served == std::fs::read(dir.join(&name)).unwrap(), "host/ui/{name} served differs from the file");
        files += 1;
    }
    assert!(files >= 10, "{files} files");

    // /ui goes to /ui/, the page; an unknown file is 404, with the headers too.
    let resp = get(format!("{}/ui", app.admin_url)).await;
    assert!(resp.status().is_redirection(), "{}", resp.status());
    assert_eq!(resp.headers()["location"], "/ui/");
    headers_ok(&resp);
    let resp = get(format!("{}/ui/", app.admin_url)).await;
    assert_eq!(resp.status(), 200);
    headers_ok(&resp);
    assert!(resp.text().await.unwrap().contains("<script type=\"module\" src=\"app.js\">"));
    let resp = get(format!("{}/ui/no-such.js", app.admin_url)).await;
    assert_eq!(resp.status(), 404);
    headers_ok(&resp);

    // The listener's Host check applies (DNS rebinding); data still needs the token.
    let resp = client.get(format!("{}/ui/", app.admin_url)).header("host", "evil.example").send().await.unwrap();
    assert_eq!(resp.status(), 421);
    headers_ok(&resp);
    assert_eq!(get(format!("{}/plugins", app.admin_url)).await.status(), 401);

    // The public listener has no console.
    for path in ["/ui", "/ui/", "/ui/app.js", "/ui/index.html"] {
        let resp = get(format!("{}{path}", app.url)).await;
        assert_eq!(resp.status(), 404, "public {path}");
    }
}

#[tokio::test]
async fn without_the_token_the_page_shows_the_login_form_and_fetches_no_data() {
    let app = spawn_app_with(&["hostile"], |_| {}).await;
    let id = dead_letter(&app, json!({"attack": "echo"}), &json!({"secret-ish": "dl-payload-7731"})).await;
    let b = Browser::start(1280, 800).await;
    b.goto(&format!("{}/ui/#/dead-letters", app.admin_url)).await;
    b.wait_for("form.login input[type=password]").await;
    let page = b.text("body").await;
    assert!(!page.contains(&id) && !page.contains("dl-payload-7731"), "{page}");
    assert_eq!(data_fetched(&b).await, Vec::<String>::new(), "the page called the API without a token");
    assert_eq!(b.run("return document.getElementById('nav').hidden", json!([])).await, true, "the views' menu shows");
    assert_eq!(b.run("return document.cookie", json!([])).await, "");
}

#[tokio::test]
async fn an_operator_logs_in_with_the_form_or_the_fragment_and_out_again() {
    let app = spawn_app().await;
    let b = Browser::start(1280, 800).await;
    b.goto(&format!("{}/ui/", app.admin_url)).await;

    // A wrong token: the server's message, and still no data.
    b.type_into("form.login input[type=password]", "not-the-token-0123456789").await;
    b.click("form.login button[type=submit]").await;
    let message = b.wait_text("form.login .notice.error", "token").await;
    assert!(message.contains("the admin token sent is not this host's"), "{message}");
    assert!(!message.contains("not-the-token"), "the message repeats what was typed: {message}");

    // The right one: the overview, the token kept in this tab's session only.
    b.type_into("form.login input[type=password]", &app.admin_token).await;
    b.click("form.login button[type=submit]").await;
    b.wait_text("#view-title", "Overview").await;
    let kept = b.run("return sessionStorage.getItem('data-exporter-admin-token')", json!([])).await;
    assert_eq!(kept, app.admin_token.as_str());
    assert_eq!(b.run("return localStorage.length + document.cookie.length", json!([])).await, 0);

    // Logging out forgets it and shows the form.
    b.click("#logout").await;
    b.wait_for("form.login").await;
    assert_eq!(b.run("return sessionStorage.length", json!([])).await, 0);

    // The fragment: read, kept, then gone from the address.
    b.goto(&format!("{}/ui/#token={}", app.admin_url, app.admin_token)).await;
    b.wait_text("#view-title", "Overview").await;
    let url = b.url().await;
    assert!(!url.contains("token") && !url.contains(&app.admin_token), "{url}");
    assert!(url.ends_with("/ui/#/overview"), "{url}");

    // A token that stops working (another host's, here) sends back to the form with the reason.
    b.run("sessionStorage.setItem('data-exporter-admin-token', 'revoked-0123456789abcdef')", json!([])).await;
    show_without_waiting(&b, &app, "consumers").await;
    let message = b.wait_text("form.login .notice.error", "token").await;
    assert!(message.contains("not this host's"), "{message}");
}

async fn show_without_waiting(b: &Browser, app: &TestApp, view: &str) {
    b.goto(&format!("{}/ui/#/{view}", app.admin_url)).await;
}

#[tokio::test]
async fn a_report_arrives_in_live_and_in_overview() {
    let app = spawn_app_with(&["opensearch", "hostile"], |_| {}).await;
    let b = console(&app, 1280, 800, "live").await;
    b.wait_for("section.view[data-watching]").await;
    let index = index();
    let id = delivered_report(&app, &index, &json!({"scan": "live-1"})).await;
    let row = b.wait_text(&format!("tr[data-report=\"{id}\"]"), "delivered").await;
    assert!(row.contains("openSearch"), "{row}");
    assert!(b.text(".live-state").await.contains("1 events seen"));

    // Pause holds what arrives and counts it; resume shows it.
    b.click("button[aria-pressed]").await;
    b.wait_text(".live-state", "Paused").await;
    let second = delivered_report(&app, &index, &json!({"scan": "live-2"})).await;
    b.wait_text(".live-state", "1 events arrived meanwhile").await;
    assert_eq!(b.text(&format!("tr[data-report=\"{second}\"]")).await, "", "shown while paused");
    b.click("button[aria-pressed]").await;
    b.wait_text(&format!("tr[data-report=\"{second}\"]"), "delivered").await;

    // Filtered by consumer: a report to another consumer does not show.
    b.type_into("input[name=consumer]", "hostile").await;
    b.click("form.filters button[type=submit]").await;
    b.wait_for("section.view[data-watching]").await;
    let other = delivered_report(&app, &index, &json!({"scan": "live-3"})).await;
    let hostile = dead_letter(&app, json!({"attack": "echo"}), &json!({"scan": "live-4"})).await;
    b.wait_text(&format!("tr[data-report=\"{hostile}\"]"), "permanent").await;
    assert_eq!(
        b.text(&format!("tr[data-report=\"{other}\"]")).await,
        "",
        "the filter let another consumer's event through"
    );

    // Filtered by label: only the report labelled team=blue shows.
    b.type_into("input[name=consumer]", "").await;
    b.type_into("input[name=label]", "team=blue").await;
    b.click("form.filters button[type=submit]").await;
    b.wait_for("section.view[data-watching]").await;
    let labelled = |team: &str, n: u32| {
        json!({"config": {"openSearch": {"host_port": servers().os_url, "index": index}},
               "payload": json!({"scan": n}).to_string(), "labels": {"team": team}})
        .to_string()
    };
    let (status, red) = app.forward_wait(labelled("red", 5)).await;
    assert_eq!(status, 200, "{red}");
    let (status, blue) = app.forward_wait(labelled("blue", 6)).await;
    assert_eq!(status, 200, "{blue}");
    b.wait_text(&format!("tr[data-report=\"{}\"]", blue["id"].as_str().unwrap()), "delivered").await;
    assert_eq!(
        b.text(&format!("tr[data-report=\"{}\"]", red["id"].as_str().unwrap())).await,
        "",
        "the label filter let another label's event through"
    );

    // The overview counts them.
    show(&b, &app, "overview").await;
    b.wait_text("[data-metric=accepted]", "total 6").await;
    b.wait_text("[data-metric=delivered]", "total 5").await;
    b.wait_text("[data-metric=dead_lettered]", "total 1").await;
    assert!(b.text("main").await.contains("Ready"));
}

#[tokio::test]
async fn a_dead_letter_is_replayed_from_the_console_and_delivered_at_opensearch() {
    let s = servers();
    let inj = FaultInjector::start(&s.os_url).await;
    inj.then([Fault::BulkItems(vec![400])]);
    let app = spawn_app().await;
    let index = index();
    let dest = json!({"host_port": inj.url, "index": index, "username": "u", "password": "pw-console-secret"});
    let (status, r) = app.forward_wait(report_data("openSearch", dest, &json!({"n": "replayed"}))).await;
    assert_eq!(status, 502, "{r}");
    let id = r["id"].as_str().unwrap().to_string();

    let b = console(&app, 1280, 800, "dead-letters").await;
    let row = format!("tr[data-id=\"{id}\"]");
    b.wait_text(&row, "openSearch").await;
    // Shown: the payload, the destination with its password hidden.
    b.click(&format!("{row} button.link")).await;
    let detail = b.wait_text(".dlq-detail", "replayed").await;
    assert!(detail.contains("\"password\": \"***\"") && !detail.contains("pw-console-secret"), "{detail}");

    b.click(&format!("{row} input[type=checkbox]")).await;
    b.click("button[data-action=replay-selected]").await;
    b.wait_text(".view > .result", "Replayed 1").await;
    eventually(Duration::from_secs(30), "the replayed report at OpenSearch", async || get_doc(&index, &id).await).await;
    assert_eq!(get_doc(&index, &id).await, Some(json!({"n": "replayed"})));
    b.wait_text("[data-count]", "0 dead letters").await;
}

#[tokio::test]
async fn dead_letters_are_filtered_and_purging_needs_the_word_typed() {
    let app = spawn_app_with(&["hostile"], |_| {}).await;
    // The plugin's reason names the destination's keys: one dead letter says alpha, one beta.
    let alpha = dead_letter(&app, json!({"attack": "echo", "alpha": 1}), &json!({})).await;
    let beta = dead_letter(&app, json!({"attack": "echo", "beta": 1}), &json!({})).await;
    let b = console(&app, 1280, 800, "dead-letters").await;
    b.wait_for(&format!("tr[data-id=\"{beta}\"]")).await;

    // Filtered by reason: only alpha listed.
    b.type_into("input[name=reason]", "alpha").await;
    b.click("form.filters button[type=submit]").await;
    b.wait_text("[data-count]", "1 shown").await;
    assert!(b.text(".dlq-list").await.contains(&alpha));
    assert_eq!(b.text(&format!("tr[data-id=\"{beta}\"]")).await, "", "the filter listed beta");

    // Purging all matching: refused until the word is typed, then only alpha is gone. What
    // matches is the filter the list shows, not what was typed since: the box is emptied first.
    b.type_into("input[name=reason]", "").await;
    b.select("select[name=scope]", "matching").await;
    b.type_into("input[name=confirm]", "yes").await;
    b.click("form.purge button[type=submit]").await;
    b.wait_text(".view > .result", "Type the word purge").await;
    assert_eq!(app.admin_get("/dlq").await.1["count"], 2);
    b.type_into("input[name=confirm]", "purge").await;
    b.click("form.purge button[type=submit]").await;
    b.wait_text(".view > .result", "Purged 1").await;
    let (_, left) = app.admin_get("/dlq").await;
    assert_eq!(left["count"], 1, "{left}");
    assert_eq!(left["entries"][0]["id"], beta.as_str());
}

#[tokio::test]
async fn a_destination_is_tested_through_the_form() {
    let app = spawn_app_with(&["opensearch", "hostile"], |_| {}).await;
    let b = console(&app, 1280, 800, "test").await;
    b.select("select[name=consumer]", "openSearch").await;
    b.wait_for("input[name=param-host_port]").await;
    // The secret parameter is a password field; the form follows the plugin's table.
    let ty = b.run("return document.querySelector('input[name=param-password]').type", json!([])).await;
    assert_eq!(ty, "password");
    let index = index();
    b.type_into("input[name=param-host_port]", &servers().os_url).await;
    b.type_into("input[name=param-index]", &index).await;
    b.click("form.test-form button[type=submit]").await;
    let shown = b.wait_text(".outcome", "Delivered").await;
    eventually(Duration::from_secs(30), "the test report at OpenSearch", async || count(&index).await == 1).await;
    let ids = all_ids(&index).await;
    assert!(ids.iter().any(|id| shown.contains(id.as_str())), "the report id shown: {shown}; at OpenSearch: {ids:?}");

    // A refused destination: the outcome says so, as text.
    b.type_into("input[name=param-host_port]", "not a url").await;
    b.click("form.test-form button[type=submit]").await;
    let shown = b.wait_text(".outcome", "Not delivered").await;
    assert!(shown.contains("Not delivered: invalid") && shown.contains("must start with http://"), "{shown}");
}

#[tokio::test]
async fn a_quarantined_plugin_is_released_from_the_console() {
    let app = spawn_app_with(&["hostile"], |c| {
        c.runtime.limits.quarantine_after = 1;
        c.runtime.limits.quarantined_reports = data_exporter::runtime::QuarantinePolicy::DeadLetter;
    })
    .await;
    let (status, r) = app.forward(report_data("hostile", json!({"attack": "panic"}), &json!({}))).await;
    assert_eq!(status, 202, "{r}");
    let quarantined = async || {
        let (_, v) = app.get("/plugins/hostile").await;
        v["quarantined"].as_bool().unwrap()
    };
    eventually(Duration::from_secs(60), "hostile quarantined", async || quarantined().await).await;

    let b = console(&app, 1280, 800, "consumers").await;
    let card = "article[data-plugin=hostile]";
    b.wait_text(card, "Quarantined").await;
    b.click("button[data-action=release]").await;
    b.wait_text(".actions .result", "Released from quarantine: hostile").await;
    assert!(!quarantined().await);
    b.wait_text(card, "Serving").await;
}

#[tokio::test]
async fn markup_from_reports_plugins_and_tenants_shows_as_text_and_never_runs() {
    let img = "<img src=x onerror=window.__dx_pwned=1>";
    let script = "<script>window.__dx_pwned=2</script>";
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("t.token");
    std::fs::write(&token, "tok-markup-0123456789abcdef\n").unwrap();
    let tenant: data_exporter::ingest::config::TenantConfig = serde_json::from_value(json!({
        "access_key": "markup", "token_files": [token], "labels": {"note": img, "more": script},
        "routes": [{"consumer": "hostile", "destination": {"attack": "echo"}}],
    }))
    .unwrap();
    let app = spawn_app_with(&["hostile"], |c| {
        c.ingest = data_exporter::ingest::config::IngestConfig { tenants: vec![tenant], ..Default::default() };
    })
    .await;
    let b = console(&app, 1280, 800, "live").await;
    b.wait_for("section.view[data-watching]").await;
    // In the payload, and as a destination key, which the plugin's reason repeats.
    let id = dead_letter(&app, json!({"attack": "echo", img: 1}), &json!({"note": img, "more": script})).await;
    let row = b.wait_text(&format!("tr[data-report=\"{id}\"]"), "permanent").await;
    assert!(row.contains(img), "the plugin's reason as text: {row}");

    show(&b, &app, "dead-letters").await;
    b.click(&format!("tr[data-id=\"{id}\"] button.link")).await;
    let detail = b.wait_text(".dlq-detail", "Payload").await;
    assert!(detail.contains(img) && detail.contains(script), "{detail}");
    let ran = b
        .run("return [typeof window.__dx_pwned, document.querySelectorAll('main img, main script').length]", json!([]))
        .await;
    assert_eq!(ran, json!(["undefined", 0]), "markup from a report became part of the page");

    show(&b, &app, "tenants").await;
    let row = b.wait_text("tr[data-tenant=markup]", "note").await;
    assert!(row.contains(img) && row.contains(script), "the tenant's labels as text: {row}");
    let ran = b
        .run("return [typeof window.__dx_pwned, document.querySelectorAll('main img, main script').length]", json!([]))
        .await;
    assert_eq!(ran, json!(["undefined", 0]), "markup from a tenant's labels became part of the page");
}

/// What shows that `view` finished loading.
fn loaded(view: &str) -> &'static str {
    match view {
        "overview" => "[data-metric=accepted]",
        "consumers" => ".destinations table",
        "reports" => ".result table",
        "dead-letters" => ".dlq-detail article",
        "live" => "tr[data-report]",
        "test" => ".outcome",
        "tenants" => "tr[data-tenant]",
        _ => unreachable!(),
    }
}

#[tokio::test]
async fn every_view_passes_axe_at_desktop_and_phone_size_and_is_photographed() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("edge.token");
    std::fs::write(&token, "tok-edge-0123456789abcdef\n").unwrap();
    let tenant: data_exporter::ingest::config::TenantConfig = serde_json::from_value(json!({
        "access_key": "edge-eu-1",
        "token_files": [token],
        "labels": {"env": "prod", "site": "eu-1"},
        "routes": [{"consumer": "openSearch", "destination": {"host_port": servers().os_url, "index": "edge", "password": "pw-tenant"}}],
    }))
    .unwrap();
    let app = spawn_app_with(&["opensearch", "hostile"], |c| {
        c.ingest = data_exporter::ingest::config::IngestConfig { tenants: vec![tenant], ..Default::default() };
    })
    .await;
    let index = index();
    let delivered = delivered_report(&app, &index, &json!({"scan": "kube-bench", "passed": 112})).await;
    let dead = dead_letter(&app, json!({"attack": "echo", "region": "eu"}), &json!({"scan": "trivy"})).await;
    // Every run takes them; the README's copies (docs/console) change only when asked
    // (`make screenshots`: DX_UPDATE_SCREENSHOTS=1), so a test run leaves the tree clean.
    let shots = match std::env::var_os("DX_UPDATE_SCREENSHOTS") {
        Some(v) if v == "1" => repo_root().join("docs/console"),
        _ => repo_root().join("target/console-screenshots"),
    };
    std::fs::create_dir_all(&shots).unwrap();

    for (width, height) in [(1280, 800), (390, 844)] {
        let b = console(&app, width, height, "overview").await;
        for view in VIEWS {
            show(&b, &app, view).await;
            // Something in each view, as an operator would see it.
            match *view {
                "reports" => {
                    b.type_into("input[name=id]", &delivered).await;
                    b.click("form[role=search] button[type=submit]").await;
                    b.wait_text(".result table", "delivered").await;
                }
                "dead-letters" => b.click(&format!("tr[data-id=\"{dead}\"] button.link")).await,
                "live" => {
                    b.wait_for("section.view[data-watching]").await;
                    delivered_report(&app, &index, &json!({"scan": "live"})).await;
                }
                "test" => {
                    b.select("select[name=consumer]", "openSearch").await;
                    b.type_into("input[name=param-host_port]", &servers().os_url).await;
                    b.type_into("input[name=param-index]", &index).await;
                    b.click("form.test-form button[type=submit]").await;
                }
                _ => {}
            }
            b.wait_for(loaded(view)).await;
            let found = b.axe_serious().await;
            assert!(found.is_empty(), "axe-core at {width}x{height} on {view}: {found:#?}");
            // Nothing wider than the screen (a phone would zoom out, or the page scroll sideways).
            let wide = b.run("return Math.max(document.documentElement.scrollWidth, innerWidth)", json!([])).await;
            assert_eq!(wide, width, "{view} at {width}x{height} is wider than the screen");
            if width == 1280 {
                b.screenshot(&shots.join(format!("{view}.png"))).await;
            }
        }
        // The phone's menu opens and closes the navigation.
        if width == 390 {
            assert!(
                !b.run("return document.querySelector('#nav a').offsetParent !== null", json!([]))
                    .await
                    .as_bool()
                    .unwrap()
            );
            b.click("#menu-toggle").await;
            b.wait_for("#nav a[href='#/tenants']").await;
            b.click("#nav a[href='#/tenants']").await;
            b.wait_for("section.view[data-view=tenants]").await;
        }
        // And the login form.
        b.click("#logout").await;
        b.wait_for("form.login").await;
        let found = b.axe_serious().await;
        assert!(found.is_empty(), "axe-core at {width}x{height} on the login form: {found:#?}");
        if width == 1280 {
            b.screenshot(&shots.join("login.png")).await;
        }
    }
}
