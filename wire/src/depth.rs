//! How deep a JSON text nests, found without parsing it.
//!
//! [`check`] runs before any parser sees hostile input: `serde_json` refuses past 128 levels
//! with a message that names no setting, and a recursive consumer further on could run out of
//! stack. The scan is one pass over the bytes, counts `[` and `{` outside strings (a `\`
//! escapes the next byte inside a string) and allocates nothing. It does not validate: a
//! malformed text that stays within the limit passes, and the parser then says what is wrong.
//!
//! [`validate`] is that check and a parse in one pass, for a text that is only validated (a
//! report's `payload`): its visitor bounds the depth as it goes; when that pass refuses, the scan
//! and serde_json's skip decide, so the answer and its words are theirs.

/// A JSON text nests deeper than allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "JSON nested more than {max} levels deep (at byte {offset}): flatten it, or raise the limit `limits.max_json_depth`"
)]
pub struct TooDeep {
    /// The limit that was exceeded.
    pub max: usize,
    /// Byte offset of the `[` or `{` that went one level past it.
    pub offset: usize,
}

/// Check that `json` nests at most `max_depth` arrays and objects deep (`{}` and `[1]` are
/// depth 1, `{"a":[1]}` is depth 2, a scalar is depth 0).
pub fn check(json: &[u8], max_depth: usize) -> Result<(), TooDeep> {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for (offset, &b) in json.iter().enumerate() {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max_depth {
                    return Err(TooDeep { max: max_depth, offset });
                }
            }
            // Unbalanced closers are the parser's to report; never underflow.
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// Why [`validate`] refused a text.
#[derive(Debug)]
pub enum Invalid {
    /// Nested deeper than allowed (before any syntax error, as [`check`] sees it).
    TooDeep(TooDeep),
    /// Not one JSON value.
    Malformed(serde_json::Error),
}

/// Check that `json` is one JSON value nested at most `max_depth` deep, building nothing: what
/// [`check`] then serde_json's skip of a value say, in one pass over most texts.
pub fn validate(json: &str, max_depth: usize) -> Result<(), Invalid> {
    use serde::de::DeserializeSeed;
    let mut de = serde_json::Deserializer::from_str(json);
    if Bounded(max_depth).deserialize(&mut de).and_then(|()| de.end()).is_ok() {
        return Ok(());
    }
    // Refused by the one pass, which is stricter than the skip it stands in for (numbers past
    // f64's range, lone surrogate escapes, serde_json's own 127 levels): the two passes decide,
    // and word the refusal, as they did before there was one.
    check(json.as_bytes(), max_depth).map_err(Invalid::TooDeep)?;
    serde_json::from_str::<serde::de::IgnoredAny>(json).map(drop).map_err(Invalid::Malformed)
}

/// A JSON value with at most `.0` more levels of arrays and objects, read and dropped.
#[derive(Clone, Copy)]
struct Bounded(usize);

impl Bounded {
    fn inside<E: serde::de::Error>(self) -> Result<Bounded, E> {
        match self.0.checked_sub(1) {
            Some(left) => Ok(Bounded(left)),
            None => Err(E::custom("nested too deep")),
        }
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for Bounded {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Bounded {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<(), A::Error> {
        let inside = self.inside()?;
        while a.next_element_seed(inside)?.is_some() {}
        Ok(())
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut a: A) -> Result<(), A::Error> {
        let inside = self.inside()?;
        while a.next_key::<serde::de::IgnoredAny>()?.is_some() {
            a.next_value_seed(inside)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(n: usize) -> String {
        format!("{}{}", "[".repeat(n), "]".repeat(n))
    }

    #[test]
    fn exactly_at_the_limit_passes_and_one_over_fails_where_it_went_over() {
        assert_eq!(check(nested(64).as_bytes(), 64), Ok(()));
        assert_eq!(check(nested(65).as_bytes(), 64), Err(TooDeep { max: 64, offset: 64 }));
        assert_eq!(check(br#"{"a":{"b":[1,{"c":2}]}}"#, 4), Ok(()));
        assert_eq!(check(br#"{"a":{"b":[1,{"c":2}]}}"#, 3), Err(TooDeep { max: 3, offset: 13 }));
        // Siblings do not add up.
        assert_eq!(check(b"[[],[],{},[[]]]", 3), Ok(()));
        assert_eq!(check(b"{}{}{}", 1), Ok(()));
    }

    #[test]
    fn scalars_and_empty_input_are_depth_zero() {
        for text in [&b""[..], b"1", b"\"x\"", b"null", b"  "] {
            assert_eq!(check(text, 0), Ok(()));
        }
        assert!(check(b"{}", 0).is_err());
    }

    #[test]
    fn brackets_inside_strings_do_not_count() {
        assert_eq!(check(br#"{"[[[[": "{{{{]]]]"}"#, 1), Ok(()));
        assert_eq!(check(br#"["a\"[[[", "b"]"#, 1), Ok(()));
        // An escaped backslash ends the escape: the quote after it closes the string.
        assert_eq!(check(br#"["a\\", [[1]]]"#, 3), Ok(()));
        assert!(check(br#"["a\\", [[1]]]"#, 2).is_err());
        // `\u005b` is `[` escaped, still inside the string.
        assert_eq!(check(br#"["\u005b\u007b"]"#, 1), Ok(()));
        // A key with brackets, then real nesting.
        assert_eq!(check(br#"{"}}}":{"x":[]}}"#, 2), Err(TooDeep { max: 2, offset: 12 }));
    }

    #[test]
    fn malformed_text_never_panics() {
        for text in [&b"]]]]"[..], b"}{", b"\"unterminated [[[", b"\\", b"[\"\\"] {
            let _ = check(text, 1);
        }
        assert_eq!(check(b"]]]][[", 2), Ok(()));
    }

    #[test]
    fn the_message_names_the_limit_and_the_setting() {
        let msg = check(nested(3).as_bytes(), 2).unwrap_err().to_string();
        assert!(msg.contains("more than 2 levels"), "{msg}");
        assert!(msg.contains("limits.max_json_depth"), "{msg}");
    }

    #[test]
    fn validate_says_what_check_then_a_parse_say() {
        let deep = |n: usize| format!("{}1{}", "[".repeat(n), "]".repeat(n));
        let texts = [
            "{}".to_string(),
            "1".into(),
            r#"{"a":{"b":[1,{"c":2}]},"d":"x\"[[["}"#.into(),
            r#"["\u005b", {"}}}": [true, null, -1.5e3]]]"#.into(),
            deep(4),
            deep(5),
            deep(127),
            deep(128),
            deep(150),
            deep(300),
            format!("{}{{", deep(3)),
            "[[[[[[ nonsense".into(),
            "[1,]".into(),
            "1.".into(),
            "{} {}".into(),
            "".into(),
            r#"{"a": [[[[[[[[1]]]]]]]] "#.into(),
            // What serde_json's skip lets through and a full parse would not.
            "1e400".into(),
            "[-1e400]".into(),
            "9".repeat(401),
            r#""\ud800""#.into(),
            r#"{"\ud800": 1}"#.into(),
            r#"["\udc00x"]"#.into(),
        ];
        for text in &texts {
            for max in [0, 1, 4, 127, 128, 200] {
                let old = match check(text.as_bytes(), max) {
                    Err(deep) => Err(format!("{deep}")),
                    Ok(()) => {
                        serde_json::from_str::<serde::de::IgnoredAny>(text).map(|_| ()).map_err(|e| e.to_string())
                    }
                };
                let new = validate(text, max).map_err(|e| match e {
                    Invalid::TooDeep(deep) => format!("{deep}"),
                    Invalid::Malformed(e) => e.to_string(),
                });
                assert_eq!(new, old, "{text:.40} at most {max} deep");
            }
        }
        assert_eq!(validate(&deep(128), 128).ok(), Some(()), "past serde_json's own 127 levels, within ours");
        assert!(validate("1e400", 4).is_ok());
    }
}
