//! polykv engine.
