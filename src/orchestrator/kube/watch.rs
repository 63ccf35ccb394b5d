//! Watching the cluster: instance Deployments created, scaled or deleted by other servers,
//! access tokens replaced in instance Secrets, and pods that go away under a running
//! instance, reported as [`Observed`] changes.

use super::listing::Known;
use super::objects::{selector, INSTANCE_LABEL};
use super::pods::lost;
use super::secrets::{access_token, instance_of};
use super::Kube;
use crate::instance::InstanceId;
use crate::orchestrator::Observed;
use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::runtime::{watcher, WatchStreamExt};

impl Kube {
    /// Reports what other servers do to instances (and pods going away) until `tx` closes;
    /// `known` are the instances this server has, so that what a listing lacks is reported
    /// gone ([`Known`]).
    pub(super) async fn watch(
        &self,
        tx: tokio::sync::mpsc::Sender<Observed>,
        known: Vec<InstanceId>,
    ) {
        let cfg = watcher::Config::default().labels(&selector());
        let deployments = watcher(self.api::<Deployment>(), cfg.clone()).default_backoff();
        let secrets = watcher(self.api::<Secret>(), cfg.clone()).default_backoff();
        let pods = watcher(self.api::<Pod>(), cfg).default_backoff();
        let mut deployments = std::pin::pin!(deployments);
        let mut secrets = std::pin::pin!(secrets);
        let mut pods = std::pin::pin!(pods);
        let mut known = Known::new(known);
        loop {
            let seen: Vec<Observed> = tokio::select! {
                ev = deployments.next() => match ev {
                    Some(Ok(watcher::Event::Init)) => {
                        known.begin();
                        Vec::new()
                    }
                    Some(Ok(watcher::Event::Apply(d) | watcher::Event::InitApply(d))) => {
                        if let Some(id) = instance_id(&d) {
                            known.present(&id);
                        }
                        match self.record_of(&d).await {
                            Ok(Some((record, scaled_up))) => vec![Observed::Present { record: Box::new(record), scaled_up }],
                            _ => Vec::new(),
                        }
                    }
                    Some(Ok(watcher::Event::InitDone)) => known.done().into_iter().map(Observed::Gone).collect(),
                    Some(Ok(watcher::Event::Delete(d))) => {
                        let id = instance_id(&d);
                        if let Some(id) = &id {
                            known.deleted(id);
                        }
                        id.map(Observed::Gone).into_iter().collect()
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "watching instances");
                        Vec::new()
                    }
                    None => return,
                },
                ev = secrets.next() => match ev {
                    Some(Ok(watcher::Event::Apply(s) | watcher::Event::InitApply(s))) => self.token_seen(&s).into_iter().collect(),
                    Some(Ok(watcher::Event::Delete(s))) => {
                        if let Some(id) = instance_of(&s) {
                            self.forget_token(id.as_str());
                        }
                        Vec::new()
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "watching instance Secrets");
                        Vec::new()
                    }
                    Some(Ok(_)) => Vec::new(),
                    None => return,
                },
                ev = pods.next() => match ev {
                    Some(Ok(watcher::Event::Apply(p) | watcher::Event::Delete(p))) => lost(&p).into_iter().collect(),
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "watching instance pods");
                        Vec::new()
                    }
                    Some(Ok(_)) => Vec::new(),
                    None => return,
                },
            };
            for seen in seen {
                if tx.send(seen).await.is_err() {
                    return;
                }
            }
        }
    }

    /// A token newer than the one this server knows (another server rotated it) is cached
    /// and reported; older or known ones are not.
    fn token_seen(&self, secret: &Secret) -> Option<Observed> {
        let id = instance_of(secret)?;
        let (token, generation) = access_token(secret)?;
        self.learn_token(id.as_str(), &token, generation)
            .then_some(Observed::Token {
                id,
                token,
                generation,
            })
    }
}

/// The instance a Deployment of ours is, by its label.
fn instance_id(d: &Deployment) -> Option<InstanceId> {
    let labels = d.metadata.labels.as_ref()?;
    InstanceId::parse(labels.get(INSTANCE_LABEL)?).ok()
}
