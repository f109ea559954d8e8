//! opencluster client.
