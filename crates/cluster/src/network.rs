//! openraft's network over a [`Transport`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError,
    Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};

use crate::timing::{self, Hop};
use crate::transport::{Transport, TransportError};
use crate::wire::{Reply, Rpc};
use crate::{Member, NodeId, TypeConfig};

/// Makes one [`Connection`] per peer (the transport keeps the real connections).
#[derive(Clone)]
pub struct Network {
    pub transport: Arc<dyn Transport>,
}

pub struct Connection {
    target: NodeId,
    addr: String,
    transport: Arc<dyn Transport>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> Connection {
        Connection {
            target,
            addr: node.addr.clone(),
            transport: self.transport.clone(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Message(String);

type RpcErr<E = openraft::error::Infallible> = RPCError<NodeId, Member, RaftError<NodeId, E>>;

fn failed<E: std::error::Error>(e: TransportError) -> RPCError<NodeId, Member, E> {
    match e {
        TransportError::Unreachable(..) => RPCError::Unreachable(Unreachable::new(&e)),
        TransportError::TooLarge(_) => {
            RPCError::PayloadTooLarge(PayloadTooLarge::new_entries_hint(1))
        }
        TransportError::Timeout(_) => RPCError::Network(NetworkError::new(&e)),
    }
}

fn mismatch<E: std::error::Error>() -> RPCError<NodeId, Member, E> {
    RPCError::Network(NetworkError::new(&Message(
        "reply of the wrong kind".into(),
    )))
}

impl Connection {
    async fn call(&self, rpc: Rpc, option: &RPCOption) -> Result<Reply, TransportError> {
        let timeout = option.hard_ttl().max(Duration::from_millis(1));
        self.transport
            .call(self.target, &self.addr, rpc, timeout)
            .await
    }
}

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcErr> {
        let since = Instant::now();
        let answered = self.call(Rpc::AppendEntries(rpc), &option).await;
        timing::record(Hop::AppendRpc, since);
        match answered {
            Ok(Reply::AppendEntries(Ok(r))) => Ok(r),
            Ok(Reply::AppendEntries(Err(e))) => {
                Err(RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            Ok(_) => Err(mismatch()),
            Err(e) => Err(failed(e)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcErr<InstallSnapshotError>> {
        match self.call(Rpc::InstallSnapshot(rpc), &option).await {
            Ok(Reply::InstallSnapshot(Ok(r))) => Ok(r),
            Ok(Reply::InstallSnapshot(Err(e))) => {
                Err(RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            Ok(_) => Err(mismatch()),
            Err(e) => Err(failed(e)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RpcErr> {
        match self.call(Rpc::Vote(rpc), &option).await {
            Ok(Reply::Vote(Ok(r))) => Ok(r),
            Ok(Reply::Vote(Err(e))) => Err(RPCError::RemoteError(RemoteError::new(self.target, e))),
            Ok(_) => Err(mismatch()),
            Err(e) => Err(failed(e)),
        }
    }
}
