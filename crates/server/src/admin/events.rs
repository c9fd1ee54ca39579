//! `GET /events`: every pool event as a server-sent event, in order, named by its kind; a
//! subscriber too slow for the bounded event bus gets a `lagged` event saying how many it lost.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::Extension;
use futures_util::Stream;
use poolserve_pool::EventError;
use tokio::sync::watch;

use super::state::AdminState;

/// Ends the admin endpoint's open event streams when it shuts down.
#[derive(Debug, Clone)]
pub(super) struct StreamsEnd(pub watch::Receiver<bool>);

pub(super) async fn events(
    State(state): State<AdminState>,
    end: Option<Extension<StreamsEnd>>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let subscription = state.registry.subscribe();
    let end = end.map(|Extension(StreamsEnd(rx))| rx);
    let stream = futures_util::stream::unfold(
        (subscription, end),
        |(mut subscription, mut end)| async move {
            let next = match &mut end {
                Some(end) => tokio::select! {
                    biased;
                    _ = end.wait_for(|stop| *stop) => return None,
                    next = subscription.recv() => next,
                },
                None => subscription.recv().await,
            };
            let event = match next {
                Ok(event) => Event::default()
                    .event(event.kind.name())
                    .json_data(&event)
                    .unwrap_or_else(|_| Event::default().event("error").data("unencodable event")),
                Err(EventError::Lagged(lost)) => Event::default()
                    .event("lagged")
                    .data(format!("{{\"lost\":{lost}}}")),
                Err(_) => return None,
            };
            Some((Ok(event), (subscription, end)))
        },
    );
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}
