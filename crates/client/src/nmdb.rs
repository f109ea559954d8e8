//! nmdb client.
