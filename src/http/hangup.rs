//! Whether a request's client is still there (issue 13 item 1: a client that hangs
//! up cancels its query). actix-web keeps running a handler after its client has
//! gone (actix/actix-web#3462), so each connection keeps a duplicate of its socket
//! ([`on_connect`], one `dup` per connection) and expensive reads look at it while
//! they run ([`watch`], store::Store::call_as): a socket whose peer has closed it
//! reads end-of-file.
//!
//! Limits: a client that half-closes its side while waiting for the answer looks
//! gone (HTTP clients do not do that); under TLS a clean `close_notify` alert sits
//! in the socket before the end-of-file until the server reads it, so there a hang-up
//! is seen once the connection is reset or the alert was read.

use std::any::Any;
use std::io::ErrorKind;
use std::net::TcpStream;
use std::os::fd::AsFd;
use std::sync::Arc;

use actix_web::dev::Extensions;
use actix_web::HttpRequest;

/// A duplicate of a client connection's socket.
struct ClientSocket(TcpStream);

impl ClientSocket {
    /// True once the peer has closed or reset the connection. The socket is non-
    /// blocking (the duplicate shares the original's flags): an open, quiet
    /// connection answers WouldBlock.
    fn gone(&self) -> bool {
        match self.0.peek(&mut [0u8; 1]) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted),
        }
    }
}

/// `HttpServer::on_connect`: keeps a duplicate of the connection's socket in the
/// connection's data. A connection whose socket cannot be duplicated (out of
/// descriptors) is served without the watch.
pub fn on_connect(conn: &dyn Any, ext: &mut Extensions) {
    let fd = if let Some(s) = conn.downcast_ref::<actix_web::rt::net::TcpStream>() {
        s.as_fd().try_clone_to_owned()
    } else if let Some(s) =
        conn.downcast_ref::<actix_tls::accept::openssl::TlsStream<actix_web::rt::net::TcpStream>>()
    {
        s.get_ref().as_fd().try_clone_to_owned()
    } else {
        return;
    };
    if let Ok(fd) = fd {
        let socket = TcpStream::from(fd);
        if socket.set_nonblocking(true).is_ok() {
            ext.insert(Arc::new(ClientSocket(socket)));
        }
    }
}

/// A look at whether the client of `req` has hung up, for store::Store::call_as;
/// None when the connection has no watch.
pub fn watch(req: &HttpRequest) -> Option<crate::store::Hangup> {
    let socket = req.conn_data::<Arc<ClientSocket>>()?.clone();
    Some(Box::new(move || socket.gone()))
}
