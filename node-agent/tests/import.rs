//! `lvs-agent import`: ipvsadm rules and keepalived.conf to VirtualServices.

use std::{collections::BTreeMap, io::Write, process::Stdio};

use k8s_openapi::api::core::v1::Node;
use lvs_agent::{
    desired::desired_services,
    import::{ImportError, import, import_ipvsadm, import_keepalived},
};
use lvs_crds::{
    ClusterState, TranslateOptions, VirtualService, VirtualServiceSpec, assemble, translate,
    translate::DIRECTOR_LABEL,
    virtual_service::{
        Forwarding, HealthCheck, HealthCheckType, OnFailure, Persistence, Protocol, RealServer, Scheduler,
        SchedulerFlag, SorryServer, Tunnel, TunnelChecksum, TunnelEncapsulation,
    },
};
use lvs_ipvs::IpvsOp;
use lvs_ipvs::ipvsadm::{op_rule, parse_rules};
use pretty_assertions::assert_eq;

/// Every ipvsadm feature the API can express, as `ipvsadm -S -n` prints it.
const RULES: &str = "\
-A -t 10.0.0.100:80 -s wrr
-a -t 10.0.0.100:80 -r 192.168.1.1:80 -g -w 2
-a -t 10.0.0.100:80 -r 192.168.1.2:80 -g -w 1 -x 100 -y 50
-A -t 10.0.0.100:443 -s wlc -p 600 -M 255.255.255.0
-a -t 10.0.0.100:443 -r 172.16.0.1:8443 -m -w 5
-a -t 10.0.0.100:443 -r 172.16.0.2:443 -m -w 0
-A -t 10.0.0.100:0 -s mh -b mh-fallback,mh-port -p 300
-a -t 10.0.0.100:0 -r 192.168.1.1:0 -g -w 1
-A -u [2001:db8::1]:53 -s rr -o
-a -u [2001:db8::1]:53 -r [2001:db8::10]:5353 -m -w 1
-A -u 10.0.0.53:53 -s sh -b sh-fallback,sh-port -p 60 -M 255.255.0.0
-a -u 10.0.0.53:53 -r 10.0.1.1:53 -i -w 1
-A --sctp-service 10.0.0.9:3868 -s lc
-a --sctp-service 10.0.0.9:3868 -r 10.0.2.1:3868 -i -w 1 --tun-type gue --tun-port 6080 --tun-remcsum
-A -f 7 -s sed -p 120
-a -f 7 -r 10.0.3.1:0 -i -w 3 --tun-type gre --tun-csum
-A -f 8 -6 -s nq -p 30 -M 64
-a -f 8 -6 -r [2001:db8::20]:0 -g -w 1
-A -f 9 -s rr -o
-a -f 9 -r 10.0.4.1:0 -m -w 1
-A -t [2001:db8::1]:80 -s lblc
-a -t [2001:db8::1]:80 -r [2001:db8::30]:8080 -m -w 1 -x 10
";

fn by_name(services: &[VirtualService]) -> BTreeMap<String, VirtualServiceSpec> {
    services.iter().map(|s| (s.metadata.name.clone().unwrap(), s.spec.clone())).collect()
}

fn server(address: &str, port: Option<u16>, weight: u16) -> RealServer {
    RealServer { address: address.into(), port, weight, upper_threshold: None, lower_threshold: None }
}

fn vip_spec(vip: &str, port: u16, protocol: Protocol) -> VirtualServiceSpec {
    VirtualServiceSpec { vip: Some(vip.into()), port: Some(port), protocol, ..Default::default() }
}

#[test]
fn ipvsadm_names_in_key_order() {
    let services = import_ipvsadm(RULES).unwrap();
    let names: Vec<_> = services.iter().map(|s| s.metadata.name.clone().unwrap()).collect();
    assert_eq!(
        names,
        [
            "tcp-10-0-0-100-0",
            "tcp-10-0-0-100-80",
            "tcp-10-0-0-100-443",
            "tcp-2001-db8--1-80",
            "udp-10-0-0-53-53",
            "udp-2001-db8--1-53",
            "sctp-10-0-0-9-3868",
            "fwmark-7",
            "fwmark-9",
            "fwmark-8-ipv6",
        ]
    );
    assert!(services.iter().all(|s| s.metadata.namespace.as_deref() == Some("default")));
    // The same rules in another order give the same objects.
    let mut blocks: Vec<String> = Vec::new();
    for line in RULES.lines() {
        match blocks.last_mut() {
            Some(block) if !line.starts_with("-A") => block.push_str(&format!("{line}\n")),
            _ => blocks.push(format!("{line}\n")),
        }
    }
    let reversed: String = blocks.into_iter().rev().collect();
    assert!(reversed.starts_with("-A -t [2001:db8::1]:80"));
    assert_eq!(import_ipvsadm(&reversed).unwrap(), services);
}

#[test]
fn ipvsadm_maps_every_feature() {
    let specs = by_name(&import_ipvsadm(RULES).unwrap());
    let dr = &specs["tcp-10-0-0-100-80"];
    assert_eq!(
        dr,
        &VirtualServiceSpec {
            scheduler: Scheduler::Wrr,
            forwarding: Forwarding::DirectRouting,
            real_servers: vec![
                server("192.168.1.1", None, 2),
                RealServer {
                    upper_threshold: Some(100),
                    lower_threshold: Some(50),
                    ..server("192.168.1.2", None, 1)
                },
            ],
            ..vip_spec("10.0.0.100", 80, Protocol::TCP)
        }
    );
    let nat = &specs["tcp-10-0-0-100-443"];
    assert_eq!(nat.forwarding, Forwarding::Nat);
    assert_eq!(
        nat.persistence,
        Some(Persistence { timeout_seconds: 600, netmask: Some("255.255.255.0".into()) })
    );
    assert_eq!(nat.real_servers, [server("172.16.0.1", Some(8443), 5), server("172.16.0.2", None, 0)]);

    let all_ports = &specs["tcp-10-0-0-100-0"];
    assert_eq!(all_ports.scheduler, Scheduler::Mh);
    assert_eq!(all_ports.scheduler_flags, [SchedulerFlag::MhFallback, SchedulerFlag::MhPort]);
    assert_eq!(all_ports.persistence, Some(Persistence { timeout_seconds: 300, netmask: None }));
    assert_eq!(all_ports.real_servers, [server("192.168.1.1", None, 1)]);

    let udp6 = &specs["udp-2001-db8--1-53"];
    assert_eq!(
        udp6,
        &VirtualServiceSpec {
            scheduler: Scheduler::Rr,
            forwarding: Forwarding::Nat,
            one_packet: true,
            real_servers: vec![server("2001:db8::10", Some(5353), 1)],
            ..vip_spec("2001:db8::1", 53, Protocol::UDP)
        }
    );

    let ipip = &specs["udp-10-0-0-53-53"];
    assert_eq!(ipip.scheduler_flags, [SchedulerFlag::ShFallback, SchedulerFlag::ShPort]);
    assert_eq!(ipip.persistence.as_ref().unwrap().netmask.as_deref(), Some("255.255.0.0"));
    assert_eq!(ipip.forwarding, Forwarding::Tunnel);
    assert_eq!(ipip.tunnel, Some(Tunnel::default()));

    let gue = &specs["sctp-10-0-0-9-3868"];
    assert_eq!(gue.protocol, Protocol::SCTP);
    assert_eq!(
        gue.tunnel,
        Some(Tunnel {
            encapsulation: TunnelEncapsulation::Gue,
            port: Some(6080),
            checksum: TunnelChecksum::RemoteChecksum
        })
    );

    let gre = &specs["fwmark-7"];
    assert_eq!(
        gre,
        &VirtualServiceSpec {
            fwmark: Some(7),
            scheduler: Scheduler::Sed,
            forwarding: Forwarding::Tunnel,
            tunnel: Some(Tunnel {
                encapsulation: TunnelEncapsulation::Gre,
                port: None,
                checksum: TunnelChecksum::Checksum
            }),
            persistence: Some(Persistence { timeout_seconds: 120, netmask: None }),
            real_servers: vec![server("10.0.3.1", None, 3)],
            ..Default::default()
        }
    );
    let fwmark6 = &specs["fwmark-8-ipv6"];
    assert_eq!(fwmark6.persistence, Some(Persistence { timeout_seconds: 30, netmask: Some("64".into()) }));
    assert_eq!(fwmark6.real_servers, [server("2001:db8::20", None, 1)]);
    // One-packet scheduling on a fwmark service: the API says it with UDP.
    let ops = &specs["fwmark-9"];
    assert!(ops.one_packet);
    assert_eq!(ops.protocol, Protocol::UDP);

    let tcp6 = &specs["tcp-2001-db8--1-80"];
    assert_eq!(tcp6.scheduler, Scheduler::Lblc);
    assert_eq!(
        tcp6.real_servers,
        [RealServer { upper_threshold: Some(10), ..server("2001:db8::30", Some(8080), 1) }]
    );
}

/// The kernel operations that program the imported services, through the
/// same path as a cluster: translation to the director's LvsNode state, then
/// its desired IPVS services.
fn programming_ops(services: &[VirtualService]) -> Vec<IpvsOp> {
    let mut director = Node::default();
    director.metadata.name = Some("director".into());
    director.metadata.labels =
        Some([(DIRECTOR_LABEL.0.to_string(), DIRECTOR_LABEL.1.to_string())].into_iter().collect());
    let state =
        ClusterState { virtual_services: services.to_vec(), nodes: vec![director], ..Default::default() };
    let translation = translate(&state, &TranslateOptions::default());
    let node = assemble(translation.lvs_nodes.iter().map(|node| &node.spec)).expect("one node, complete");
    let director = node.director.expect("the node directs");
    assert_eq!(director.services.len(), services.len(), "every service accepted: {:?}", translation.verdicts);
    desired_services(&director)
        .into_iter()
        .flat_map(|desired| {
            let key = desired.service.key;
            std::iter::once(IpvsOp::AddService(desired.service))
                .chain(desired.destinations.into_iter().map(move |d| IpvsOp::AddDestination(key, d)))
        })
        .collect()
}

/// Ops in a canonical order, shown as ipvsadm lines when they differ.
fn as_set(mut ops: Vec<IpvsOp>) -> Vec<(String, IpvsOp)> {
    ops.sort_by_cached_key(op_rule);
    ops.into_iter().map(|op| (op_rule(&op), op)).collect()
}

#[test]
fn ipvsadm_round_trip_through_the_translation() {
    let services = import_ipvsadm(RULES).unwrap();
    assert_eq!(as_set(programming_ops(&services)), as_set(parse_rules(RULES).unwrap()));
}

#[test]
fn imported_yaml_reads_back_and_validates() {
    let imported = import(RULES).unwrap().in_namespace("lb");
    let yaml = imported.to_yaml();
    assert!(yaml.starts_with("apiVersion: lvs.dev/v1alpha1\nkind: VirtualService\nmetadata:\n"), "{yaml}");
    assert!(!yaml.contains("status"), "{yaml}");
    let documents: Vec<VirtualService> =
        yaml.split("---\n").map(|document| lvs_crds::yaml::from_str(document).unwrap()).collect();
    assert_eq!(documents, imported.services);
    for service in &documents {
        assert_eq!(service.metadata.namespace.as_deref(), Some("lb"));
        service.spec.validate().unwrap();
    }
    assert_eq!(yaml.matches("\n---\n").count(), documents.len() - 1);
}

#[test]
fn ipvsadm_other_commands_are_warnings() {
    let text = "\
# saved by ipvsadm
ipvsadm -C
ipvsadm -A -t 10.0.0.1:80 -s rr --pe sip
ipvsadm -a -t 10.0.0.1:80 -r 10.0.1.1:80 -g
--set 900 120 300
--start-daemon master --mcast-interface eth0
-A -t 10.0.0.2:80
-A -t 10.0.0.3:80 -M 255.255.255.0
-a -t 10.0.0.3:80 -r 10.0.1.1
";
    let imported = import(text).unwrap();
    assert_eq!(imported.services.len(), 2);
    assert_eq!(
        imported.warnings,
        [
            "line 3: service TCP 10.0.0.1:80: persistence engine \"sip\" not imported",
            "line 5: not imported (set timeouts tcp 900 tcpfin 120 udp 300): --set 900 120 300",
            "line 6: not imported (start master sync daemon on eth0): --start-daemon master --mcast-interface eth0",
            "line 8: service TCP 10.0.0.3:80: netmask without persistence (-p) ignored",
            "line 7: service TCP 10.0.0.2:80 has no real servers: not imported",
        ]
    );
}

#[test]
fn ipvsadm_errors_name_the_line() {
    let error = |text: &str| import(text).unwrap_err().to_string();
    assert_eq!(
        error(
            "-A -t 10.0.0.1:80 -s rr\n-a -t 10.0.0.1:80 -r 10.0.1.1 -g\n-a -t 10.0.0.1:80 -r 10.0.1.2:80 -m\n"
        ),
        "line 3: service TCP 10.0.0.1:80 (tcp-10-0-0-1-80) mixes forwarding methods \
         (DirectRouting and NAT): a VirtualService has one"
    );
    assert_eq!(
        error("-A -f 1\n-a -f 1 -r 10.0.1.1 -i\n-a -f 1 -r 10.0.1.2 -i --tun-type gre\n"),
        "line 3: service FWM 1 (fwmark-1) mixes forwarding methods (Tunnel IPIP and Tunnel GRE): \
         a VirtualService has one"
    );
    assert_eq!(
        error("-A -t 10.0.0.1:80\n-a -t 10.0.0.1:80 -r 10.0.1.1 --bogus\n"),
        "line 2: unknown option \"--bogus\": -a -t 10.0.0.1:80 -r 10.0.1.1 --bogus"
    );
    assert_eq!(
        error("-a -t 10.0.0.1:80 -r 10.0.1.1\n"),
        "line 1: real server of service TCP 10.0.0.1:80, which no earlier -A line adds"
    );
    assert_eq!(
        error("-A -t 10.0.0.1:80\n-A -t 10.0.0.1:80 -s rr\n"),
        "line 2: service TCP 10.0.0.1:80 added twice"
    );
    assert_eq!(error("-A -t 10.0.0.1:80 -s foo\n"), "line 1: scheduler \"foo\" is not one the API knows");
    assert_eq!(
        error("-A -t 10.0.0.1:80 -s rr -b flag-1\n"),
        "line 1: scheduler flags of \"rr\" have no meaning the API knows"
    );
    // Valid for ipvsadm, not for the API: a lower threshold needs an upper one.
    let invalid = error("-A -t 10.0.0.1:80\n-a -t 10.0.0.1:80 -r 10.0.1.1 -y 5\n");
    assert!(invalid.starts_with("tcp-10-0-0-1-80: spec.realServers[0].lowerThreshold: 5: "), "{invalid}");
    assert_eq!(import("hello\n").unwrap_err(), ImportError::UnknownFormat);
}

const KEEPALIVED: &str = r#"
! Configuration File for keepalived
global_defs {
   router_id LVS_DEVEL
   notification_email { admin@example.com }
}

vrrp_instance VI_1 {
    state MASTER
    interface eth0
    virtual_router_id 51
    priority 100
    virtual_ipaddress {
        192.168.16.100
    }
}

# DR web service with HTTP checks
virtual_server 192.168.16.100 80 {
    delay_loop 6
    lb_algo wrr
    lb_kind DR
    persistence_timeout 50
    persistence_granularity 255.255.255.0
    protocol TCP
    sorry_server 192.168.16.200 80
    quorum 1

    real_server 192.168.16.21 80 {
        weight 2
        inhibit_on_failure
        HTTP_GET {
            url {
              path /healthz
              status_code 200
            }
            connect_timeout 3
            retry 2
            delay_before_retry 3
        }
    }
    real_server 192.168.16.22 80 {
        weight 1
        uthreshold 1000
        lthreshold 800
        HTTP_GET {
            url { path /healthz
                  status_code 200 }
            connect_timeout 3
            retry 2
            delay_before_retry 3
        }
    }
}

virtual_server 192.168.16.100 443 {    # NAT with port mapping
    lb_algo rr
    lb_kind NAT
    real_server 192.168.17.21 8443 {
        TCP_CHECK {
            connect_port 8443
            connect_timeout 2
        }
    }
    real_server 192.168.17.22 8443 {
        SSL_GET { url { path / } }
    }
}

virtual_server 192.168.16.100 53 {
    lb_algo sh
    sh-port
    lb_kind TUN type gue port 6080 csum
    protocol UDP
    ops
    real_server 192.168.18.21 53 {
        UDP_CHECK {
            connect_timeout 90
        }
    }
}

virtual_server fwmark 5 {
    lb_kind TUN
    lb_algo lc
    persistence_timeout
    real_server 192.168.18.22 0 {
        weight 4
        MISC_CHECK { misc_path /bin/true }
    }
}

virtual_server_group web { 192.168.16.101 80 }
"#;

#[test]
fn keepalived_sample() {
    let imported = import(KEEPALIVED).unwrap();
    let specs = by_name(&imported.services);
    assert_eq!(
        imported.services.iter().map(|s| s.metadata.name.as_deref().unwrap()).collect::<Vec<_>>(),
        ["tcp-192-168-16-100-80", "tcp-192-168-16-100-443", "udp-192-168-16-100-53", "fwmark-5"]
    );
    let http = HealthCheck {
        kind: HealthCheckType::HTTP,
        path: Some("/healthz".into()),
        host: None,
        port: None,
        expected_status: Some(vec![200]),
        body_contains: None,
        payload: None,
        interval_seconds: 6,
        timeout_seconds: 3,
        rise: 1,
        fall: 3,
        on_failure: OnFailure::Quiesce,
    };
    assert_eq!(
        specs["tcp-192-168-16-100-80"],
        VirtualServiceSpec {
            scheduler: Scheduler::Wrr,
            forwarding: Forwarding::DirectRouting,
            persistence: Some(Persistence { timeout_seconds: 50, netmask: Some("255.255.255.0".into()) }),
            sorry_server: Some(SorryServer { address: "192.168.16.200".into(), port: None }),
            real_servers: vec![
                server("192.168.16.21", None, 2),
                RealServer {
                    upper_threshold: Some(1000),
                    lower_threshold: Some(800),
                    ..server("192.168.16.22", None, 1)
                },
            ],
            health_check: Some(http.clone()),
            ..vip_spec("192.168.16.100", 80, Protocol::TCP)
        }
    );

    let nat = &specs["tcp-192-168-16-100-443"];
    assert_eq!(nat.forwarding, Forwarding::Nat);
    assert_eq!(
        nat.real_servers,
        [server("192.168.17.21", Some(8443), 1), server("192.168.17.22", Some(8443), 1)]
    );
    assert_eq!(
        nat.health_check,
        Some(HealthCheck {
            kind: HealthCheckType::TCP,
            path: None,
            expected_status: None,
            interval_seconds: 60,
            timeout_seconds: 2,
            fall: 3,
            on_failure: OnFailure::Remove,
            ..http.clone()
        })
    );

    let tunnel = &specs["udp-192-168-16-100-53"];
    assert_eq!(tunnel.scheduler_flags, [SchedulerFlag::ShPort]);
    assert!(tunnel.one_packet);
    assert_eq!(
        tunnel.tunnel,
        Some(Tunnel {
            encapsulation: TunnelEncapsulation::Gue,
            port: Some(6080),
            checksum: TunnelChecksum::Checksum
        })
    );
    let udp_check = tunnel.health_check.as_ref().unwrap();
    assert_eq!(
        (udp_check.kind, udp_check.interval_seconds, udp_check.timeout_seconds),
        (HealthCheckType::UDP, 60, 60)
    );

    let fwmark = &specs["fwmark-5"];
    assert_eq!(fwmark.fwmark, Some(5));
    assert_eq!(fwmark.persistence, Some(Persistence { timeout_seconds: 360, netmask: None }));
    assert_eq!(fwmark.real_servers, [server("192.168.18.22", None, 4)]);
    assert_eq!(fwmark.health_check, None);

    assert_eq!(
        imported.warnings,
        [
            "line 27: keyword quorum not imported",
            "line 39: delay_before_retry not imported",
            "line 51: delay_before_retry not imported",
            "line 65: service tcp-192-168-16-100-443: real servers have different checks; \
             the first real server's is used",
            "line 77: connect_timeout 90 over delay_loop 60: timeoutSeconds lowered to it",
            "line 89: block MISC_CHECK not imported",
            "line 93: virtual_server_group not imported",
        ]
    );
    assert_eq!(import_keepalived(KEEPALIVED).unwrap(), imported.services);
}

#[test]
fn keepalived_errors() {
    let error = |text: &str| import(text).unwrap_err().to_string();
    assert_eq!(
        error(
            "virtual_server 10.0.0.1 80 {\n lb_kind DR\n real_server 10.0.1.1 80 {\n  lb_kind NAT\n }\n}\n"
        ),
        "line 3: service tcp-10-0-0-1-80 mixes forwarding methods: a VirtualService has one"
    );
    assert_eq!(error("virtual_server 10.0.0.1 80 {\n lb_algo rr\n"), "line 1: block not closed (missing })");
    assert_eq!(
        error("virtual_server 10.0.0.1 80 {\n lb_kind XX\n}\n"),
        "line 2: unknown forwarding method \"XX\": NAT, DR or TUN"
    );
    assert_eq!(error("virtual_server 10.0.0.1 {\n}\n"), "line 1: virtual_server needs 2 value(s)");
    assert_eq!(
        error("virtual_server 10.0.0.1 80 {\n real_server 10.0.1.1 80 {\n  weight heavy\n }\n}\n"),
        "line 3: weight: invalid number \"heavy\""
    );
}

#[test]
fn keepalived_direct_routing_drops_real_server_ports() {
    let imported = import(
        "virtual_server 10.0.0.1 80 {\n lb_kind DR\n real_server 10.0.1.1 8080 {\n }\n sorry_server 10.0.2.1 80\n}\n",
    )
    .unwrap();
    assert_eq!(imported.services[0].spec.real_servers, [server("10.0.1.1", None, 1)]);
    assert_eq!(
        imported.warnings,
        ["line 3: DirectRouting cannot map ports: real server 10.0.1.1 uses the service's port"]
    );
}

#[test]
fn keepalived_status_code_ranges_are_warnings() {
    let imported = import(
        "virtual_server 10.0.0.1 80 {
  real_server 10.0.1.1 80 {
    HTTP_GET {
      url {
        path /ready
        status_code 204 200-299
      }
    }
  }
}
",
    )
    .unwrap();
    let check = imported.services[0].spec.health_check.as_ref().unwrap();
    assert_eq!((check.path.as_deref(), check.expected_status.as_deref()), (Some("/ready"), Some(&[204][..])));
    assert_eq!(imported.warnings, ["line 6: status_code 200-299 not imported"]);
}

#[test]
fn cli_reads_standard_input_and_names_the_bad_line() {
    let run = |args: &[&str], input: &str| {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_lvs-agent"))
            .arg("import")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    };
    let output = run(
        &["--namespace", "lb"],
        "-A -t 10.0.0.1:80 -s rr\n-a -t 10.0.0.1:80 -r 10.0.1.1:80 -m\n--set 1 2 3\n",
    );
    assert!(output.status.success());
    let yaml = String::from_utf8(output.stdout).unwrap();
    let service: VirtualService = lvs_crds::yaml::from_str(&yaml).unwrap();
    assert_eq!(service.metadata.name.as_deref(), Some("tcp-10-0-0-1-80"));
    assert_eq!(service.metadata.namespace.as_deref(), Some("lb"));
    assert!(String::from_utf8(output.stderr).unwrap().contains("warning: line 3: not imported"));

    let output = run(&[], "-A -t 10.0.0.1:80\n-a -t 10.0.0.1:80 -r nowhere\n");
    assert!(!output.status.success());
    assert!(String::from_utf8(output.stderr).unwrap().starts_with("lvs-agent: line 2: "));
}
