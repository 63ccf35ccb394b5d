//! Whatever path a client sends: the router does not panic, and a path it sends to an
//! instance names exactly that instance, with nothing upstream could read as another.
use super::*;
use proptest::prelude::*;

fn paths() -> impl Strategy<Value = String> {
    let seg = prop_oneof![
        Just("..".to_owned()),
        Just(".".to_owned()),
        Just("%2e%2E".to_owned()),
        Just("%2F".to_owned()),
        Just("%5c".to_owned()),
        Just("_vod".to_owned()),
        Just("u-0000000a".to_owned()),
        "[a-zA-Z0-9%._~\\\\-]{0,8}",
    ];
    prop::collection::vec(seg, 0..6).prop_map(|segs| format!("/instances/{}", segs.join("/")))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]
    #[test]
    fn instance_routes_name_one_instance(path in paths(), host_id in prop::option::of("[a-z0-9-]{1,12}")) {
        let site = host_id.as_deref().map_or(Site::Shared, Site::Instance);
        match route(site, &Method::GET, &path) {
            Route::Instance { id, rest } => {
                prop_assert_eq!(format!("/instances/{id}{rest}"), path.clone());
                prop_assert!(valid_id_chars(id));
                prop_assert!(ambiguous(&path).is_none());
                prop_assert!(!rest.split('/').any(|s| s == ".." || s == "."));
                if let Some(own) = host_id.as_deref() {
                    prop_assert_eq!(id, own);
                }
            }
            Route::Own { id, .. } | Route::InstanceBare(id) => {
                prop_assert!(valid_id_chars(id));
                prop_assert!(ambiguous(&path).is_none());
            }
            _ => {}
        }
    }

    #[test]
    fn any_path_routes_without_panic(path in "\\PC{0,64}") {
        let _ = route(Site::Front, &Method::POST, &path);
        let _ = route(Site::Shared, &Method::GET, &path);
    }
}
