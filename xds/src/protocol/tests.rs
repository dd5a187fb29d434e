use std::collections::HashMap;

use envoy_types::pb::google::protobuf::Any;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use prost::Message;

use super::*;

/// A view over a plain map: (type, name) → content.
#[derive(Default)]
struct Fake {
    data: HashMap<(ResourceType, String), String>,
    revision: u64,
}

impl Fake {
    fn set(&mut self, ty: ResourceType, name: &str, content: &str) {
        self.data.insert((ty, name.into()), content.into());
        self.revision += 1;
    }
    fn del(&mut self, ty: ResourceType, name: &str) {
        self.data.remove(&(ty, name.into()));
        self.revision += 1;
    }
}

impl View for Fake {
    fn get(&mut self, ty: ResourceType, name: &str) -> Option<Arc<Built>> {
        self.data.get(&(ty, name.to_string())).map(|c| {
            Arc::new(Built {
                name: name.into(),
                version: version_of(c.as_bytes()),
                any: Any {
                    type_url: ty.url().into(),
                    value: c.as_bytes().to_vec(),
                },
            })
        })
    }
    fn all(&mut self, ty: ResourceType) -> Arc<Vec<String>> {
        let mut v: Vec<String> = self
            .data
            .keys()
            .filter(|(t, _)| *t == ty)
            .map(|(_, n)| n.clone())
            .collect();
        v.sort();
        Arc::new(v)
    }
    fn system_version(&self) -> String {
        self.revision.to_string()
    }
}

const EDS: ResourceType = ResourceType::Endpoint;
const CDS: ResourceType = ResourceType::Cluster;

fn sotw(ty: ResourceType, names: &[&str], version: &str, nonce: &str) -> ds::DiscoveryRequest {
    ds::DiscoveryRequest {
        version_info: version.into(),
        resource_names: names.iter().map(|s| s.to_string()).collect(),
        type_url: ty.url().into(),
        response_nonce: nonce.into(),
        ..Default::default()
    }
}

fn nack(mut r: ds::DiscoveryRequest) -> ds::DiscoveryRequest {
    r.error_detail = Some(RpcStatus {
        code: 3,
        message: "bad".into(),
        details: vec![],
    });
    r
}

fn names(r: &SotwResponse) -> Vec<String> {
    r.resources
        .iter()
        .map(|b| String::from_utf8(b.any.value.clone()).unwrap())
        .collect()
}

#[test]
fn sotw_ack_nack_and_no_resend_of_a_nacked_version() {
    let mut v = Fake::default();
    v.set(EDS, "a", "a1");
    let mut s = SotwStream::new(1);
    let r = s.on_request(&sotw(EDS, &["a"], "", ""), &mut v).unwrap();
    assert_eq!(r.len(), 1);
    assert_eq!(names(&r[0]), vec!["a1"]);
    let (ver, nonce) = (r[0].version_info.clone(), r[0].nonce.clone());
    // ACK: nothing to send.
    assert!(s
        .on_request(&sotw(EDS, &["a"], &ver, &nonce), &mut v)
        .unwrap()
        .is_empty());
    assert_eq!(
        s.status()["EDS"].acked_version.as_deref(),
        Some(ver.as_str())
    );
    // A change is pushed; NACK it.
    v.set(EDS, "a", "a2");
    let r = s.on_change(&mut v);
    assert_eq!(names(&r[0]), vec!["a2"]);
    let bad = nack(sotw(EDS, &["a"], &ver, &r[0].nonce));
    assert!(s.on_request(&bad, &mut v).unwrap().is_empty());
    assert_eq!(s.nacks, 1);
    // Unrelated wakeups do not resend the NACKed version...
    assert!(s.on_change(&mut v).is_empty());
    // ...a data change does.
    v.set(EDS, "a", "a3");
    assert_eq!(names(&s.on_change(&mut v)[0]), vec!["a3"]);
}

#[test]
fn sotw_stale_nonce_is_not_an_ack() {
    let mut v = Fake::default();
    v.set(EDS, "a", "a1");
    let mut s = SotwStream::new(1);
    let r1 = s.on_request(&sotw(EDS, &["a"], "", ""), &mut v).unwrap();
    v.set(EDS, "a", "a2");
    let r2 = s.on_change(&mut v);
    // A NACK carrying the first (stale) nonce is ignored.
    s.on_request(&nack(sotw(EDS, &["a"], "", &r1[0].nonce)), &mut v)
        .unwrap();
    assert_eq!(s.nacks, 0);
    assert!(r2[0].nonce != r1[0].nonce);
}

#[test]
fn sotw_lds_cds_are_complete_and_wildcard() {
    let mut v = Fake::default();
    v.set(CDS, "c1", "c1");
    v.set(CDS, "c2", "c2");
    let mut s = SotwStream::new(1);
    let r = s.on_request(&sotw(CDS, &[], "", ""), &mut v).unwrap();
    assert_eq!(names(&r[0]), vec!["c1", "c2"]);
    let ack = sotw(CDS, &[], &r[0].version_info, &r[0].nonce);
    s.on_request(&ack, &mut v).unwrap();
    v.del(CDS, "c1");
    let r = s.on_change(&mut v);
    assert_eq!(names(&r[0]), vec!["c2"], "a CDS response is the whole set");
    // Subscribing to a name that does not exist still gets an (empty) answer.
    let mut s = SotwStream::new(2);
    let r = s.on_request(&sotw(CDS, &["nope"], "", ""), &mut v).unwrap();
    assert_eq!(r.len(), 1);
    assert!(r[0].resources.is_empty());
}

#[test]
fn sotw_pushes_cds_then_eds_and_resends_eds_after_cds() {
    let mut v = Fake::default();
    v.set(CDS, "c", "c1");
    v.set(EDS, "c", "e1");
    let mut s = SotwStream::new(1);
    s.on_request(&sotw(EDS, &["c"], "", ""), &mut v).unwrap();
    s.on_request(&sotw(CDS, &[], "", ""), &mut v).unwrap();
    v.set(CDS, "c", "c2");
    let r = s.on_change(&mut v);
    let types: Vec<&str> = r.iter().map(|r| r.type_url.as_ref()).collect();
    assert_eq!(
        types,
        vec![CDS.url(), EDS.url()],
        "EDS is re-sent after a CDS change, after it"
    );
}

#[test]
fn sotw_unknown_type_is_an_error_and_first_request_with_foreign_nonce_is_answered() {
    let mut v = Fake::default();
    v.set(EDS, "a", "a1");
    let mut s = SotwStream::new(1);
    let bad = ds::DiscoveryRequest {
        type_url: "type.googleapis.com/nope.Thing".into(),
        ..Default::default()
    };
    assert!(matches!(
        s.on_request(&bad, &mut v),
        Err(ProtocolError::UnknownType(_))
    ));
    let r = s
        .on_request(
            &sotw(EDS, &["a"], "old-version", "nonce-from-another-server"),
            &mut v,
        )
        .unwrap();
    assert_eq!(r.len(), 1);
}

fn delta(ty: ResourceType, sub: &[&str], unsub: &[&str], nonce: &str) -> ds::DeltaDiscoveryRequest {
    ds::DeltaDiscoveryRequest {
        type_url: ty.url().into(),
        resource_names_subscribe: sub.iter().map(|s| s.to_string()).collect(),
        resource_names_unsubscribe: unsub.iter().map(|s| s.to_string()).collect(),
        response_nonce: nonce.into(),
        ..Default::default()
    }
}

fn dnames(r: &DeltaResponse) -> Vec<String> {
    r.resources.iter().map(|r| r.name.clone()).collect()
}

/// `got` encodes to the bytes prost gives `want`, and prost decodes them
/// back to `want`.
fn assert_encodes_as<M: Message + Default + PartialEq + std::fmt::Debug>(
    got: &impl Encode,
    want: &M,
) {
    let mut bytes = Vec::new();
    got.encode_raw(&mut bytes);
    assert_eq!(bytes, want.encode_to_vec(), "{want:?}");
    assert_eq!(got.encoded_len(), bytes.len());
    assert_eq!(&M::decode(&bytes[..]).unwrap(), want);
}

/// An Istio collection meshreg does not hold, answered with an empty
/// response.
const GATEWAYS: &str = "networking.istio.io/v1alpha3/Gateway";

/// `DeltaResponse` and `SotwResponse` write what prost writes for the same
/// `DeltaDiscoveryResponse` and `DiscoveryResponse`.
#[test]
fn responses_encode_as_prost_does() {
    let mut v = Fake::default();
    v.set(EDS, "a", "first resource");
    v.set(EDS, "b", &"long resource ".repeat(40));
    let mut d = DeltaStream::new(7);
    let mut deltas = d
        .on_request(&delta(EDS, &["a", "b", "ghost"], &[], ""), &mut v)
        .unwrap();
    let mut s = SotwStream::new(7);
    let mut sotws = s
        .on_request(&sotw(EDS, &["a", "b"], "", ""), &mut v)
        .unwrap();
    v.del(EDS, "a");
    deltas.extend(d.on_change(&mut v));
    sotws.extend(s.on_change(&mut v));
    deltas.extend(
        d.on_request(
            &ds::DeltaDiscoveryRequest {
                type_url: GATEWAYS.into(),
                ..Default::default()
            },
            &mut v,
        )
        .unwrap(),
    );
    sotws.extend(
        s.on_request(
            &ds::DiscoveryRequest {
                type_url: GATEWAYS.into(),
                ..Default::default()
            },
            &mut v,
        )
        .unwrap(),
    );
    assert_eq!(deltas.len(), 3);
    assert_eq!(
        (dnames(&deltas[0]), &deltas[0].removed_resources),
        (
            vec!["a".to_string(), "b".to_string()],
            &vec!["ghost".to_string()]
        )
    );
    assert_eq!(sotws.len(), 3);
    assert_eq!(sotws[0].resources.len(), 2);
    for r in &deltas {
        assert_encodes_as(r, &r.to_message());
    }
    for r in &sotws {
        assert_encodes_as(r, &r.to_message());
    }
}

#[test]
fn delta_subscribe_unsubscribe_remove_and_nonexistent() {
    let mut v = Fake::default();
    v.set(EDS, "a", "a1");
    v.set(EDS, "b", "b1");
    let mut s = DeltaStream::new(1);
    let r = s
        .on_request(&delta(EDS, &["a", "ghost"], &[], ""), &mut v)
        .unwrap();
    assert_eq!(dnames(&r[0]), vec!["a"]);
    assert_eq!(
        r[0].removed_resources,
        vec!["ghost"],
        "nonexistent names are reported removed"
    );
    // ACK, then nothing more for the ghost.
    s.on_request(&delta(EDS, &[], &[], &r[0].nonce), &mut v)
        .unwrap();
    assert!(s.on_change(&mut v).is_empty());
    // Subscribe b: only b is sent.
    let r = s.on_request(&delta(EDS, &["b"], &[], ""), &mut v).unwrap();
    assert_eq!(dnames(&r[0]), vec!["b"]);
    // Removal of a existing resource.
    v.del(EDS, "a");
    let r = s.on_change(&mut v);
    assert_eq!(r[0].removed_resources, vec!["a"]);
    assert!(r[0].resources.is_empty());
    // Unsubscribe b, change it: nothing is sent.
    s.on_request(&delta(EDS, &[], &["b"], ""), &mut v).unwrap();
    v.set(EDS, "b", "b2");
    assert!(s.on_change(&mut v).is_empty());
    // The ghost appears: it is sent.
    v.set(EDS, "ghost", "g1");
    assert_eq!(dnames(&s.on_change(&mut v)[0]), vec!["ghost"]);
}

#[test]
fn delta_initial_versions_and_resubscribe() {
    let mut v = Fake::default();
    v.set(EDS, "a", "a1");
    v.set(EDS, "b", "b1");
    let mut s = DeltaStream::new(1);
    let mut req = delta(EDS, &["a", "b"], &[], "");
    req.initial_resource_versions = [
        ("a".to_string(), version_of(b"a1")),
        ("b".to_string(), "stale".to_string()),
    ]
    .into_iter()
    .collect();
    let r = s.on_request(&req, &mut v).unwrap();
    assert_eq!(
        dnames(&r[0]),
        vec!["b"],
        "a is current on the client; only b is sent"
    );
    // Re-subscribing a name re-sends it.
    let r = s.on_request(&delta(EDS, &["a"], &[], ""), &mut v).unwrap();
    assert_eq!(dnames(&r[0]), vec!["a"]);
}

#[test]
fn delta_wildcard_and_nack() {
    let mut v = Fake::default();
    v.set(CDS, "c1", "c1");
    let mut s = DeltaStream::new(1);
    // Legacy wildcard: a first CDS request with no names.
    let r = s.on_request(&delta(CDS, &[], &[], ""), &mut v).unwrap();
    assert_eq!(dnames(&r[0]), vec!["c1"]);
    v.set(CDS, "c2", "c2");
    let r = s.on_change(&mut v);
    assert_eq!(dnames(&r[0]), vec!["c2"]);
    let mut n = delta(CDS, &[], &[], &r[0].nonce);
    n.error_detail = Some(RpcStatus {
        code: 3,
        message: "no".into(),
        details: vec![],
    });
    s.on_request(&n, &mut v).unwrap();
    assert_eq!(s.nacks, 1);
    assert_eq!(s.status()["CDS"].last_nack.as_ref().unwrap().1, "no");
    // Not resent until it changes.
    assert!(s.on_change(&mut v).is_empty());
    v.del(CDS, "c1");
    let r = s.on_change(&mut v);
    assert_eq!(r[0].removed_resources, vec!["c1"]);
    // Unsubscribing `*` drops the wildcard: the client forgets those
    // resources itself, so nothing is sent, and later changes are not pushed.
    assert!(s
        .on_request(&delta(CDS, &[], &["*"], ""), &mut v)
        .unwrap()
        .is_empty());
    v.set(CDS, "c2", "c2b");
    assert!(s.on_change(&mut v).is_empty());
}
