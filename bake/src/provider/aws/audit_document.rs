//! The audit program on AWS: one SSM Command document per pipeline and recipe
//! (`bake-audit.<prefix>.<recipe>`), in the pipeline's region and each copy region, installed by
//! `bake audit-document --apply` and sent to the nodes by name and sha256. The nodes' IAM grant
//! names these documents, so what runs on a node is fixed in them, never a script bake sends.

use super::sdk::{code, err};
use super::ssm::{Invocation, SsmGuest};
use super::AwsProvider;
use crate::guest::audit::{AuditProgram, DocumentState, Installed, NodeProbe, CHECKS, PACKAGES};
use crate::guest::batch::Outcome;
use crate::{Arch, Error, Result};
use async_trait::async_trait;
use aws_sdk_ssm::types::{DocumentFormat, DocumentType};

impl AwsProvider {
    /// Each program's document in the region and each copy region: its state, installed first
    /// where it is missing or stale when `apply`.
    pub(super) async fn audit_documents(
        &self,
        programs: &[AuditProgram],
        apply: bool,
    ) -> Result<Vec<Installed>> {
        let mut regions = vec![(self.region.clone(), self.ssm.clone())];
        regions.extend(self.copy_ssm.iter().cloned());
        let mut out = Vec::new();
        for program in programs {
            let content = program.document().map_err(Error::Usage)?;
            let hash = AuditProgram::hash(&content);
            let name = program.document_name(self.owner());
            for (region, ssm) in &regions {
                let mut state = self.document_state(ssm, region, &name, &hash).await?;
                if apply {
                    state = match state {
                        DocumentState::Missing => {
                            self.create_document(ssm, region, &name, &content).await?
                        }
                        DocumentState::Stale => {
                            self.update_document(ssm, region, &name, &content).await?
                        }
                        other => other,
                    };
                }
                out.push(Installed {
                    recipe: program.recipe.clone(),
                    region: region.clone(),
                    name: name.clone(),
                    state,
                    hash: hash.clone(),
                });
            }
        }
        Ok(out)
    }

    /// DescribeDocument: is the default version's content `hash`?
    async fn document_state(
        &self,
        ssm: &aws_sdk_ssm::Client,
        region: &str,
        name: &str,
        hash: &str,
    ) -> Result<DocumentState> {
        self.limits.ssm.until_ready().await;
        match ssm.describe_document().name(name).send().await {
            Ok(r) => {
                let current = r.document().and_then(|d| d.hash()) == Some(hash);
                Ok(if current {
                    DocumentState::Current
                } else {
                    DocumentState::Stale
                })
            }
            Err(e) if code(&e) == Some("InvalidDocument") => Ok(DocumentState::Missing),
            Err(e) => Err(err(
                format!("reading the audit document {name} in {region}"),
                e,
            )),
        }
    }

    async fn create_document(
        &self,
        ssm: &aws_sdk_ssm::Client,
        region: &str,
        name: &str,
        content: &str,
    ) -> Result<DocumentState> {
        self.limits.ssm.until_ready().await;
        ssm.create_document()
            .name(name)
            .content(content)
            .document_type(DocumentType::Command)
            .document_format(DocumentFormat::Json)
            .send()
            .await
            .map_err(|e| err(format!("creating the audit document {name} in {region}"), e))?;
        Ok(DocumentState::Created)
    }

    /// A new version with `content`, made the default (the one SendCommand runs by name).
    async fn update_document(
        &self,
        ssm: &aws_sdk_ssm::Client,
        region: &str,
        name: &str,
        content: &str,
    ) -> Result<DocumentState> {
        self.limits.ssm.until_ready().await;
        let updated = ssm
            .update_document()
            .name(name)
            .content(content)
            .document_version("$LATEST")
            .document_format(DocumentFormat::Json)
            .send()
            .await
            .map_err(|e| err(format!("updating the audit document {name} in {region}"), e))?;
        let version = updated
            .document_description()
            .and_then(|d| d.document_version())
            .ok_or_else(|| {
                Error::provider(
                    "aws",
                    format!("UpdateDocument of {name} in {region} answered no version"),
                )
            })?;
        self.limits.ssm.until_ready().await;
        ssm.update_document_default_version()
            .name(name)
            .document_version(version)
            .send()
            .await
            .map_err(|e| {
                err(
                    format!("making version {version} of {name} the default in {region}"),
                    e,
                )
            })?;
        Ok(DocumentState::Updated)
    }
}

/// A node asked through its recipe's audit document.
pub struct DocumentProbe {
    pub guest: SsmGuest,
    pub program: AuditProgram,
    pub document: String,
    pub hash: String,
    pub arch: Arch,
    /// For messages: the recipe, arch and node.
    pub label: String,
}

impl DocumentProbe {
    async fn ask(
        &self,
        action: &str,
        offset: usize,
    ) -> std::result::Result<crate::guest::Ran, String> {
        let invocation = Invocation {
            document: &self.document,
            hash: Some(&self.hash),
            parameters: vec![
                ("action", action.to_string()),
                ("arch", self.arch.to_string()),
                ("offset", offset.to_string()),
            ],
        };
        self.guest
            .send(
                &format!("{} {action}", self.label),
                &invocation,
                self.program.limit(),
            )
            .await
            .map_err(|e| e.to_string())
    }
}

#[async_trait]
impl NodeProbe for DocumentProbe {
    async fn checks(&mut self) -> std::result::Result<(String, Vec<Outcome>), String> {
        let ran = self.ask(CHECKS, 0).await?;
        self.program
            .parse_checks(&ran)
            .map_err(|why| format!("{}: {why}", self.label))
    }

    async fn packages(&mut self) -> std::result::Result<String, String> {
        AuditProgram::read_packages(|offset| self.ask(PACKAGES, offset))
            .await
            .map_err(|why| format!("{}: {why}", self.label))
    }
}
