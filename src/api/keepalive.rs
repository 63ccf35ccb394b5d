//! The keepalive request body: `{}` or nothing, or `{"busy_until": <Unix seconds | RFC 3339>}`.

use serde::Deserialize;
use serde_json::Value;
use std::time::{Duration, UNIX_EPOCH};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeepaliveError {
    #[error("the body is not a valid keepalive request: {0} (send {{}} or {{\"busy_until\": <Unix seconds or RFC 3339 time>}})")]
    Json(String),
    #[error("busy_until {0:?} is not a time: use Unix seconds or RFC 3339 in UTC, e.g. 2030-01-01T12:00:00Z")]
    Time(String),
    #[error("busy_until is more than {max_secs} seconds (the largest idle timeout) from now")]
    TooFar { max_secs: u64 },
}

impl KeepaliveError {
    pub fn code(&self) -> &'static str {
        match self {
            KeepaliveError::Json(_) => "invalid_json",
            _ => "invalid_busy_until",
        }
    }
}

/// The keepalive request body.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeepaliveRequest {
    /// Busy until then: Unix seconds, or RFC 3339 in UTC; at most the largest idle timeout
    /// from now.
    #[schema(schema_with = busy_until_schema)]
    busy_until: Option<Value>,
}

fn busy_until_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
    OneOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(Type::Number)
                .minimum(Some(0.0)),
        )
        .item(ObjectBuilder::new().schema_type(Type::String).format(Some(
            utoipa::openapi::SchemaFormat::KnownFormat(utoipa::openapi::KnownFormat::DateTime),
        )))
        .item(ObjectBuilder::new().schema_type(Type::Null))
        .build()
        .into()
}

/// The "busy until" time in Unix milliseconds, if the body names one; at most `max_secs` from
/// `now_ms`, so a client cannot keep an instance up for longer than an idle timeout could.
pub fn busy_until_ms(
    body: &[u8],
    now_ms: u64,
    max_secs: u64,
) -> Result<Option<u64>, KeepaliveError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let b: KeepaliveRequest =
        serde_json::from_slice(body).map_err(|e| KeepaliveError::Json(e.to_string()))?;
    let ms = match b.busy_until {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Number(n)) => n
            .as_f64()
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(|s| (s * 1000.0) as u64)
            .ok_or_else(|| KeepaliveError::Time(n.to_string()))?,
        Some(Value::String(s)) => humantime::parse_rfc3339_weak(&s)
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_millis() as u64)
            .ok_or(KeepaliveError::Time(s))?,
        Some(other) => return Err(KeepaliveError::Time(other.to_string())),
    };
    let max = now_ms + Duration::from_secs(max_secs).as_millis() as u64;
    if ms > max {
        return Err(KeepaliveError::TooFar { max_secs });
    }
    Ok(Some(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_900_000_000_000;

    #[test]
    fn bodies() {
        assert_eq!(busy_until_ms(b"", NOW, 3600), Ok(None));
        assert_eq!(busy_until_ms(b"{}", NOW, 3600), Ok(None));
        assert_eq!(
            busy_until_ms(br#"{"busy_until":null}"#, NOW, 3600),
            Ok(None)
        );
        assert_eq!(
            busy_until_ms(br#"{"busy_until":1900000060}"#, NOW, 3600),
            Ok(Some(NOW + 60_000))
        );
        assert_eq!(
            busy_until_ms(br#"{"busy_until":"2030-03-17T17:47:40Z"}"#, NOW, 3600),
            Ok(Some(NOW + 60_000))
        );
        assert_eq!(
            busy_until_ms(br#"{"busy_until":1900007201}"#, NOW, 3600),
            Err(KeepaliveError::TooFar { max_secs: 3600 })
        );
        for bad in [
            &br#"{"busy_until":"tomorrow"}"#[..],
            br#"{"busy_until":-5}"#,
            br#"{"busy_until":true}"#,
        ] {
            let e = busy_until_ms(bad, NOW, 3600).unwrap_err();
            assert_eq!(e.code(), "invalid_busy_until", "{e}");
        }
        assert_eq!(
            busy_until_ms(br#"{"until":1}"#, NOW, 3600)
                .unwrap_err()
                .code(),
            "invalid_json"
        );
    }
}
