//! OTLP logs in: an `ExportLogsServiceRequest` (protobuf, or the OTLP JSON mapping; gzip or
//! not) decoded with the OpenTelemetry project's generated types, then one record per log record.
//!
//! A record's payload is the log record in the OTLP JSON mapping (`camelCase` names, trace and
//! span ids as hex, 64-bit integers as strings), with two fields added: `resource` (its
//! resource's `attributes`, `droppedAttributesCount`, and `schemaUrl`) and `scope` (its
//! instrumentation scope's `name`, `version`, `attributes`, `droppedAttributesCount`,
//! `schemaUrl`). Those names are stable: `README.md`, "OTLP logs", lists them.

use crate::framing::{Allowance, FramingError, Unbounded, gzip};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::SeverityNumber;
use prost::Message;
use serde_json::{Map, Value, json};

pub use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse,
};

/// How a body is encoded (its `Content-Type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// `application/x-protobuf`.
    Protobuf,
    /// `application/json`: the OTLP JSON mapping.
    Json,
}

impl Encoding {
    /// The encoding a `Content-Type` names (parameters ignored); `None`: neither OTLP encoding.
    pub fn of(content_type: Option<&str>) -> Option<Encoding> {
        let essence = content_type?.split(';').next()?.trim().to_ascii_lowercase();
        match essence.as_str() {
            "application/x-protobuf" | "application/protobuf" => Some(Encoding::Protobuf),
            "application/json" => Some(Encoding::Json),
            _ => None,
        }
    }
}

/// Limits on one request.
#[derive(Debug, Clone)]
pub struct OtlpOptions {
    /// Most log records one request may carry.
    pub max_records: usize,
    /// Deepest JSON nesting a JSON body, or a record's payload, may have.
    pub max_depth: usize,
    /// Largest body after gzip is undone.
    pub max_decompressed_bytes: usize,
}

/// What is wrong with an OTLP body. Messages say what to send instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OtlpError {
    /// gzip, size or memory.
    #[error(transparent)]
    Framing(#[from] FramingError),
    /// Not an `ExportLogsServiceRequest` in protobuf.
    #[error(
        "the body is not an OTLP ExportLogsServiceRequest in protobuf ({0}), as `Content-Type: application/x-protobuf` says"
    )]
    Protobuf(String),
    /// Not an `ExportLogsServiceRequest` in the OTLP JSON mapping.
    #[error(
        "the body is not an OTLP ExportLogsServiceRequest in the OTLP JSON mapping ({0}), as `Content-Type: application/json` says"
    )]
    Json(String),
    /// More records than allowed.
    #[error(
        "the request carries {count} log records, more than {max} (ingest.max_reports_per_request): export smaller batches (the SDK's max_export_batch_size)"
    )]
    TooManyRecords {
        /// Records in the request.
        count: usize,
        /// The limit.
        max: usize,
    },
}

/// Decode an `ExportLogsServiceRequest`, gzip undone first when `content_encoding` says so;
/// what decoding holds is taken from `allowance` before it is held.
pub fn decode_within(
    body: &[u8],
    encoding: Encoding,
    content_encoding: Option<&str>,
    opts: &OtlpOptions,
    allowance: &dyn Allowance,
) -> Result<ExportLogsServiceRequest, OtlpError> {
    let inflated = gzip::inflated(body, content_encoding, opts.max_decompressed_bytes, allowance)?;
    let body = &inflated[..];
    // The decoded messages hold about what the body holds, again for the payloads made of them.
    if !allowance.take(body.len().saturating_mul(2)) {
        return Err(FramingError::OverBudget.into());
    }
    let request = match encoding {
        Encoding::Protobuf => ExportLogsServiceRequest::decode(body).map_err(|e| OtlpError::Protobuf(e.to_string()))?,
        Encoding::Json => from_json(body, opts.max_depth)?,
    };
    let count: usize = request.resource_logs.iter().flat_map(|r| &r.scope_logs).map(|s| s.log_records.len()).sum();
    if count > opts.max_records {
        return Err(OtlpError::TooManyRecords { count, max: opts.max_records });
    }
    Ok(request)
}

/// [`decode_within`] without a memory budget.
pub fn decode(
    body: &[u8],
    encoding: Encoding,
    content_encoding: Option<&str>,
    opts: &OtlpOptions,
) -> Result<ExportLogsServiceRequest, OtlpError> {
    decode_within(body, encoding, content_encoding, opts, &Unbounded)
}

/// The OTLP JSON mapping, with what the generated types do not take: `severityNumber` as its
/// enum name (`"SEVERITY_NUMBER_INFO"`), as protobuf's JSON mapping allows.
fn from_json(body: &[u8], max_depth: usize) -> Result<ExportLogsServiceRequest, OtlpError> {
    crate::depth::check(body, max_depth).map_err(|e| OtlpError::Json(e.to_string()))?;
    let mut value: Value = serde_json::from_slice(body).map_err(|e| OtlpError::Json(e.to_string()))?;
    let records = value
        .get_mut("resourceLogs")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
        .filter_map(|r| r.get_mut("scopeLogs").and_then(Value::as_array_mut))
        .flatten()
        .filter_map(|s| s.get_mut("logRecords").and_then(Value::as_array_mut))
        .flatten();
    for record in records {
        if let Some(severity) = record.get_mut("severityNumber")
            && let Some(name) = severity.as_str()
        {
            let number = SeverityNumber::from_str_name(name)
                .ok_or_else(|| OtlpError::Json(format!("severityNumber {name:?} is not a SeverityNumber name")))?;
            *severity = json!(number as i32);
        }
    }
    serde_json::from_value(value).map_err(|e| OtlpError::Json(e.to_string()))
}

/// One log record, made a report's payload, with what routes may match it on.
#[derive(Debug, Clone, PartialEq)]
pub struct LogRecord {
    /// The record as JSON (module docs); `Err`: why it cannot be taken.
    pub payload: Result<String, String>,
    /// The resource's `service.name` (a string attribute), if any.
    pub service_name: Option<String>,
    /// The instrumentation scope's name, if not empty.
    pub scope_name: Option<String>,
    /// The attributes `labels_from` named that the record, its scope or its resource carries
    /// (first found, in that order), their values as text.
    pub picked: Vec<(String, String)>,
}

/// The value of attribute `key` as text: strings as they are, other scalars as JSON writes them;
/// arrays, maps and bytes are not label values.
fn attribute(attributes: &[KeyValue], key: &str) -> Option<String> {
    let value = attributes.iter().find(|kv| kv.key == key)?.value.as_ref()?.value.as_ref()?;
    match value {
        any_value::Value::StringValue(s) => Some(s.clone()),
        any_value::Value::BoolValue(b) => Some(b.to_string()),
        any_value::Value::IntValue(i) => Some(i.to_string()),
        any_value::Value::DoubleValue(d) => Some(d.to_string()),
        _ => None,
    }
}

/// Trace ids are 16 bytes, span ids 8, or empty (none).
fn check_ids(trace_id: &[u8], span_id: &[u8]) -> Result<(), String> {
    if !matches!(trace_id.len(), 0 | 16) {
        return Err(format!("traceId is {} bytes: a trace id is 16 bytes (32 hex digits) or absent", trace_id.len()));
    }
    if !matches!(span_id.len(), 0 | 8) {
        return Err(format!("spanId is {} bytes: a span id is 8 bytes (16 hex digits) or absent", span_id.len()));
    }
    Ok(())
}

/// Every log record of `request`, in order, as a payload with its routing metadata.
pub fn records(request: ExportLogsServiceRequest, labels_from: &[String], max_depth: usize) -> Vec<LogRecord> {
    let mut out = Vec::new();
    for resource_logs in request.resource_logs {
        let resource = resource_logs.resource.unwrap_or_default();
        let service_name = attribute(&resource.attributes, "service.name");
        let resource_json = json!({
            "attributes": resource.attributes,
            "droppedAttributesCount": resource.dropped_attributes_count,
            "schemaUrl": resource_logs.schema_url,
        });
        for scope_logs in resource_logs.scope_logs {
            let scope = scope_logs.scope.unwrap_or_default();
            let scope_name = Some(scope.name.clone()).filter(|n| !n.is_empty());
            let scope_json = json!({
                "name": scope.name,
                "version": scope.version,
                "attributes": scope.attributes,
                "droppedAttributesCount": scope.dropped_attributes_count,
                "schemaUrl": scope_logs.schema_url,
            });
            for record in scope_logs.log_records {
                let picked = labels_from
                    .iter()
                    .filter_map(|name| {
                        let value = attribute(&record.attributes, name)
                            .or_else(|| attribute(&scope.attributes, name))
                            .or_else(|| attribute(&resource.attributes, name))?;
                        Some((name.clone(), value))
                    })
                    .collect();
                let payload = check_ids(&record.trace_id, &record.span_id)
                    .and_then(|()| payload(&record, &resource_json, &scope_json, max_depth));
                out.push(LogRecord {
                    payload,
                    service_name: service_name.clone(),
                    scope_name: scope_name.clone(),
                    picked,
                });
            }
        }
    }
    out
}

fn payload(
    record: &opentelemetry_proto::tonic::logs::v1::LogRecord,
    resource: &Value,
    scope: &Value,
    max_depth: usize,
) -> Result<String, String> {
    let Value::Object(mut map) = serde_json::to_value(record).map_err(|e| e.to_string())? else {
        return Err("a log record is not a JSON object".into());
    };
    map.insert("resource".into(), resource.clone());
    map.insert("scope".into(), scope.clone());
    let text = serde_json::to_string(&Map::into_iter(map).collect::<Map<_, _>>()).map_err(|e| e.to_string())?;
    crate::depth::check(text.as_bytes(), max_depth).map_err(|e| format!("the record's {e}"))?;
    Ok(text)
}

/// The body of a string value (for tests and tools).
pub fn string_value(s: &str) -> AnyValue {
    AnyValue { value: Some(any_value::Value::StringValue(s.into())) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
    use opentelemetry_proto::tonic::logs::v1::{LogRecord as Proto, ResourceLogs, ScopeLogs};
    use opentelemetry_proto::tonic::resource::v1::Resource;

    fn opts() -> OtlpOptions {
        OtlpOptions { max_records: 10, max_depth: 32, max_decompressed_bytes: 1 << 20 }
    }

    fn kv(key: &str, value: &str) -> KeyValue {
        KeyValue { key: key.into(), value: Some(string_value(value)), ..Default::default() }
    }

    fn request(records: Vec<Proto>) -> ExportLogsServiceRequest {
        ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: Some(Resource {
                    attributes: vec![kv("service.name", "checkout"), kv("k8s.namespace.name", "shop")],
                    ..Default::default()
                }),
                scope_logs: vec![ScopeLogs {
                    scope: Some(InstrumentationScope { name: "app.orders".into(), ..Default::default() }),
                    log_records: records,
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        }
    }

    fn record(body: &str) -> Proto {
        Proto {
            time_unix_nano: 1_700_000_000_123_456_789,
            severity_number: SeverityNumber::Warn as i32,
            severity_text: "WARN".into(),
            body: Some(string_value(body)),
            attributes: vec![
                kv("order.id", "o-1"),
                KeyValue {
                    key: "n".into(),
                    value: Some(AnyValue { value: Some(any_value::Value::IntValue(9_007_199_254_740_993)) }),
                    ..Default::default()
                },
            ],
            trace_id: vec![0xab; 16],
            span_id: vec![0x01; 8],
            ..Default::default()
        }
    }

    #[test]
    fn protobuf_records_become_otlp_json_payloads_with_resource_and_scope() {
        let body = request(vec![record("one"), record("two")]).encode_to_vec();
        let req = decode(&body, Encoding::Protobuf, None, &opts()).unwrap();
        let out = records(req, &["k8s.namespace.name".into(), "order.id".into(), "absent".into()], 32);
        assert_eq!(out.len(), 2);
        let p: Value = serde_json::from_str(out[0].payload.as_ref().unwrap()).unwrap();
        assert_eq!(p["body"], json!({ "stringValue": "one" }));
        assert_eq!(p["timeUnixNano"], json!("1700000000123456789"), "64-bit ints are strings");
        assert_eq!(p["traceId"], json!("ab".repeat(16)), "ids are hex");
        assert_eq!(p["spanId"], json!("0101010101010101"));
        assert_eq!(p["severityNumber"], json!(13));
        assert_eq!(p["severityText"], json!("WARN"));
        assert_eq!(p["attributes"][1], json!({ "key": "n", "value": { "intValue": "9007199254740993" } }));
        assert_eq!(
            p["resource"]["attributes"][0],
            json!({ "key": "service.name", "value": { "stringValue": "checkout" } })
        );
        assert_eq!(p["scope"]["name"], json!("app.orders"));
        assert_eq!(out[0].service_name.as_deref(), Some("checkout"));
        assert_eq!(out[0].scope_name.as_deref(), Some("app.orders"));
        assert_eq!(
            out[0].picked,
            vec![("k8s.namespace.name".into(), "shop".into()), ("order.id".into(), "o-1".into())]
        );
    }

    #[test]
    fn the_json_mapping_takes_hex_ids_enum_names_or_numbers_and_ints_as_strings_or_numbers() {
        let body =
            br#"{"resourceLogs":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"api"}}]},
          "scopeLogs":[{"scope":{"name":"s"},"logRecords":[
            {"timeUnixNano":"1700000000000000001","severityNumber":"SEVERITY_NUMBER_ERROR","body":{"intValue":"42"},
             "traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174","unknownField":1},
            {"timeUnixNano":1700000000000000002,"severityNumber":9,"body":{"intValue":7}}]}]}]}"#;
        let req = decode(body, Encoding::Json, None, &opts()).unwrap();
        let lr = &req.resource_logs[0].scope_logs[0].log_records;
        assert_eq!(lr[0].severity_number, SeverityNumber::Error as i32);
        assert_eq!(lr[0].time_unix_nano, 1_700_000_000_000_000_001);
        assert_eq!(lr[0].trace_id[..2], [0x5b, 0x8e]);
        assert_eq!(lr[1].severity_number, 9);
        assert_eq!(lr[1].body, Some(AnyValue { value: Some(any_value::Value::IntValue(7)) }));
        let out = records(req, &[], 32);
        let p: Value = serde_json::from_str(out[0].payload.as_ref().unwrap()).unwrap();
        assert_eq!(p["traceId"], json!("5b8efff798038103d269b633813fc60c"));
        assert_eq!(p["body"], json!({ "intValue": "42" }));
    }

    #[test]
    fn malformed_bodies_are_named_errors_and_bad_ids_reject_only_their_record() {
        let e = decode(b"\x0a\xff\xff\xff", Encoding::Protobuf, None, &opts()).unwrap_err();
        assert!(matches!(e, OtlpError::Protobuf(_)), "{e}");
        let e = decode(
            br#"{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"traceId":"xyz"}]}]}]}"#,
            Encoding::Json,
            None,
            &opts(),
        )
        .unwrap_err();
        assert!(matches!(e, OtlpError::Json(_)), "{e}");
        let e = decode(
            br#"{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"severityNumber":"LOUD"}]}]}]}"#,
            Encoding::Json,
            None,
            &opts(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("LOUD"), "{e}");
        let mut short = record("x");
        short.trace_id = vec![1, 2, 3];
        let out = records(request(vec![short, record("ok")]), &[], 32);
        assert!(out[0].payload.as_ref().unwrap_err().contains("traceId is 3 bytes"));
        assert!(out[1].payload.is_ok());
        let many = request((0..11).map(|_| record("x")).collect()).encode_to_vec();
        assert!(matches!(
            decode(&many, Encoding::Protobuf, None, &opts()),
            Err(OtlpError::TooManyRecords { count: 11, max: 10 })
        ));
    }

    #[test]
    fn gzip_bodies_are_undone_and_content_types_pick_the_encoding() {
        use std::io::Write;
        let body = request(vec![record("z")]).encode_to_vec();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&body).unwrap();
        let req = decode(&gz.finish().unwrap(), Encoding::Protobuf, Some("gzip"), &opts()).unwrap();
        assert_eq!(req.resource_logs[0].scope_logs[0].log_records.len(), 1);
        assert_eq!(Encoding::of(Some("application/x-protobuf")), Some(Encoding::Protobuf));
        assert_eq!(Encoding::of(Some("Application/JSON; charset=utf-8")), Some(Encoding::Json));
        assert_eq!(Encoding::of(Some("text/plain")), None);
    }
}
