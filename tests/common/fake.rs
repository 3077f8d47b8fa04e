//! `FakeProvider`: a deterministic, in-process implementation of bake's `Provider` trait for
//! the runner and pipeline tests. Its steps "create" resources in an inventory and record
//! every run and cleanup, so tests can check order, outcome handling and leaks.

use async_trait::async_trait;
use bake::input::recipe::Recipe;
use bake::journal::Kind;
use bake::key::BakeKey;
use bake::provider::{BakeJob, BaseImage, ImageRecord, Provider};
use bake::steps::{Outcome, Runner, Step, StepContext};
use bake::verdict::{CheckResult, Verdict};
use bake::{Arch, Error, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const STEPS: [&str; 5] = [
    "launch-builder",
    "provision",
    "create-image",
    "launch-canary",
    "validate",
];

#[derive(Default)]
pub struct Shared {
    /// Live resources: (kind, id).
    pub live: BTreeSet<(Kind, String)>,
    /// Every run/cleanup, in order: "run launch-builder x86_64", "cleanup create-image x86_64 failed".
    pub events: Vec<String>,
    pub images: Vec<ImageRecord>,
    pub bakes: usize,
    /// Package manifests by image ID (what a real provider captures at bake time).
    pub manifests: BTreeMap<String, String>,
    /// Images something uses (an instance, a launch template), with why.
    pub in_use: BTreeMap<String, String>,
    /// Images deleted through `delete_image`, in order.
    pub deleted: Vec<String>,
    /// The kubelet package version the next bakes capture (none: an image without kubelet).
    pub kubelet: Option<String>,
    counter: usize,
}

#[derive(Default)]
pub struct FakeProvider {
    pub shared: Arc<Mutex<Shared>>,
    pub base: Mutex<BTreeMap<Arch, String>>,
    /// Fail this step (for this arch, or every arch when None).
    pub fail_at: Mutex<Option<(Option<Arch>, String)>>,
    /// Validators reject images of this arch.
    pub reject: Mutex<Option<Arch>>,
    /// This step never finishes (until cancelled).
    pub hang_at: Mutex<Option<String>>,
    /// Each step takes this long (to see parallelism and interrupts).
    pub step_delay: Duration,
}

impl FakeProvider {
    pub fn new() -> FakeProvider {
        FakeProvider::default()
    }
    pub fn shared(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap()
    }
    pub fn set_base(&self, arch: Arch, id: &str) {
        self.base.lock().unwrap().insert(arch, id.to_string());
    }
    pub fn fail_at(&self, arch: Option<Arch>, step: &str) {
        *self.fail_at.lock().unwrap() = Some((arch, step.to_string()));
    }
    pub fn reject(&self, arch: Option<Arch>) {
        *self.reject.lock().unwrap() = arch;
    }
    /// Live resources other than kept images.
    pub fn leaked(&self) -> Vec<(Kind, String)> {
        self.shared()
            .live
            .iter()
            .filter(|(k, _)| *k != Kind::Image)
            .cloned()
            .collect()
    }
    pub fn live_images(&self) -> usize {
        self.shared()
            .live
            .iter()
            .filter(|(k, _)| *k == Kind::Image)
            .count()
    }
}

struct FakeState {
    builder: Option<String>,
    image: Option<String>,
    canary: Option<String>,
    verdict: Option<Verdict>,
}

struct FakeStep<'a> {
    name: &'static str,
    p: &'a FakeProvider,
    job: &'a BakeJob<'a>,
}

impl FakeStep<'_> {
    fn create(&self, cx: &StepContext<'_>, kind: Kind) -> Result<String> {
        let id = {
            let mut s = self.p.shared();
            s.counter += 1;
            format!("{kind}-{:04}", s.counter)
        };
        // Journal before the resource exists, as a real step must.
        cx.created(kind, &id)?;
        self.p.shared().live.insert((kind, id.clone()));
        Ok(id)
    }
    fn destroy(&self, cx: &StepContext<'_>, kind: Kind, id: &str) -> Result<()> {
        self.p.shared().live.remove(&(kind, id.to_string()));
        cx.removed(kind, id)
    }
}

#[async_trait]
impl Step<FakeState> for FakeStep<'_> {
    fn name(&self) -> &str {
        self.name
    }
    async fn run(&self, state: &mut FakeState, cx: &StepContext<'_>) -> Result<()> {
        self.p
            .shared()
            .events
            .push(format!("run {} {}", self.name, cx.arch));
        cx.phase(self.name);
        if !self.p.step_delay.is_zero() {
            tokio::time::sleep(self.p.step_delay).await;
        }
        let hang = self.p.hang_at.lock().unwrap().clone();
        match self.name {
            "launch-builder" => state.builder = Some(self.create(cx, Kind::Instance)?),
            "create-image" => state.image = Some(self.create(cx, Kind::Image)?),
            "launch-canary" => state.canary = Some(self.create(cx, Kind::Instance)?),
            "validate" => {
                let reject = *self.p.reject.lock().unwrap() == Some(cx.arch);
                let result = if reject {
                    CheckResult::from_exit("mac-policy", 1, "udev rewrote the veth MAC\n", "")
                } else {
                    CheckResult::from_exit("mac-policy", 0, "", "")
                };
                state.verdict = Some(Verdict::decide(vec![result]));
            }
            _ => {}
        }
        if hang.as_deref() == Some(self.name) {
            std::future::pending::<()>().await;
        }
        let fail = self.p.fail_at.lock().unwrap().clone();
        if let Some((arch, step)) = fail {
            if step == self.name && arch.is_none_or(|a| a == cx.arch) {
                return Err(Error::Step {
                    recipe: cx.recipe.to_string(),
                    arch: cx.arch.to_string(),
                    step: step.clone(),
                    message: "injected failure".into(),
                });
            }
        }
        Ok(())
    }
    async fn cleanup(
        &self,
        state: &mut FakeState,
        outcome: Outcome,
        cx: &StepContext<'_>,
    ) -> Result<()> {
        assert!(
            !cx.cancel.is_cancelled(),
            "cleanups must get an uncancelled context"
        );
        self.p
            .shared()
            .events
            .push(format!("cleanup {} {} {:?}", self.name, cx.arch, outcome).to_lowercase());
        match self.name {
            "launch-builder" => {
                if let Some(id) = state.builder.take() {
                    self.destroy(cx, Kind::Instance, &id)?;
                }
            }
            "launch-canary" => {
                if let Some(id) = state.canary.take() {
                    self.destroy(cx, Kind::Instance, &id)?;
                }
            }
            "create-image" if outcome.discards_image() => {
                if let Some(id) = state.image.take() {
                    self.destroy(cx, Kind::Image, &id)?;
                }
            }
            _ => {}
        }
        Ok(())
    }
}

#[async_trait]
impl Provider for FakeProvider {
    fn name(&self) -> &'static str {
        "fake"
    }

    async fn resolve_base(&self, _recipe: &Recipe, arch: Arch) -> Result<BaseImage> {
        let id = self
            .base
            .lock()
            .unwrap()
            .get(&arch)
            .cloned()
            .unwrap_or_else(|| format!("base-{arch}-1"));
        Ok(BaseImage {
            source: format!("fake {id}"),
            id,
            join: None,
        })
    }

    async fn find_image(
        &self,
        recipe: &str,
        arch: Arch,
        key: &BakeKey,
    ) -> Result<Option<ImageRecord>> {
        Ok(self
            .shared()
            .images
            .iter()
            .rev()
            .find(|i| i.recipe == recipe && i.arch == arch && &i.key == key)
            .cloned())
    }

    async fn package_manifest(&self, image_id: &str) -> Result<Option<String>> {
        Ok(self.shared().manifests.get(image_id).cloned())
    }

    async fn kubernetes_version(
        &self,
        _eks_cluster: &str,
    ) -> Result<Option<bake::kube::KubeVersion>> {
        Ok(None)
    }

    async fn image_in_use(&self, image_id: &str) -> Result<Option<String>> {
        Ok(self.shared().in_use.get(image_id).cloned())
    }

    async fn delete_image(&self, image_id: &str) -> Result<()> {
        let mut s = self.shared();
        assert!(
            !s.in_use.contains_key(image_id),
            "deleted an image in use: {image_id}"
        );
        s.live.remove(&(Kind::Image, image_id.to_string()));
        s.deleted.push(image_id.to_string());
        Ok(())
    }

    async fn leftovers(
        &self,
        _live: &std::collections::BTreeSet<String>,
        published: &std::collections::BTreeSet<String>,
    ) -> Result<Vec<bake::provider::Leftover>> {
        // The fake has no runs of its own: whatever is live and not published is left over.
        Ok(self
            .shared()
            .live
            .iter()
            .filter(|(_, id)| !published.contains(id))
            .map(|(kind, id)| bake::provider::Leftover {
                kind: *kind,
                id: id.clone(),
                run_id: "fake".into(),
                recipe: "eks-node".into(),
                arch: None,
                action: "remove".into(),
                reusable: false,
            })
            .collect())
    }

    async fn remove_leftover(&self, leftover: &bake::provider::Leftover) -> Result<()> {
        self.shared()
            .live
            .remove(&(leftover.kind, leftover.id.clone()));
        Ok(())
    }

    async fn bake(&self, job: &BakeJob<'_>, cx: &StepContext<'_>) -> Result<ImageRecord> {
        self.shared().bakes += 1;
        let steps: Vec<Box<dyn Step<FakeState> + '_>> = STEPS
            .iter()
            .map(|name| Box::new(FakeStep { name, p: self, job }) as Box<dyn Step<FakeState> + '_>)
            .collect();
        let mut state = FakeState {
            builder: None,
            image: None,
            canary: None,
            verdict: None,
        };
        let runner = Runner {
            cleanup_timeout: Duration::from_secs(5),
        };
        let report = runner
            .run(&steps, &mut state, cx, |s| {
                s.verdict.as_ref().is_some_and(|v| v.accepted)
            })
            .await;
        report.into_result()?;
        let verdict = state.verdict.clone().expect("validate ran");
        let manifest = {
            let s = self.shared();
            let base = job.base.id.clone();
            let kubelet = s
                .kubelet
                .as_ref()
                .map(|k| format!("kubelet\t{k}\t{}\n", job.arch))
                .unwrap_or_default();
            format!(
                "apt\t2.6.1\t{arch}\n{kubelet}linux-image-6.1.0-{base}\t6.1.0\t{arch}\nudev\t252.{n}\t{arch}\n",
                arch = job.arch,
                n = s.bakes
            )
        };
        let made = bake::steps::Made {
            packages: Some(manifest.clone()),
            verdict: None,
        };
        let record = ImageRecord::judged(
            job,
            state.image.clone().expect("image created"),
            &verdict,
            &made,
        );
        {
            let mut s = self.shared();
            s.manifests.insert(record.id.clone(), manifest);
            s.images.push(record.clone());
        }
        Ok(record)
    }
}
