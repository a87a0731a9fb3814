//! The tc objects of an end: its root TBF, its ingress qdisc and the pipe filter that joins it
//! to the other end.

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::tc::TcAttribute;
use netlink_packet_route::RouteNetlinkMessage;

use super::tbf::TbfParams;
use super::{DataplaneError, Observed, PipeFilter, TBF_HANDLE_MAJOR};

use super::conn::*;
use super::msg::*;
use super::report::*;
use super::undo::*;

impl Dataplane {
    pub(super) async fn create_tbf(
        &self,
        index: u32,
        name: &str,
        params: &TbfParams,
        j: &mut Journal,
    ) -> Result<(), DataplaneError> {
        let msg = tc_msg(index, TBF_HANDLE, TC_H_ROOT, 0, tbf_attrs(params));
        self.create_tc_object(
            RouteNetlinkMessage::NewQueueDiscipline(msg),
            format!("TBF {TBF_HANDLE_MAJOR:x}: on {name}"),
            Undo::DeleteTbf {
                index,
                name: name.into(),
            },
            j,
        )
        .await
    }

    /// Creates a qdisc or filter that must not exist yet (NLM_F_EXCL) and journals it with the
    /// `undo` that takes it away again.
    pub(super) async fn create_tc_object(
        &self,
        payload: RouteNetlinkMessage,
        object: String,
        undo: Undo,
        j: &mut Journal,
    ) -> Result<(), DataplaneError> {
        self.ack(payload, NLM_F_CREATE | NLM_F_EXCL)
            .await
            .map_err(|e| kernel_err("creating", &object, e))?;
        j.record(object, ObjectChange::Created, Some(undo));
        Ok(())
    }

    pub(super) async fn ensure_filter(
        &self,
        index: u32,
        name: &str,
        target: u32,
        existing: Option<PipeFilter>,
        obs: &Observed,
        j: &mut Journal,
    ) -> Result<(), DataplaneError> {
        let object = format!("pipe filter on {name}");
        match existing {
            Some(f) if f.kind == "u32" && f.match_all && f.redirect_to == Some(target) => Ok(()),
            Some(f) if f.kind == "u32" && f.handle & 0xfff != 0 => {
                let msg = tc_msg(
                    index,
                    f.handle,
                    INGRESS_HANDLE,
                    filter_info(),
                    pipe_filter_attrs(target),
                );
                self.ack(RouteNetlinkMessage::NewTrafficFilter(msg), NLM_F_REPLACE)
                    .await
                    .map_err(|e| kernel_err("replacing", &object, e))?;
                let undo = f
                    .redirect_to
                    .filter(|_| f.match_all)
                    .map(|t| Undo::RestoreFilter {
                        index,
                        name: name.into(),
                        handle: f.handle,
                        target: t,
                    });
                j.record(
                    object,
                    ObjectChange::Changed(vec![format!("redirect to {}", obs.name_of(target))]),
                    undo,
                );
                Ok(())
            }
            other => {
                if other.is_some() {
                    self.delete_filter(index, name).await?;
                    j.record(object.clone(), ObjectChange::Deleted, None);
                }
                let msg = tc_msg(
                    index,
                    0,
                    INGRESS_HANDLE,
                    filter_info(),
                    pipe_filter_attrs(target),
                );
                self.create_tc_object(
                    RouteNetlinkMessage::NewTrafficFilter(msg),
                    object,
                    Undo::DeleteFilter {
                        index,
                        name: name.into(),
                    },
                    j,
                )
                .await
            }
        }
    }

    /// Makes the end's ingress qdisc (where its pipe filter hangs) unless it is there.
    pub(super) async fn ensure_ingress(
        &self,
        index: u32,
        name: &str,
        fresh: bool,
        obs: &Observed,
        j: &mut Journal,
    ) -> Result<(), DataplaneError> {
        if !fresh && obs.ingress.contains(&index) {
            return Ok(());
        }
        let msg = tc_msg(
            index,
            INGRESS_HANDLE,
            TC_H_INGRESS,
            0,
            vec![TcAttribute::Kind("ingress".into())],
        );
        self.create_tc_object(
            RouteNetlinkMessage::NewQueueDiscipline(msg),
            format!("ingress qdisc on {name}"),
            Undo::DeleteIngress {
                index,
                name: name.to_string(),
            },
            j,
        )
        .await
    }
}
