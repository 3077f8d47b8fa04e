//! The bearer token an EKS cluster's API server accepts from an IAM identity, made as
//! `aws eks get-token` makes it (EKS user guide, "Connect kubectl to an EKS cluster by creating
//! a kubeconfig file"; kubernetes-sigs/aws-iam-authenticator `pkg/token/token.go`): an STS
//! `GetCallerIdentity` request presigned with SigV4 in its query, with the cluster's name in
//! the signed `x-k8s-aws-id` header, written as `k8s-aws-v1.` and the URL in unpadded URL-safe
//! base64. The API server sends the request to STS itself and takes the identity STS returns;
//! the signed header binds the token to one cluster. No IAM permission is needed to make it.

use aws_sigv4::http_request::{
    sign, SignableBody, SignableRequest, SignatureLocation, SigningSettings,
};
use aws_sigv4::sign::v4;
use base64::Engine as _;
use std::time::{Duration, SystemTime};

/// The token's prefix (aws-iam-authenticator's `v1Prefix`).
pub const PREFIX: &str = "k8s-aws-v1.";
/// The signed header that names the cluster the token is for.
pub const CLUSTER_HEADER: &str = "x-k8s-aws-id";
/// What the presigned URL says of its own life (`aws eks get-token` presigns for 60 seconds;
/// the API server accepts a token up to 15 minutes after it was signed).
pub const PRESIGN_EXPIRY: Duration = Duration::from_secs(60);

/// A token for `cluster` in `region`, signed by `credentials` at `now`.
pub fn token(
    cluster: &str,
    region: &str,
    credentials: aws_credential_types::Credentials,
    now: SystemTime,
) -> Result<String, String> {
    let identity = credentials.into();
    let mut settings = SigningSettings::default();
    settings.signature_location = SignatureLocation::QueryParams;
    settings.expires_in = Some(PRESIGN_EXPIRY);
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name("sts")
        .time(now)
        .settings(settings)
        .build()
        .map_err(|e| format!("signing the EKS token: {e}"))?
        .into();
    // The regional endpoint, as current AWS CLIs presign (the global one is legacy).
    let url =
        format!("https://sts.{region}.amazonaws.com/?Action=GetCallerIdentity&Version=2011-06-15");
    let signable = SignableRequest::new(
        "GET",
        url.as_str(),
        std::iter::once((CLUSTER_HEADER, cluster)),
        // As botocore presigns (and so `aws eks get-token`): the payload is not signed.
        SignableBody::UnsignedPayload,
    )
    .map_err(|e| format!("signing the EKS token: {e}"))?;
    let (instructions, _) = sign(signable, &params)
        .map_err(|e| format!("signing the EKS token: {e}"))?
        .into_parts();
    let mut request = http::Request::builder()
        .method("GET")
        .uri(&url)
        .body(())
        .map_err(|e| format!("signing the EKS token: {e}"))?;
    instructions.apply_to_request_http1x(&mut request);
    Ok(format!(
        "{PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(request.uri().to_string())
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn creds(session: Option<&str>) -> aws_credential_types::Credentials {
        aws_credential_types::Credentials::new(
            "AKIDEXAMPLE",
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            session.map(str::to_string),
            None,
            "test",
        )
    }

    /// The URL inside a token, and its query as a map.
    fn open(token: &str) -> (String, BTreeMap<String, String>) {
        let b64 = token.strip_prefix(PREFIX).expect("the v1 prefix");
        assert!(
            !b64.contains('=') && !b64.contains('+') && !b64.contains('/'),
            "unpadded URL-safe base64"
        );
        let url = String::from_utf8(
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(b64)
                .unwrap(),
        )
        .unwrap();
        let uri: http::Uri = url.parse().unwrap();
        let query = uri
            .query()
            .unwrap()
            .split('&')
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap();
                (k.to_string(), v.to_string())
            })
            .collect();
        (url, query)
    }

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn a_token_is_a_presigned_get_caller_identity_bound_to_its_cluster() {
        let t = token("dev", "eu-west-1", creds(None), at(1_764_900_000)).unwrap();
        let (url, q) = open(&t);
        assert!(
            url.starts_with("https://sts.eu-west-1.amazonaws.com/?"),
            "{url}"
        );
        assert_eq!(q["Action"], "GetCallerIdentity");
        assert_eq!(q["Version"], "2011-06-15");
        assert_eq!(q["X-Amz-Algorithm"], "AWS4-HMAC-SHA256");
        assert_eq!(q["X-Amz-Expires"], "60");
        assert_eq!(q["X-Amz-Date"], "20251205T020000Z");
        assert_eq!(
            q["X-Amz-Credential"],
            "AKIDEXAMPLE%2F20251205%2Feu-west-1%2Fsts%2Faws4_request"
        );
        assert_eq!(q["X-Amz-SignedHeaders"], "host%3Bx-k8s-aws-id");
        assert_eq!(q["X-Amz-Signature"].len(), 64);
        assert!(!q.contains_key("X-Amz-Security-Token"));
    }

    #[test]
    fn the_signature_binds_cluster_time_and_key() {
        let t = |cluster: &str, secs: u64| {
            open(&token(cluster, "us-east-1", creds(None), at(secs)).unwrap()).1["X-Amz-Signature"]
                .clone()
        };
        assert_eq!(
            t("dev", 1_764_900_000),
            t("dev", 1_764_900_000),
            "deterministic"
        );
        assert_ne!(
            t("dev", 1_764_900_000),
            t("prod", 1_764_900_000),
            "another cluster"
        );
        assert_ne!(
            t("dev", 1_764_900_000),
            t("dev", 1_764_900_001),
            "another time"
        );
    }

    #[test]
    fn temporary_credentials_carry_their_session_token() {
        let t = token(
            "dev",
            "us-east-1",
            creds(Some("FQoG/session+token")),
            at(1_764_900_000),
        )
        .unwrap();
        let (_, q) = open(&t);
        assert_eq!(q["X-Amz-Security-Token"], "FQoG%2Fsession%2Btoken");
    }
}
