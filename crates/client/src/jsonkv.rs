//! jsonkv client.
