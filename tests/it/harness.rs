//! The test harness's own rules: a test whose dependency is missing fails
//! unless the operator named it in `KEYGATE_TEST_SKIP`, and always under CI
//! (a skip used to print `ok`).

use crate::common::skip_allowed;

#[test]
fn a_missing_dependency_fails_unless_named_and_always_under_ci() {
    let why = "redis-server is not installed";
    assert!(skip_allowed(false, "", "redis", why).is_err());
    assert!(skip_allowed(false, "browser", "redis", why).is_err());
    assert!(skip_allowed(false, "redisx", "redis", why).is_err());
    assert!(skip_allowed(false, "browser, redis", "redis", why).is_ok());
    assert!(skip_allowed(true, "redis", "redis", why).unwrap_err().contains("CI must install it"));
    assert!(skip_allowed(false, "", "browser", why).unwrap_err().contains("KEYGATE_TEST_SKIP=browser"));
}
