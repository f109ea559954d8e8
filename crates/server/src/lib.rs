//! polykv server.
