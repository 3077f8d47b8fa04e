//! Error paths of the AMI wait that moto cannot produce on its own, through the real SDK with
//! `aws-smithy-mocks` answering DescribeImages: throttled twice then fine (the SDK's standard
//! retry), `InvalidAMIID.NotFound` right after CreateImage, a `failed` image (fail fast), an
//! image that becomes available only for a moment (confirmations), and the timeout.

use aws_sdk_ec2::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_ec2::operation::describe_images::{DescribeImagesError, DescribeImagesOutput};
use aws_sdk_ec2::types::{BlockDeviceMapping, EbsBlockDevice, Image, ImageState};
use aws_smithy_mocks::{mock, MockResponseInterceptor, Rule, RuleMode};
use aws_smithy_types::error::ErrorMetadata;
use bake::provider::aws::image::{Images, Wait};
use bake::provider::aws::sdk::Limits;
use std::time::Duration;

/// An EC2 client whose calls are answered by `rules`, in order, with the SDK's standard retry
/// (fast backoff) as production configures it.
fn ec2(rules: &[&Rule]) -> aws_sdk_ec2::Client {
    let mut mocks = MockResponseInterceptor::new().rule_mode(RuleMode::Sequential);
    for r in rules {
        mocks = mocks.with_rule(r);
    }
    let conf = aws_sdk_ec2::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("AKID", "SECRET", None, None, "mocks"))
        .retry_config(
            aws_sdk_ec2::config::retry::RetryConfig::standard()
                .with_max_attempts(4)
                .with_initial_backoff(Duration::from_millis(1))
                .with_max_backoff(Duration::from_millis(5)),
        )
        .http_client(aws_smithy_mocks::create_mock_http_client())
        .interceptor(mocks)
        .build();
    aws_sdk_ec2::Client::from_conf(conf)
}

const WAIT: Wait = Wait {
    poll_interval: Duration::from_millis(2),
    timeout: Duration::from_secs(5),
    confirmations: 3,
};

fn image(state: ImageState) -> DescribeImagesOutput {
    DescribeImagesOutput::builder()
        .images(
            Image::builder()
                .image_id("ami-0123456789abcdef0")
                .state(state)
                .block_device_mappings(
                    BlockDeviceMapping::builder()
                        .device_name("/dev/sda1")
                        .ebs(EbsBlockDevice::builder().snapshot_id("snap-0aaa").build())
                        .build(),
                )
                .build(),
        )
        .build()
}

fn error(code: &str) -> DescribeImagesError {
    DescribeImagesError::generic(
        ErrorMetadata::builder()
            .code(code)
            .message("mocked")
            .build(),
    )
}

#[tokio::test]
async fn throttled_twice_then_available_is_retried_by_the_sdk() {
    let throttled = mock!(aws_sdk_ec2::Client::describe_images)
        .sequence()
        .error(|| error("RequestLimitExceeded"))
        .times(2)
        .output(|| image(ImageState::Available))
        .repeatedly()
        .build();
    let client = ec2(&[&throttled]);
    let limits = Limits::default();
    let snaps = Images::new(&client, &limits, "us-east-1")
        .wait_available("ami-0123456789abcdef0", WAIT)
        .await
        .unwrap();
    assert_eq!(snaps, vec!["snap-0aaa".to_string()]);
    // 2 throttled + 3 confirmations: the throttling never reached bake's own loop.
    assert_eq!(throttled.num_calls(), 5);
}

#[tokio::test]
async fn not_found_right_after_create_is_waited_out() {
    let rule = mock!(aws_sdk_ec2::Client::describe_images)
        .sequence()
        .error(|| error("InvalidAMIID.NotFound"))
        .times(3)
        .output(|| image(ImageState::Pending))
        .times(2)
        .output(|| image(ImageState::Available))
        .repeatedly()
        .build();
    let client = ec2(&[&rule]);
    let limits = Limits::default();
    let snaps = Images::new(&client, &limits, "us-east-1")
        .wait_available("ami-0123456789abcdef0", WAIT)
        .await
        .unwrap();
    assert_eq!(snaps.len(), 1);
    assert_eq!(rule.num_calls(), 3 + 2 + 3);
}

#[tokio::test]
async fn a_failed_image_fails_fast_with_the_state_and_region() {
    let rule = mock!(aws_sdk_ec2::Client::describe_images)
        .sequence()
        .output(|| image(ImageState::Pending))
        .output(|| image(ImageState::Failed))
        .output(|| image(ImageState::Available))
        .repeatedly()
        .build();
    let client = ec2(&[&rule]);
    let limits = Limits::default();
    let e = Images::new(&client, &limits, "eu-west-1")
        .wait_available("ami-0123456789abcdef0", WAIT)
        .await
        .unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("ami-0123456789abcdef0")
            && msg.contains("eu-west-1")
            && msg.contains("failed"),
        "{msg}"
    );
    assert_eq!(rule.num_calls(), 2, "no call after `failed`");
}

#[tokio::test]
async fn available_once_then_pending_again_needs_three_in_a_row() {
    let rule = mock!(aws_sdk_ec2::Client::describe_images)
        .sequence()
        .output(|| image(ImageState::Available))
        .output(|| image(ImageState::Pending))
        .output(|| image(ImageState::Available))
        .repeatedly()
        .build();
    let client = ec2(&[&rule]);
    let limits = Limits::default();
    Images::new(&client, &limits, "us-east-1")
        .wait_available("ami-0123456789abcdef0", WAIT)
        .await
        .unwrap();
    assert_eq!(rule.num_calls(), 1 + 1 + 3);
}

#[tokio::test]
async fn an_image_that_stays_pending_times_out_naming_it() {
    let rule = mock!(aws_sdk_ec2::Client::describe_images)
        .sequence()
        .output(|| image(ImageState::Pending))
        .repeatedly()
        .build();
    let client = ec2(&[&rule]);
    let limits = Limits::default();
    let e = Images::new(&client, &limits, "us-east-1")
        .wait_available(
            "ami-0123456789abcdef0",
            Wait {
                timeout: Duration::from_millis(50),
                ..WAIT
            },
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("not available after"), "{e}");
}

#[tokio::test]
async fn a_5xx_that_persists_past_the_retries_is_an_error_with_context() {
    let rule = mock!(aws_sdk_ec2::Client::describe_images)
        .then_http_response(|| {
            aws_smithy_runtime_api::http::Response::new(
                aws_smithy_runtime_api::http::StatusCode::try_from(503).unwrap(),
                aws_smithy_types::body::SdkBody::from(
                    "<Response><Errors><Error><Code>Unavailable</Code><Message>down</Message></Error></Errors></Response>",
                ),
            )
        });
    let client = ec2(&[&rule]);
    let limits = Limits::default();
    let e = Images::new(&client, &limits, "us-east-1")
        .wait_available("ami-0123456789abcdef0", WAIT)
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("describing ami-0123456789abcdef0 in us-east-1"),
        "{e}"
    );
    assert_eq!(rule.num_calls(), 4, "the SDK retried up to max_attempts");
}
