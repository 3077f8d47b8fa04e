//! AWS names that `bake` reads from input files and must check before calling anything:
//! AMI IDs and SSM parameter paths. Both validate while deserializing, so a bad value is
//! reported at its own line and field.

use serde::{Deserialize, Deserializer, Serialize};
use std::fmt;

/// `ami-` followed by 8 or 17 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct AmiId(String);

impl AmiId {
    pub fn parse(s: &str) -> Result<Self, String> {
        let hex = s.strip_prefix("ami-").ok_or_else(|| {
            format!("`{s}` is not an AMI ID: expected `ami-` followed by 8 or 17 hex digits")
        })?;
        let ok = matches!(hex.len(), 8 | 17)
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if ok {
            Ok(AmiId(s.to_string()))
        } else {
            Err(format!(
                "`{s}` is not an AMI ID: expected `ami-` followed by 8 or 17 lowercase hex digits"
            ))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AmiId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for AmiId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        AmiId::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A fully qualified SSM parameter path (`/a/b/c`): starts with `/`, only `a-zA-Z0-9_.-/`,
/// no empty segment, at most 15 levels and 1011 characters.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct SsmPath(String);

impl SsmPath {
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad = |why: &str| Err(format!("`{s}` is not a valid SSM parameter path: {why}"));
        if !s.starts_with('/') {
            return bad("it must start with `/`");
        }
        if s.len() > 1011 {
            return bad("it is longer than 1011 characters");
        }
        if s.len() > 1 && s.ends_with('/') {
            return bad("it must not end with `/`");
        }
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '/')))
        {
            return bad(&format!(
                "character `{c}` is not allowed (only a-z A-Z 0-9 _ . - /)"
            ));
        }
        let segments: Vec<&str> = s[1..].split('/').collect();
        if s.len() > 1 && segments.iter().any(|seg| seg.is_empty()) {
            return bad("it has an empty segment (`//`)");
        }
        if segments.len() > 15 {
            return bad("it has more than 15 levels");
        }
        Ok(SsmPath(s.to_string()))
    }

    /// A path we may write to: AWS reserves names that begin with `aws` or `ssm`.
    pub fn parse_writable(s: &str) -> Result<Self, String> {
        let path = SsmPath::parse(s)?;
        let first = path.0[1..]
            .split('/')
            .next()
            .unwrap_or("")
            .to_ascii_lowercase();
        if first.starts_with("aws") || first.starts_with("ssm") {
            return Err(format!(
                "`{s}` is not a writable SSM parameter path: names beginning with `aws` or `ssm` are reserved by AWS"
            ));
        }
        Ok(path)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SsmPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for SsmPath {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        SsmPath::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Where an AWS base image comes from: an SSM parameter resolved at run time, or an exact AMI.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum AwsBaseRef {
    Parameter(SsmPath),
    Ami(AmiId),
}

/// How a node from an EKS base image joins its cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Join {
    /// Amazon Linux 2023 EKS AMIs: nodeadm reads a `NodeConfig`.
    Nodeadm,
    /// Canonical's Ubuntu EKS AMIs and the Amazon Linux 2 EKS AMIs: `/etc/eks/bootstrap.sh`.
    Bootstrap,
}

impl Join {
    /// From the public SSM parameter a base is resolved from, if it is a known EKS base.
    pub fn for_parameter(path: &str) -> Option<Join> {
        if path.starts_with("/aws/service/canonical/ubuntu/eks/") {
            Some(Join::Bootstrap)
        } else if path.starts_with("/aws/service/eks/optimized-ami/") {
            if path.contains("/amazon-linux-2023/") {
                Some(Join::Nodeadm)
            } else if path.contains("/amazon-linux-2/") || path.contains("/amazon-linux-2-arm64/") {
                Some(Join::Bootstrap)
            } else {
                None
            }
        } else {
            None
        }
    }

    /// From an AMI's name and description (what DescribeImages says about a literal base).
    pub fn for_image(name: &str, description: &str) -> Option<Join> {
        let text = format!("{name} {description}").to_ascii_lowercase();
        if text.contains("al2023") || text.contains("amazon linux 2023") {
            Some(Join::Nodeadm)
        } else if text.contains("ubuntu-eks") || text.contains("ubuntu eks") {
            Some(Join::Bootstrap)
        } else if text.contains("amazon-eks-node") || text.contains("amazon-eks-arm64-node") {
            // The Amazon Linux 2 EKS AMIs (the AL2023 ones say al2023 in their names).
            Some(Join::Bootstrap)
        } else {
            None
        }
    }
}

impl<'de> Deserialize<'de> for AwsBaseRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.starts_with('/') {
            SsmPath::parse(&s).and_then(|p| match Join::for_parameter(p.as_str()) {
                Some(_) => Ok(AwsBaseRef::Parameter(p)),
                None => Err(format!(
                    "`{s}` is not a base whose nodes bake knows how to join to a cluster: use an Ubuntu EKS parameter (`/aws/service/canonical/ubuntu/eks/...`), an EKS-optimized Amazon Linux one (`/aws/service/eks/optimized-ami/<k8s>/amazon-linux-2023/...`), or an AMI ID"
                )),
            })
        } else if s.starts_with("ami-") {
            AmiId::parse(&s).map(AwsBaseRef::Ami)
        } else {
            Err(format!(
                "`{s}` is neither an SSM parameter path (`/aws/service/...`) nor an AMI ID (`ami-...`)"
            ))
        }
        .map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for AwsBaseRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AwsBaseRef::Parameter(p) => write!(f, "{p}"),
            AwsBaseRef::Ami(a) => write!(f, "{a}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ami_ids() {
        assert!(AmiId::parse("ami-12345678").is_ok());
        assert!(AmiId::parse("ami-0123456789abcdef0").is_ok());
        for bad in [
            "ami-1234567",
            "ami-0123456789ABCDEF0",
            "ami-0123456789abcdef",
            "ami-zzzzzzzz",
            "i-12345678",
            "ami-",
        ] {
            assert!(AmiId::parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn ssm_paths() {
        assert!(SsmPath::parse("/bake").is_ok());
        assert!(SsmPath::parse("/aws/service/eks/optimized-ami/1.31/amazon-linux-2023/x86_64/standard/recommended/image_id").is_ok());
        for bad in [
            "bake",
            "/bake/",
            "/ba ke",
            "/a//b",
            "/a/b/c/d/e/f/g/h/i/j/k/l/m/n/o/p",
            "/bake:1",
        ] {
            assert!(SsmPath::parse(bad).is_err(), "{bad} accepted");
        }
        assert!(SsmPath::parse_writable("/aws/bake").is_err());
        assert!(SsmPath::parse_writable("/SSM-x").is_err());
        assert!(SsmPath::parse_writable("/platform/bake").is_ok());
    }
}
