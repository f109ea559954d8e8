//! nmdb codec: see `../shared/protocols/nmdb.md`.
