use super::*;
use proptest::prelude::*;

fn ip(text: &str) -> IpAddr {
    text.parse().expect("an address")
}

#[test]
fn non_public_addresses_are_denied_by_default() {
    for address in [
        "127.0.0.1",
        "127.255.0.9",
        "0.0.0.0",
        "10.1.2.3",
        "172.16.0.1",
        "172.31.255.255",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "100.127.255.255",
        "192.0.0.192",
        "224.0.0.1",
        "239.255.255.250",
        "255.255.255.255",
        "240.0.0.1",
        "::",
        "::1",
        "fe80::1",
        "febf::1",
        "fec0::1",
        "fc00::1",
        "fd12:3456::1",
        "ff02::1",
        "::ffff:127.0.0.1",
        "::ffff:169.254.169.254",
        "::ffff:10.0.0.1",
        "::127.0.0.1",
        "64:ff9b::7f00:1",
        "64:ff9b::a9fe:a9fe",
        "2002:7f00:1::",
        "2002:c0a8:101::1",
        "2001:db8::1",
        "2001:0:4136:e378::1",
    ] {
        assert!(
            default_denied(ip(address)).is_some(),
            "{address} must be denied"
        );
    }
}

#[test]
fn public_addresses_are_allowed_by_default() {
    for address in [
        "1.1.1.1",
        "8.8.8.8",
        "93.184.216.34",
        "100.63.255.255",
        "100.128.0.0",
        "172.15.255.255",
        "172.32.0.0",
        "169.253.255.255",
        "223.255.255.255",
        "2606:4700:4700::1111",
        "2a00:1450:4001:80b::200e",
        "::ffff:1.1.1.1",
        "64:ff9b::101:101",
        "2002:0101:0101::1",
    ] {
        assert_eq!(default_denied(ip(address)), None, "{address} is public");
    }
}

proptest! {
    /// An IPv4 address and its IPv4-mapped and NAT64 IPv6 forms get the same verdict.
    #[test]
    fn ipv6_forms_of_an_ipv4_address_share_its_verdict(bits in any::<u32>()) {
        let v4 = Ipv4Addr::from(bits);
        let denied = default_denied(IpAddr::V4(v4)).is_some();
        let mapped = IpAddr::V6(v4.to_ipv6_mapped());
        prop_assert_eq!(default_denied(mapped).is_some(), denied);
        let nat64 = IpAddr::V6(Ipv6Addr::from((0x0064_ff9b_u128 << 96) | u128::from(bits)));
        prop_assert_eq!(default_denied(nat64).is_some(), denied);
        let six_to_four = IpAddr::V6(Ipv6Addr::from((0x2002_u128 << 112) | (u128::from(bits) << 80)));
        prop_assert_eq!(default_denied(six_to_four).is_some(), denied);
    }

    /// Every address of a private, loopback, link-local or shared range is denied, whatever
    /// its host bits.
    #[test]
    fn every_address_of_a_denied_range_is_denied(host in any::<u32>(), range in 0usize..6) {
        let (network, length) = [
            (0x0a00_0000_u32, 8),
            (0x7f00_0000, 8),
            (0xa9fe_0000, 16),
            (0xac10_0000, 12),
            (0xc0a8_0000, 16),
            (0x6440_0000, 10),
        ][range];
        let address = network | (host >> length);
        prop_assert!(default_denied(IpAddr::V4(Ipv4Addr::from(address))).is_some());
    }

    /// Link-local and unique-local IPv6 addresses are denied whatever their host bits.
    #[test]
    fn local_ipv6_ranges_are_denied(host in any::<u128>()) {
        for (network, length) in [(0xfe80_u128 << 112, 10), (0xfc00 << 112, 7)] {
            let address = Ipv6Addr::from(network | (host >> length));
            prop_assert!(default_denied(IpAddr::V6(address)).is_some(), "{}", address);
        }
    }
}

#[test]
fn rules_take_cidrs_addresses_names_and_domains() {
    let rules = Rules::parse(&[
        "10.0.0.0/8",
        "127.0.0.1",
        "[::1]",
        "Api.Internal.",
        "*.svc.cluster.local",
    ])
    .expect("valid");
    assert!(rules.has_address(ip("10.9.9.9")));
    assert!(rules.has_address(ip("127.0.0.1")));
    assert!(
        rules.has_address(ip("::ffff:127.0.0.1")),
        "mapped is the same address"
    );
    assert!(!rules.has_address(ip("127.0.0.2")));
    assert!(rules.has_address(ip("::1")));
    assert!(rules.has_name("api.internal"));
    assert!(rules.has_name("API.internal."));
    assert!(!rules.has_name("evil-api.internal"));
    assert!(rules.has_name("nats.noetl.svc.cluster.local"));
    assert!(!rules.has_name("svc.cluster.local"));
    assert!(!rules.has_name("evilsvc.cluster.local"));
    for wrong in ["", "http://x", "10.0.0.0/33", "a b", "*."] {
        let error = Rules::parse(&[wrong]).expect_err(wrong);
        assert!(error.to_string().contains("is not a CIDR"), "{error}");
    }
}

#[test]
fn the_nats_hosts_are_denied_by_name_and_address() {
    let mut rules = Rules::default();
    rules.add_hosts_of("nats://noetl-nats:4222, tls://203.0.113.9:4222,nats-2:4222");
    assert!(rules.has_name("noetl-nats"));
    assert!(rules.has_name("nats-2"));
    assert!(rules.has_address(ip("203.0.113.9")));
    let policy = Policy {
        deny: rules,
        ..Policy::default()
    };
    let url = Url::parse("http://noetl-nats:8222/varz").expect("url");
    assert!(policy.check_url(&url).is_err());
}

fn socket(text: &str) -> SocketAddr {
    SocketAddr::new(ip(text), 0)
}

#[test]
fn resolved_addresses_are_filtered_and_all_denied_is_an_error() {
    let policy = Policy::default();
    let allowed = policy
        .filter("mixed.example", [socket("127.0.0.1"), socket("1.1.1.1")])
        .expect("one is allowed");
    assert_eq!(allowed, vec![socket("1.1.1.1")]);
    let denied = policy
        .filter("rebound.example", [socket("169.254.169.254")])
        .expect_err("all denied");
    assert_eq!(denied.host, "rebound.example");
    assert!(denied.reason.contains("link-local"), "{}", denied.reason);
}

#[test]
fn an_allow_list_wins_over_every_deny_rule() {
    let policy = Policy {
        allow: Rules::parse(&["127.0.0.1/32", "metadata.internal"]).expect("valid"),
        deny: Rules::parse(&["127.0.0.1", "metadata.internal"]).expect("valid"),
    };
    let url = Url::parse("http://127.0.0.1:8080/").expect("url");
    assert!(policy.check_url(&url).is_ok());
    let all = policy
        .filter("metadata.internal", [socket("169.254.169.254")])
        .expect("the name is allowed");
    assert_eq!(all.len(), 1);
    let url = Url::parse("http://127.0.0.2/").expect("url");
    assert!(policy.check_url(&url).is_err(), "only the listed address");
}

#[test]
fn ip_literals_in_any_spelling_are_checked() {
    let policy = Policy::default();
    for url in [
        "http://127.0.0.1/",
        "http://2130706433/",
        "http://0x7f.1/",
        "http://[::ffff:127.0.0.1]/",
        "http://[::1]:80/",
        "http://169.254.169.254/latest/meta-data/",
        "http://0/",
    ] {
        let url = Url::parse(url).expect("url");
        assert!(policy.check_url(&url).is_err(), "{url}");
    }
    let url = Url::parse("https://1.1.1.1/").expect("url");
    assert!(policy.check_url(&url).is_ok());
}

#[tokio::test]
async fn the_resolver_refuses_a_name_that_resolves_to_loopback() {
    let resolver = Resolver {
        policy: Arc::new(Policy::default()),
    };
    let name: Name = "localhost".parse().expect("a name");
    let error = match resolver.resolve(name).await {
        Ok(addresses) => panic!("resolved to {:?}", addresses.collect::<Vec<_>>()),
        Err(error) => error,
    };
    let denied = error.downcast_ref::<Denied>().expect("a policy refusal");
    assert_eq!(denied.host, "localhost");
}

#[tokio::test]
async fn the_addresses_of_denied_names_are_denied_from_start() {
    let mut egress = Egress {
        deny: Rules::parse(&["localhost", "no-such-host.invalid"]).expect("valid"),
        ..Egress::default()
    };
    egress.resolve_denied_hosts().await;
    assert!(
        egress.deny.has_address(ip("127.0.0.1")),
        "{:?}",
        egress.deny
    );
    // Allowing 127.0.0.1 for a pool still lets it through: the allow-list wins.
    egress.allow.insert(
        "io".to_owned(),
        Rules::parse(&["127.0.0.1"]).expect("valid"),
    );
    let url = Url::parse("http://127.0.0.1:4222/").expect("url");
    assert!(egress.policy("default").check_url(&url).is_err());
    assert!(egress.policy("io").check_url(&url).is_ok());
}
