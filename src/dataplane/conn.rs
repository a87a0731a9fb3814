//! The dataplane: one rtnetlink connection in the namespace it was opened in, where requests that
//! expect an ack are pipelined, and a socket for dumps beside it.

use std::sync::Arc;

use netlink_packet_route::RouteNetlinkMessage;
use rtnetlink::Handle;

use super::dump::DumpSocket;
use super::nl::{self, ReqError};
use super::plan::{self, Plan};
use super::{DataplaneConfig, DataplaneError, Observed, VxcSpec};

/// The dataplane: one rtnetlink connection in the namespace it was opened in.
#[derive(Debug, Clone)]
pub struct Dataplane {
    pub(super) handle: Handle,
    pub(super) cfg: DataplaneConfig,
    /// Dumps run on a socket of their own, read as they come (`dump.rs`); the kernel runs one
    /// dump per netlink socket at a time, so they wait for each other. Other requests are
    /// pipelined freely on `handle`.
    pub(super) dumps: Arc<tokio::sync::Mutex<DumpSocket>>,
    /// The port interfaces: kept free of the host's own IPv6 (no link-local address, so no ND,
    /// MLD or router solicitation leaves towards a customer) at every convergence.
    pub(super) port_interfaces: Vec<String>,
    /// The changes vxcd sent, to tell its own kernel events from drift.
    pub(super) own: Arc<super::own::OwnChanges>,
}

pub(super) fn kernel_err(action: &str, object: &str, e: ReqError) -> DataplaneError {
    match e {
        ReqError::Kernel(errno) => DataplaneError::Kernel {
            action: action.into(),
            object: object.into(),
            errno,
        },
        ReqError::Connection(m) => DataplaneError::Connection(format!("{action} {object}: {m}")),
    }
}

impl Dataplane {
    /// Opens an rtnetlink connection in the calling thread's network namespace and spawns
    /// its task on the current tokio runtime.
    pub async fn connect(cfg: DataplaneConfig) -> Result<Self, DataplaneError> {
        let (mut conn, handle, _) = rtnetlink::new_connection()
            .map_err(|e| DataplaneError::Connection(format!("opening rtnetlink socket: {e}")))?;
        // Done messages carry NLM_F_DUMP_INTR too; the dump helper needs to see them.
        conn.set_forward_done(true);
        // Bound now, so that its port id is known: tc events carry the id of the socket whose
        // request caused them, which tells vxcd's own changes from others'.
        let own = Arc::new(super::own::OwnChanges::default());
        if let Ok(addr) = {
            use netlink_sys::AsyncSocket;
            conn.socket_mut().socket_mut().bind_auto()
        } {
            own.add_port_id(addr.port_number());
        }
        tokio::spawn(conn);
        Ok(Self {
            handle,
            cfg,
            dumps: Arc::new(tokio::sync::Mutex::new(DumpSocket::open()?)),
            port_interfaces: Vec::new(),
            own,
        })
    }

    /// The same dataplane on a netlink socket of its own, for long reads beside the requests:
    /// the kernel runs one dump per socket at a time, so a whole-host read there never makes a
    /// request's read-back wait. Its tc changes are vxcd's own too.
    pub async fn second_socket(&self) -> Result<Self, DataplaneError> {
        let mut twin = Self::connect(self.cfg).await?;
        twin.port_interfaces = self.port_interfaces.clone();
        if let Some(id) = twin.own.port_id() {
            self.own.add_port_id(id);
        }
        twin.own = self.own.clone();
        Ok(twin)
    }

    /// The port interfaces whose host IPv6 every convergence keeps off ([`Dataplane::quiet_ports`]).
    pub fn set_port_interfaces(&mut self, interfaces: Vec<String>) {
        self.port_interfaces = interfaces;
    }

    pub(super) async fn dump<T>(
        &self,
        payload: RouteNetlinkMessage,
        what: &str,
        keep: impl FnMut(RouteNetlinkMessage) -> Option<T>,
    ) -> Result<Vec<T>, DataplaneError> {
        self.dumps.lock().await.dump(payload, what, keep).await
    }

    /// [`Dataplane::dump`] with each answer left as bytes for `keep` (`dump.rs`).
    pub(super) async fn dump_frames<T>(
        &self,
        payload: RouteNetlinkMessage,
        what: &str,
        keep: impl FnMut(&super::dump::Frame<'_>) -> Option<T>,
    ) -> Result<Vec<T>, DataplaneError> {
        self.dumps
            .lock()
            .await
            .dump_frames(payload, what, keep)
            .await
    }

    pub(super) async fn ack(
        &self,
        payload: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<(), ReqError> {
        nl::ack(&self.handle, payload, flags).await
    }

    /// Sends an `RTM_SETLINK` for the link `name` and, once the kernel acknowledges it, applies
    /// it to the link as vxcd last read it (`msg::amend_link`): the notifications of vxcd's own
    /// change then show the link as vxcd knows it, not drift to read back (`dataplane/drift.rs`).
    pub(super) async fn set_link(
        &self,
        name: &str,
        msg: netlink_packet_route::link::LinkMessage,
    ) -> Result<(), ReqError> {
        let amended = msg.clone();
        self.ack(RouteNetlinkMessage::SetLink(msg), 0).await?;
        self.own
            .amend(name, |l| super::msg::amend_link(l, &amended));
        Ok(())
    }

    /// Desired VXCs vs observed kernel (pure).
    pub fn plan(desired: &[VxcSpec], observed: &Observed) -> Plan {
        plan::plan(desired, observed)
    }
}
