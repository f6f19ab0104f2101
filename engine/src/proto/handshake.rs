//! PLACEHOLDER: the HTTP/1.1 Upgrade handshake lands here.
