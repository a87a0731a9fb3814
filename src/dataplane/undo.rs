//! The steps `apply` took, recorded so that a failure later undoes them in reverse.

use netlink_packet_core::{NLM_F_CREATE, NLM_F_REPLACE};
use netlink_packet_route::link::LinkAttribute;
use netlink_packet_route::RouteNetlinkMessage;

use super::tbf::TbfParams;
use super::{DataplaneError, TBF_HANDLE_MAJOR};

use super::conn::*;
use super::msg::*;
use super::report::*;

/// A step `apply` took, recorded to be undone if a later step fails.
#[derive(Debug, Clone)]
pub(super) enum Undo {
    DeleteLink {
        index: u32,
        name: String,
    },
    RestoreFlags {
        index: u32,
        name: String,
        up: bool,
        promisc: bool,
    },
    RestoreLink {
        index: u32,
        name: String,
        mtu: u32,
        group: u32,
        alias: Option<String>,
    },
    DeleteTbf {
        index: u32,
        name: String,
    },
    RestoreTbf {
        index: u32,
        name: String,
        params: TbfParams,
    },
    DeleteIngress {
        index: u32,
        name: String,
    },
    DeleteFilter {
        index: u32,
        name: String,
    },
    RestoreFilter {
        index: u32,
        name: String,
        handle: u32,
        target: u32,
    },
    /// A pipe filter deleted to shut a VXC down, made again.
    CreateFilter {
        index: u32,
        name: String,
        target: u32,
    },
}

/// Steps of one apply: what to report and what to undo.
#[derive(Default)]
pub(super) struct Journal {
    pub(super) changes: Vec<Change>,
    pub(super) undo: Vec<Undo>,
}

impl Journal {
    pub(super) fn record(&mut self, object: String, change: ObjectChange, undo: Option<Undo>) {
        self.changes.push(Change { object, change });
        self.undo.extend(undo);
    }
}

impl Dataplane {
    pub(super) async fn undo_one(&self, step: Undo) -> Result<(), DataplaneError> {
        match step {
            Undo::DeleteLink { index, name } => self.delete_link(index, &name).await,
            Undo::RestoreFlags {
                index,
                name,
                up,
                promisc,
            } => {
                let r = self.set_link(&name, flags_msg(index, up, promisc)).await;
                Self::gone_ok(r, "restoring flags of", &format!("link {name}"))
            }
            Undo::RestoreLink {
                index,
                name,
                mtu,
                group,
                alias,
            } => {
                let mut msg = link_msg(index);
                msg.attributes = vec![
                    LinkAttribute::Mtu(mtu),
                    LinkAttribute::Group(group),
                    LinkAttribute::IfAlias(alias.unwrap_or_default()),
                ];
                let r = self.set_link(&name, msg).await;
                Self::gone_ok(r, "restoring", &format!("link {name}"))
            }
            Undo::DeleteTbf { index, name } => self.delete_tbf(index, &name).await,
            Undo::RestoreTbf {
                index,
                name,
                params,
            } => {
                let msg = tc_msg(index, TBF_HANDLE, TC_H_ROOT, 0, tbf_attrs(&params));
                let r = self
                    .ack(RouteNetlinkMessage::NewQueueDiscipline(msg), NLM_F_REPLACE)
                    .await;
                Self::gone_ok(
                    r,
                    "restoring",
                    &format!("TBF {TBF_HANDLE_MAJOR:x}: on {name}"),
                )
            }
            Undo::DeleteIngress { index, name } => self.delete_ingress(index, &name).await,
            Undo::DeleteFilter { index, name } => self.delete_filter(index, &name).await,
            Undo::CreateFilter {
                index,
                name,
                target,
            } => {
                let msg = tc_msg(
                    index,
                    0,
                    INGRESS_HANDLE,
                    filter_info(),
                    pipe_filter_attrs(target),
                );
                let r = self
                    .ack(RouteNetlinkMessage::NewTrafficFilter(msg), NLM_F_CREATE)
                    .await;
                Self::gone_ok(r, "restoring", &format!("pipe filter on {name}"))
            }
            Undo::RestoreFilter {
                index,
                name,
                handle,
                target,
            } => {
                let msg = tc_msg(
                    index,
                    handle,
                    INGRESS_HANDLE,
                    filter_info(),
                    pipe_filter_attrs(target),
                );
                let r = self
                    .ack(RouteNetlinkMessage::NewTrafficFilter(msg), NLM_F_REPLACE)
                    .await;
                Self::gone_ok(r, "restoring", &format!("pipe filter on {name}"))
            }
        }
    }

    /// Undoes `steps` in reverse order; returns `cause`, wrapped if something stayed behind.
    pub(super) async fn rollback(&self, cause: DataplaneError, steps: Vec<Undo>) -> DataplaneError {
        let mut leftovers = Vec::new();
        for step in steps.into_iter().rev() {
            if let Err(e) = self.undo_one(step).await {
                leftovers.push(e.to_string());
            }
        }
        if leftovers.is_empty() {
            cause
        } else {
            DataplaneError::RollbackIncomplete {
                cause: Box::new(cause),
                leftovers,
            }
        }
    }
}
