//! The caller's identity and permissions, passed to every store and query call so
//! that authorization can narrow queries in the data layer rather than filter
//! results afterwards. Shared vocabulary: every layer may use it.

/// Who is asking, from where, and what they may touch.
#[derive(Debug, Clone)]
pub struct AccessContext {
    /// OAuth client, once SMART authorization is in place.
    pub client_id: Option<String>,
    /// The user (fhirUser) behind the client, if any.
    pub user: Option<String>,
    /// Network address of the client.
    pub remote_addr: Option<String>,
    /// The request id that ties logs and AuditEvents together.
    pub request_id: String,
    pub grant: Grant,
}

/// What the caller may access.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grant {
    /// Everything: authorization disabled, or a system-level operator.
    Open,
}

impl AccessContext {
    /// An unrestricted context (development mode, command-line tools).
    pub fn open(request_id: impl Into<String>, remote_addr: Option<String>) -> AccessContext {
        AccessContext {
            client_id: None,
            user: None,
            remote_addr,
            request_id: request_id.into(),
            grant: Grant::Open,
        }
    }

    /// The command-line tools act as the system itself.
    pub fn system() -> AccessContext {
        AccessContext::open("cli", None)
    }

    /// May the caller read resources of this type at all?
    pub fn may_read_type(&self, _resource_type: &str) -> bool {
        match self.grant {
            Grant::Open => true,
        }
    }

    /// May the caller write resources of this type?
    pub fn may_write_type(&self, _resource_type: &str) -> bool {
        match self.grant {
            Grant::Open => true,
        }
    }
}
