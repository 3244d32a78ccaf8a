//! The ingest baseline: an axum server that parses each `POST /forward` body as the host does
//! (the same envelope parser) and answers 202, with nothing else: no routing, queue or delivery.
//! Usage: `baseline ADDR`.

use axum::Router;
use axum::body::Bytes;
use axum::http::StatusCode;
use axum::routing::{get, post};

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

async fn forward(body: Bytes) -> (StatusCode, &'static str) {
    match data_exporter::envelope::parse_body(&body, 1000) {
        Ok(_) => (StatusCode::ACCEPTED, r#"{"accepted":1}"#),
        Err(_) => (StatusCode::BAD_REQUEST, r#"{"error":"bad envelope"}"#),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:6790".into());
    let app = Router::new().route("/forward", post(forward)).route("/readyz", get(|| async { "ready" }));
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    axum::serve(listener, app).await?;
    Ok(())
}
