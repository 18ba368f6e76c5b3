//! The console's HTTP routes. Every operation goes through [`CliptagService`], the same
//! code that answers gRPC: a label change here is checked, versioned and authorized
//! exactly as `SetLabels` / `UpdateLabels` are, and detections come from the same
//! subscriber (with its lag accounting) as `StreamDetections`.

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use cliptag_proto::v1;
use cliptag_proto::v1::cliptag_server::Cliptag;
use serde::Deserialize;
use tokio_stream::{Stream, StreamExt};
use tonic::{Code, Request, Status};

use super::Snapshots;
use super::json;
use crate::service::CliptagService;

/// What the handlers share.
#[derive(Clone)]
pub struct Shared {
    pub service: CliptagService,
    pub snapshots: Snapshots,
    pub token_required: bool,
}

/// The page and its assets, compiled into the binary: nothing is fetched at run time.
const INDEX_HTML: &str = include_str!("assets/index.html");
const CONSOLE_JS: &str = include_str!("assets/console.js");
const CONSOLE_CSS: &str = include_str!("assets/console.css");

/// Largest request body accepted (a label set of thousands of labels fits).
const MAX_BODY_BYTES: usize = 1 << 20;

/// The routes.
pub fn router(shared: Shared) -> axum::Router {
    axum::Router::new()
        .route("/", get(|| asset("text/html; charset=utf-8", INDEX_HTML)))
        .route(
            "/console.js",
            get(|| asset("text/javascript; charset=utf-8", CONSOLE_JS)),
        )
        .route(
            "/console.css",
            get(|| asset("text/css; charset=utf-8", CONSOLE_CSS)),
        )
        .route("/api/info", get(info))
        .route("/api/streams", get(streams))
        .route("/api/labels", get(get_labels).put(set_labels))
        .route("/api/labels/update", post(update_labels))
        .route("/api/detections", get(detections))
        .route("/api/streams/{id}/snapshot.jpg", get(snapshot))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(shared)
}

async fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// An error as HTTP: a JSON body with the gRPC code's name and the message.
pub enum ApiError {
    /// The service refused: the HTTP status that means the same.
    Service(Status),
    /// The body is not what the route takes: axum's status for it (400 bad JSON, 413
    /// too large, 415 not JSON, 422 the wrong shape).
    Body(JsonRejection),
}

impl From<Status> for ApiError {
    fn from(status: Status) -> Self {
        Self::Service(status)
    }
}

/// The HTTP status for a gRPC code.
fn http_status(code: Code) -> StatusCode {
    match code {
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::FailedPrecondition | Code::Aborted => StatusCode::CONFLICT,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The proto's name of a code, as gRPC tools print it.
fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, message) = match self {
            Self::Service(s) => (
                http_status(s.code()),
                code_name(s.code()),
                s.message().to_string(),
            ),
            Self::Body(rejection) => {
                let status = rejection.status();
                let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
                    Code::ResourceExhausted
                } else {
                    Code::InvalidArgument
                };
                let message = format!("the request body: {}", rejection.body_text());
                (status, code_name(code), message)
            }
        };
        (status, Json(json::Error { code, message })).into_response()
    }
}

/// A service request carrying the HTTP request's `Authorization` header as the gRPC
/// metadata the service checks.
fn request<T>(headers: &HeaderMap, message: T) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
    {
        request.metadata_mut().insert("authorization", value);
    }
    request
}

#[derive(serde::Serialize)]
struct Info {
    token_required: bool,
    version: &'static str,
}

async fn info(State(shared): State<Shared>) -> Json<Info> {
    Json(Info {
        token_required: shared.token_required,
        version: env!("CARGO_PKG_VERSION"),
    })
}

async fn streams(State(shared): State<Shared>) -> Result<Json<json::Streams>, ApiError> {
    let reply = shared
        .service
        .list_streams(Request::new(v1::ListStreamsRequest {}))
        .await?;
    Ok(Json(json::Streams::from_proto(reply.into_inner())))
}

#[derive(Deserialize)]
struct StreamQuery {
    #[serde(default)]
    stream: String,
}

async fn get_labels(
    State(shared): State<Shared>,
    Query(query): Query<StreamQuery>,
) -> Result<Json<json::Sets>, ApiError> {
    let reply = shared
        .service
        .get_labels(Request::new(v1::GetLabelsRequest {
            stream: query.stream,
        }))
        .await?;
    Ok(Json(json::Sets::from_proto(reply.into_inner().sets)))
}

// Changes take JSON only: a page on another site cannot send `application/json` here
// without a CORS preflight, which this server never grants.
async fn set_labels(
    State(shared): State<Shared>,
    headers: HeaderMap,
    body: Result<Json<json::SetLabels>, JsonRejection>,
) -> Result<Json<json::Sets>, ApiError> {
    let Json(body) = body.map_err(ApiError::Body)?;
    let reply = shared
        .service
        .set_labels(request(&headers, body.into_proto()?))
        .await?;
    Ok(Json(json::Sets::from_proto(reply.into_inner().sets)))
}

async fn update_labels(
    State(shared): State<Shared>,
    headers: HeaderMap,
    body: Result<Json<json::UpdateLabels>, JsonRejection>,
) -> Result<Json<json::Sets>, ApiError> {
    let Json(body) = body.map_err(ApiError::Body)?;
    let reply = shared
        .service
        .update_labels(request(&headers, body.into_proto()))
        .await?;
    Ok(Json(json::Sets::from_proto(reply.into_inner().sets)))
}

/// Detections as server-sent events (`detection`, `lagged`), from the same subscriber
/// as gRPC's `StreamDetections`: a slow page is told how much it missed and never slows
/// the pipeline.
async fn detections(
    State(shared): State<Shared>,
    Query(query): Query<StreamQuery>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let streams = if query.stream.is_empty() {
        Vec::new()
    } else {
        vec![query.stream]
    };
    let reply = shared
        .service
        .stream_detections(Request::new(v1::StreamDetectionsRequest {
            streams,
            include_empty: true,
            ..Default::default()
        }))
        .await?;
    let events = reply.into_inner().map_while(|item| {
        let event = match item.ok()?.event? {
            v1::detection_event::Event::Detection(d) => SseEvent::default()
                .event("detection")
                .json_data(json::Detection::from_proto(d)),
            v1::detection_event::Event::Lagged(l) => SseEvent::default()
                .event("lagged")
                .json_data(serde_json::json!({ "missed": l.missed })),
        };
        // Serializing these shapes cannot fail; were it to, the stream ends and the
        // browser reconnects.
        event.ok().map(Ok)
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(10))))
}

async fn snapshot(State(shared): State<Shared>, Path(id): Path<String>) -> Response {
    match shared.snapshots.get(&id) {
        Some(jpeg) => (
            [
                (header::CONTENT_TYPE, HeaderValue::from_static("image/jpeg")),
                (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            ],
            jpeg,
        )
            .into_response(),
        None => ApiError::Service(Status::not_found(format!(
            "no picture of stream {} yet",
            cliptag_engine::Quoted(&id)
        )))
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_service_error_keeps_its_meaning_over_http() {
        assert_eq!(http_status(Code::InvalidArgument), StatusCode::BAD_REQUEST);
        assert_eq!(http_status(Code::FailedPrecondition), StatusCode::CONFLICT);
        assert_eq!(http_status(Code::NotFound), StatusCode::NOT_FOUND);
        assert_eq!(http_status(Code::Unauthenticated), StatusCode::UNAUTHORIZED);
        assert_eq!(
            http_status(Code::Internal),
            StatusCode::INTERNAL_SERVER_ERROR
        );
        assert_eq!(code_name(Code::FailedPrecondition), "FAILED_PRECONDITION");
    }
}
