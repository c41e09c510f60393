//! The HTTP endpoints: `/metrics`, `/healthz` (the process serves) and
//! `/readyz`.
//!
//! Ready means "able to do its part": a standby replica (not holding the
//! lease) is ready, since standing by is all it should do; the leader is
//! ready once its caches are synced. Were standbys unready, a rolling update
//! could never finish: the new pod waits for the lease the old pod holds.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use axum::{Router, extract::State, http::StatusCode, routing::get};

use crate::metrics::Metrics;

/// What the endpoints report on, shared with the controller.
#[derive(Default)]
pub struct Health {
    leading: AtomicBool,
    synced: AtomicBool,
}

impl Health {
    pub fn set_leading(&self, leading: bool) {
        self.leading.store(leading, Ordering::Release);
        if !leading {
            self.synced.store(false, Ordering::Release);
        }
    }

    pub fn set_synced(&self) {
        self.synced.store(true, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        !self.leading.load(Ordering::Acquire) || self.synced.load(Ordering::Acquire)
    }
}

#[derive(Clone)]
struct Shared {
    health: Arc<Health>,
    metrics: Arc<Metrics>,
}

pub fn router(health: Arc<Health>, metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(Shared { health, metrics })
}

/// Serve [`router`] on `address` until the process ends.
pub async fn serve(address: SocketAddr, health: Arc<Health>, metrics: Arc<Metrics>) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(address).await?;
    axum::serve(listener, router(health, metrics)).await
}

async fn metrics_text(State(shared): State<Shared>) -> ([(&'static str, &'static str); 1], String) {
    let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    ([("content-type", content_type)], shared.metrics.encode())
}

async fn ready(State(shared): State<Shared>) -> (StatusCode, &'static str) {
    if shared.health.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "caches not synced\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn get(address: SocketAddr, path: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    }

    #[tokio::test]
    async fn endpoints_answer() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let health = Arc::new(Health::default());
        let app = router(health.clone(), Arc::new(Metrics::default()));
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

        assert!(get(address, "/healthz").await.starts_with("HTTP/1.1 200"));
        assert!(get(address, "/metrics").await.contains("lvs_controller_reconciles_total 0"));
        // Standby: ready. Leading: ready once synced.
        assert!(get(address, "/readyz").await.starts_with("HTTP/1.1 200"));
        health.set_leading(true);
        assert!(get(address, "/readyz").await.starts_with("HTTP/1.1 503"));
        health.set_synced();
        assert!(get(address, "/readyz").await.starts_with("HTTP/1.1 200"));
        health.set_leading(false);
        health.set_leading(true);
        assert!(get(address, "/readyz").await.starts_with("HTTP/1.1 503"));
    }
}
