//! Shared AWS plumbing: the SDK configuration from the standard chain (profile, region,
//! `AWS_ENDPOINT_URL`), the SDK's standard retry for throttling and 5xx, client-side rate
//! limits below EC2's and SSM's buckets, and errors printed as `Code: message` with context.

use crate::Error;
use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Loads the SDK configuration; `region` overrides the chain's region. Throttling and 5xx
/// are retried with the standard mode's jittered backoff, up to `max_backoff` apart.
pub async fn sdk_config(
    region: Option<&str>,
    max_backoff: std::time::Duration,
) -> aws_config::SdkConfig {
    let retry = aws_config::retry::RetryConfig::standard()
        .with_max_attempts(8)
        .with_max_backoff(max_backoff);
    let mut loader =
        aws_config::defaults(aws_config::BehaviorVersion::latest()).retry_config(retry);
    if let Some(r) = region {
        loader = loader.region(aws_config::Region::new(r.to_string()));
    }
    loader.load().await
}

/// Client-side limits, per service, below AWS's request buckets.
#[derive(Clone)]
pub struct Limits {
    pub ec2: Arc<DefaultDirectRateLimiter>,
    pub ssm: Arc<DefaultDirectRateLimiter>,
}

impl Default for Limits {
    fn default() -> Self {
        let per_second = |n: u32| {
            Arc::new(RateLimiter::direct(Quota::per_second(
                NonZeroU32::new(n).expect("non-zero"),
            )))
        };
        // EC2 describe calls refill at 20/s, mutating ones slower; SSM at 40 TPS for most APIs.
        Limits {
            ec2: per_second(10),
            ssm: per_second(20),
        }
    }
}

/// An SDK error as `context: Code: message`, or, where the caller's setup stops the call, one
/// line with the cause and the fix (exit 2). The SDK's full account goes to the log (`-v`).
pub fn err<E, R>(context: impl std::fmt::Display, e: SdkError<E, R>) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    let context = context.to_string();
    tracing::info!(
        "{context}: {}",
        aws_smithy_types::error::display::DisplayErrorContext(&e)
    );
    if let Some(setup) = setup_problem(&e) {
        return Error::AwsSetup {
            context,
            cause: setup.cause,
            tried: setup
                .tried
                .map(|t| format!("; tried {t}"))
                .unwrap_or_default(),
            fix: setup.fix,
            source: Box::new(e),
        };
    }
    Error::Aws {
        context,
        described: describe(&e),
        source: Box::new(e),
    }
}

/// What in the caller's setup stopped a call.
struct Setup {
    cause: String,
    tried: Option<String>,
    fix: String,
}

const CREDENTIALS_FIX: &str = "set AWS_PROFILE to a profile in ~/.aws/config (for IAM Identity Center: aws sso login --profile <profile>), or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or run where an instance or task role applies";

fn setup_problem<
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug + 'static,
>(
    e: &SdkError<E, R>,
) -> Option<Setup> {
    use aws_credential_types::provider::error::CredentialsError;
    if let SdkError::ServiceError(s) = e {
        let inner = s.err();
        let code = inner.code().unwrap_or_default();
        let message = inner.message().unwrap_or("no message");
        return match code {
            "ExpiredToken" | "ExpiredTokenException" | "RequestExpired" | "TokenRefreshRequired" => {
                Some(Setup {
                    cause: format!("the AWS credentials have expired ({code}: {message})"),
                    tried: None,
                    fix: "refresh them (aws sso login, or new session credentials) and run again; if they are fresh, check the host's clock".into(),
                })
            }
            "AuthFailure" | "InvalidClientTokenId" | "UnrecognizedClientException"
            | "SignatureDoesNotMatch" | "InvalidAccessKeyId" => Some(Setup {
                cause: format!("AWS does not accept these credentials ({code}: {message})"),
                tried: None,
                fix: format!("check which credentials the standard chain picks (AWS_PROFILE, AWS_ACCESS_KEY_ID); {CREDENTIALS_FIX}"),
            }),
            "UnauthorizedOperation" | "AccessDenied" | "AccessDeniedException"
            | "UnauthorizedException" => Some(Setup {
                cause: format!("the identity bake runs as may not do this ({code}: {message})"),
                tried: None,
                fix: "grant it the policy that `bake iam-policy <pipeline>` prints".into(),
            }),
            _ => None,
        };
    }
    // A call that never left: the credential chain found nothing (or failed) on the way.
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(c) = s.downcast_ref::<CredentialsError>() {
            let detail = aws_smithy_types::error::display::DisplayErrorContext(c).to_string();
            return Some(match c {
                CredentialsError::CredentialsNotLoaded(_) => Setup {
                    cause: "no AWS credentials were found".into(),
                    tried: Some("the standard chain: environment variables, the profile (AWS_PROFILE or default, ~/.aws), a web identity token, the ECS container and the EC2 instance metadata".into()),
                    fix: CREDENTIALS_FIX.into(),
                },
                _ if detail.contains("expired") => Setup {
                    cause: "the AWS credentials have expired".into(),
                    tried: None,
                    fix: "refresh them (aws sso login --profile <profile>, or new session credentials) and run again".into(),
                },
                CredentialsError::InvalidConfiguration(_) => Setup {
                    cause: "the AWS profile's configuration is not valid".into(),
                    tried: None,
                    fix: "check the profile in ~/.aws/config and ~/.aws/credentials (`-v` shows what the SDK said)".into(),
                },
                _ => Setup {
                    cause: "the AWS credentials could not be loaded".into(),
                    tried: None,
                    fix: format!("{CREDENTIALS_FIX} (`-v` shows what the SDK said)"),
                },
            });
        }
        source = s.source();
    }
    None
}

pub fn describe<E: ProvideErrorMetadata + std::error::Error + 'static, R: std::fmt::Debug>(
    e: &SdkError<E, R>,
) -> String {
    match e {
        SdkError::ServiceError(s) => {
            let inner = s.err();
            format!(
                "{}: {}",
                inner.code().unwrap_or("Unknown"),
                inner.message().unwrap_or("no message")
            )
        }
        // The transport's own words, innermost first; the SDK's structure is in the log (-v).
        other => {
            let what = match other {
                SdkError::TimeoutError(_) => "the call timed out",
                SdkError::DispatchFailure(d) if d.is_timeout() => "connecting timed out",
                SdkError::DispatchFailure(d) if d.is_io() => {
                    "cannot reach the endpoint (the network, a proxy, or AWS_ENDPOINT_URL)"
                }
                SdkError::DispatchFailure(_) => "the request could not be sent",
                SdkError::ResponseError(_) => "the answer could not be read",
                SdkError::ConstructionFailure(_) => "the request could not be built",
                _ => "the call failed",
            };
            let mut innermost = None;
            let mut source = std::error::Error::source(other);
            while let Some(s) = source {
                innermost = Some(s.to_string());
                source = s.source();
            }
            match innermost {
                Some(why) => format!("{what}: {why}"),
                None => what.to_string(),
            }
        }
    }
}

/// The error code of a service error, if any.
pub fn code<E: ProvideErrorMetadata, R>(e: &SdkError<E, R>) -> Option<&str> {
    match e {
        SdkError::ServiceError(s) => s.err().code(),
        _ => None,
    }
}

/// The pace of one wait. Asks again after a sixteenth of the time waited so far, never sooner
/// than an eighth of `interval` nor later than `interval`: a short wait (an agent coming
/// online, a command) is seen ending within a few percent of its length, and a long one (an
/// image, a copy) is asked about no more often than once an interval.
pub struct Poll {
    interval: Duration,
    start: Instant,
}

impl Poll {
    pub fn new(interval: Duration) -> Self {
        Poll {
            interval,
            start: Instant::now(),
        }
    }

    /// How long this wait has lasted.
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// The pause before the next question.
    pub fn delay(&self) -> Duration {
        (self.start.elapsed() / 16).clamp(self.interval / 8, self.interval)
    }

    /// Sleeps until the next question.
    pub async fn tick(&self) {
        tokio::time::sleep(self.delay()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wait_asks_often_at_first_and_at_most_once_an_interval_later() {
        let interval = Duration::from_millis(800);
        let mut poll = Poll::new(interval);
        assert_eq!(
            poll.delay(),
            Duration::from_millis(100),
            "an eighth at first"
        );
        poll.start -= Duration::from_secs(4);
        let mid = poll.delay();
        assert!(
            mid > Duration::from_millis(240) && mid < Duration::from_millis(300),
            "a sixteenth of 4 s: {mid:?}"
        );
        poll.start -= Duration::from_secs(60);
        assert_eq!(poll.delay(), interval, "never slower than the interval");
    }
}
