//! Startup message and the authentication exchange (trust, cleartext, MD5, SCRAM-SHA-256).

use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;

use super::{Connection, Frame};
use crate::ReplicationError;

pub(crate) struct Credentials<'a> {
    pub user: &'a str,
    pub password: Option<&'a [u8]>,
}

impl Connection {
    /// Sends the startup message and answers authentication requests until `AuthenticationOk`.
    pub(super) async fn authenticate(
        &mut self,
        params: &[(&str, &str)],
        creds: &Credentials<'_>,
    ) -> Result<(), ReplicationError> {
        frontend::startup_message(params.iter().copied(), &mut self.write_buf)?;
        self.flush().await?;
        let mut scram: Option<ScramSha256> = None;
        loop {
            match self.next_message().await? {
                Message::AuthenticationOk => return Ok(()),
                Message::AuthenticationCleartextPassword => {
                    let password = require(creds)?;
                    frontend::password_message(password, &mut self.write_buf)?;
                }
                Message::AuthenticationMd5Password(body) => {
                    let password = require(creds)?;
                    let hash = md5_hash(creds.user.as_bytes(), password, body.salt());
                    frontend::password_message(hash.as_bytes(), &mut self.write_buf)?;
                }
                Message::AuthenticationSasl(body) => {
                    let password = require(creds)?;
                    let mut mechanisms = body.mechanisms();
                    let mut found = false;
                    while let Some(m) = mechanisms.next()? {
                        found |= m == SCRAM_SHA_256;
                    }
                    if !found {
                        return Err(ReplicationError::Auth(
                            "server offers no SASL mechanism we support (need SCRAM-SHA-256 without TLS channel binding)".into(),
                        ));
                    }
                    // No TLS, so no channel binding: the server must not require it.
                    let s = ScramSha256::new(password, ChannelBinding::unsupported());
                    frontend::sasl_initial_response(
                        SCRAM_SHA_256,
                        s.message(),
                        &mut self.write_buf,
                    )?;
                    scram = Some(s);
                }
                Message::AuthenticationSaslContinue(body) => {
                    let s = scram.as_mut().ok_or_else(|| {
                        ReplicationError::Protocol("SASL continue before SASL start".into())
                    })?;
                    s.update(body.data()).map_err(ReplicationError::Scram)?;
                    frontend::sasl_response(s.message(), &mut self.write_buf)?;
                }
                Message::AuthenticationSaslFinal(body) => {
                    let s = scram.as_mut().ok_or_else(|| {
                        ReplicationError::Protocol("SASL final before SASL start".into())
                    })?;
                    s.finish(body.data()).map_err(ReplicationError::Scram)?;
                    continue;
                }
                Message::ErrorResponse(body) => return Err(super::server_error(&body)),
                Message::AuthenticationKerberosV5
                | Message::AuthenticationScmCredential
                | Message::AuthenticationGss
                | Message::AuthenticationGssContinue(_)
                | Message::AuthenticationSspi => {
                    return Err(ReplicationError::Auth(
                        "server requested an unsupported authentication method (Kerberos/GSS/SSPI)"
                            .into(),
                    ))
                }
                _ => {
                    return Err(ReplicationError::Protocol(
                        "unexpected message during authentication".into(),
                    ))
                }
            }
            self.flush().await?;
        }
    }

    async fn next_message(&mut self) -> Result<Message, ReplicationError> {
        match self.read_frame().await? {
            Frame::Message(m) => Ok(m),
            Frame::CopyBothResponse => Err(ReplicationError::Protocol(
                "CopyBothResponse during authentication".into(),
            )),
        }
    }
}

fn require<'a>(creds: &Credentials<'a>) -> Result<&'a [u8], ReplicationError> {
    creds.password.ok_or_else(|| {
        ReplicationError::Auth("server requested a password and none was configured".into())
    })
}
