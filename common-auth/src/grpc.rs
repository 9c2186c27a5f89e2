//! tonic interceptors for the service token: one that requires it on a server, one that
//! attaches it on a client. The token travels as `authorization: Bearer <token>` metadata,
//! marked sensitive so tonic/hyper never log it.

use secrecy::ExposeSecret;
use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::{Request, Status};

use crate::KeyRing;

/// Server side: rejects calls without an accepted service token (`UNAUTHENTICATED`).
#[derive(Debug, Clone)]
pub struct RequireServiceToken {
    /// Accepted tokens.
    pub tokens: KeyRing,
}

impl Interceptor for RequireServiceToken {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        let presented = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
        match presented {
            Some(t) if self.tokens.accepts(t) => Ok(req),
            Some(_) => Err(Status::unauthenticated("invalid service token")),
            None => Err(Status::unauthenticated("missing service token")),
        }
    }
}

/// Client side: attaches the service token to every call ([`KeyRing::signing`]: after a
/// rotation, the previous token until the signing delay has passed).
#[derive(Debug, Clone)]
pub struct AttachServiceToken {
    /// The ring whose current value is sent.
    pub tokens: KeyRing,
}

impl Interceptor for AttachServiceToken {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        let token = self.tokens.signing();
        let mut value = MetadataValue::try_from(format!("Bearer {}", token.expose_secret()))
            .map_err(|_| Status::internal("service token is not valid ASCII metadata"))?;
        value.set_sensitive(true);
        req.metadata_mut().insert("authorization", value);
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attached_token_passes_the_server_check_and_a_wrong_one_does_not() {
        let ring = KeyRing::new("svc".to_string().into());
        let mut attach = AttachServiceToken {
            tokens: ring.clone(),
        };
        let mut check = RequireServiceToken { tokens: ring };
        let req = attach.call(Request::new(())).unwrap();
        assert!(check.call(req).is_ok());

        let mut wrong = AttachServiceToken {
            tokens: KeyRing::new("nope".to_string().into()),
        };
        let err = check
            .call(wrong.call(Request::new(())).unwrap())
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
        let err = check.call(Request::new(())).unwrap_err();
        assert_eq!(err.message(), "missing service token");
    }
}
