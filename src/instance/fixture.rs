//! An instance record as unit tests need one: a valid spec from the server's defaults, a fresh
//! id and token, nothing stopped yet.

use super::{AccessToken, CreateRequest, InstanceId, InstanceRecord, SpecDefaults};

impl InstanceRecord {
    /// A record for `user` with the default spec; tests change the fields they care about.
    pub fn for_tests(user: &str) -> InstanceRecord {
        let (user, spec) = CreateRequest {
            user_id: user.into(),
            ..Default::default()
        }
        .validate(&SpecDefaults::default())
        .expect("a valid test user id");
        InstanceRecord {
            instance_id: InstanceId::generate(&user),
            user_id: user,
            spec,
            access_token: AccessToken::generate(),
            token_generation: 0,
            created_at: 0,
            last_activity_ms: 0,
            stop_reason: None,
        }
    }
}
