//! DPS service API client (azure-specs README §4).

use std::sync::Arc;

use futures::stream::BoxStream;
use http::{HeaderMap, HeaderValue, Method};

use super::auth::SasTokenProvider;
use super::connection_string::ConnectionString;
use super::error::AzureError;
use super::models::{
    AttestationMechanism, AttestationType, BulkEnrollmentGroupOperation,
    BulkEnrollmentGroupOperationResult, BulkEnrollmentOperation, BulkEnrollmentOperationResult,
    DeviceRegistrationState, EnrollmentGroup, IndividualEnrollment, ProvisioningStatus,
    QuerySpecification,
};
use super::transport::{Body, ClientOptions, Endpoint, paged, paging_headers};

/// Most items DPS accepts in one bulk enrollment operation.
pub const MAX_BULK_ENROLLMENTS: usize = 10;

/// What [`DpsClient::set_enrollment_status`] did: the entity as DPS now stores it, and whether it had to write.
#[derive(Debug, Clone)]
pub struct StatusSet<T> {
    /// The GET's entity when nothing was written, else the PUT's answer (DPS answers with what it stored).
    pub stored: T,
    /// False when the entity already had the status: no attestation read and no PUT were made.
    pub written: bool,
    /// DPS operations the call spent (1 to 3), for the pacing budget.
    pub calls: u32,
}

/// Client of one DPS instance's service API. Cheap to clone.
#[derive(Debug, Clone)]
pub struct DpsClient {
    ep: Arc<Endpoint>,
}

fn if_match_header(if_match: Option<&str>) -> Result<HeaderMap, AzureError> {
    let mut h = HeaderMap::new();
    if let Some(etag) = if_match {
        // DPS takes the etag as returned (the az CLI sends it raw); `*` matches anything.
        let v = HeaderValue::from_str(etag)
            .map_err(|_| AzureError::InvalidRequest("etag is not a valid header value".into()))?;
        h.insert(http::header::IF_MATCH, v);
    }
    Ok(h)
}

impl DpsClient {
    /// Default `api-version`.
    pub const DEFAULT_API_VERSION: &'static str = "2021-10-01";

    /// A client for the instance named by the connection string's HostName.
    pub fn new(cs: &ConnectionString, options: ClientOptions) -> Result<Self, AzureError> {
        Ok(Self {
            ep: Arc::new(Endpoint::new(cs, options, Self::DEFAULT_API_VERSION)?),
        })
    }

    /// The instance's host name (lower case).
    pub fn host_name(&self) -> &str {
        self.ep.host_name()
    }

    /// The `api-version` sent.
    pub fn api_version(&self) -> &str {
        self.ep.api_version()
    }

    /// Where requests go (`https://{host}` unless overridden).
    pub fn base_url(&self) -> &url::Url {
        self.ep.base_url()
    }

    /// The SAS token provider (to invalidate a token after a 401, for instance).
    pub fn token_provider(&self) -> &SasTokenProvider {
        self.ep.auth()
    }

    /// `GET /enrollments/{registrationId}`.
    pub async fn get_enrollment(
        &self,
        registration_id: &str,
    ) -> Result<IndividualEnrollment, AzureError> {
        self.ep
            .send(
                Method::GET,
                &["enrollments", registration_id],
                HeaderMap::new(),
                Body::None,
            )
            .await?
            .json()
    }

    /// `PUT /enrollments/{registrationId}` (full replace), with `If-Match` when given.
    pub async fn create_or_replace_enrollment(
        &self,
        enrollment: &IndividualEnrollment,
        if_match: Option<&str>,
    ) -> Result<IndividualEnrollment, AzureError> {
        self.ep
            .send(
                Method::PUT,
                &["enrollments", &enrollment.registration_id],
                if_match_header(if_match)?,
                Body::json(enrollment)?,
            )
            .await?
            .json()
    }

    /// `DELETE /enrollments/{registrationId}`, with `If-Match` when given.
    pub async fn delete_enrollment(
        &self,
        registration_id: &str,
        if_match: Option<&str>,
    ) -> Result<(), AzureError> {
        self.ep
            .send(
                Method::DELETE,
                &["enrollments", registration_id],
                if_match_header(if_match)?,
                Body::None,
            )
            .await?;
        Ok(())
    }

    /// `POST /enrollments/{registrationId}/attestationmechanism`: the attestation including symmetric keys.
    pub async fn enrollment_attestation(
        &self,
        registration_id: &str,
    ) -> Result<AttestationMechanism, AzureError> {
        self.ep
            .send(
                Method::POST,
                &["enrollments", registration_id, "attestationmechanism"],
                HeaderMap::new(),
                Body::Empty,
            )
            .await?
            .json()
    }

    /// `GET /enrollmentGroups/{groupId}`.
    pub async fn get_enrollment_group(
        &self,
        group_id: &str,
    ) -> Result<EnrollmentGroup, AzureError> {
        self.ep
            .send(
                Method::GET,
                &["enrollmentGroups", group_id],
                HeaderMap::new(),
                Body::None,
            )
            .await?
            .json()
    }

    /// `PUT /enrollmentGroups/{groupId}` (full replace), with `If-Match` when given.
    pub async fn create_or_replace_enrollment_group(
        &self,
        group: &EnrollmentGroup,
        if_match: Option<&str>,
    ) -> Result<EnrollmentGroup, AzureError> {
        self.ep
            .send(
                Method::PUT,
                &["enrollmentGroups", &group.enrollment_group_id],
                if_match_header(if_match)?,
                Body::json(group)?,
            )
            .await?
            .json()
    }

    /// `DELETE /enrollmentGroups/{groupId}`, with `If-Match` when given.
    pub async fn delete_enrollment_group(
        &self,
        group_id: &str,
        if_match: Option<&str>,
    ) -> Result<(), AzureError> {
        self.ep
            .send(
                Method::DELETE,
                &["enrollmentGroups", group_id],
                if_match_header(if_match)?,
                Body::None,
            )
            .await?;
        Ok(())
    }

    /// `POST /enrollmentGroups/{groupId}/attestationmechanism`: the attestation including symmetric keys.
    pub async fn enrollment_group_attestation(
        &self,
        group_id: &str,
    ) -> Result<AttestationMechanism, AzureError> {
        self.ep
            .send(
                Method::POST,
                &["enrollmentGroups", group_id, "attestationmechanism"],
                HeaderMap::new(),
                Body::Empty,
            )
            .await?
            .json()
    }

    /// Sets an individual enrollment's status by full replace: GET, fetch the attestation mechanism when it
    /// holds symmetric keys (GET hides them), change only `provisioningStatus`, PUT with `If-Match: <etag>`.
    /// An enrollment that already has the status is not written again. A 412 means someone else wrote in
    /// between (call again).
    pub async fn set_enrollment_status(
        &self,
        registration_id: &str,
        status: ProvisioningStatus,
    ) -> Result<StatusSet<IndividualEnrollment>, AzureError> {
        let mut enrollment = self.get_enrollment(registration_id).await?;
        if enrollment.provisioning_status == Some(status) {
            return Ok(StatusSet {
                stored: enrollment,
                written: false,
                calls: 1,
            });
        }
        let mut calls = 2;
        if enrollment.attestation.kind == AttestationType::SymmetricKey {
            enrollment.attestation = self.enrollment_attestation(registration_id).await?;
            calls += 1;
        }
        enrollment.provisioning_status = Some(status);
        let etag = enrollment.etag.clone();
        let stored = self
            .create_or_replace_enrollment(&enrollment, etag.as_deref())
            .await?;
        Ok(StatusSet {
            stored,
            written: true,
            calls,
        })
    }

    /// Sets an enrollment group's status by full replace (as [`Self::set_enrollment_status`]).
    pub async fn set_enrollment_group_status(
        &self,
        group_id: &str,
        status: ProvisioningStatus,
    ) -> Result<StatusSet<EnrollmentGroup>, AzureError> {
        let mut group = self.get_enrollment_group(group_id).await?;
        if group.provisioning_status == Some(status) {
            return Ok(StatusSet {
                stored: group,
                written: false,
                calls: 1,
            });
        }
        let mut calls = 2;
        if group.attestation.kind == AttestationType::SymmetricKey {
            group.attestation = self.enrollment_group_attestation(group_id).await?;
            calls += 1;
        }
        group.provisioning_status = Some(status);
        let etag = group.etag.clone();
        let stored = self
            .create_or_replace_enrollment_group(&group, etag.as_deref())
            .await?;
        Ok(StatusSet {
            stored,
            written: true,
            calls,
        })
    }

    /// One page of `POST /registrations/{groupId}/query`: the registration states of a group's devices and the
    /// continuation token of the next page (None on the last page).
    pub async fn query_registrations_page(
        &self,
        group_id: &str,
        page_size: Option<u32>,
        continuation: Option<&str>,
    ) -> Result<(Vec<DeviceRegistrationState>, Option<String>), AzureError> {
        // The spec declares no body; an empty one is sent so proxies see a Content-Length.
        let r = self
            .ep
            .send(
                Method::POST,
                &["registrations", group_id, "query"],
                paging_headers(page_size, continuation)?,
                Body::Empty,
            )
            .await?;
        Ok((r.json()?, r.continuation()))
    }

    /// Every registration state of a group, page after page.
    pub fn query_registrations(
        &self,
        group_id: &str,
        page_size: Option<u32>,
    ) -> BoxStream<'static, Result<DeviceRegistrationState, AzureError>> {
        let client = self.clone();
        let group_id = group_id.to_string();
        paged(move |token| {
            let client = client.clone();
            let group_id = group_id.clone();
            async move {
                client
                    .query_registrations_page(&group_id, page_size, token.as_deref())
                    .await
            }
        })
    }

    /// `GET /registrations/{registrationId}`.
    pub async fn get_registration(
        &self,
        registration_id: &str,
    ) -> Result<DeviceRegistrationState, AzureError> {
        self.ep
            .send(
                Method::GET,
                &["registrations", registration_id],
                HeaderMap::new(),
                Body::None,
            )
            .await?
            .json()
    }

    /// `DELETE /registrations/{registrationId}`, with `If-Match` when given.
    pub async fn delete_registration(
        &self,
        registration_id: &str,
        if_match: Option<&str>,
    ) -> Result<(), AzureError> {
        self.ep
            .send(
                Method::DELETE,
                &["registrations", registration_id],
                if_match_header(if_match)?,
                Body::None,
            )
            .await?;
        Ok(())
    }

    /// `POST /enrollments`: bulk operation on at most 10 individual enrollments.
    pub async fn bulk_enrollments(
        &self,
        operation: &BulkEnrollmentOperation,
    ) -> Result<BulkEnrollmentOperationResult, AzureError> {
        check_bulk_size(operation.enrollments.len(), "enrollments")?;
        self.ep
            .send(
                Method::POST,
                &["enrollments"],
                HeaderMap::new(),
                Body::json(operation)?,
            )
            .await?
            .json()
    }

    /// `POST /enrollmentGroups`: bulk operation on at most 10 enrollment groups.
    pub async fn bulk_enrollment_groups(
        &self,
        operation: &BulkEnrollmentGroupOperation,
    ) -> Result<BulkEnrollmentGroupOperationResult, AzureError> {
        check_bulk_size(operation.enrollment_groups.len(), "enrollment groups")?;
        self.ep
            .send(
                Method::POST,
                &["enrollmentGroups"],
                HeaderMap::new(),
                Body::json(operation)?,
            )
            .await?
            .json()
    }

    /// One page of `POST /enrollmentGroups/query` (`query` is usually `SELECT *`).
    pub async fn query_enrollment_groups_page(
        &self,
        query: &str,
        page_size: Option<u32>,
        continuation: Option<&str>,
    ) -> Result<(Vec<EnrollmentGroup>, Option<String>), AzureError> {
        let r = self
            .ep
            .send(
                Method::POST,
                &["enrollmentGroups", "query"],
                paging_headers(page_size, continuation)?,
                Body::json(&QuerySpecification::new(query))?,
            )
            .await?;
        Ok((r.json()?, r.continuation()))
    }

    /// Every enrollment group of the instance (`SELECT *`), page after page.
    pub fn query_enrollment_groups(
        &self,
        page_size: Option<u32>,
    ) -> BoxStream<'static, Result<EnrollmentGroup, AzureError>> {
        let client = self.clone();
        paged(move |token| {
            let client = client.clone();
            async move {
                client
                    .query_enrollment_groups_page("SELECT *", page_size, token.as_deref())
                    .await
            }
        })
    }

    /// One page of `POST /enrollments/query` (`query` is usually `SELECT *`).
    pub async fn query_enrollments_page(
        &self,
        query: &str,
        page_size: Option<u32>,
        continuation: Option<&str>,
    ) -> Result<(Vec<IndividualEnrollment>, Option<String>), AzureError> {
        let r = self
            .ep
            .send(
                Method::POST,
                &["enrollments", "query"],
                paging_headers(page_size, continuation)?,
                Body::json(&QuerySpecification::new(query))?,
            )
            .await?;
        Ok((r.json()?, r.continuation()))
    }
}

fn check_bulk_size(n: usize, what: &str) -> Result<(), AzureError> {
    if n == 0 {
        return Err(AzureError::InvalidRequest(format!(
            "a bulk operation needs at least one of the {what}"
        )));
    }
    if n > MAX_BULK_ENROLLMENTS {
        return Err(AzureError::InvalidRequest(format!(
            "a bulk operation takes at most {MAX_BULK_ENROLLMENTS} {what}, got {n}"
        )));
    }
    Ok(())
}
