//! Which parts of a plugin's config a request may change.
//!
//! A plugin's config (the manifest's `[config]`, plus what the host resolved for it) belongs to
//! the operator; a request to the daemon comes from a stranger. So a request may override only
//! the keys the operator listed, in the manifest (`[overrides] allow = [...]`) or in the daemon
//! config (`[plugins.overrides] <id> = [...]`, which replaces the manifest's list). It is an
//! allowlist, not a denylist: a key a plugin adds tomorrow is safe until someone allows it.
//!
//! Entries are dotted key paths: `"temperature"` allows that key with any value, `"http.retry"`
//! allows the `retry` table inside `http` (and everything in it) but nothing else of `http`.
//!
//! `grip run --config` does not go through this: the CLI's user owns the machine.

use serde_json::Value;

/// Checks the entries of an allow list: dotted paths of non-empty keys without spaces.
///
/// # Errors
/// A message naming the first bad entry.
pub fn validate_keys(keys: &[String]) -> Result<(), String> {
    for k in keys {
        if k.is_empty()
            || k.split('.')
                .any(|s| s.is_empty() || s.contains(char::is_whitespace))
        {
            return Err(format!(
                "{k:?} is not a config key path (keys joined by '.', e.g. \"http.retry\")"
            ));
        }
    }
    Ok(())
}

/// The first key path in `overrides` that `allow` does not cover, if any.
///
/// `overrides` is the request's config object; a non-object has no keys and is left to the
/// caller to reject.
pub fn refused_key(allow: &[String], overrides: &Value) -> Option<String> {
    fn walk(allow: &[String], prefix: &str, value: &Value) -> Option<String> {
        let Value::Object(map) = value else {
            return None;
        };
        for (k, v) in map {
            let path = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            if allow.contains(&path) {
                continue;
            }
            let inner = format!("{path}.");
            let has_allowed_children = allow.iter().any(|a| a.starts_with(&inner));
            if !(v.is_object() && has_allowed_children) {
                return Some(path);
            }
            if let Some(refused) = walk(allow, &path, v) {
                return Some(refused);
            }
        }
        None
    }
    walk(allow, "", overrides)
}

/// Whether any string in `overrides` is a URL: a request that picks where a plugin connects
/// must not read what that place answers (the daemon then withholds upstream error text).
pub fn chooses_url(overrides: &Value) -> bool {
    match overrides {
        Value::String(s) => s.contains("://"),
        Value::Array(a) => a.iter().any(chooses_url),
        Value::Object(o) => o.values().any(chooses_url),
        _ => false,
    }
}

/// Key names that usually carry a URL, a secret's name, headers, a file path or a resource
/// size: allowing one of them to requests deserves a warning at start-up.
pub fn is_sensitive(key: &str) -> bool {
    const WORDS: [&str; 14] = [
        "url", "uri", "host", "endpoint", "env", "key", "header", "path", "root", "dir", "file",
        "thread", "ctx", "http",
    ];
    let k = key.to_ascii_lowercase();
    WORDS.iter().any(|w| k.contains(w))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn allow(keys: &[&str]) -> Vec<String> {
        keys.iter().map(|k| (*k).to_owned()).collect()
    }

    #[test]
    fn only_listed_keys_pass() {
        let a = allow(&["model", "temperature"]);
        assert_eq!(
            refused_key(&a, &json!({"model": "m", "temperature": 0.1})),
            None
        );
        assert_eq!(
            refused_key(&a, &json!({"model": "m", "base_url": "http://x"})).as_deref(),
            Some("base_url")
        );
        assert_eq!(refused_key(&[], &json!({})), None);
        assert_eq!(refused_key(&[], &json!({"a": 1})).as_deref(), Some("a"));
    }

    #[test]
    fn dotted_paths_allow_subtrees_and_nothing_beside_them() {
        let a = allow(&["http.retry", "extra_body"]);
        assert_eq!(
            refused_key(&a, &json!({"http": {"retry": {"max_retries": 1}}})),
            None
        );
        assert_eq!(refused_key(&a, &json!({"extra_body": {"seed": 1}})), None);
        assert_eq!(
            refused_key(&a, &json!({"http": {"headers": {"Host": "x"}}})).as_deref(),
            Some("http.headers")
        );
        // Replacing the parent table wholesale is not allowed by allowing a child.
        assert_eq!(
            refused_key(&a, &json!({"http": 5})).as_deref(),
            Some("http")
        );
        assert_eq!(
            refused_key(&a, &json!({"http": {"retry": {}, "connect_timeout_ms": 1}})).as_deref(),
            Some("http.connect_timeout_ms")
        );
    }

    #[test]
    fn key_paths_are_validated() {
        assert!(validate_keys(&allow(&["a", "a.b_c", "x-y"])).is_ok());
        for bad in ["", "a..b", ".a", "a b"] {
            assert!(validate_keys(&allow(&[bad])).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn urls_anywhere_are_noticed() {
        assert!(chooses_url(&json!({"base_url": "http://10.0.0.1/v1"})));
        assert!(chooses_url(&json!({"a": [{"b": "https://x"}]})));
        assert!(!chooses_url(&json!({"model": "gpt", "temperature": 1})));
    }

    #[test]
    fn sensitive_names() {
        for k in [
            "base_url",
            "api_key_env",
            "http.headers",
            "model_path",
            "threads",
            "n_ctx",
        ] {
            assert!(is_sensitive(k), "{k}");
        }
        for k in [
            "model",
            "temperature",
            "max_tokens",
            "top_p",
            "seed",
            "script",
        ] {
            assert!(!is_sensitive(k), "{k}");
        }
    }
}
