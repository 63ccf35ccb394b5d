//! Checks of the values a client sends that Kubernetes would otherwise reject late: quantities
//! (`2Gi`, `500m`), image references and VS Code versions. Each error says what to send.

use super::{invalid, Invalid};

/// A Kubernetes-style quantity, in base units (bytes or cores).
fn parse_quantity(s: &str) -> Option<f64> {
    const SUFFIXES: &[(&str, f64)] = &[
        ("Ki", 1024.0),
        ("Mi", 1024.0 * 1024.0),
        ("Gi", 1024.0 * 1024.0 * 1024.0),
        ("Ti", 1024.0 * 1024.0 * 1024.0 * 1024.0),
        ("Pi", 1024.0 * 1024.0 * 1024.0 * 1024.0 * 1024.0),
        ("m", 1e-3),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
    ];
    let (num, mult) = SUFFIXES
        .iter()
        .find_map(|(suf, m)| s.strip_suffix(suf).map(|n| (n, *m)))
        .unwrap_or((s, 1.0));
    let digits_ok = !num.is_empty()
        && num.bytes().all(|c| c.is_ascii_digit() || c == b'.')
        && num.bytes().filter(|c| *c == b'.').count() <= 1
        && !num.starts_with('.')
        && !num.ends_with('.');
    if !digits_ok || s.len() > 20 {
        return None;
    }
    num.parse::<f64>().ok().map(|n| n * mult)
}

/// A validated memory or storage quantity such as `2Gi` or `512Mi`.
pub(super) fn memory(field: &'static str, s: &str) -> Result<f64, Invalid> {
    match parse_quantity(s) {
        Some(v) if v >= 1.0 && !s.ends_with('m') => Ok(v),
        _ => Err(invalid(
            field,
            format!("{s:?} is not a memory quantity: use a number with Ki, Mi, Gi or Ti, e.g. 2Gi"),
        )),
    }
}

/// A validated CPU quantity such as `500m` or `2`.
pub(super) fn cpu(field: &'static str, s: &str) -> Result<f64, Invalid> {
    let suffix_ok = s.ends_with('m') || s.bytes().all(|c| c.is_ascii_digit() || c == b'.');
    match parse_quantity(s) {
        Some(v) if v >= 0.001 && suffix_ok => Ok(v),
        _ => Err(invalid(
            field,
            format!("{s:?} is not a CPU quantity: use cores (1, 0.5) or millicores (500m)"),
        )),
    }
}

/// Checks an OCI image reference: `[registry[:port]/]path[:tag][@sha256:<64 hex>]`.
pub(super) fn image_ref(s: &str) -> Result<(), Invalid> {
    let bad = |why: &str| {
        invalid(
            "base_image",
            format!("{s:?} is not an image reference ({why}); e.g. ubuntu:24.04 or mcr.microsoft.com/devcontainers/python:1-3.12"),
        )
    };
    if s.is_empty() || s.len() > 255 {
        return Err(bad("length must be 1-255"));
    }
    let (name_tag, digest) = match s.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (s, None),
    };
    if let Some(d) = digest {
        let ok = d.strip_prefix("sha256:").is_some_and(|h| {
            h.len() == 64
                && h.bytes()
                    .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
        });
        if !ok {
            return Err(bad("digest must be sha256:<64 hex>"));
        }
    }
    // A ':' after the last '/' starts the tag; one before it belongs to a registry port.
    let last_slash = name_tag.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match name_tag[last_slash..].find(':') {
        Some(i) => (
            &name_tag[..last_slash + i],
            Some(&name_tag[last_slash + i + 1..]),
        ),
        None => (name_tag, None),
    };
    if let Some(t) = tag {
        let ok = !t.is_empty()
            && t.len() <= 128
            && !t.starts_with(['.', '-'])
            && t.bytes()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'));
        if !ok {
            return Err(bad("bad tag"));
        }
    }
    let mut parts: Vec<&str> = name.split('/').collect();
    if parts.len() > 1 && (parts[0].contains(['.', ':']) || parts[0] == "localhost") {
        let reg = parts.remove(0);
        let (host, port) = reg.split_once(':').unwrap_or((reg, "0"));
        let host_ok = !host.is_empty()
            && host.split('.').all(|l| {
                !l.is_empty() && l.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
            });
        if !host_ok || port.parse::<u16>().is_err() {
            return Err(bad("bad registry host"));
        }
    }
    let component_ok = |c: &str| {
        let b = c.as_bytes();
        !b.is_empty()
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
            && b.iter().all(|c| {
                c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'_' | b'-')
            })
    };
    if parts.is_empty() || !parts.iter().all(|p| component_ok(p)) {
        return Err(bad(
            "repository path must be lowercase letters, digits, '.', '_' or '-'",
        ));
    }
    Ok(())
}

/// `latest` or a release number such as `1.97.2`.
pub(super) fn vscode_version(s: &str) -> Result<(), Invalid> {
    let parts: Vec<&str> = s.split('.').collect();
    let numeric = (2..=3).contains(&parts.len())
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|c| c.is_ascii_digit()));
    if s == "latest" || numeric {
        Ok(())
    } else {
        Err(invalid(
            "vscode_version",
            format!("{s:?} is not a VS Code version: use \"latest\" or a release like 1.97.2"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images() {
        for ok in [
            "ubuntu",
            "ubuntu:24.04",
            "mcr.microsoft.com/devcontainers/python:1-3.12",
            "localhost:5000/a/b:c",
            "alpine@sha256:0000000000000000000000000000000000000000000000000000000000000000",
        ] {
            assert!(image_ref(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "Ubuntu",
            "ubuntu:",
            "a//b",
            "a:b:c",
            "a b",
            "x@sha256:12",
        ] {
            assert!(image_ref(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn quantities() {
        assert!(memory("m", "2Gi").is_ok());
        assert!(memory("m", "500m").is_err());
        assert!(memory("m", "lots").is_err());
        assert!(cpu("c", "500m").is_ok());
        assert!(cpu("c", "1.5").is_ok());
        assert!(cpu("c", "1Gi").is_err());
    }

    mod properties {
        use super::*;
        use crate::instance::{CreateRequest, SpecDefaults, MAX_USER_ID_LEN};
        use proptest::prelude::*;
        use serde_json::{json, Value};

        /// A field's value: near-valid shapes and anything at all.
        fn text() -> impl Strategy<Value = Value> {
            prop_oneof![
                "[0-9]{1,4}(\\.[0-9]{1,2})?(Ki|Mi|Gi|Ti|m|k|M|G|)",
                "[a-z0-9./:@-]{0,40}",
                "[a-z0-9-]{1,45}",
                any::<String>(),
            ]
            .prop_map(Value::String)
        }

        fn field() -> impl Strategy<Value = Option<Value>> {
            prop_oneof![
                Just(None),
                text().prop_map(Some),
                any::<i64>().prop_map(|n| Some(json!(n))),
                Just(Some(Value::Null)),
                Just(Some(json!([1, "x"]))),
            ]
        }

        /// A create body as a client could send it, unknown fields included.
        fn body() -> impl Strategy<Value = Value> {
            let names = [
                "user_id",
                "base_image",
                "vscode_version",
                "storage_size",
                "memory_request",
                "memory_limit",
                "cpu_request",
                "cpu_limit",
                "idle_timeout",
                "idle_notice",
                "unknown",
            ];
            proptest::collection::vec(field(), names.len()).prop_map(move |vals| {
                let mut m = serde_json::Map::new();
                for (name, v) in names.iter().zip(vals) {
                    if let Some(v) = v {
                        m.insert((*name).to_owned(), v);
                    }
                }
                Value::Object(m)
            })
        }

        proptest! {
            /// Whatever JSON a client sends, validation answers without panicking, and what it
            /// accepts is what the backends can use as is.
            #[test]
            fn accepted_specs_keep_every_rule(b in body()) {
                let d = SpecDefaults::default();
                let Ok(req) = serde_json::from_value::<CreateRequest>(b) else {
                    return Ok(());
                };
                let Ok((user, spec)) = req.validate(&d) else {
                    return Ok(());
                };
                let u = user.as_str();
                prop_assert!(!u.is_empty() && u.len() <= MAX_USER_ID_LEN);
                prop_assert!(u.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-'));
                prop_assert!(!u.starts_with('-') && !u.ends_with('-'));
                prop_assert!(image_ref(&spec.base_image).is_ok());
                prop_assert!(spec.base_image.bytes().all(|c| c.is_ascii_graphic()));
                prop_assert!(vscode_version(&spec.vscode_version).is_ok());
                let mem_req = memory("memory_request", &spec.memory_request).unwrap();
                let mem_lim = memory("memory_limit", &spec.memory_limit).unwrap();
                prop_assert!(mem_req <= mem_lim);
                prop_assert!(memory("storage_size", &spec.storage_size).is_ok());
                let cpu_req = cpu("cpu_request", &spec.cpu_request).unwrap();
                let cpu_lim = cpu("cpu_limit", &spec.cpu_limit).unwrap();
                prop_assert!(cpu_req <= cpu_lim);
                prop_assert!(spec.idle_timeout_secs > 0 && spec.idle_timeout_secs <= d.max_idle_timeout_secs);
                if let Some(n) = spec.idle_notice_secs {
                    prop_assert!(n <= spec.idle_timeout_secs);
                }
            }

            /// A quantity accepted is short, plain ASCII and at least its unit's minimum; the error
            /// for one refused names the field.
            #[test]
            fn quantities(s in "\\PC{0,24}|[0-9.]{1,6}(Ki|Mi|Gi|m|k|)") {
                match memory("memory_limit", &s) {
                    Ok(v) => prop_assert!(v >= 1.0 && s.len() <= 20 && s.is_ascii()),
                    Err(e) => prop_assert!(e.to_string().contains("memory")),
                }
                match cpu("cpu_limit", &s) {
                    Ok(v) => prop_assert!(v >= 0.001 && s.len() <= 20 && s.is_ascii()),
                    Err(e) => prop_assert!(e.to_string().contains("CPU")),
                }
            }
        }
    }
}
