//! The registries: releases are immutable and all-or-nothing, IDs count up per day, channels
//! keep their history, and the lock is exclusive. Each behaviour runs against the embedded
//! SQLite registry and the SSM registry on moto_server.

use crate::common;

use bake::key::BakeKey;
use bake::registry::{Registry, SqliteRegistry, SsmRegistry};
use bake::release::{ChannelMove, Manifest, ReleaseId, ReleaseImage};
use bake::{Arch, Error};
use std::collections::BTreeMap;
use std::time::Duration;

fn manifest(images: &[(Arch, &str)]) -> Manifest {
    Manifest {
        recipe: "eks-node".into(),
        release: "2000.01.01-1".parse().unwrap(),
        provider: "local".into(),
        tool_version: "0".into(),
        created_at: chrono::Utc::now(),
        images: images
            .iter()
            .map(|(a, id)| {
                (
                    *a,
                    ReleaseImage {
                        image_id: id.to_string(),
                        key: BakeKey::from_hex("k"),
                        base: "b".into(),
                        validated_at: chrono::Utc::now(),
                        validators: BTreeMap::new(),
                        packages_sha256: None,
                        kubelet: None,
                        packages: None,
                        run_id: "r".into(),
                        copies: Default::default(),
                    },
                )
            })
            .collect(),
    }
}

async fn ssm(prefix: &str) -> SsmRegistry {
    let moto = common::moto::Moto::get();
    let config = moto.sdk().await;
    SsmRegistry::new(
        &config,
        bake::input::names::SsmPath::parse(prefix).unwrap(),
        Default::default(),
    )
}

async fn releases_count_up(reg: &dyn Registry) {
    let a = reg
        .publish(manifest(&[(Arch::X86_64, "img-a"), (Arch::Arm64, "img-b")]))
        .await
        .unwrap();
    let b = reg
        .publish(manifest(&[(Arch::X86_64, "img-c"), (Arch::Arm64, "img-d")]))
        .await
        .unwrap();
    let today = chrono::Utc::now()
        .date_naive()
        .format("%Y.%m.%d")
        .to_string();
    assert_eq!(a.release.to_string(), format!("{today}-1"));
    assert_eq!(b.release.to_string(), format!("{today}-2"));
    let all = reg.releases("eks-node").await.unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all[1].images[&Arch::Arm64].image_id, "img-d");
    assert!(reg.releases("other").await.unwrap().is_empty());
    // Prune's removal: the release disappears, the other stays.
    reg.delete_release("eks-node", &a.release).await.unwrap();
    assert_eq!(
        reg.releases("eks-node").await.unwrap(),
        vec![all[1].clone()]
    );
}

#[tokio::test]
async fn releases_count_up_per_day_and_keep_every_arch() {
    let dir = tempfile::tempdir().unwrap();
    let reg = SqliteRegistry::open(dir.path()).unwrap();
    releases_count_up(&reg).await;
    // Reopening sees the same data (one file under the state dir).
    let again = SqliteRegistry::open(dir.path()).unwrap();
    assert_eq!(again.releases("eks-node").await.unwrap().len(), 1);
    assert!(dir.path().join("registry.db").is_file());
}

#[tokio::test]
async fn ssm_releases_count_up_per_day_and_keep_every_arch() {
    let reg = ssm("/t1").await;
    releases_count_up(&reg).await;
    // The contract Terraform reads: one parameter per arch, written once, plus the manifest.
    let moto = common::moto::Moto::get();
    let client = aws_sdk_ssm::Client::new(&moto.sdk().await);
    let rel = reg
        .releases("eks-node")
        .await
        .unwrap()
        .pop()
        .unwrap()
        .release;
    let p = client
        .get_parameter()
        .name(format!("/t1/eks-node/releases/{rel}/arm64"))
        .send()
        .await
        .unwrap();
    assert_eq!(p.parameter().unwrap().value(), Some("img-d"));
    assert_eq!(p.parameter().unwrap().data_type(), Some("aws:ec2:image"));
    // Immutable: writing it again is refused.
    let again = reg
        .publish(manifest(&[(Arch::X86_64, "img-e")]))
        .await
        .unwrap();
    assert_ne!(again.release, rel);
}

/// A scheduled run with nothing to do reads the newest release in one call, however many
/// releases the registry holds (more than a page of GetParametersByPath here), and that copy
/// follows every publish.
#[tokio::test]
async fn ssm_the_newest_release_is_one_read_and_follows_every_publish() {
    let moto = common::moto::Moto::get();
    // Through the proxy: its calls are logged, and it pages listings as SSM does.
    let reg = SsmRegistry::new(
        &moto.sdk_via_proxy().await,
        bake::input::names::SsmPath::parse("/newest").unwrap(),
        Default::default(),
    );
    assert_eq!(reg.newest_release("eks-node").await.unwrap(), None);
    for n in 0..7 {
        let published = reg
            .publish(manifest(&[
                (Arch::X86_64, &format!("ami-0aaaaaaaaaaaaaa{n:02}")),
                (Arch::Arm64, &format!("ami-0bbbbbbbbbbbbbb{n:02}")),
            ]))
            .await
            .unwrap();
        let before = moto.records().len();
        let newest = reg.newest_release("eks-node").await.unwrap().unwrap();
        let reads: Vec<_> = moto.records()[before..]
            .iter()
            .filter(|r| r["body"].to_string().contains("/newest/"))
            .map(|r| r["action"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(reads, ["GetParameter"], "release {n}");
        assert_eq!(newest, published, "release {n}");
        assert_eq!(
            reg.releases("eks-node").await.unwrap().pop().unwrap(),
            newest
        );
    }
}

/// Releases are listed from their index entries, one parameter each; a registry written before
/// the index existed (manifests only) is listed part by part, and its next publish writes the
/// missing entries and the marker, after which the listing is one level deep. A deleted release
/// leaves both listings at once.
#[tokio::test]
async fn ssm_releases_are_listed_from_their_index_and_an_older_registry_is_indexed_on_publish() {
    let moto = common::moto::Moto::get();
    let sdk = moto.sdk().await;
    let raw = aws_sdk_ssm::Client::new(&sdk);
    let reg = ssm("/indexed").await;
    // Two releases as a bake without the index wrote them: parts and manifest, no entry.
    let mut old = Vec::new();
    for n in 1..=2u32 {
        let mut m = manifest(&[(Arch::X86_64, &format!("ami-0ccccccccccccc{n:02}"))]);
        m.release = ReleaseId::new(chrono::NaiveDate::from_ymd_opt(2000, 1, 1).unwrap(), n);
        let dir = format!("/indexed/eks-node/releases/{}", m.release);
        for (name, value) in [
            (
                format!("{dir}/x86_64"),
                m.images[&Arch::X86_64].image_id.clone(),
            ),
            (
                format!("{dir}/manifest"),
                serde_json::to_string(&m).unwrap(),
            ),
        ] {
            raw.put_parameter()
                .name(name)
                .value(value)
                .r#type(aws_sdk_ssm::types::ParameterType::String)
                .send()
                .await
                .unwrap();
        }
        old.push(m);
    }
    assert_eq!(reg.releases("eks-node").await.unwrap(), old);
    let new = reg
        .publish(manifest(&[(Arch::X86_64, "ami-0cccccccccccccc03")]))
        .await
        .unwrap();
    let listed = raw
        .get_parameters_by_path()
        .path("/indexed/eks-node/releases")
        .recursive(false)
        .send()
        .await
        .unwrap();
    let mut entries: Vec<String> = listed
        .parameters()
        .iter()
        .map(|p| p.name().unwrap().rsplit('/').next().unwrap().to_string())
        .collect();
    entries.sort();
    assert_eq!(
        entries,
        [
            old[0].release.to_string(),
            old[1].release.to_string(),
            new.release.to_string()
        ]
    );
    let marker = raw
        .get_parameter()
        .name("/indexed/eks-node/indexed")
        .send()
        .await;
    assert!(marker.is_ok(), "no marker: {marker:?}");
    let mut all = old.clone();
    all.push(new.clone());
    assert_eq!(reg.releases("eks-node").await.unwrap(), all);
    reg.delete_release("eks-node", &old[0].release)
        .await
        .unwrap();
    assert_eq!(reg.releases("eks-node").await.unwrap(), all[1..]);
    let left = raw
        .get_parameters_by_path()
        .path(format!("/indexed/eks-node/releases/{}", old[0].release))
        .recursive(true)
        .send()
        .await
        .unwrap();
    assert!(left.parameters().is_empty(), "{:?}", left.parameters());
    assert!(reg
        .incomplete_releases("eks-node")
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn published_releases_cannot_be_changed() {
    let dir = tempfile::tempdir().unwrap();
    let reg = SqliteRegistry::open(dir.path()).unwrap();
    let a = reg
        .publish(manifest(&[(Arch::X86_64, "img-a")]))
        .await
        .unwrap();
    let conn = rusqlite::Connection::open(dir.path().join("registry.db")).unwrap();
    let err = conn
        .execute(
            "UPDATE release_images SET image_id = 'img-evil' WHERE release = ?1",
            [a.release.to_string()],
        )
        .unwrap_err();
    assert!(err.to_string().contains("immutable"), "{err}");
    assert_eq!(
        reg.releases("eks-node").await.unwrap()[0].images[&Arch::X86_64].image_id,
        "img-a"
    );
}

async fn revocations_are_written_once(reg: &dyn Registry) {
    let a = reg
        .publish(manifest(&[(Arch::X86_64, "ami-0aaaaaaaaaaaaaaa1")]))
        .await
        .unwrap();
    assert_eq!(reg.revocation("eks-node", &a.release).await.unwrap(), None);
    assert!(reg.usable_release("eks-node", &a.release).await.is_ok());
    let first = bake::release::Revocation {
        reason: "CVE in the kernel".into(),
        who: "alice@laptop".into(),
        at: chrono::Utc::now(),
    };
    reg.revoke("eks-node", &a.release, &first).await.unwrap();
    let again = bake::release::Revocation {
        reason: "again".into(),
        ..first.clone()
    };
    let e = reg
        .revoke("eks-node", &a.release, &again)
        .await
        .unwrap_err();
    assert_eq!(e.exit_code(), 4, "{e}");
    assert!(e.to_string().contains("CVE in the kernel"), "{e}");
    let got = reg
        .revocation("eks-node", &a.release)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.reason, first.reason);
    let e = reg
        .usable_release("eks-node", &a.release)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("revoked"), "{e}");
    // The release itself is unchanged: still listed, same images.
    assert_eq!(reg.releases("eks-node").await.unwrap(), vec![a]);
}

#[tokio::test]
async fn a_revocation_is_written_once_beside_an_unchanged_release() {
    let dir = tempfile::tempdir().unwrap();
    revocations_are_written_once(&SqliteRegistry::open(dir.path()).unwrap()).await;
}

#[tokio::test]
async fn ssm_a_revocation_is_written_once_beside_an_unchanged_release() {
    let reg = ssm("/revoke1").await;
    revocations_are_written_once(&reg).await;
    // Where Terraform looks for it: beside the release's parameters, written once.
    let moto = common::moto::Moto::get();
    let client = aws_sdk_ssm::Client::new(&moto.sdk().await);
    let release = reg.releases("eks-node").await.unwrap()[0].release.clone();
    let p = client
        .get_parameter()
        .name(format!("/revoke1/eks-node/releases/{release}/revoked"))
        .send()
        .await
        .unwrap();
    assert!(p
        .parameter()
        .unwrap()
        .value()
        .unwrap()
        .contains("CVE in the kernel"));
}

/// A record bake wrote that no longer parses is bake's state corrupted, not a lock or a conflict:
/// its own error, exit 1, naming the registry file and what could not be read, source kept.
#[tokio::test]
async fn a_record_changed_behind_bakes_back_is_corrupt_state_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let reg = SqliteRegistry::open(dir.path()).unwrap();
    reg.publish(manifest(&[(Arch::X86_64, "img-a")]))
        .await
        .unwrap();
    let conn = rusqlite::Connection::open(dir.path().join("registry.db")).unwrap();
    conn.execute(
        "INSERT INTO releases VALUES ('eks-node', '2000.01.01-9', '{\"recipe\": 7', 'now')",
        [],
    )
    .unwrap();
    let err = reg.releases("eks-node").await.unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err:?}");
    assert_eq!(err.exit_code(), bake::error::exit::FAILURE);
    let text = err.to_string();
    assert!(
        text.contains("registry.db") && text.contains("unreadable release manifest"),
        "{text}"
    );
    assert!(
        std::error::Error::source(&err).is_some(),
        "the parse error is kept"
    );
}

async fn channels_append(reg: &dyn Registry) {
    for (i, release) in ["2026.11.20-1", "2026.11.21-1", "2026.11.20-1"]
        .iter()
        .enumerate()
    {
        let e = reg
            .move_channel(
                "eks-node",
                "dev",
                ChannelMove {
                    release: release.parse::<ReleaseId>().unwrap(),
                    images: [(Arch::X86_64, format!("img-{i}"))].into_iter().collect(),
                    from: None,
                    who: "tester@host".into(),
                    reason: Some(format!("move {i}")),
                },
            )
            .await
            .unwrap();
        assert_eq!(e.version, i as u64 + 1);
    }
    let history = reg.channel_history("eks-node", "dev").await.unwrap();
    assert_eq!(
        history.iter().map(|e| e.version).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert_eq!(history[1].reason.as_deref(), Some("move 1"));
    let now = reg.channels("eks-node").await.unwrap();
    assert_eq!(now["dev"].release.to_string(), "2026.11.20-1");
    assert_eq!(now["dev"].version, 3);
    assert!(reg
        .channel_history("eks-node", "prod")
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn channels_append_history() {
    let dir = tempfile::tempdir().unwrap();
    channels_append(&SqliteRegistry::open(dir.path()).unwrap()).await;
}

#[tokio::test]
async fn ssm_channels_append_history() {
    channels_append(&ssm("/t2").await).await;
}

async fn lock_rules(one: &dyn Registry, two: &dyn Registry) {
    one.lock("eks-node", "run-1", Duration::from_secs(60), false)
        .await
        .unwrap();
    match two
        .lock("eks-node", "run-2", Duration::from_secs(60), false)
        .await
    {
        Err(e @ Error::LockHeld { .. }) => {
            assert_eq!(e.exit_code(), 4);
            assert!(e.to_string().contains("run-1"), "{e}");
        }
        other => panic!("expected LockHeld, got {other:?}"),
    }
    // Another recipe is independent.
    two.lock("gpu-node", "run-2", Duration::from_secs(60), false)
        .await
        .unwrap();
    // Breaking is explicit.
    two.lock("eks-node", "run-2", Duration::from_secs(60), true)
        .await
        .unwrap();
    assert!(matches!(
        one.refresh_lock("eks-node", "run-1", Duration::from_secs(60))
            .await,
        Err(Error::Conflict(_))
    ));
    // An expired lock is taken over.
    two.unlock("eks-node", "run-2").await.unwrap();
    one.lock("eks-node", "run-1", Duration::from_millis(1), false)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    two.lock("eks-node", "run-2", Duration::from_secs(60), false)
        .await
        .unwrap();
    // Unlocking someone else's lock does nothing.
    one.unlock("eks-node", "run-1").await.unwrap();
    assert!(one
        .lock("eks-node", "run-1", Duration::from_secs(60), false)
        .await
        .is_err());
}

#[tokio::test]
async fn the_lock_is_exclusive_expires_and_can_be_broken() {
    let dir = tempfile::tempdir().unwrap();
    let one = SqliteRegistry::open(dir.path()).unwrap();
    let two = SqliteRegistry::open(dir.path()).unwrap();
    lock_rules(&one, &two).await;
}

#[tokio::test]
async fn ssm_lock_is_exclusive_expires_and_can_be_broken() {
    lock_rules(&ssm("/t3").await, &ssm("/t3").await).await;
}

#[tokio::test]
async fn ssm_an_expired_lock_is_taken_over_by_exactly_one_of_many_contenders() {
    // SSM has no compare-and-swap; read-then-overwrite would let several runs "take over" the
    // same expired lock. Rounds of 6 contenders racing (each through its own client).
    let mut winners_per_round = Vec::new();
    for round in 0..5 {
        let prefix = format!("/race{round}");
        let dead = ssm(&prefix).await;
        dead.lock("eks-node", "dead-run", Duration::from_millis(1), false)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let mut contenders = Vec::new();
        for _ in 0..6 {
            contenders.push(ssm(&prefix).await);
        }
        let attempts = contenders.iter().enumerate().map(|(i, r)| async move {
            r.lock(
                "eks-node",
                &format!("run-{i}"),
                Duration::from_secs(60),
                false,
            )
            .await
        });
        let results = futures::future::join_all(attempts).await;
        let winners: Vec<usize> = results
            .iter()
            .enumerate()
            .filter(|(_, r)| r.is_ok())
            .map(|(i, _)| i)
            .collect();
        for r in &results {
            if let Err(e) = r {
                assert!(matches!(e, Error::LockHeld { .. }), "{e}");
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: {results:?}");
        // The winner holds it, and no takeover marker is left behind.
        let holder = dead.lock_holder("eks-node").await.unwrap().unwrap();
        assert_eq!(holder.owner, format!("run-{}", winners[0]));
        let client = aws_sdk_ssm::Client::new(&common::moto::Moto::get().sdk().await);
        let left = client
            .get_parameters_by_path()
            .path(format!("{prefix}/eks-node/lock-takeover"))
            .recursive(true)
            .send()
            .await
            .unwrap();
        assert!(left.parameters().is_empty(), "{left:?}");
        winners_per_round.push(winners.len());
    }
    eprintln!("winners per round of 6 contenders: {winners_per_round:?}");
}

/// SSM keeps only a parameter's last 100 versions. After 150 moves of a channel its history is
/// still complete and in order, and the pin `bake pin --channel` printed at move 3 (the release
/// parameter of what the channel held then) still reads the same image at move 150 — while the
/// channel parameter's version 3, what a `:3` pin would read, is gone.
#[tokio::test]
async fn ssm_a_channel_keeps_its_whole_history_and_its_pins_past_100_moves() {
    let reg = ssm("/t150").await;
    let a = reg
        .publish(manifest(&[(Arch::X86_64, "img-a")]))
        .await
        .unwrap();
    let b = reg
        .publish(manifest(&[(Arch::X86_64, "img-b")]))
        .await
        .unwrap();
    let prefix = bake::input::names::SsmPath::parse("/t150").unwrap();
    let mut pinned = None;
    for i in 0..150u64 {
        let release = if i % 2 == 0 { &a } else { &b };
        reg.move_channel(
            "eks-node",
            "nightly",
            ChannelMove {
                release: release.release.clone(),
                images: [(Arch::X86_64, release.images[&Arch::X86_64].image_id.clone())]
                    .into_iter()
                    .collect(),
                from: None,
                who: "scheduler@ci".into(),
                reason: Some(format!("move {}", i + 1)),
            },
        )
        .await
        .unwrap();
        if i + 1 == 3 {
            let pins = bake::ops::pin::pins(
                &reg,
                &prefix,
                "eks-node",
                &bake::ops::pin::Target::Channel("nightly".into()),
                Some(Arch::X86_64),
            )
            .await
            .unwrap();
            pinned = Some((pins[0].parameter.clone(), pins[0].image_id.clone()));
        }
    }
    let history = reg.channel_history("eks-node", "nightly").await.unwrap();
    assert_eq!(
        history.iter().map(|e| e.version).collect::<Vec<_>>(),
        (1..=150).collect::<Vec<u64>>(),
        "the history lost moves"
    );
    assert_eq!(history[0].reason.as_deref(), Some("move 1"));
    assert_eq!(history[0].release, a.release);
    assert_eq!(history[149].release, b.release);
    // Where the channel points now is the last entry, read without its history.
    assert_eq!(
        reg.channel("eks-node", "nightly").await.unwrap().as_ref(),
        history.last()
    );
    assert_eq!(reg.channel("eks-node", "never").await.unwrap(), None);

    let moto = common::moto::Moto::get();
    let client = aws_sdk_ssm::Client::new(&moto.sdk().await);
    let (name, image) = pinned.unwrap();
    let read = client.get_parameter().name(&name).send().await.unwrap();
    assert_eq!(read.parameter().unwrap().value(), Some(image.as_str()));
    let gone = client
        .get_parameter()
        .name("/t150/eks-node/channels/nightly/x86_64:3")
        .send()
        .await;
    assert!(gone.is_err(), "SSM kept version 3 of 150: {gone:?}");
}

/// A run killed between moving a channel and writing the move's durable history entry: the move
/// is still in the parameter's history, and the next move writes the missing entry.
#[tokio::test]
async fn ssm_a_move_whose_history_entry_was_not_written_is_recorded_by_the_next_move() {
    let reg = ssm("/tgap").await;
    let moved = |i: u64| ChannelMove {
        release: "2026.11.20-1".parse::<ReleaseId>().unwrap(),
        images: [(Arch::X86_64, format!("img-{i}"))].into_iter().collect(),
        from: None,
        who: "tester@host".into(),
        reason: Some(format!("move {i}")),
    };
    reg.move_channel("eks-node", "dev", moved(1)).await.unwrap();
    reg.move_channel("eks-node", "dev", moved(2)).await.unwrap();
    let moto = common::moto::Moto::get();
    let client = aws_sdk_ssm::Client::new(&moto.sdk().await);
    let entry = "/tgap/eks-node/channels/dev/history/0000000002";
    client.delete_parameter().name(entry).send().await.unwrap();
    // Still complete from the parameter's own history...
    let history = reg.channel_history("eks-node", "dev").await.unwrap();
    assert_eq!(
        history.iter().map(|e| e.version).collect::<Vec<_>>(),
        vec![1, 2]
    );
    let now = reg.channel("eks-node", "dev").await.unwrap().unwrap();
    assert_eq!((now.version, now.reason.as_deref()), (2, Some("move 2")));
    // ...and durable again after the next move.
    reg.move_channel("eks-node", "dev", moved(3)).await.unwrap();
    let back = client.get_parameter().name(entry).send().await.unwrap();
    assert!(back
        .parameter()
        .unwrap()
        .value()
        .unwrap()
        .contains("move 2"));
}
