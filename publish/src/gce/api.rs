//! The Google calls GCE publication and pruning make, as JSON over HTTPS:
//! Cloud Storage (resumable upload, delete, list) and Compute Engine (images:
//! get, list, insert, delete; global operations; IAM policy), authorized by
//! Application Default Credentials.
//!
//! Why not the `google-cloud-storage` and `google-cloud-compute-v1` crates:
//! the first deletes and lists objects through gRPC (`StorageControl`), which
//! no local GCS emulator serves, and the second is generated for all of
//! Compute (thousands of types) to reach a handful of REST calls.
//! `google-cloud-auth` serves well and is used for the tokens.

use std::time::Duration;

use google_cloud_auth::credentials::{AccessTokenCredentials, Builder};
use reqwest::{Method, StatusCode};
use serde_json::Value;

use super::Error;
use crate::error::CommonError;
use crate::retry::{retry, Backoff};

/// Default Cloud Storage endpoint; also the host of `rawDisk.source` URLs.
pub const STORAGE: &str = "https://storage.googleapis.com";
/// Default Compute Engine endpoint.
pub const COMPUTE: &str = "https://compute.googleapis.com/compute/v1";

/// Chunks of a resumable upload: a multiple of 256 KiB, as GCS requires.
pub(crate) const CHUNK: u64 = 16 << 20;

/// An authorized client for both APIs.
pub(crate) struct Google {
    http: reqwest::Client,
    creds: AccessTokenCredentials,
    storage: String,
    compute: String,
    backoff: Backoff,
}

/// A response: status, `Location` / `Range` headers, JSON body (`Null` when empty).
pub(crate) struct Reply {
    pub status: StatusCode,
    pub location: Option<String>,
    pub range: Option<String>,
    pub body: Value,
}

impl Google {
    /// Credentials from ADC (`GOOGLE_APPLICATION_CREDENTIALS`, gcloud's
    /// application-default login, workload identity federation, the metadata
    /// server), scoped to cloud-platform.
    pub(crate) fn new(
        storage: Option<&str>,
        compute: Option<&str>,
        attempts: u32,
    ) -> Result<Self, Error> {
        let creds = Builder::default()
            .with_scopes(["https://www.googleapis.com/auth/cloud-platform"])
            .build_access_token_credentials()
            .map_err(|e| Error::Auth(e.to_string()))?;
        let http = reqwest::Client::builder()
            // GCS answers an incomplete resumable chunk with 308 and no
            // Location: a status to read, never a redirect to follow.
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(300))
            .build()
            .map_err(|e| Error::Auth(format!("building the HTTP client: {e}")))?;
        Ok(Google {
            http,
            creds,
            storage: storage.unwrap_or(STORAGE).trim_end_matches('/').to_string(),
            compute: compute.unwrap_or(COMPUTE).trim_end_matches('/').to_string(),
            backoff: Backoff::new(attempts),
        })
    }

    async fn token(&self) -> Result<String, Error> {
        self.creds
            .access_token()
            .await
            .map(|t| t.token)
            .map_err(|e| Error::Auth(e.to_string()))
    }

    /// One request with retries on transport errors, 408, 429 and 5xx.
    /// Any other status is returned for the caller to judge.
    async fn send(
        &self,
        op: &'static str,
        target: &str,
        method: Method,
        url: &str,
        headers: &[(&str, String)],
        body: impl Fn() -> Option<reqwest::Body>,
    ) -> Result<Reply, Error> {
        let result = retry(
            self.backoff,
            |e: &Attempt| e.retryable,
            |_| {
                let body = body();
                let method = method.clone();
                async move {
                    let token = self.token().await.map_err(Attempt::fatal)?;
                    let mut req = self.http.request(method, url).bearer_auth(token);
                    for (k, v) in headers {
                        req = req.header(*k, v);
                    }
                    if let Some(body) = body {
                        req = req.body(body);
                    }
                    let resp = req.send().await.map_err(|e| Attempt {
                        retryable: true,
                        error: Error::api_message(op, target, transport(&e)),
                    })?;
                    let status = resp.status();
                    let header = |name: &str| {
                        resp.headers()
                            .get(name)
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_string)
                    };
                    let (location, range) = (header("location"), header("range"));
                    let bytes = resp.bytes().await.map_err(|e| Attempt {
                        retryable: true,
                        error: Error::api_message(op, target, transport(&e)),
                    })?;
                    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                    if status.is_server_error()
                        || status == StatusCode::TOO_MANY_REQUESTS
                        || status == StatusCode::REQUEST_TIMEOUT
                    {
                        return Err(Attempt {
                            retryable: true,
                            error: Error::api_message(op, target, message(status, &body)),
                        });
                    }
                    Ok(Reply {
                        status,
                        location,
                        range,
                        body,
                    })
                }
            },
        )
        .await;
        result.map_err(|a| a.error)
    }

    /// [`Self::json`] for a call whose target must exist; no body reads as `null`.
    async fn call(
        &self,
        op: &'static str,
        target: &str,
        method: Method,
        url: &str,
        body: Option<&Value>,
    ) -> Result<Value, Error> {
        Ok(self
            .json(op, target, method, url, body, false)
            .await?
            .unwrap_or(Value::Null))
    }

    /// A JSON call; statuses other than 2xx (and 404 when `missing_ok`) are errors.
    async fn json(
        &self,
        op: &'static str,
        target: &str,
        method: Method,
        url: &str,
        body: Option<&Value>,
        missing_ok: bool,
    ) -> Result<Option<Value>, Error> {
        let text = body.map(|b| b.to_string());
        let headers: Vec<(&str, String)> = match text {
            Some(_) => vec![("content-type", "application/json".to_string())],
            None => vec![],
        };
        let make = || text.clone().map(reqwest::Body::from);
        let reply = self.send(op, target, method, url, &headers, make).await?;
        if reply.status == StatusCode::NOT_FOUND && missing_ok {
            return Ok(None);
        }
        if !reply.status.is_success() {
            return Err(Error::api_message(
                op,
                target,
                message(reply.status, &reply.body),
            ));
        }
        Ok(Some(reply.body))
    }

    // ---- Cloud Storage ----

    /// Starts a resumable upload of `len` bytes; returns the session URL.
    pub(crate) async fn start_upload(
        &self,
        bucket: &str,
        object: &str,
        len: u64,
    ) -> Result<String, Error> {
        let target = format!("gs://{bucket}/{object}");
        let url = format!(
            "{}/upload/storage/v1/b/{}/o?uploadType=resumable&name={}",
            self.storage,
            encode(bucket),
            encode(object)
        );
        let meta =
            serde_json::json!({"name": object, "contentType": "application/gzip"}).to_string();
        let headers = [
            ("content-type", "application/json".to_string()),
            ("x-upload-content-type", "application/gzip".to_string()),
            ("x-upload-content-length", len.to_string()),
        ];
        let make = || Some(reqwest::Body::from(meta.clone()));
        let reply = self
            .send(
                "starting the upload of",
                &target,
                Method::POST,
                &url,
                &headers,
                make,
            )
            .await?;
        match (reply.status.is_success(), reply.location) {
            (true, Some(session)) => Ok(session),
            (true, None) => Err(Error::api_message(
                "starting the upload of",
                &target,
                "no session URL in the answer".into(),
            )),
            (false, _) => Err(Error::api_message(
                "starting the upload of",
                &target,
                message(reply.status, &reply.body),
            )),
        }
    }

    /// Sends `data` at `offset` of a `total`-byte upload. Returns the offset the
    /// service has persisted up to (`total` when the object is complete).
    pub(crate) async fn put_chunk(
        &self,
        session: &str,
        target: &str,
        offset: u64,
        data: bytes::Bytes,
        total: u64,
    ) -> Result<u64, Error> {
        let end = offset + data.len() as u64;
        let headers = [(
            "content-range",
            if data.is_empty() {
                format!("bytes */{total}")
            } else {
                format!("bytes {offset}-{}/{total}", end - 1)
            },
        )];
        let reply = self
            .send("uploading", target, Method::PUT, session, &headers, || {
                Some(reqwest::Body::from(data.clone()))
            })
            .await?;
        persisted(&reply, total).ok_or_else(|| {
            Error::api_message("uploading", target, message(reply.status, &reply.body))
        })
    }

    /// Deletes an object; one already gone is not an error.
    pub(crate) async fn delete_object(&self, bucket: &str, object: &str) -> Result<(), Error> {
        let url = format!(
            "{}/storage/v1/b/{}/o/{}",
            self.storage,
            encode(bucket),
            encode(object)
        );
        self.json(
            "deleting",
            &format!("gs://{bucket}/{object}"),
            Method::DELETE,
            &url,
            None,
            true,
        )
        .await
        .map(|_| ())
    }

    // ---- Compute Engine ----

    fn images_url(&self, project: &str) -> String {
        format!(
            "{}/projects/{}/global/images",
            self.compute,
            encode(project)
        )
    }

    /// `images.get`; `None` when there is no such image.
    pub(crate) async fn get_image(
        &self,
        project: &str,
        name: &str,
    ) -> Result<Option<Value>, Error> {
        let url = format!("{}/{}", self.images_url(project), encode(name));
        self.json("images.get", name, Method::GET, &url, None, true)
            .await
    }

    /// `images.insert`; returns the operation.
    pub(crate) async fn insert_image(
        &self,
        project: &str,
        image: &Value,
        request_id: &str,
    ) -> Result<Value, Error> {
        let name = image["name"].as_str().unwrap_or_default().to_string();
        let url = format!(
            "{}?requestId={}",
            self.images_url(project),
            encode(request_id)
        );
        self.call("images.insert", &name, Method::POST, &url, Some(image))
            .await
    }

    /// One page of `images.list` with `filter` (Compute's filter syntax);
    /// returns the images and the `nextPageToken`, if there is another page.
    pub(crate) async fn list_images(
        &self,
        project: &str,
        filter: &str,
        page_token: Option<&str>,
    ) -> Result<(Vec<Value>, Option<String>), Error> {
        let mut url = format!("{}?filter={}", self.images_url(project), encode(filter));
        if let Some(t) = page_token {
            url.push_str(&format!("&pageToken={}", encode(t)));
        }
        let page = self
            .call("images.list", project, Method::GET, &url, None)
            .await?;
        let images = page["items"].as_array().cloned().unwrap_or_default();
        let next = page["nextPageToken"]
            .as_str()
            .filter(|t| !t.is_empty())
            .map(str::to_string);
        Ok((images, next))
    }

    /// `images.delete`; returns the operation, or `None` when the image is
    /// already gone.
    pub(crate) async fn delete_image(
        &self,
        project: &str,
        name: &str,
        request_id: &str,
    ) -> Result<Option<Value>, Error> {
        let url = format!(
            "{}/{}?requestId={}",
            self.images_url(project),
            encode(name),
            encode(request_id)
        );
        self.json("images.delete", name, Method::DELETE, &url, None, true)
            .await
    }

    /// `globalOperations.get`.
    pub(crate) async fn get_operation(
        &self,
        project: &str,
        operation: &str,
    ) -> Result<Value, Error> {
        let url = format!(
            "{}/projects/{}/global/operations/{}",
            self.compute,
            encode(project),
            encode(operation)
        );
        self.call("globalOperations.get", operation, Method::GET, &url, None)
            .await
    }

    /// `images.getIamPolicy`.
    pub(crate) async fn get_iam_policy(&self, project: &str, name: &str) -> Result<Value, Error> {
        let url = format!(
            "{}/{}/getIamPolicy?optionsRequestedPolicyVersion=3",
            self.images_url(project),
            encode(name)
        );
        self.call("images.getIamPolicy", name, Method::GET, &url, None)
            .await
    }

    /// `images.setIamPolicy`.
    pub(crate) async fn set_iam_policy(
        &self,
        project: &str,
        name: &str,
        policy: Value,
    ) -> Result<Value, Error> {
        let url = format!("{}/{}/setIamPolicy", self.images_url(project), encode(name));
        let body = serde_json::json!({ "policy": policy });
        self.call("images.setIamPolicy", name, Method::POST, &url, Some(&body))
            .await
    }
}

/// A failed attempt and whether another is worth it.
struct Attempt {
    retryable: bool,
    error: Error,
}

impl Attempt {
    fn fatal(error: Error) -> Self {
        Attempt {
            retryable: false,
            error,
        }
    }
}

/// A transport failure: its kind and causes, never the request itself.
fn transport(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else if e.is_body() || e.is_decode() {
        "reading the answer failed"
    } else {
        "request failed"
    };
    crate::retry::join_sources(kind.to_string(), std::error::Error::source(e))
}

/// Google's `{"error": {"message", "status"}}`, or the HTTP status.
pub(crate) fn message(status: StatusCode, body: &Value) -> String {
    let e = &body["error"];
    match (e["status"].as_str(), e["message"].as_str()) {
        (Some(code), Some(m)) => format!("{code}: {m} (HTTP {})", status.as_u16()),
        (None, Some(m)) => format!("{m} (HTTP {})", status.as_u16()),
        _ => format!("HTTP {}", status.as_u16()),
    }
}

/// The offset persisted after a chunk: `total` on 200/201, the end of the
/// `Range: bytes=0-N` header plus one on 308 (0 without the header).
fn persisted(reply: &Reply, total: u64) -> Option<u64> {
    match reply.status.as_u16() {
        200 | 201 => Some(total),
        308 => Some(
            reply
                .range
                .as_deref()
                .and_then(|r| r.strip_prefix("bytes=0-"))
                .and_then(|n| n.parse::<u64>().ok())
                .map_or(0, |n| n + 1),
        ),
        _ => None,
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
pub(crate) fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_keeps_only_unreserved_characters() {
        assert_eq!(encode("images/pg 1.tar.gz"), "images%2Fpg%201.tar.gz");
        assert_eq!(encode("a-b_c~d"), "a-b_c~d");
    }

    #[test]
    fn persisted_reads_the_range_of_an_incomplete_upload() {
        let reply = |status: u16, range: Option<&str>| Reply {
            status: StatusCode::from_u16(status).unwrap(),
            location: None,
            range: range.map(str::to_string),
            body: Value::Null,
        };
        assert_eq!(
            persisted(&reply(308, Some("bytes=0-1048575")), 9),
            Some(1 << 20)
        );
        assert_eq!(persisted(&reply(308, None), 9), Some(0));
        assert_eq!(persisted(&reply(200, None), 9), Some(9));
        assert_eq!(persisted(&reply(400, None), 9), None);
    }

    #[test]
    fn google_error_messages_name_status_and_message() {
        let body = serde_json::json!({"error": {"code": 409, "status": "ALREADY_EXISTS", "message": "The resource already exists"}});
        assert_eq!(
            message(StatusCode::CONFLICT, &body),
            "ALREADY_EXISTS: The resource already exists (HTTP 409)"
        );
        assert_eq!(message(StatusCode::FORBIDDEN, &Value::Null), "HTTP 403");
    }
}
