//! OTLP/gRPC: `opentelemetry.proto.collector.logs.v1.LogsService/Export` on `ingest.grpc_listen`
//! (HTTP/2; with `[tls]`, the public listener's certificates and client-certificate policy,
//! reloaded as they change, ALPN `h2`). The request goes through tenant ingest exactly as
//! `POST /v1/logs` does (`Ingest::ingest_otlp`): credentials from the `authorization`
//! metadata. Refusals are gRPC statuses: UNAUTHENTICATED, PERMISSION_DENIED,
//! RESOURCE_EXHAUSTED and UNAVAILABLE (with a `google.rpc.RetryInfo`), INVALID_ARGUMENT. The
//! trace and metrics services answer UNIMPLEMENTED.

use super::tls::TlsReloader;
use super::{ApiError, AppState};
use crate::ingest;
use data_exporter_wire::otlp::{Encoding, ExportLogsServiceRequest, ExportLogsServiceResponse};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::graceful::GracefulShutdown;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{LogsService, LogsServiceServer};
use prost::Message;
use std::sync::Arc;
use tonic::codec::CompressionEncoding;
use tower::ServiceExt;

/// The `LogsService` of tenant ingest.
struct Logs(AppState);

/// `google.protobuf.Duration`.
#[derive(Clone, PartialEq, prost::Message)]
struct ProtoDuration {
    #[prost(int64, tag = "1")]
    seconds: i64,
}

/// `google.rpc.RetryInfo`.
#[derive(Clone, PartialEq, prost::Message)]
struct RetryInfo {
    #[prost(message, optional, tag = "1")]
    retry_delay: Option<ProtoDuration>,
}

/// `google.protobuf.Any`.
#[derive(Clone, PartialEq, prost::Message)]
struct Any {
    #[prost(string, tag = "1")]
    type_url: String,
    #[prost(bytes = "vec", tag = "2")]
    value: Vec<u8>,
}

/// `google.rpc.Status` with details.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
    #[prost(message, repeated, tag = "3")]
    details: Vec<Any>,
}

/// A refusal as a gRPC status; one to retry carries its delay as `RetryInfo`.
fn status(state: &AppState, e: ApiError) -> tonic::Status {
    state.metrics.reject(e.code);
    let code = match e.status.as_u16() {
        400 | 413 | 415 => tonic::Code::InvalidArgument,
        401 => tonic::Code::Unauthenticated,
        403 => tonic::Code::PermissionDenied,
        404 => tonic::Code::NotFound,
        429 => tonic::Code::ResourceExhausted,
        503 => tonic::Code::Unavailable,
        _ => tonic::Code::Internal,
    };
    let Some(secs) = e.retry_after else { return tonic::Status::new(code, e.message) };
    let retry = RetryInfo { retry_delay: Some(ProtoDuration { seconds: secs as i64 }) };
    let details = RpcStatus {
        code: code as i32,
        message: e.message.clone(),
        details: vec![Any {
            type_url: "type.googleapis.com/google.rpc.RetryInfo".into(),
            value: retry.encode_to_vec(),
        }],
    };
    // Both places exporters look: `grpc-status-details-bin` (a `google.rpc.Status` with the
    // `RetryInfo`: the Collector, grpc-go) and `google.rpc.retryinfo-bin` (the `RetryInfo`
    // alone: the Python SDK's exporter reads only this trailer).
    let mut trailers = tonic::metadata::MetadataMap::new();
    trailers.insert_bin(RETRY_INFO_KEY, tonic::metadata::MetadataValue::from_bytes(&retry.encode_to_vec()));
    tonic::Status::with_details_and_metadata(code, e.message, details.encode_to_vec().into(), trailers)
}

/// The trailer the OpenTelemetry Python exporter reads its retry delay from.
const RETRY_INFO_KEY: &str = "google.rpc.retryinfo-bin";

#[tonic::async_trait]
impl LogsService for Logs {
    async fn export(
        &self,
        request: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        let state = &self.0;
        let (metadata, _, message) = request.into_parts();
        let headers = metadata.into_headers();
        // One path for both transports: the request as protobuf bytes (prost encodes a message
        // the same way every time, so an exporter's retry gets the same report ids).
        let body = bytes::Bytes::from(message.encode_to_vec());
        let req = ingest::Request { headers: &headers, access_key: None };
        match state.ingest.ingest_otlp(req, body, Encoding::Protobuf, None, None).await {
            Ok(exported) => Ok(tonic::Response::new(exported.response())),
            Err(refused) => Err(status(state, refused.into())),
        }
    }
}

const LOGS_PATH: &str = "/opentelemetry.proto.collector.logs.v1.LogsService/";

/// Serve the `LogsService` on `tcp` until `shutdown`; then let open calls finish.
pub async fn serve(
    tcp: tokio::net::TcpListener,
    tls: Option<Arc<TlsReloader>>,
    state: AppState,
    max_body_bytes: usize,
    shutdown: impl Future<Output = ()> + Send,
) {
    let logs = LogsServiceServer::new(Logs(state))
        .accept_compressed(CompressionEncoding::Gzip)
        .max_decoding_message_size(max_body_bytes);
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = tcp.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::debug!(error = %e, "accepting a gRPC connection failed");
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let logs = logs.clone();
        let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
            let logs = logs.clone();
            async move {
                if req.uri().path().starts_with(LOGS_PATH) {
                    logs.oneshot(req).await
                } else {
                    let message = format!(
                        "this host takes OTLP logs only ({LOGS_PATH}Export), not {}: send traces and metrics \
                         elsewhere, or turn them off in the exporter",
                        req.uri().path()
                    );
                    Ok(tonic::Status::unimplemented(message).into_http())
                }
            }
        });
        let watcher = graceful.watcher();
        let tls = tls.clone();
        tokio::spawn(async move {
            let http = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
            let result = match tls {
                None => watcher.watch(http.serve_connection(TokioIo::new(stream), service)).await,
                Some(tls) => {
                    let mut config = (*tls.current()).clone();
                    config.alpn_protocols = vec![b"h2".to_vec()];
                    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
                    match acceptor.accept(stream).await {
                        Ok(stream) => watcher.watch(http.serve_connection(TokioIo::new(stream), service)).await,
                        Err(e) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed (gRPC)");
                            return;
                        }
                    }
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "gRPC connection ended with an error");
            }
        });
    }
    drop(tcp);
    graceful.shutdown().await;
}
