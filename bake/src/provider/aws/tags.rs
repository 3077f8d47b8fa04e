//! EC2 tag limits and the validator summary bake keeps in tags. A tag value holds at most 256
//! characters, a key 128, and a resource at most 50 tags; EC2 refuses the whole call past
//! that. The summary (`name=status,...`) is therefore split over `bake:validators`,
//! `bake:validators.2`, … so it is never cut mid-entry, however many validators a recipe has.

use crate::verdict::Status;
use crate::{Error, Result};
use aws_sdk_ec2::types::Tag;

pub const VALUE_MAX: usize = 256;
pub const KEY_MAX: usize = 128;
pub const PER_RESOURCE_MAX: usize = 50;
/// The summary may take at most this many tags (bake's other tags are about a dozen).
const SUMMARY_TAGS_MAX: usize = 16;
const SUMMARY_KEY: &str = "bake:validators";

fn summary_key(n: usize) -> String {
    if n == 0 {
        SUMMARY_KEY.to_string()
    } else {
        format!("{SUMMARY_KEY}.{}", n + 1)
    }
}

/// The summary as tags, each value within the limit.
pub fn encode_summary(summary: &[(String, Status)]) -> Result<Vec<Tag>> {
    let mut values: Vec<String> = vec![String::new()];
    for (name, status) in summary {
        let entry = format!("{name}={status}");
        if entry.len() > VALUE_MAX {
            return Err(Error::provider(
                "aws",
                format!(
                    "validator name `{name}` is too long for an EC2 tag ({VALUE_MAX} characters)"
                ),
            ));
        }
        let last = values.last_mut().expect("one value");
        if last.is_empty() {
            last.push_str(&entry);
        } else if last.len() + 1 + entry.len() <= VALUE_MAX {
            last.push(',');
            last.push_str(&entry);
        } else {
            values.push(entry);
        }
    }
    if values.len() > SUMMARY_TAGS_MAX {
        return Err(Error::provider(
            "aws",
            format!(
                "{} validators do not fit in {SUMMARY_TAGS_MAX} EC2 tags",
                summary.len()
            ),
        ));
    }
    Ok(values
        .into_iter()
        .enumerate()
        .map(|(n, v)| Tag::builder().key(summary_key(n)).value(v).build())
        .collect())
}

/// The summary back from an image's tags (older images carry one JSON tag).
pub fn decode_summary(tags: &[Tag]) -> Vec<(String, Status)> {
    let value = |k: &str| {
        tags.iter()
            .find(|t| t.key() == Some(k))
            .and_then(|t| t.value())
    };
    let Some(first) = value(SUMMARY_KEY) else {
        return Vec::new();
    };
    if first.starts_with('[') {
        return serde_json::from_str(first).unwrap_or_default();
    }
    let mut text = first.to_string();
    for n in 1..SUMMARY_TAGS_MAX {
        match value(&summary_key(n)) {
            Some(v) => {
                text.push(',');
                text.push_str(v);
            }
            None => break,
        }
    }
    text.split(',')
        .filter_map(|e| e.split_once('='))
        .filter_map(|(name, status)| {
            serde_json::from_value(serde_json::Value::String(status.to_string()))
                .ok()
                .map(|s| (name.to_string(), s))
        })
        .collect()
}

/// Refuses tags EC2 would refuse, before the call: a clear error naming the tag instead of an
/// `InvalidParameterValue` for the whole request.
pub fn check(tags: &[Tag], what: &str) -> Result<()> {
    if tags.len() > PER_RESOURCE_MAX {
        return Err(Error::provider(
            "aws",
            format!(
                "{what}: {} tags, EC2 allows {PER_RESOURCE_MAX} per resource",
                tags.len()
            ),
        ));
    }
    for t in tags {
        let (k, v) = (t.key().unwrap_or_default(), t.value().unwrap_or_default());
        if k.chars().count() > KEY_MAX || v.chars().count() > VALUE_MAX {
            return Err(Error::provider(
                "aws",
                format!("{what}: tag `{k}` is longer than EC2 allows (key {KEY_MAX}, value {VALUE_MAX} characters)"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_summary_splits_over_tags_within_the_limit_and_reads_back_whole() {
        let summary: Vec<(String, Status)> = (0..40)
            .map(|i| {
                (
                    format!("a-rather-descriptive-validator-{i:02}"),
                    if i % 7 == 0 {
                        Status::Skipped
                    } else {
                        Status::Pass
                    },
                )
            })
            .collect();
        let tags = encode_summary(&summary).unwrap();
        assert!(tags.len() > 1);
        for t in &tags {
            assert!(t.value().unwrap().len() <= VALUE_MAX, "{t:?}");
        }
        check(&tags, "image").unwrap();
        assert_eq!(decode_summary(&tags), summary);
    }

    #[test]
    fn the_old_json_tag_still_reads() {
        let tags = vec![Tag::builder()
            .key("bake:validators")
            .value(r#"[["mac-policy","pass"],["node-ready","skipped"]]"#)
            .build()];
        assert_eq!(
            decode_summary(&tags),
            vec![
                ("mac-policy".into(), Status::Pass),
                ("node-ready".into(), Status::Skipped)
            ]
        );
    }

    #[test]
    fn tags_ec2_would_refuse_are_refused_first() {
        let long = Tag::builder().key("bake:x").value("v".repeat(257)).build();
        assert!(check(&[long], "image ami-1")
            .unwrap_err()
            .to_string()
            .contains("bake:x"));
        let many: Vec<Tag> = (0..51)
            .map(|i| Tag::builder().key(format!("k{i}")).value("v").build())
            .collect();
        assert!(check(&many, "image ami-1").is_err());
    }
}
