//! The console's HTTP routes. Every operation goes through [`CliptagService`], the same
//! code that answers gRPC: a label change here is checked, versioned and authorized
//! exactly as `SetLabels` / `UpdateLabels` are, and detections come from the same
//! subscriber (with its lag accounting) as `StreamDetections`.

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
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
use crate::json;
use crate::service::CliptagService;

/// What the handlers share.
#[derive(Clone)]
pub struct Shared {
    /// The gRPC service's implementation, called directly.
    pub service: CliptagService,
    /// The streams' pictures.
    pub snapshots: Snapshots,
    /// Whether label changes need the token.
    pub token_required: bool,
    /// The host name the console was asked to listen on, when it is a name and not an
    /// address: requests may name it in `Host`.
    pub host_name: Option<String>,
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
        .fallback(|| async { ApiError::Service(Status::not_found("no such page")) })
        .method_not_allowed_fallback(|| async {
            ApiError::Rejected {
                status: StatusCode::METHOD_NOT_ALLOWED,
                code: Code::Unimplemented,
                message: "this method is not served here".into(),
            }
        })
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(shared.clone(), guard))
        .with_state(shared)
}

/// Whether `host` (a `Host` header) names this console: an IP address, `localhost`, or
/// the name it was started with. A web page whose own name was made to resolve to a
/// loopback address ("DNS rebinding") sends its own name, and is refused.
fn host_allowed(host: &str, host_name: Option<&str>) -> bool {
    let name = match host.strip_prefix('[') {
        // [::1]:8080
        Some(rest) => {
            return rest
                .split(']')
                .next()
                .is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok());
        }
        None => host.rsplit_once(':').map_or(host, |(name, _port)| name),
    };
    name.parse::<std::net::Ipv4Addr>().is_ok()
        || name.eq_ignore_ascii_case("localhost")
        || host_name.is_some_and(|n| n.eq_ignore_ascii_case(name))
}

/// Refuses requests for another host name, and changes sent by a page of another
/// origin; adds headers that keep the page from being framed or sniffed.
async fn guard(
    State(shared): State<Shared>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let headers = request.headers();
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    if !host_allowed(&host, shared.host_name.as_deref()) {
        return ApiError::Service(Status::permission_denied(format!(
            "this console does not answer for host {}",
            cliptag_engine::Quoted(&host)
        )))
        .into_response();
    }
    let changes = !matches!(
        *request.method(),
        axum::http::Method::GET | axum::http::Method::HEAD
    );
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    if changes
        && let Some(origin) = origin
        && origin.split_once("://").map(|(_, authority)| authority) != Some(host.as_str())
    {
        return ApiError::Service(Status::permission_denied(format!(
            "changes from a page of {} are refused",
            cliptag_engine::Quoted(origin)
        )))
        .into_response();
    }
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'self'; frame-ancestors 'none'"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

async fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// An error as HTTP: a JSON body with the gRPC code's name and the message.
pub enum ApiError {
    /// The service refused: the HTTP status that means the same.
    Service(Status),
    /// The request is not what the route takes, with the HTTP status that says how
    /// (400 bad JSON or query, 405, 413 too large, 415 not JSON, 422 the wrong shape).
    Rejected {
        status: StatusCode,
        code: Code,
        message: String,
    },
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let status = rejection.status();
        Self::Rejected {
            status,
            code: if status == StatusCode::PAYLOAD_TOO_LARGE {
                Code::ResourceExhausted
            } else {
                Code::InvalidArgument
            },
            message: format!("the request body: {}", rejection.body_text()),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        Self::Rejected {
            status: rejection.status(),
            code: Code::InvalidArgument,
            message: format!("the query: {}", rejection.body_text()),
        }
    }
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
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
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
            Self::Rejected {
                status,
                code,
                message,
            } => (status, code_name(code), message),
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
    query: Result<Query<StreamQuery>, QueryRejection>,
) -> Result<Json<json::Sets>, ApiError> {
    let Query(query) = query?;
    let reply = shared
        .service
        .get_labels(Request::new(v1::GetLabelsRequest {
            stream: query.stream,
        }))
        .await?;
    Ok(Json(json::Sets::from_proto(reply.into_inner().sets)))
}

// Changes take JSON only: a page on another site cannot send `application/json` here
// without a CORS preflight, which this server never grants (and `guard` refuses changes
// from other origins and requests for other host names).
async fn set_labels(
    State(shared): State<Shared>,
    headers: HeaderMap,
    body: Result<Json<json::SetLabels>, JsonRejection>,
) -> Result<Json<json::Sets>, ApiError> {
    let Json(body) = body?;
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
    let Json(body) = body?;
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
    query: Result<Query<StreamQuery>, QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let Query(query) = query?;
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
    fn only_addresses_localhost_and_the_given_name_are_answered() {
        for host in [
            "127.0.0.1:8080",
            "127.0.0.1",
            "[::1]:8080",
            "localhost:80",
            "LOCALHOST",
            "10.1.2.3:9",
        ] {
            assert!(host_allowed(host, None), "{host}");
        }
        for host in [
            "evil.example:8080",
            "evil.example",
            "",
            "[not-ip]:80",
            "localhost.evil.example:1",
        ] {
            assert!(!host_allowed(host, None), "{host}");
        }
        assert!(host_allowed("cam-host:8080", Some("cam-host")));
        assert!(!host_allowed("other:8080", Some("cam-host")));
    }

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
