//! The typed HTTP client of both APIs, as `shikaku check --node`, `consent --node`, `hub import
//! --hub` and `reconcile --hub` use it.

use anyhow::{bail, Context, Result};
use shikaku_core::Date;

use crate::serve::CLIENT_HEADER;

/// The path of a check API request with its parameters URL-encoded (a symbol may hold `&`,
/// `+`, `%`, `#` or kanji, none of which may go into a query string as they are).
pub fn check_path(params: &[(&str, &str)]) -> String {
    let mut query = form_urlencoded::Serializer::new(String::new());
    for (name, value) in params {
        query.append_pair(name, value);
    }
    format!("/v1/check?{}", query.finish())
}

/// The check API path asking `query` (on `date`, in `format`, when given).
pub fn check_path_for(
    query: &shikaku_core::CheckQuery,
    date: Option<Date>,
    format: Option<&str>,
) -> String {
    let who = match query {
        shikaku_core::CheckQuery::Card(card) => ("card", card.to_string()),
        shikaku_core::CheckQuery::Member(key) => ("member", key.to_string()),
    };
    let date = date.map(|d| d.to_string());
    let mut params = vec![(who.0, who.1.as_str())];
    if let Some(date) = &date {
        params.push(("date", date));
    }
    if let Some(format) = format {
        params.push(("format", format));
    }
    check_path(&params)
}

/// A plain HTTP/1.1 GET of `path` on the node at `url` (`http://HOST:PORT`); the body of a 200
/// answer, else an error naming the status and the node's message.
pub fn http_get(url: &str, path: &str) -> Result<String> {
    http_get_with_token(url, path, None)
}

/// Logs a staff member in at a clinic API; returns the session cookie (`name=value`) to send
/// with [`http_get_in_session`].
pub fn login(url: &str, name: &str, password: &str) -> Result<String> {
    let body = serde_json::json!({ "name": name, "password": password }).to_string();
    let (status, reply, cookie) = exchange(url, "POST", "/v1/login", Some(&body), &[])?;
    if status != 200 {
        bail!("{}", status_error(url, "/v1/login", status, &reply));
    }
    cookie.context("the login answer set no session cookie")
}

/// A request within a staff session (the cookie [`login`] returned): the status and body.
pub fn request_in_session(
    url: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
    cookie: &str,
) -> Result<(u16, String)> {
    exchange(url, method, path, body, &[("Cookie", cookie)]).map(|(status, body, _)| (status, body))
}

/// [`http_get`] with an insurer account's API token.
pub fn http_get_with_token(url: &str, path: &str, token: Option<&str>) -> Result<String> {
    let (status, body) = http_request_with_token(url, "GET", path, None, token)?;
    if status != 200 {
        bail!("{}", status_error(url, path, status, &body));
    }
    Ok(body)
}

/// What to tell a person about a non-success answer: the URL asked, the status, the server's
/// message (the `message` of a JSON error body, else its text), and for a 404 that does not
/// come from a shikaku API, that the address is probably not a shikaku node.
pub fn status_error(url: &str, path: &str, status: u16, body: &str) -> String {
    let json: Option<serde_json::Value> = serde_json::from_str(body).ok();
    let message = json
        .as_ref()
        .and_then(|v| v["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| body.trim().chars().take(300).collect());
    let from_shikaku = json.as_ref().is_some_and(|v| v["error"].is_string());
    let target = format!("{}{path}", url.trim_end_matches('/'));
    match status {
        404 if !from_shikaku || json.as_ref().is_some_and(|v| v["error"] == "not_found") => format!(
            "{target} answered 404 Not Found: {url} is probably not a shikaku node's API (a clinic's `clinic serve --api` address, or a hub's `hub serve --api`){}",
            if message.is_empty() { String::new() } else { format!(" ({message})") }
        ),
        _ if message.is_empty() => format!("{target} answered {status}"),
        _ => format!("{target} answered {status}: {message}"),
    }
}

/// Answers larger than this are refused (the largest is a reconciliation report).
pub const RESPONSE_BYTES_MAX: u64 = 64 << 20;

/// One HTTP/1.1 request (`body` sent as JSON) to the node at `url` (`http://HOST:PORT`), on
/// `ureq`; returns the status and the body. Every request carries the [`CLIENT_HEADER`]; a
/// non-success status is an answer here, not an error (the caller names it).
pub fn http_request(
    url: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Result<(u16, String)> {
    http_request_with_token(url, method, path, body, None)
}

/// [`http_request`] with an insurer account's API token (`Authorization: Bearer`).
pub fn http_request_with_token(
    url: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
    token: Option<&str>,
) -> Result<(u16, String)> {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> =
        bearer.as_deref().map(|b| ("Authorization", b)).into_iter().collect();
    exchange(url, method, path, body, &headers).map(|(status, body, _)| (status, body))
}

/// One request with extra headers: status, body, and the session cookie it set, if any.
fn exchange(
    url: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> Result<(u16, String, Option<String>)> {
    let base = url.trim_end_matches('/');
    if !base.starts_with("http://") {
        bail!("the node's address must be an http:// URL, got {url}");
    }
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(std::time::Duration::from_secs(60)))
        .build()
        .into();
    let target = format!("{base}{path}");
    let sent = match (method, body) {
        ("GET", _) => {
            let mut request = agent.get(&target).header(CLIENT_HEADER, "shikaku-cli");
            for (name, value) in headers {
                request = request.header(*name, *value);
            }
            request.call()
        }
        ("POST", body) => {
            let mut request = agent
                .post(&target)
                .header(CLIENT_HEADER, "shikaku-cli")
                .header("Content-Type", "application/json");
            for (name, value) in headers {
                request = request.header(*name, *value);
            }
            request.send(body.unwrap_or_default())
        }
        (other, _) => bail!("unsupported method {other}"),
    };
    let mut response = sent.with_context(|| format!("asking the node at {base}"))?;
    let status = response.status().as_u16();
    let cookie = response
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::to_owned);
    let text = response
        .body_mut()
        .with_config()
        .limit(RESPONSE_BYTES_MAX)
        .read_to_string()
        .with_context(|| format!("reading the answer of {target}"))?;
    Ok((status, text, cookie))
}

/// A POST of `request` as JSON, decoding a `expect`-status answer as `T`; any other status is
/// an error naming it and the node's message.
pub fn post_json<T: serde::de::DeserializeOwned>(
    url: &str,
    path: &str,
    request: &impl serde::Serialize,
    expect: u16,
) -> Result<T> {
    let body = serde_json::to_string(request)?;
    let (status, reply) = http_request(url, "POST", path, Some(&body))?;
    if status != expect {
        bail!("{}", status_error(url, path, status, &reply));
    }
    serde_json::from_str(&reply)
        .with_context(|| format!("the answer of {path} is not the expected JSON"))
}
