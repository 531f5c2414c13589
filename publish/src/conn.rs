//! How to reach AWS or an S3-compatible store: endpoint, addressing, profile, region.

use std::time::Duration;

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_smithy_types::checksum_config::{RequestChecksumCalculation, ResponseChecksumValidation};
use aws_smithy_types::retry::RetryConfig;
use aws_smithy_types::timeout::TimeoutConfig;

/// Region used when neither the options nor the AWS chain name one.
pub const FALLBACK_REGION: &str = "us-east-1";

/// Connection settings shared by the S3, EC2 and EBS clients. Credentials are
/// not among them: they come from the standard AWS chain (`AWS_ACCESS_KEY_ID` /
/// `AWS_SECRET_ACCESS_KEY`, `AWS_PROFILE`, web identity, SSO, instance roles).
#[derive(Debug, Clone, Default)]
pub struct Connection {
    /// Endpoint URL of an S3-compatible store or an AWS emulator, e.g.
    /// `https://minio.example.com:9000` or `https://<account>.r2.cloudflarestorage.com`;
    /// default: AWS's own endpoints.
    pub endpoint: Option<String>,
    /// Address objects as `<endpoint>/<bucket>/<key>` instead of
    /// `<bucket>.<endpoint>/<key>` (MinIO and most self-hosted stores need this).
    pub path_style: bool,
    /// Named profile from `~/.aws/config` and `~/.aws/credentials`;
    /// default: `AWS_PROFILE`, else `default`.
    pub profile: Option<String>,
}

/// Loads the shared SDK configuration: credentials from the chain, `region` if
/// given (else the chain's, else [`FALLBACK_REGION`]), and `attempts` SDK-level
/// tries for control-plane calls (data-plane calls retry on their own).
pub(crate) async fn sdk_config(
    conn: &Connection,
    region: Option<&str>,
    attempts: u32,
) -> SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .retry_config(RetryConfig::standard().with_max_attempts(attempts.max(1)))
        .timeout_config(timeouts(CONTROL_ATTEMPT_TIMEOUT))
        // Checksums are sent explicitly where wanted (SHA-256 per part); the
        // SDK's automatic CRC32 and aws-chunked bodies are not understood by
        // every S3-compatible store.
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
    if let Some(region) = region {
        loader = loader.region(Region::new(region.to_string()));
    }
    if let Some(endpoint) = &conn.endpoint {
        loader = loader.endpoint_url(endpoint);
    }
    if let Some(profile) = &conn.profile {
        loader = loader.profile_name(profile);
    }
    let config = loader.load().await;
    if config.region().is_some() {
        config
    } else {
        config
            .into_builder()
            .region(Region::from_static(FALLBACK_REGION))
            .build()
    }
}

/// Bound on one attempt of a control-plane call. Generous because S3 may take
/// minutes to answer CompleteMultipartUpload for a large object; without any
/// bound, a connection silently dropped by a middlebox hangs the run forever.
const CONTROL_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(300);

fn timeouts(attempt: Duration) -> TimeoutConfig {
    TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(10))
        .operation_attempt_timeout(attempt)
        .build()
}

/// For data-plane requests (parts, blocks) that the caller retries itself
/// with backoff: no SDK retries, and an attempt timeout sized for a body of
/// `bytes` at a slow 128 KiB/s, so a stalled connection becomes a retry.
pub(crate) fn data_plane(bytes: u64) -> (RetryConfig, TimeoutConfig) {
    let attempt = Duration::from_secs(60 + bytes / (128 << 10));
    (RetryConfig::disabled(), timeouts(attempt))
}
