//! jsonkv codec: see `../shared/protocols/jsonkv.md`.
