use super::*;

#[test]
fn user_ids() {
    assert!(UserId::parse("user1").is_ok());
    assert!(UserId::parse("a").is_ok());
    for bad in ["", "-a", "a-", "User", "a_b", "a.b", &"a".repeat(41)] {
        assert!(UserId::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn instance_ids_round_trip() {
    let u = UserId::parse("alice-dev").unwrap();
    let id = InstanceId::generate(&u);
    assert_eq!(InstanceId::parse(id.as_str()).unwrap(), id);
    assert_eq!(id.user(), u);
    for bad in [
        "alice",
        "alice-1234567",
        "alice-1234567G",
        "Alice-12345678",
        "-12345678",
    ] {
        assert!(InstanceId::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn request_must_not_exceed_limit() {
    let req = CreateRequest {
        user_id: "u".into(),
        memory_request: Some("4Gi".into()),
        memory_limit: Some("2Gi".into()),
        ..Default::default()
    };
    let e = req.validate(&SpecDefaults::default()).unwrap_err();
    assert_eq!(e.field, "memory_request");
}

#[test]
fn idle_notice_is_within_the_timeout() {
    let d = SpecDefaults::default();
    let req = |timeout: Option<u64>, notice: Option<u64>| CreateRequest {
        user_id: "u".into(),
        idle_timeout: timeout,
        idle_notice: notice,
        ..Default::default()
    };
    let (_, spec) = req(None, None).validate(&d).unwrap();
    assert_eq!(spec.idle_notice_secs, Some(d.idle_notice_secs));
    let (_, spec) = req(Some(60), None).validate(&d).unwrap();
    assert_eq!(spec.idle_notice_secs, Some(60), "the default shrinks");
    let (_, spec) = req(Some(60), Some(0)).validate(&d).unwrap();
    assert_eq!(spec.idle_notice_secs(d.idle_notice_secs), 0);
    let e = req(Some(60), Some(61)).validate(&d).unwrap_err();
    assert_eq!(e.field, "idle_notice");
    let legacy: InstanceSpec = serde_json::from_value(serde_json::json!({
        "base_image": "b", "vscode_version": "latest", "storage_size": "1Gi",
        "memory_request": "1Gi", "memory_limit": "1Gi", "cpu_request": "1",
        "cpu_limit": "1", "idle_timeout_secs": 100
    }))
    .unwrap();
    assert_eq!(
        legacy.idle_notice_secs(300),
        100,
        "old records take the default"
    );
}

#[test]
fn tokens_compare() {
    let t = AccessToken::generate();
    assert_eq!(t.expose().len(), 64);
    assert!(t.matches(t.expose().as_bytes()));
    assert!(!t.matches(b"nope"));
    assert!(!format!("{t:?}").contains(t.expose()));
}

#[test]
fn every_byte_of_a_token_counts() {
    // Tokens set through the API need not be 64 bytes: whole words and the bytes after them.
    for len in [1, 7, 8, 13, 64, 71] {
        let secret: String = (0..len)
            .map(|i| char::from(b'a' + (i % 26) as u8))
            .collect();
        let t = AccessToken::from_secret(secret.clone());
        assert!(t.matches(secret.as_bytes()), "length {len}");
        assert!(!t.matches(&secret.as_bytes()[..len - 1]), "length {len}");
        for i in 0..len {
            let mut guess = secret.clone().into_bytes();
            guess[i] ^= 0x20;
            assert!(!t.matches(&guess), "length {len}, byte {i} changed");
        }
    }
}
