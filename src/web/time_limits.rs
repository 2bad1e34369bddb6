//! Time limits on every request: the body must arrive within `http.body_timeout` of
//! the head, and the whole request must be answered within `http.request_timeout`, so
//! a client that sends its body a byte at a time holds a connection for seconds, not
//! for as long as it likes. (Connection-level limits live in `server`.)

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use http_body::Frame;

use super::AppState;
use super::pages::Extra;

/// Applies the body deadline and the request deadline.
pub(super) async fn time_limits(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let http = &state.config.http;
    let path = request.uri().path().to_string();
    let timed_out = Arc::new(AtomicBool::new(false));
    let deadline = tokio::time::Instant::now() + http.body_timeout;
    let request = request.map(|body| {
        Body::new(DeadlineBody {
            inner: body,
            sleep: Box::pin(tokio::time::sleep_until(deadline)),
            timed_out: timed_out.clone(),
        })
    });
    let mut response = match tokio::time::timeout(http.request_timeout, next.run(request)).await {
        Ok(response) if !timed_out.load(Ordering::SeqCst) => return response,
        // The handler saw the body fail; say why rather than "bad request".
        Ok(_) => super::message(
            &state,
            StatusCode::REQUEST_TIMEOUT,
            "That took too long",
            &["The form took too long to arrive. Nothing was changed. Please try again."],
            None,
            Extra::default(),
        ),
        Err(_) => {
            tracing::warn!(
                %path, limit = ?http.request_timeout,
                "a request took longer than http.request_timeout"
            );
            super::message(
                &state,
                StatusCode::SERVICE_UNAVAILABLE,
                "Please try again",
                &["This took longer than it should. Please try again in a minute."],
                None,
                Extra {
                    retry_after: Some(60),
                    ..Extra::default()
                },
            )
        }
    };
    // The rest of a late body is not worth reading.
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// A request body that fails once its deadline has passed.
struct DeadlineBody {
    inner: Body,
    sleep: Pin<Box<tokio::time::Sleep>>,
    timed_out: Arc<AtomicBool>,
}

/// The body did not arrive within `http.body_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within http.body_timeout")]
struct BodyTimedOut;

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        if self.sleep.as_mut().poll(cx).is_ready() {
            self.timed_out.store(true, Ordering::SeqCst);
            return Poll::Ready(Some(Err(axum::Error::new(BodyTimedOut))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
