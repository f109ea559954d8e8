//! `[cluster]`: the replicated cluster (openraft). Absent (node_id 0), polykv is one node.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Largest node id: OpenCluster's lock holders carry the node id in 16 bits.
pub const MAX_NODE_ID: u64 = 0xFFFF;

crate::settings! {
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    pub struct ClusterConfig {
        /// This node's id in the cluster (0 = no cluster: a single node)
        pub node_id: u64 = 0,
        /// Cluster port: peers replicate and forward writes over it (on bind)
        pub port: u16 = 26090,
        /// The initial voters, `id=host:port,...`, this node included
        ///
        /// Nodes started with the same peers and empty data directories form the cluster: the
        /// lowest id founds it once a majority answers.
        pub peers: String = String::new(),
        /// Cluster address other nodes reach this one at (empty = this node's entry in peers)
        pub advertise_addr: String = String::new(),
        /// Shared secret peers authenticate with (required in cluster mode)
        ///
        /// Anything that does not prove it knows the secret is refused on the cluster port.
        pub secret: String = String::new(),
        /// Milliseconds a write or linearizable read waits for a leader before it fails
        pub write_timeout_ms: u64 = 2000,
        /// Serve reads from this node's state without asking the leader (may be stale)
        pub stale_reads: bool = false,
        /// Raft entries between snapshots (the log is purged behind each)
        pub snapshot_entries: u64 = 100_000,
        /// Milliseconds between the leader's heartbeats
        pub heartbeat_ms: u64 = 30,
        /// Shortest election timeout in ms (each node draws one up to twice it)
        ///
        /// A follower that hears nothing from the leader for twice this (the leader's lease) plus
        /// its timeout starts an election; lower fails over faster, but must stay well above the
        /// heartbeat and the worst pause of a loaded machine.
        pub election_timeout_ms: u64 = 100,
        /// Milliseconds the leader goes without reaching a member before it declares it down
        ///
        /// A node declared down leaves OpenCluster's serverlist and jsonkv's server list, and
        /// the locks its connections held are released (through Raft, on every replica). After
        /// the leader itself dies, this counts from the new leader's election.
        pub node_down_ms: u64 = 3000,
    }
}

impl ClusterConfig {
    pub fn enabled(&self) -> bool {
        self.node_id != 0 || !self.peers.is_empty()
    }

    /// The peers as id → address.
    pub fn peer_map(&self) -> Result<BTreeMap<u64, String>, String> {
        let mut out = BTreeMap::new();
        for part in self
            .peers
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            let (id, addr) = part
                .split_once('=')
                .ok_or_else(|| format!("cluster.peers: {part:?} is not id=host:port"))?;
            let id: u64 = id
                .trim()
                .parse()
                .map_err(|_| format!("cluster.peers: {id:?} is not a node id"))?;
            let addr = addr.trim();
            if id == 0 || addr.rsplit_once(':').is_none() {
                return Err(format!(
                    "cluster.peers: {part:?} is not id=host:port (ids from 1)"
                ));
            }
            if out.insert(id, addr.to_string()).is_some() {
                return Err(format!("cluster.peers: node {id} is listed twice"));
            }
        }
        Ok(out)
    }

    pub fn validate(&self) -> Result<(), String> {
        if !self.enabled() {
            return Ok(());
        }
        if self.node_id == 0 {
            return Err("cluster.node_id must be set (from 1) in cluster mode".into());
        }
        if self.secret.len() < 8 {
            return Err(
                "cluster.secret is required in cluster mode (at least 8 characters)".into(),
            );
        }
        let peers = self.peer_map()?;
        if !peers.is_empty() && !peers.contains_key(&self.node_id) {
            return Err(format!(
                "cluster.peers does not list this node ({})",
                self.node_id
            ));
        }
        if let Some(id) = peers
            .keys()
            .chain([&self.node_id])
            .find(|id| **id > MAX_NODE_ID)
        {
            return Err(format!(
                "cluster node id {id} is too large (at most {MAX_NODE_ID})"
            ));
        }
        if self.node_down_ms < 100 {
            return Err("cluster.node_down_ms must be at least 100".into());
        }
        if self.write_timeout_ms == 0 {
            return Err("cluster.write_timeout_ms must be at least 1".into());
        }
        if self.heartbeat_ms == 0 || self.election_timeout_ms < 2 * self.heartbeat_ms {
            return Err(
                "cluster.election_timeout_ms must be at least twice cluster.heartbeat_ms (>= 1)"
                    .into(),
            );
        }
        if self.snapshot_entries < 100 {
            return Err("cluster.snapshot_entries must be at least 100".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_parse_and_cluster_mode_needs_an_id_and_a_secret() {
        let mut config = ClusterConfig::default();
        assert!(!config.enabled());
        config.validate().unwrap();
        config.peers = "1=127.0.0.1:26090, 2=127.0.0.2:26090,3=127.0.0.3:26090".into();
        assert_eq!(config.peer_map().unwrap()[&2], "127.0.0.2:26090");
        assert!(config.validate().unwrap_err().contains("node_id"));
        config.node_id = 2;
        assert!(config.validate().unwrap_err().contains("secret"));
        config.secret = "0123456789".into();
        config.validate().unwrap();
        config.node_id = 4;
        assert!(config.validate().unwrap_err().contains("does not list"));
        config.peers = "1=nohost".into();
        assert!(config.peer_map().is_err());
        config.peers = "1=a:1,1=b:2".into();
        assert!(config.peer_map().is_err());
    }
}
