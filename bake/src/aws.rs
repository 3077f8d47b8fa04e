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

/// An SDK error as `context: Code: message`.
pub fn err<E, R>(context: impl std::fmt::Display, e: SdkError<E, R>) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    Error::Aws {
        context: context.to_string(),
        described: describe(&e),
        source: Box::new(e),
    }
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
        other => format!(
            "{}",
            aws_smithy_types::error::display::DisplayErrorContext(other)
        ),
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
