//! Property tests for the recipe and pipeline parsers: whatever the bytes, loading never
//! panics, and every refusal names the file and a line that exists.

use crate::common;

use bake::input::pipeline::Pipeline;
use common::Project;
use proptest::prelude::*;

fn check(project: &Project, rel: &str, bytes: &[u8]) -> Result<(), TestCaseError> {
    project.write(rel, bytes);
    let lines = bytes.iter().filter(|b| **b == b'\n').count() + 2;
    match Pipeline::load(&project.path("pipelines/local.toml")) {
        Ok(_) => {}
        Err(d) => {
            prop_assert!(d.file.exists() || d.file.ends_with("local.toml"), "{d}");
            if d.file == project.path(rel) {
                if let Some(line) = d.line {
                    prop_assert!(line >= 1 && line <= lines, "line {line} of {lines}: {d}");
                }
            }
            prop_assert!(!d.message.is_empty());
        }
    }
    Ok(())
}

/// The real file with a random edit: a byte replaced, a span deleted, or text inserted.
fn mutated(original: &'static [u8]) -> impl Strategy<Value = Vec<u8>> {
    let n = original.len();
    prop_oneof![
        (0..n, any::<u8>()).prop_map(move |(i, b)| {
            let mut v = original.to_vec();
            v[i] = b;
            v
        }),
        (0..n, 0..40usize).prop_map(move |(i, len)| {
            let mut v = original.to_vec();
            v.drain(i..(i + len).min(n));
            v
        }),
        (0..n, "[a-z_=\\[\\]\"'{},.\\n 0-9-]{0,24}").prop_map(move |(i, s)| {
            let mut v = original.to_vec();
            v.splice(i..i, s.bytes());
            v
        }),
    ]
}

fn leak(s: String) -> &'static [u8] {
    Box::leak(s.into_bytes().into_boxed_slice())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn mutated_recipes_never_panic_and_point_at_a_real_line(bytes in mutated(leak(std::fs::read_to_string(common::repo().join("recipes/eks-node.toml")).unwrap()))) {
        let project = Project::new();
        check(&project, "recipes/eks-node.toml", &bytes)?;
    }

    #[test]
    fn mutated_pipelines_never_panic_and_point_at_a_real_line(bytes in mutated(leak(std::fs::read_to_string(common::repo().join("pipelines/local.toml")).unwrap()))) {
        let project = Project::new();
        check(&project, "pipelines/local.toml", &bytes)?;
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let project = Project::new();
        check(&project, "recipes/eks-node.toml", &bytes)?;
    }
}
