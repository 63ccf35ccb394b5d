use super::*;

fn limits(total: usize, per_client: usize) -> ConnLimits {
    ConnLimits {
        max_total: total,
        max_per_client: per_client,
        idle: Duration::from_secs(60),
    }
}

#[test]
fn ipv6_counts_by_64_and_mapped_v4_as_v4() {
    let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
    let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
    let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
    assert_eq!(ClientKey::of(a), ClientKey::of(b));
    assert_ne!(ClientKey::of(a), ClientKey::of(c));
    let v4: IpAddr = "192.0.2.7".parse().unwrap();
    let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
    assert_eq!(ClientKey::of(v4), ClientKey::of(mapped));
}

#[tokio::test]
async fn idle_connections_make_room_busy_ones_do_not() {
    let conns = Conns::new(limits(2, 2), CancellationToken::new());
    let ip: IpAddr = "192.0.2.1".parse().unwrap();
    let a = conns.admit(Some(ip)).await.unwrap();
    drop(a.info.busy());
    let b = conns.admit(Some(ip)).await.unwrap();
    let _busy_b = b.info.busy();
    // Another client at the total cap: A is idle, so it is asked to close and replaced.
    let c = conns
        .admit(Some("192.0.2.2".parse().unwrap()))
        .await
        .unwrap();
    assert!(a.info.close.is_cancelled());
    assert!(!b.info.close.is_cancelled());
    assert_eq!(conns.len(), 2);
    drop(a);
    assert_eq!(conns.len(), 2, "an evicted connection is not counted twice");
    // B is busy and C belongs to someone else: the first client's third connection waits.
    let _busy_c = c.info.busy();
    let waiting = tokio::time::timeout(Duration::from_millis(50), conns.admit(Some(ip))).await;
    assert!(waiting.is_err());
    drop(_busy_c);
    drop(c);
    assert!(conns.admit(Some(ip)).await.is_some());
}

#[tokio::test]
async fn one_client_is_held_to_its_share() {
    let conns = Conns::new(limits(10, 1), CancellationToken::new());
    let ip: IpAddr = "192.0.2.1".parse().unwrap();
    let a = conns.admit(Some(ip)).await.unwrap();
    let _busy = a.info.busy();
    assert!(
        conns.admit(Some(ip)).await.is_none(),
        "no idle one of its own to replace"
    );
    assert!(conns
        .admit(Some("192.0.2.2".parse().unwrap()))
        .await
        .is_some());
}

#[tokio::test]
async fn a_client_known_after_accept_is_held_to_its_share_then() {
    let conns = Conns::new(limits(10, 1), CancellationToken::new());
    let (a, b) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
    // Unassigned connections (a balancer's) count against the total only.
    let first = conns.admit(None).await.unwrap();
    let second = conns.admit(None).await.unwrap();
    let _busy = (first.info.busy(), second.info.busy());
    assert!(first.assign(a));
    assert!(first.assign(a), "assigning again changes nothing");
    assert!(!second.assign(a), "a's share is taken by a busy connection");
    assert!(second.assign(b));
    drop(first);
    let third = conns.admit(None).await.unwrap();
    assert!(third.assign(a), "a's place was given back");
    assert_eq!(conns.len(), 2);
}
