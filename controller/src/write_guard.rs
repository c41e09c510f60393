//! Writes bounded by the lease: a layer of the controller's API client through
//! which every request passes, so that no write (an LvsNode's server-side
//! apply, a deletion, a status patch, a finalizer patch, an Event) can forget
//! it. Reads (lists, watches) pass untouched.
//!
//! The lease loop publishes the [`WriteDeadline`]: the start of the last
//! successful renewal plus the renew deadline, or `None` while this replica
//! does not lead. A write is sent only before that instant, and is abandoned
//! at it (a later renewal moves it on) or as soon as leadership is lost. The
//! deadline ends before the lease could expire for another replica (the renew
//! deadline is shorter than the lease duration), so no write of a former
//! leader lands after another replica may have started writing.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use http::{Method, Request};
use tokio::{sync::watch, time::Instant};
use tower::{BoxError, Layer, Service};

/// Until when this replica may write; `None` while it does not lead.
pub type WriteDeadline = Option<Instant>;

/// Why a write was not sent or not waited for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("not the leader: the write was not sent")]
    NotLeading,
    #[error("the lease's renew deadline passed: the write was not sent or not waited for")]
    DeadlinePassed,
    #[error("leadership was lost: the write was abandoned")]
    LeadershipLost,
}

/// Bounds the writes of the services it wraps by the deadlines on `deadline`.
#[derive(Clone)]
pub struct WriteGuardLayer {
    deadline: watch::Receiver<WriteDeadline>,
}

impl WriteGuardLayer {
    pub fn new(deadline: watch::Receiver<WriteDeadline>) -> Self {
        WriteGuardLayer { deadline }
    }
}

impl<S> Layer<S> for WriteGuardLayer {
    type Service = WriteGuard<S>;

    fn layer(&self, inner: S) -> WriteGuard<S> {
        WriteGuard { inner, deadline: self.deadline.clone() }
    }
}

/// See [`WriteGuardLayer`].
#[derive(Clone)]
pub struct WriteGuard<S> {
    inner: S,
    deadline: watch::Receiver<WriteDeadline>,
}

type Respond<R> = Pin<Box<dyn Future<Output = Result<R, BoxError>> + Send>>;

impl<S, B> Service<Request<B>> for WriteGuard<S>
where
    S: Service<Request<B>>,
    S::Error: Into<BoxError>,
    S::Response: Send + 'static,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Respond<S::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        if is_read(request.method()) {
            let response = self.inner.call(request);
            return Box::pin(async move { response.await.map_err(Into::into) });
        }
        let mut deadline = self.deadline.clone();
        // Decided before the request goes out: a refused write never reaches
        // the API server.
        let mut until = match *deadline.borrow_and_update() {
            None => return refuse(Refused::NotLeading),
            Some(at) if at <= Instant::now() => return refuse(Refused::DeadlinePassed),
            Some(at) => at,
        };
        let response = self.inner.call(request);
        Box::pin(async move {
            tokio::pin!(response);
            loop {
                tokio::select! {
                    response = &mut response => return response.map_err(Into::into),
                    () = tokio::time::sleep_until(until) => return Err(Refused::DeadlinePassed.into()),
                    changed = deadline.changed() => match changed.ok().and(*deadline.borrow_and_update()) {
                        // Renewed meanwhile: the lease is still ours until then.
                        Some(later) => until = later,
                        None => return Err(Refused::LeadershipLost.into()),
                    },
                }
            }
        })
    }
}

fn refuse<R: Send + 'static>(why: Refused) -> Respond<R> {
    Box::pin(std::future::ready(Err(why.into())))
}

/// Whether a request only reads (a get, a list, a watch).
fn is_read(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http::Response;
    use kube::{
        Api, Client,
        api::{Patch, PatchParams},
        client::Body,
    };
    use lvs_crds::LvsNode;
    use serde_json::json;

    use super::*;

    type ApiServer = tower_test::mock::Handle<Request<Body>, Response<Body>>;

    /// A client through the guard to a mock API server, and the deadline's sender.
    fn guarded(deadline: WriteDeadline) -> (Api<LvsNode>, ApiServer, watch::Sender<WriteDeadline>) {
        let (mock, server) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let (sender, receiver) = watch::channel(deadline);
        let client = Client::new(WriteGuardLayer::new(receiver).layer(mock), "default");
        (Api::all(client), server, sender)
    }

    /// An LvsNode's server-side apply, in a task.
    fn apply(api: &Api<LvsNode>) -> tokio::task::JoinHandle<Result<LvsNode, kube::Error>> {
        let api = api.clone();
        tokio::spawn(async move {
            let object =
                json!({"apiVersion": "lvs.dev/v1alpha1", "kind": "LvsNode", "spec": {"node": "lvs1"}});
            api.patch("lvs1", &PatchParams::apply("lvs-controller").force(), &Patch::Apply(object)).await
        })
    }

    /// The refusal a failed write carries.
    fn refusal(result: Result<LvsNode, kube::Error>) -> Refused {
        match result {
            Err(kube::Error::Service(error)) => {
                error.downcast_ref::<Refused>().cloned().unwrap_or_else(|| panic!("not a refusal: {error}"))
            }
            other => panic!("not a refused write: {other:?}"),
        }
    }

    fn lvs_node() -> Response<Body> {
        let object = json!({"apiVersion": "lvs.dev/v1alpha1", "kind": "LvsNode",
            "metadata": {"name": "lvs1"}, "spec": {"node": "lvs1"}});
        Response::new(Body::from(serde_json::to_vec(&object).unwrap()))
    }

    /// No request arrives within a (paused) minute.
    async fn nothing_sent(server: &mut ApiServer) {
        let next = tokio::time::timeout(Duration::from_secs(60), server.next_request()).await;
        assert!(next.is_err(), "a request reached the API server");
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_that_hangs_past_the_renew_deadline_is_abandoned_at_it() {
        let start = Instant::now();
        let (api, mut server, _deadline) = guarded(Some(start + Duration::from_secs(10)));
        let write = apply(&api);
        // The API server takes the request and never answers.
        let (_request, _never) = server.next_request().await.expect("the write is sent");
        assert_eq!(refusal(write.await.unwrap()), Refused::DeadlinePassed);
        assert_eq!(Instant::now() - start, Duration::from_secs(10), "abandoned at the deadline");

        // Past it, a write is not even sent; a read still is.
        let write = apply(&api);
        assert_eq!(refusal(write.await.unwrap()), Refused::DeadlinePassed);
        let read = tokio::spawn(async move { api.get("lvs1").await });
        let (request, answer) = server.next_request().await.expect("the read is sent");
        assert_eq!(request.method(), Method::GET);
        answer.send_response(lvs_node());
        read.await.unwrap().unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_renewal_lets_a_write_in_flight_finish() {
        let start = Instant::now();
        let (api, mut server, deadline) = guarded(Some(start + Duration::from_secs(10)));
        let write = apply(&api);
        let (_request, answer) = server.next_request().await.expect("the write is sent");
        tokio::time::sleep(Duration::from_secs(8)).await;
        deadline.send_replace(Some(start + Duration::from_secs(18)));
        tokio::time::sleep(Duration::from_secs(4)).await;
        answer.send_response(lvs_node());
        assert!(write.await.unwrap().is_ok(), "answered at 12 s, before the renewed deadline");
    }

    #[tokio::test(start_paused = true)]
    async fn no_write_outlives_or_follows_the_loss_of_leadership() {
        let (api, mut server, deadline) = guarded(Some(Instant::now() + Duration::from_secs(10)));
        let write = apply(&api);
        let (_request, _never) = server.next_request().await.expect("the write is sent");
        tokio::time::sleep(Duration::from_secs(1)).await;
        let lost = Instant::now();
        deadline.send_replace(None);
        assert_eq!(refusal(write.await.unwrap()), Refused::LeadershipLost);
        assert_eq!(Instant::now(), lost, "abandoned at once");

        // Not leading: nothing is sent.
        let write = apply(&api);
        assert_eq!(refusal(write.await.unwrap()), Refused::NotLeading);
        nothing_sent(&mut server).await;
    }
}
