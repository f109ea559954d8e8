//! opencluster codec: see `../shared/protocols/opencluster.md`.
