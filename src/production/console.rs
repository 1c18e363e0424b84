//! The web console a node serves at `/`: one page (`web/console.html`, its script and
//! stylesheet) showing the cluster (members, zones, partitions with their replicas and
//! leaders, refreshed live from `GET /cluster`) and a map editor on the browser client
//! (`/maps/client.js`).

use crate::production::http_api::ApiState;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

const CONSOLE_HTML: &str = include_str!("web/console.html");
const CONSOLE_JS: &str = include_str!("web/console.js");
const CONSOLE_CSS: &str = include_str!("web/console.css");

pub fn console_routes() -> Router<ApiState> {
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", CONSOLE_HTML) }),
        )
        .route(
            "/console/console.js",
            get(|| async { asset("text/javascript; charset=utf-8", CONSOLE_JS) }),
        )
        .route(
            "/console/console.css",
            get(|| async { asset("text/css; charset=utf-8", CONSOLE_CSS) }),
        )
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}
