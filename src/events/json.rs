//! What an event is: one JSON document (RFC 8259) of bounded nesting, kept as the exact bytes
//! the client sent.
//!
//! The client API, the HTTP peer endpoint and the TCP peer protocol all check an event with
//! [`check_event_json`] before it reaches a store, so every stored event is valid JSON that
//! any reader can embed as is. Nesting is limited to [`JSON_DEPTH_MAX`] arrays and objects:
//! deeper documents are refused before any recursive parser sees them.

/// The deepest nesting of arrays and objects an event may have.
pub const JSON_DEPTH_MAX: usize = 64;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidJson {
    #[error("body is not valid JSON: not UTF-8 ({0})")]
    NotUtf8(String),
    #[error("body is not valid JSON: nested deeper than {JSON_DEPTH_MAX} arrays and objects")]
    TooDeep,
    #[error("body is not valid JSON: {0}")]
    Syntax(String),
}

/// Checks that `bytes` are one JSON document nested at most [`JSON_DEPTH_MAX`] deep.
pub fn check_event_json(bytes: &[u8]) -> Result<(), InvalidJson> {
    // JSON text is UTF-8 (RFC 8259); skipping a string does not check that, so check first.
    let text =
        std::str::from_utf8(bytes).map_err(|error| InvalidJson::NotUtf8(error.to_string()))?;
    if nesting_depth(bytes) > JSON_DEPTH_MAX {
        return Err(InvalidJson::TooDeep);
    }
    serde_json::from_str::<serde::de::IgnoredAny>(text)
        .map(|_| ())
        .map_err(|error| InvalidJson::Syntax(error.to_string()))
}

/// The deepest nesting of `[` and `{` outside strings. On malformed text the count is only a
/// bound for the parser that runs next; it never reads past the end.
pub(crate) fn nesting_depth(bytes: &[u8]) -> usize {
    let mut depth: usize = 0;
    let mut deepest = 0;
    let mut in_string = false;
    let mut escaped = false;
    for &byte in bytes {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(depth: usize) -> String {
        format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
    }

    #[test]
    fn documents_within_the_limit_pass() {
        for text in [
            "1",
            "\"text\"",
            r#"{"a": [1, {"b": "[[[[not nesting]]]]"}], "c": "\"{"}"#,
            &nested(JSON_DEPTH_MAX),
            "123456789012345678901234567890",
        ] {
            assert_eq!(check_event_json(text.as_bytes()), Ok(()), "{text}");
        }
    }

    #[test]
    fn bad_documents_are_refused_with_the_reason() {
        assert_eq!(
            check_event_json(nested(JSON_DEPTH_MAX + 1).as_bytes()),
            Err(InvalidJson::TooDeep)
        );
        assert_eq!(
            check_event_json(nested(100_000).as_bytes()),
            Err(InvalidJson::TooDeep)
        );
        let deep_objects = format!("{}{}", r#"{"a":"#.repeat(65), "}".repeat(65));
        assert_eq!(
            check_event_json(deep_objects.as_bytes()),
            Err(InvalidJson::TooDeep)
        );
        assert!(matches!(
            check_event_json(b"{\"a\": \xff}"),
            Err(InvalidJson::NotUtf8(_))
        ));
        for text in ["", "{", "{\"a\":1} trailing", "[1,]", "nul"] {
            assert!(
                matches!(
                    check_event_json(text.as_bytes()),
                    Err(InvalidJson::Syntax(_))
                ),
                "{text:?}"
            );
        }
    }
}
