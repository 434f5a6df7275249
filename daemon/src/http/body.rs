//! Bodies that count their bytes, and the response body mtlsd hands to hyper.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, SizeHint};

/// A body passed through unchanged, adding the length of each data frame to a counter and
/// holding `guard` until the body is finished with (dropped).
pub struct Counted<B> {
    inner: B,
    count: Arc<AtomicU64>,
    guard: Option<Box<dyn Send + Sync>>,
}

impl<B> std::fmt::Debug for Counted<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Counted")
            .field("count", &self.count)
            .finish_non_exhaustive()
    }
}

impl<B> Counted<B> {
    /// Wraps `inner`, counting into `count`.
    pub fn new(inner: B, count: Arc<AtomicU64>) -> Self {
        Self {
            inner,
            count,
            guard: None,
        }
    }

    /// Keeps `guard` alive as long as the body (e.g. to log when the response is done).
    pub fn with_guard(mut self, guard: impl Send + Sync + 'static) -> Self {
        self.guard = Some(Box::new(guard));
        self
    }
}

impl<B> Body for Counted<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let frame = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(f))) = &frame
            && let Some(data) = f.data_ref()
        {
            self.count.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What mtlsd answers with: the service's body, or one of its own.
pub type ResponseBody = Counted<BoxBody<Bytes, hyper::Error>>;

/// A short body written by mtlsd itself (403, 401, 425, 502, …).
pub fn text(s: String) -> BoxBody<Bytes, hyper::Error> {
    Full::new(Bytes::from(s))
        .map_err(|never| match never {})
        .boxed()
}
