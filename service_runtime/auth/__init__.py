"""Identity for every service: scopes per RPC, credential verification, the authenticating interceptor, rate
limits and submission quotas. AuthService (services/auth) manages what this package verifies."""

from service_runtime.auth.interceptor import AuthInterceptor, auth_interceptor
from service_runtime.auth.quotas import SubmissionQuotas, check_submission_quota
from service_runtime.auth.scopes import METHOD_SCOPES, required_scope

__all__ = ["METHOD_SCOPES", "AuthInterceptor", "SubmissionQuotas", "auth_interceptor", "check_submission_quota",
           "required_scope"]
