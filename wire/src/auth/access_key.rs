//! The access key a request acts as, among those its credential grants.

use super::{Denied, Grant};

/// Whether `s` is a well-formed access key: 1-64 letters, digits, `_`, `-`, `.`.
pub fn is_access_key(s: &str) -> bool {
    (1..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
}

/// The access key a request acts as, in this order: `requested` (e.g. the `X-Access-Key` header
/// or the `access_key` query parameter), else the grant's basic-auth user, else the only access
/// key the grant holds, else the first dot-separated part of the Fluent Bit `tag`. An access key
/// the grant does not hold is [`Denied::NotGranted`]; the caller must still check that it exists
/// (answering [`Denied::NotGranted`] too when not) and is not revoked.
pub fn select(grant: &Grant, requested: Option<&str>, tag: Option<&str>) -> Result<String, Denied> {
    let requested = requested.filter(|r| !r.is_empty()).or(grant.requested.as_deref().filter(|r| !r.is_empty()));
    let granted = |k: &str| {
        if grant.access_keys.iter().any(|g| g == k) {
            Ok(k.to_string())
        } else {
            Err(Denied::NotGranted { access_key: k.to_string() })
        }
    };
    if let Some(r) = requested {
        if !is_access_key(r) {
            return Err(Denied::InvalidAccessKey);
        }
        return granted(r);
    }
    if let [only] = grant.access_keys.as_slice() {
        return Ok(only.clone());
    }
    match tag.and_then(|t| t.split('.').next()).filter(|k| is_access_key(k)) {
        Some(k) => granted(k),
        None => Err(Denied::AccessKeyRequired),
    }
}

#[cfg(test)]
mod tests {
    use crate::auth::fixtures::*;
    use crate::auth::*;

    #[test]
    fn select_picks_the_access_key() {
        let one = jwt_grant(&["team-a"]);
        let many = jwt_grant(&["team-a", "team-b"]);
        // The only key, whatever the tag.
        assert_eq!(select(&one, None, None).unwrap(), "team-a");
        assert_eq!(select(&one, None, Some("team-b.logs")).unwrap(), "team-a");
        // Requested explicitly.
        assert_eq!(select(&many, Some("team-b"), None).unwrap(), "team-b");
        assert_eq!(select(&one, Some("team-a"), Some("team-b.x")).unwrap(), "team-a");
        let e = select(&one, Some("team-b"), None).unwrap_err();
        assert_eq!(e, Denied::NotGranted { access_key: "team-b".into() });
        assert_eq!((e.status(), e.code()), (403, "access_key_not_granted"));
        assert_eq!(e.to_string(), "this credential does not grant access key `team-b`");
        // An empty request is no request.
        assert_eq!(select(&one, Some(""), None).unwrap(), "team-a");
        // A malformed request is refused without being echoed.
        let e = select(&many, Some("team a; drop"), None).unwrap_err();
        assert_eq!((e.clone(), e.status(), e.code()), (Denied::InvalidAccessKey, 400, "invalid_access_key"));
        assert!(!e.to_string().contains("drop"));
        // The basic-auth user, unless something more explicit is given.
        let basic = Grant { requested: Some("team-b".into()), ..many.clone() };
        assert_eq!(select(&basic, None, Some("team-a.x")).unwrap(), "team-b");
        assert_eq!(select(&basic, Some("team-a"), None).unwrap(), "team-a");
        let basic_one = Grant { requested: Some("team-z".into()), ..one.clone() };
        assert_eq!(select(&basic_one, None, None), Err(Denied::NotGranted { access_key: "team-z".into() }));
        // Several keys: the tag's first part.
        assert_eq!(select(&many, None, Some("team-b.kube.var.log")).unwrap(), "team-b");
        assert_eq!(select(&many, None, Some("team-a")).unwrap(), "team-a");
        assert_eq!(select(&many, None, Some("team-c.logs")), Err(Denied::NotGranted { access_key: "team-c".into() }));
        // Several keys and no way to choose.
        for tag in [None, Some(""), Some(".logs"), Some("a:b.c")] {
            let e = select(&many, None, tag).unwrap_err();
            assert_eq!(
                (e.clone(), e.status(), e.code()),
                (Denied::AccessKeyRequired, 400, "access_key_required"),
                "{tag:?}"
            );
            assert!(e.to_string().contains("X-Access-Key"));
        }
        let revoked = Denied::Revoked { access_key: "team-a".into() };
        assert_eq!((revoked.status(), revoked.code()), (403, "access_key_revoked"));
        assert_eq!(revoked.to_string(), "access key `team-a` is revoked: ask the operator for a new one");
    }

    #[test]
    fn access_key_shape() {
        assert!(is_access_key("a") && is_access_key("Team_1.prod-2") && is_access_key(&"a".repeat(64)));
        assert!(!is_access_key("") && !is_access_key(&"a".repeat(65)) && !is_access_key("a b") && !is_access_key("é"));
    }
}
