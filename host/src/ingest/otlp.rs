//! OTLP logs in (`POST /v1/logs`, the gRPC `LogsService/Export`): one report per log record,
//! through the same credentials, rate and body limits, routes, queue share and idempotency as
//! `/v1/ingest` (`Ingest::ingest`).
//!
//! Decoding is `data_exporter_wire::otlp` (fuzzed there). Each record's labels are the access
//! key's, `tag` = the resource's `service.name` (what a route's `match.tag` matches), `scope` = the
//! instrumentation scope's name, and the attributes `ingest.otlp.labels_from` names; routes
//! match them as they match any label. A record no route takes, or that is invalid, is not
//! refused with the rest: it is counted in the answer's `partial_success.rejected_log_records`.
//!
//! A request without an `Idempotency-Key` gets report ids derived from its body: an exporter's
//! retry of the same batch (after a timeout or a 503) is recognised, not queued twice.

use super::{DECODES, Ingest, Refused, Request, TenantSet, route_error};
use crate::accept::Submission;
use crate::capabilities::log_budget::cut;
use data_exporter_wire::otlp::{self, Encoding, OtlpOptions};
use std::collections::HashMap;
use std::sync::Arc;

pub use data_exporter_wire::otlp::OtlpError;

/// The answer to an export: how many records were taken, and why the others were not.
#[derive(Debug, Default, PartialEq)]
pub struct Exported {
    /// Reports accepted (queued, or known from an earlier try).
    pub accepted: usize,
    /// Records refused.
    pub rejected: usize,
    /// Why (the first reasons, for `partial_success.error_message`); empty when none were.
    pub message: String,
}

impl Exported {
    /// The OTLP answer: `partial_success` when records were refused.
    pub fn response(self) -> otlp::ExportLogsServiceResponse {
        let partial_success = (self.rejected > 0).then_some(otlp::ExportLogsPartialSuccess {
            rejected_log_records: self.rejected as i64,
            error_message: self.message,
        });
        otlp::ExportLogsServiceResponse { partial_success }
    }
}

/// The destinations of each label set seen in a request (`None`: no route takes it).
type Routed = HashMap<Vec<(String, String)>, Option<Arc<[crate::destination::Destination]>>>;

/// The label name of the instrumentation scope's name.
pub const SCOPE_LABEL: &str = "scope";

/// The labels of one record: the access key's, then `tag`, `scope` and the picked attributes,
/// each valid as a label (values cut to the label limit at a character boundary, none with a
/// control character) and at most
/// `envelope::MAX_LABELS` in all.
fn labels(base: &[(String, String)], record: &otlp::LogRecord) -> Vec<(String, String)> {
    let mut labels = base.to_vec();
    let extra = record
        .service_name
        .iter()
        .map(|s| ("tag", s.as_str()))
        .chain(record.scope_name.iter().map(|s| (SCOPE_LABEL, s.as_str())))
        .chain(record.picked.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    for (name, value) in extra {
        if labels.len() >= crate::envelope::MAX_LABELS {
            break;
        }
        let value = cut(value, super::LABEL_VALUE_MAX);
        if !labels.iter().any(|(k, _)| k == name)
            && crate::envelope::valid_label(name, value)
            && !value.chars().any(char::is_control)
        {
            labels.push((name.to_string(), value.to_string()));
        }
    }
    labels.sort();
    labels
}

impl Ingest {
    /// Take an OTLP `ExportLogsServiceRequest` from an agent: authenticated (`req`'s
    /// `Authorization`, as `/v1/ingest`), within its rate and limits, decoded, one report per
    /// record, routed per record and accepted.
    #[tracing::instrument(skip_all, fields(tenant, records))]
    pub async fn ingest_otlp(
        &self,
        req: Request<'_>,
        body: bytes::Bytes,
        encoding: Encoding,
        content_encoding: Option<String>,
        budget: Option<Arc<dyn super::Budget>>,
    ) -> Result<Exported, Refused> {
        self.accept.ingests()?;
        let set = self.tenants.current();
        let tenant = self.admit(&set, req, None, body.len())?;
        let key = &tenant.cfg.access_key;
        tracing::Span::current().record("tenant", key.as_str());
        let cfg = self.tenants.config();
        let opts = OtlpOptions {
            max_records: cfg.max_reports_per_request,
            max_depth: self.limits.max_json_depth,
            max_decompressed_bytes: self.max_body(tenant),
        };
        let labels_from = cfg.otlp.labels_from.clone();
        let allowance = budget.clone();
        let sent = body.clone();
        let records = {
            let _slot = DECODES.acquire().await.expect("never closed");
            tokio::task::spawn_blocking(move || {
                let ce = content_encoding.as_deref();
                let request = match &allowance {
                    Some(a) => otlp::decode_within(&body, encoding, ce, &opts, &**a),
                    None => otlp::decode(&body, encoding, ce, &opts),
                }?;
                Ok(otlp::records(request, &labels_from, opts.max_depth))
            })
            .await
            .expect("decoding does not panic")
        };
        let records = records.map_err(|e| match e {
            OtlpError::Framing(data_exporter_wire::framing::FramingError::OverBudget)
                if budget.as_ref().is_some_and(|c| c.never_fits()) =>
            {
                Refused::NeverFits { max_buffered_bytes: self.limits.max_buffered_bytes }
            }
            OtlpError::Framing(e) => Refused::Framing(e),
            e => Refused::Otlp(e),
        })?;
        tracing::Span::current().record("records", records.len());
        let mut ids = self.otlp_ids(req, key, &sent, records.len())?.into_iter();
        let base = TenantSet::labels(tenant, None);
        let mut out = Exported::default();
        let mut reasons: Vec<String> = Vec::new();
        // Records left out, by code (counted once per request).
        let mut left_out: Vec<(&'static str, u64)> = Vec::new();
        let mut reject = |code: &'static str, why: String, out: &mut Exported| {
            out.rejected += 1;
            match left_out.iter_mut().find(|(c, _)| *c == code) {
                Some((_, n)) => *n += 1,
                None => left_out.push((code, 1)),
            }
            if reasons.len() < 3 && !reasons.contains(&why) {
                reasons.push(why);
            }
        };
        // Records sharing labels share destinations: the routes are matched once per label set.
        let mut routed = Routed::new();
        let mut reports: Vec<Submission> = Vec::with_capacity(records.len());
        for record in records {
            let id = ids.next().expect("one id per record");
            let payload = match record.payload.clone() {
                Ok(p) => p,
                Err(why) => {
                    reject("invalid_record", format!("a log record is invalid: {why}"), &mut out);
                    continue;
                }
            };
            let labels = labels(&base, &record);
            let destinations =
                routed.entry(labels.clone()).or_insert_with(|| set.destinations_of(tenant, &labels)).clone();
            let Some(destinations) = destinations else {
                let tag = cut(record.service_name.as_deref().unwrap_or(""), 64);
                reject(
                    "no_route",
                    format!(
                        "no route of access key `{key}` takes records of service.name `{tag}`: the operator adds a \
                         route that matches them"
                    ),
                    &mut out,
                );
                continue;
            };
            reports.push(set.submission(tenant, destinations, payload, labels, Some(id)));
        }
        out.message = reasons.join("; ");
        let metrics = self.accept.metrics();
        for (code, n) in left_out {
            metrics
                .otlp_records_rejected
                .get_or_create(&crate::metrics::Rejection { code: code.to_string() })
                .inc_by(n);
        }
        if reports.is_empty() {
            return Ok(out);
        }
        let share = crate::queue::TenantShare { max_bytes: tenant.cfg.max_queue_bytes, tenants: set.len() };
        let receipts = self.accept.accept(reports, true, Some(share)).await.map_err(|e| route_error(key, e))?;
        out.accepted = receipts.len();
        self.count(key, &receipts);
        Ok(out)
    }

    /// Report ids: from the `Idempotency-Key` header when sent, else from the body (an OTLP
    /// exporter retries a batch with the same bytes and no key).
    fn otlp_ids(&self, req: Request<'_>, key: &str, body: &[u8], n: usize) -> Result<Vec<uuid::Uuid>, Refused> {
        let scope = format!("tenant:{key}");
        let header = req.headers.get_all(crate::idempotency::HEADER).iter().map(|v| v.as_bytes());
        let name = crate::idempotency::key(header)?.unwrap_or("otlp");
        Ok(self.report_ids.ids(&scope, name, body, n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(service: Option<&str>, scope: Option<&str>, picked: &[(&str, &str)]) -> otlp::LogRecord {
        otlp::LogRecord {
            payload: Ok("{}".into()),
            service_name: service.map(str::to_owned),
            scope_name: scope.map(str::to_owned),
            picked: picked.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        }
    }

    #[test]
    fn service_name_is_the_tag_scope_and_picked_attributes_are_labels_bounded_and_valid() {
        let base = vec![("env".to_string(), "prod".to_string())];
        let l = labels(&base, &record(Some("checkout"), Some("app.orders"), &[("k8s.namespace.name", "shop")]));
        let want = [("env", "prod"), ("k8s.namespace.name", "shop"), ("scope", "app.orders"), ("tag", "checkout")];
        assert_eq!(l, want.map(|(k, v)| (k.to_string(), v.to_string())));
        // A long value is cut at a character boundary; an invalid name is left out; the access
        // key's own label is not overridden.
        let long = "é".repeat(200);
        let l = labels(&base, &record(Some(&long), None, &[("bad name", "x"), ("env", "dev")]));
        let tag = &l.iter().find(|(k, _)| k == "tag").unwrap().1;
        assert!(tag.len() <= 256 && tag.chars().all(|c| c == 'é'));
        assert_eq!(l.len(), 2, "{l:?}");
        assert!(l.contains(&("env".into(), "prod".into())));
        let many: Vec<(String, String)> = (0..40).map(|i| (format!("a{i}"), "v".to_string())).collect();
        let picked: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(labels(&[], &record(None, None, &picked)).len(), crate::envelope::MAX_LABELS);
    }
}
