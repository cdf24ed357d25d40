//! `/v1/collections/{name}/events`: change events over Server-Sent Events,
//! and the stream tickets browsers' `EventSource` needs (it cannot send an
//! `Authorization` header). The handlers check who is asking (a bearer
//! token, or a single-use ticket redeemed from the store, so a ticket
//! minted through one replica works on another), the read rule, the
//! resume point and the bound on open streams, then hand the stream to
//! `stream` (one subscriber), which follows `hub` (one reader of the log
//! per collection in this process). See docs/events.md.

pub mod hub;
pub mod stream;

use axum::Router;
use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use axum::routing::{get, post};
use serde_json::json;

use crate::error::{ApiError, ProblemKind};
use crate::extract::{Caller, Target};
use crate::gateway::{Read, other_identity};
use crate::respond::json;
use crate::state::AppState;
use stream::{Start, Subscriber};

/// The event routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/collections/{name}/events", get(events))
        .route("/v1/collections/{name}/events/tickets", post(ticket))
}

/// 404 when `events.enabled` is false.
fn enabled(state: &AppState) -> Result<(), ApiError> {
    if state.config().events.enabled {
        Ok(())
    } else {
        Err(ApiError::new(
            ProblemKind::RouteNotFound,
            "change events are turned off on this server (events.enabled = false)",
        ))
    }
}

/// The stream's query parameters.
#[derive(Default)]
struct StreamParams {
    ticket: Option<String>,
    last_event_id: Option<String>,
}

fn stream_params(raw: Option<&str>) -> Result<StreamParams, ApiError> {
    let mut p = StreamParams::default();
    for (k, v) in crate::documents::query_pairs(raw)? {
        let slot = match k.as_ref() {
            "ticket" => &mut p.ticket,
            "last_event_id" => &mut p.last_event_id,
            _ => continue,
        };
        if slot.replace(v.into_owned()).is_some() {
            return Err(ApiError::bad_request(format!(
                "the `{k}` parameter is given twice"
            )));
        }
    }
    Ok(p)
}

/// The resume point: the `Last-Event-ID` header (what `EventSource` sends
/// when it reconnects), else the `last_event_id` parameter (for a new
/// `EventSource`, which cannot send the header); an id this server never
/// sends is 400.
fn resume_point(headers: &HeaderMap, param: Option<&str>) -> Result<Option<u64>, ApiError> {
    let mut values = headers.get_all("last-event-id").iter();
    let header = match (values.next(), values.next()) {
        (None, _) => None,
        (Some(v), None) => Some(
            v.to_str()
                .map_err(|_| ApiError::bad_request("Last-Event-ID must be an event id"))?,
        ),
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request("more than one Last-Event-ID header"));
        }
    };
    let raw = match header.or(param).map(str::trim) {
        None | Some("") => return Ok(None),
        Some(raw) => raw,
    };
    // Ids are positions: decimal digits, no sign, no leading zeros.
    let valid = raw.len() <= 20
        && raw.bytes().all(|b| b.is_ascii_digit())
        && !(raw.len() > 1 && raw.starts_with('0'));
    valid
        .then(|| raw.parse::<u64>().ok())
        .flatten()
        .map(Some)
        .ok_or_else(|| {
            ApiError::bad_request(
                "Last-Event-ID (or last_event_id) must be the id of an event of this stream",
            )
        })
}

#[utoipa::path(get, operation_id = "stream_events", path = "/v1/collections/{name}/events", tag = "events",
    params(("name" = String, Path, description = "Collection name", pattern = r"^[a-z][a-z0-9_]{0,62}$"),
        ("ticket" = Option<String>, Query, description = "A stream ticket (`POST .../events/tickets`), for clients that cannot send `Authorization` (browsers' `EventSource`); single use"),
        ("last_event_id" = Option<String>, Query, description = "Resume after this event id (for a new `EventSource`, which cannot send the header); the header wins"),
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event id: every later change comes exactly once; an id no longer kept (`events.retention`) starts the stream with `reset`")),
    responses((status = 200, description = "A `text/event-stream` of `created`, `updated` and `deleted` events (each with an `id:`) as the caller may read them, and `reset`; `: keep-alive` comments every `events.keepalive`; `retry:` first. See the `ChangeEvent` schema (`x-event-schema`).",
                content_type = "text/event-stream", body = String),
              (status = 400, description = "Malformed `Last-Event-ID` or query", body = crate::wire::Problem, content_type = "application/problem+json"),
              (status = 404, description = "No such collection, or events are turned off", body = crate::wire::Problem, content_type = "application/problem+json"),
              crate::wire::Guarded,
              (status = 503, description = "`events.max_subscribers` streams are open on this server, or the store is unavailable", body = crate::wire::Problem, content_type = "application/problem+json")))]
pub(crate) async fn events(
    State(state): State<AppState>,
    caller: Caller,
    Target(coll): Target,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    enabled(&state)?;
    let params = stream_params(query.as_deref())?;
    let resume = resume_point(&headers, params.last_event_id.as_deref())?;
    // Counted before a ticket is spent: at the bound, the ticket stays
    // usable for the retry.
    let place = state.events().admit()?;
    let gateway = state.gateway();
    let caller = match params.ticket.as_deref() {
        None => caller,
        Some(ticket) => {
            let holder = gateway.redeem_ticket(&coll.name, ticket).await?;
            // A token sent too must be the same identity's.
            if let Some(token) = &caller.identity {
                let same = holder
                    .as_ref()
                    .is_some_and(|h| h.sub == token.sub && h.tenant == token.tenant);
                if !same {
                    return Err(other_identity());
                }
            }
            Caller {
                identity: holder,
                addr: caller.addr,
            }
        }
    };
    let grant = gateway.authorize::<Read>(&caller, &coll)?;
    let head = state.events().log().head(&coll.name).await?;
    let (pos, reset) = match resume {
        None => (head, false),
        Some(id) if id > head => (head, true),
        Some(id) => {
            let page = state.events().log().after(&coll.name, id, 1).await?;
            if page.floor > id {
                (head, true)
            } else {
                (id, false)
            }
        }
    };
    let subscriber = Subscriber::new(
        state.clone(),
        Start {
            caller,
            grant,
            pos,
            reset,
            place,
        },
    );
    let body = futures_util::stream::unfold(subscriber, |mut s| async move {
        s.next_chunk()
            .await
            .map(|chunk| (Ok::<_, std::convert::Infallible>(chunk), s))
    });
    let mut res = Response::new(Body::from_stream(body));
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // nginx (and ingress-nginx) buffer responses unless told not to.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(res)
}

#[utoipa::path(post, operation_id = "create_event_ticket", path = "/v1/collections/{name}/events/tickets", tag = "events",
    params(("name" = String, Path, description = "Collection name", pattern = r"^[a-z][a-z0-9_]{0,62}$")),
    responses((status = 201, description = "A single-use ticket for this collection's stream and the caller's identity: pass it as `?ticket=` within `expires_in` seconds", body = crate::wire::TicketOutput),
              (status = 404, description = "No such collection, or events are turned off", body = crate::wire::Problem, content_type = "application/problem+json"),
              crate::wire::Guarded))]
pub(crate) async fn ticket(
    State(state): State<AppState>,
    caller: Caller,
    Target(coll): Target,
) -> Result<Response, ApiError> {
    enabled(&state)?;
    let grant = state.gateway().authorize::<Read>(&caller, &coll)?;
    let ttl = state.config().events.ticket_ttl.0;
    let ticket = state.gateway().mint_ticket(&grant, ttl).await?;
    Ok(json(
        StatusCode::CREATED,
        &json!({"ticket": ticket, "expires_in": ttl.as_secs()}),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("last-event-id", HeaderValue::from_str(v).expect("value"));
        }
        h
    }

    #[test]
    fn resume_points_are_event_ids_or_refused() {
        assert_eq!(resume_point(&headers(&[]), None).ok(), Some(None));
        assert_eq!(resume_point(&headers(&["42"]), None).ok(), Some(Some(42)));
        assert_eq!(resume_point(&headers(&[" 7 "]), None).ok(), Some(Some(7)));
        assert_eq!(resume_point(&headers(&[""]), Some("3")).ok(), Some(None));
        assert_eq!(resume_point(&headers(&[]), Some("3")).ok(), Some(Some(3)));
        assert_eq!(
            resume_point(&headers(&["5"]), Some("3")).ok(),
            Some(Some(5))
        );
        for bad in ["-1", "abc", "1e3", "007", "99999999999999999999999", "1.5"] {
            assert!(resume_point(&headers(&[bad]), None).is_err(), "{bad}");
        }
        assert!(resume_point(&headers(&["1", "2"]), None).is_err());
    }
}
