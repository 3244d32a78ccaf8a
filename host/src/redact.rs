//! What producers may see of a reason: URLs cut to their origin; what operators may see of a
//! destination: secrets hidden.
//!
//! Reasons come from plugins and from the host's HTTP stack, and often quote the URL a request
//! went to. A webhook URL carries its credential in the path (`/services/T000/B000/XXXX`), a
//! URL may carry userinfo or a token in its query. On the public port every URL in a reason is
//! therefore shown as `scheme://host[:port]`: the port only when it is not the scheme's default
//! (as a producer would write it); path, query, fragment and userinfo are dropped. The admin API
//! keeps reasons whole.
//!
//! A receiver may also quote its own path without the URL around it (Express answers a 404 with
//! `Cannot POST /hooks/<token>`, and plugins pass the start of an answer on as the reason). So
//! where the host knows the destination a reason is about, [`public_reason_for`] first replaces
//! every path, path segment, query, query value, fragment and userinfo of the URLs in that
//! destination, as written and percent-decoded, and every other string value of 8 characters or
//! more, whole, with `<redacted>`; a reason that ends in the first characters (4 or more) of one
//! of these (cut to a length mid-token) has that end redacted too.
//!
//! Destinations shown to an operator (dead letters on the admin API, the tap) lose their secrets
//! instead: [`hide_secrets`] replaces the values of a plugin's `secret` parameters and of fields
//! named like secrets, [`redact_destination`] also cuts every URL to its origin.

use serde_json::Value;

/// `text` with every `scheme://…` in it reduced to `scheme://host[:port]`; a URL whose
/// authority cannot be parsed becomes `scheme://<redacted>`. A URL runs to whitespace or one of
/// `"'<>` and backtick; trailing `.,;:!?)]}` are left as text (they end sentences and
/// parentheses; they cannot hide anything).
pub fn public_reason(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    // Copied up to here.
    let mut done = 0;
    let mut search = 0;
    while let Some(found) = text[search..].find("://") {
        let sep = search + found;
        // The scheme: letters, digits, `+ - .` before `://`, starting with a letter.
        let mut start = sep;
        while start > done && matches!(bytes[start - 1], b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'+' | b'-' | b'.') {
            start -= 1;
        }
        while start < sep && !bytes[start].is_ascii_alphabetic() {
            start += 1;
        }
        let rest = &text[sep + 3..];
        let len =
            rest.find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '<' | '>' | '`')).unwrap_or(rest.len());
        let body = rest[..len].trim_end_matches(['.', ',', ';', ':', '!', '?', ')', ']', '}']);
        let end = sep + 3 + body.len();
        search = end.max(sep + 3);
        if body.is_empty() {
            // `http://` alone (e.g. "must start with http:// or https://"): nothing to hide.
            continue;
        }
        let scheme = &text[start..sep];
        out.push_str(&text[done..start]);
        out.push_str(scheme);
        out.push_str("://");
        out.push_str(&origin(scheme, body).unwrap_or_else(|| "<redacted>".into()));
        done = end;
    }
    out.push_str(&text[done..]);
    out
}

/// What [`public_reason_for`] writes in place of a part of a destination's URL.
pub const REDACTED: &str = "<redacted>";

/// Shortest path segment, query value or userinfo part redacted on its own: tokens are long,
/// and shorter ones (`v1`, `hooks`, `services`) are words a reason uses otherwise; they are
/// redacted as part of the whole path.
const MIN_FRAGMENT: usize = 8;

/// `text` as the public port shows it when it is about `destination` (its config, JSON text):
/// every part of the destination's URLs past their origin replaced by `<redacted>`, then
/// [`public_reason`].
pub fn public_reason_for(text: &str, destination: Option<&str>) -> String {
    let text = public_reason(text);
    let fragments = destination.map(url_fragments).unwrap_or_default();
    if fragments.is_empty() {
        return text;
    }
    // Outside the origins `public_reason` left (a segment may also be part of a host name).
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(sep) = rest.find("://") {
        let b = rest.as_bytes();
        let mut start = sep;
        while start > 0 && matches!(b[start - 1], b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'+' | b'-' | b'.') {
            start -= 1;
        }
        let authority = rest[sep + 3..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']' | '_' | '%')))
            .unwrap_or(rest.len() - sep - 3);
        let end = sep + 3 + authority;
        out.push_str(&redact_fragments(&rest[..start], &fragments));
        out.push_str(&rest[start..end]);
        rest = &rest[end..];
    }
    out.push_str(&redact_fragments(rest, &fragments));
    redact_cut_tail(out, &fragments)
}

/// Shortest start of a fragment redacted at the end of a text (a reason cut mid-token).
const MIN_CUT_PREFIX: usize = 4;

/// `text` with its end replaced by [`REDACTED`] when it is the start of a fragment: a reason
/// cut to a length may end in the first part of a token.
fn redact_cut_tail(mut text: String, fragments: &[String]) -> String {
    for f in fragments {
        let cut = (MIN_CUT_PREFIX..f.len()).rev().filter(|&k| f.is_char_boundary(k)).find(|&k| text.ends_with(&f[..k]));
        if let Some(k) = cut {
            text.truncate(text.len() - k);
            text.push_str(REDACTED);
            return text;
        }
    }
    text
}

/// `text` with every occurrence of `fragments` (longest first) replaced by [`REDACTED`].
fn redact_fragments(text: &str, fragments: &[String]) -> String {
    let mut text = text.to_string();
    for f in fragments {
        if text.contains(f.as_str()) {
            text = text.replace(f.as_str(), REDACTED);
        }
    }
    text
}

/// The parts past the origin of every URL among the string values of `destination`, as written
/// and percent-decoded, longest first.
fn url_fragments(destination: &str) -> Vec<String> {
    let mut out = std::collections::BTreeSet::new();
    let Ok(value) = serde_json::from_str::<Value>(destination) else { return Vec::new() };
    let mut strings = Vec::new();
    collect_strings(&value, &mut strings);
    for s in strings {
        // Any other string of the destination long enough to be a secret (an API key), whole.
        let Some((_, rest)) = s.split_once("://") else {
            if s.len() >= MIN_FRAGMENT {
                out.insert(s.to_string());
            }
            continue;
        };
        // As written: everything past the authority, and each piece of it.
        let past = rest.find(['/', '?', '#']).map_or("", |i| &rest[i..]);
        let authority = &rest[..rest.len() - past.len()];
        if let Some((userinfo, _)) = authority.rsplit_once('@') {
            out.insert(userinfo.to_string());
            out.extend(userinfo.split(':').map(str::to_string));
        }
        if past.len() > 1 {
            out.insert(past.to_string());
            let (path_query, fragment) = past.split_once('#').unwrap_or((past, ""));
            let (path, query) = path_query.split_once('?').unwrap_or((path_query, ""));
            out.insert(path_query.to_string());
            out.insert(path.to_string());
            out.insert(query.to_string());
            out.insert(fragment.to_string());
            out.extend(path.split('/').map(str::to_string));
            for pair in query.split('&') {
                out.insert(pair.to_string());
                out.extend(pair.split('=').map(str::to_string));
            }
        }
    }
    // And each percent-decoded.
    let decoded: Vec<String> = out.iter().filter_map(|f| percent_decoded(f)).collect();
    out.extend(decoded);
    let mut out: Vec<String> =
        out.into_iter().filter(|f| f.len() >= MIN_FRAGMENT || (f.starts_with('/') && f.len() > 1)).collect();
    out.sort_by_key(|f| std::cmp::Reverse(f.len()));
    out
}

/// `%XX` decoded, when that changes anything and yields UTF-8.
fn percent_decoded(s: &str) -> Option<String> {
    if !s.contains('%') {
        return None;
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (b[i], b.get(i + 1).and_then(|&c| hex(c)), b.get(i + 2).and_then(|&c| hex(c))) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

fn collect_strings<'v>(v: &'v Value, out: &mut Vec<&'v str>) {
    match v {
        Value::String(s) => out.push(s),
        Value::Array(items) => items.iter().for_each(|i| collect_strings(i, out)),
        Value::Object(map) => map.values().for_each(|i| collect_strings(i, out)),
        _ => {}
    }
}

/// One URL as `scheme://host[:port]` (as the host's own logs and reasons show URLs);
/// `<unparseable URL>` when it is not one.
pub fn url_origin(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, body)) if !scheme.is_empty() => {
            format!("{scheme}://{}", origin(scheme, body).unwrap_or_else(|| "<redacted>".into()))
        }
        _ => "<unparseable URL>".into(),
    }
}

/// `host[:port]` of the URL `scheme://body`.
fn origin(scheme: &str, body: &str) -> Option<String> {
    let scheme = if scheme.is_empty() { "unknown" } else { scheme };
    let url = url::Url::parse(&format!("{scheme}://{body}")).ok()?;
    let host = url.host_str().filter(|h| !h.is_empty())?;
    Some(match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_string(),
    })
}

/// Every string in `v` (not the object keys) through [`public_reason`].
pub fn public_json(v: &mut Value) {
    match v {
        Value::String(s) if s.contains("://") => *s = public_reason(s),
        Value::Array(items) => items.iter_mut().for_each(public_json),
        Value::Object(map) => map.values_mut().for_each(public_json),
        _ => {}
    }
}

/// `value` serialised, with every string in it through [`public_reason`].
pub fn public_value(value: &impl serde::Serialize) -> Value {
    let mut v = serde_json::to_value(value).unwrap_or(Value::Null);
    public_json(&mut v);
    v
}

/// Parameter names treated as secrets even when no plugin says so.
pub fn looks_secret(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    ["password", "secret", "token", "key", "credential", "auth"].iter().any(|w| n.contains(w)) && n != "secretref"
}

/// A destination (JSON object text) fit to show an operator: the values of `secret` parameters
/// (and of fields named like secrets) replaced by `"***"`, every URL cut to its origin
/// ([`public_reason`]). Unparseable text is shown as a placeholder.
pub fn redact_destination(destination: &str, secret_params: &[String]) -> Value {
    let Ok(mut v) = serde_json::from_str::<Value>(destination) else {
        return serde_json::json!("<not JSON>");
    };
    hide_secrets(&mut v, secret_params);
    public_json(&mut v);
    v
}

/// In a destination: the values of `secret` parameters, and of fields named like secrets at any
/// depth (headers, say), replaced by `"***"`. URLs are left whole.
pub fn hide_secrets(v: &mut Value, secret_params: &[String]) {
    if let Some(obj) = v.as_object_mut() {
        for (k, val) in obj.iter_mut() {
            if (secret_params.contains(k) || looks_secret(k)) && !val.as_str().is_some_and(str::is_empty) {
                *val = serde_json::json!("***");
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
                    *val = serde_json::json!("***");
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
    fn a_webhook_url_keeps_only_its_origin() {
        let r = public_reason("POST https://hooks.example/services/T000/B000/XXXXSECRET?x=1 answered 404");
        assert_eq!(r, "POST https://hooks.example answered 404");
        assert!(!r.contains("SECRET"));
    }

    #[test]
    fn ports_are_kept_unless_default_and_userinfo_is_dropped() {
        assert_eq!(public_reason("http://u:pw@10.0.0.5:9200/idx/_bulk"), "http://10.0.0.5:9200");
        assert_eq!(public_reason("https://h.example:443/a"), "https://h.example");
        assert_eq!(public_reason("redis://:secret@cache:6380/0"), "redis://cache:6380");
        assert_eq!(public_reason("HTTPS://H.Example/x"), "HTTPS://h.example");
    }

    #[test]
    fn ipv6_hosts() {
        assert_eq!(public_reason("to http://[::1]:8080/secret-token failed"), "to http://[::1]:8080 failed");
        assert_eq!(
            public_reason("(https://[2001:db8::1]/p?q=1)"),
            "(https://[2001:db8::1])",
            "the closing parenthesis is text"
        );
    }

    #[test]
    fn several_urls_and_punctuation() {
        let text = "error sending request for url (http://127.0.0.1:1/secret-path-token): \
                    connection refused; tried \"https://a.example/t/1\", then <https://b.example:8443/t/2>, \
                    and https://c.example/x.";
        assert_eq!(
            public_reason(text),
            "error sending request for url (http://127.0.0.1:1): connection refused; tried \
             \"https://a.example\", then <https://b.example:8443>, and https://c.example."
        );
    }

    #[test]
    fn punctuation_inside_a_url_does_not_end_it() {
        let r = public_reason("at https://h.example/a),SECRET,b/c) now");
        assert_eq!(r, "at https://h.example) now");
        let r = public_reason("at https://h.example/a/SECRET),");
        assert_eq!(r, "at https://h.example),");
    }

    #[test]
    fn unparseable_authorities_are_redacted_and_bare_schemes_kept() {
        assert_eq!(public_reason("see http://exa%mple/secret"), "see http://<redacted>");
        assert_eq!(public_reason("http://[zz/secret"), "http://<redacted>");
        assert_eq!(
            public_reason("`host_port` must start with http:// or https://, got \"x\""),
            "`host_port` must start with http:// or https://, got \"x\""
        );
        assert_eq!(public_reason("e.g. https://opensearch:9200"), "e.g. https://opensearch:9200");
        assert_eq!(public_reason("no urls: a:b, ://, x"), "no urls: a:b, ://, x");
        assert_eq!(public_reason("odd ://host/secret"), "odd ://host");
        assert_eq!(public_reason(""), "");
        assert_eq!(public_reason("ü https://ü.example/ä ü"), "ü https://xn--tda.example ü");
    }

    #[test]
    fn a_receiver_quoting_its_path_does_not_show_it() {
        let dest = r#"{"url":"https://hooks.example/hooks/T0KEN-abc%2Fdef?sig=S1GNATURE&v=1#frag","n":1}"#;
        let reason = "receiver answered 404: Cannot POST /hooks/T0KEN-abc%2Fdef?sig=S1GNATURE&v=1 (token T0KEN-abc/def, S1GNATURE) at https://hooks.example/hooks/T0KEN-abc%2Fdef";
        let r = public_reason_for(reason, Some(dest));
        for secret in ["T0KEN", "S1GNATURE", "/hooks/"] {
            assert!(!r.contains(secret), "{r}");
        }
        assert_eq!(
            r,
            "receiver answered 404: Cannot POST <redacted> (token <redacted>, <redacted>) at https://hooks.example"
        );
        // Short segments alone, and text about other destinations, are kept.
        assert_eq!(public_reason_for("v1 is fine", Some(r#"{"url":"http://h/v1/x"}"#)), "v1 is fine");
        assert_eq!(public_reason_for("quota exceeded", None), "quota exceeded");
        assert_eq!(public_reason_for("not json", Some("{")), "not json");
    }

    #[test]
    fn destination_values_and_the_start_of_a_token_cut_at_the_end_are_redacted() {
        let dest = r#"{"url":"https://h.example/hooks/T0KEN-abcdefghij","api_key":"K3Y-0123456789","region":"eu"}"#;
        // A value that is no URL, quoted whole.
        let r = public_reason_for("refused key K3Y-0123456789 in eu", Some(dest));
        assert_eq!(r, "refused key <redacted> in eu");
        // A reason cut (to 300 bytes, say) in the middle of the path's token.
        let r = public_reason_for("404: Cannot POST /hooks/T0KEN-ab", Some(dest));
        assert_eq!(r, "404: Cannot POST <redacted>");
        let r = public_reason_for("denied for K3Y-01", Some(dest));
        assert_eq!(r, "denied for <redacted>");
        // Ordinary endings stay.
        assert_eq!(public_reason_for("timed out", Some(dest)), "timed out");
    }

    #[test]
    fn json_strings_are_redacted_keys_are_not() {
        let mut v = serde_json::json!({"a": {"reason": "to https://h/x/y", "n": 1}, "l": ["s3://b/k"]});
        public_json(&mut v);
        assert_eq!(v, serde_json::json!({"a": {"reason": "to https://h", "n": 1}, "l": ["s3://b"]}));
    }

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
            serde_json::json!({"host_port": "https://os:9200", "password": "***", "apiKey": "***", "username": "", "secretRef": "os"})
        );
        assert_eq!(redact_destination("nope", &[]), serde_json::json!("<not JSON>"));
    }
}
