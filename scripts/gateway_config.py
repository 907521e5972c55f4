"""The Envoy gateway's configuration, generated from the contracts and the topology.

Only public RPCs (those with a `google.api.http` rule) get a route, matched on their
exact gRPC path after transcoding, so internal RPCs are unreachable through the gateway
over HTTP/JSON and native gRPC alike. The same generator serves the local mesh and the
Kubernetes gateway, so both transcode identically.

Envoy calls every service over mTLS as the `gateway` identity, and accepts a service only
if its certificate carries that service's SPIFFE id. Under the development switch
INTERPAY_PLAINTEXT=1 it calls them in plaintext.

The client's address is Envoy's to say, never the client's (`client_address`): the
gateway is the edge, so it takes the address of the TCP connection it accepted
(`use_remote_address`, trusting no earlier hop) and treats every client as external
(`internal_address_config` without ranges: loopback and private clients too), so Envoy
strips whatever `x-envoy-*` headers a client sent (`x-envoy-internal`,
`x-envoy-retry-on`, ...) and sets `x-envoy-external-address` itself. Services read the
client IP from that header only on a call that carries the gateway's mTLS identity
(services/framework/edge_context.py). On top of what Envoy does by itself, every route
overwrites `x-envoy-external-address` and `x-forwarded-for` with the connection's address:
Envoy would otherwise append to a client's `x-forwarded-for` (leaving the client's entry
first) and, for a loopback client, append its own address, and an Envoy release whose
defaults count loopback or private addresses as internal would not set
`x-envoy-external-address` at all. (Behind a load balancer that does not preserve the
client's address, the connection's address is the balancer's: deploy the gateway with
the client's address preserved, e.g. `externalTrafficPolicy: Local`, rather than trusting
a forwarded header.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from google.api import annotations_pb2
from google.protobuf import descriptor_pb2

from services.framework.identity import TlsFiles, dns_name, plaintext, spiffe_id
from services.framework.topology import GATEWAY, SERVICES, Profile

ROOT = Path(__file__).resolve().parent.parent
DESCRIPTORS = ROOT / "gen" / "descriptors.binpb"


def _typed(type_name: str, **fields: Any) -> dict[str, Any]:
    return {"@type": f"type.googleapis.com/envoy.{type_name}", **fields}


# The address of the connection Envoy accepted, as Envoy's access log and headers print it.
_REMOTE_ADDRESS = "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"
# Headers that name the client's address: whatever the client sent is replaced.
CLIENT_ADDRESS_HEADERS = ("x-envoy-external-address", "x-forwarded-for")


def client_address() -> dict[str, Any]:
    """The connection manager's settings that make the client address Envoy's own finding."""
    return {
        "use_remote_address": True,
        "xff_num_trusted_hops": 0,
        "internal_address_config": {"unix_sockets": False, "cidr_ranges": []},
    }


def client_address_headers() -> list[dict[str, Any]]:
    """Route-level overwrite of the client-address headers with the connection's address."""
    return [
        {"header": {"key": name, "value": _REMOTE_ADDRESS}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}
        for name in CLIENT_ADDRESS_HEADERS
    ]


def public_methods(descriptors: Path = DESCRIPTORS) -> dict[str, list[str]]:
    """gRPC service name -> methods that carry a google.api.http rule (and so are public)."""
    fds = descriptor_pb2.FileDescriptorSet.FromString(descriptors.read_bytes())
    wanted = {s.grpc_service for s in SERVICES}
    out: dict[str, list[str]] = {}
    for fd in fds.file:
        for svc in fd.service:
            full = f"{fd.package}.{svc.name}"
            if full in wanted:
                out[full] = [m.name for m in svc.method if m.options.HasExtension(annotations_pb2.http)]
    return out


def routes() -> list[dict[str, Any]]:
    public = public_methods()
    out: list[dict[str, Any]] = [
        {
            "match": {"path": f"/{spec.grpc_service}/{method}"},
            "route": {"cluster": spec.name, "timeout": "30s"},
        }
        for spec in SERVICES
        for method in public.get(spec.grpc_service, [])
    ]
    out.append(
        {
            "match": {"prefix": "/"},
            "direct_response": {
                "status": 404,
                "body": {"inline_string": '{"code":5,"message":"no such route"}'},
            },
            "response_headers_to_add": [{"header": {"key": "content-type", "value": "application/json"}}],
        }
    )
    return out


def transcoder(descriptor_path: str) -> dict[str, Any]:
    return {
        "name": "envoy.filters.http.grpc_json_transcoder",
        "typed_config": _typed(
            "extensions.filters.http.grpc_json_transcoder.v3.GrpcJsonTranscoder",
            proto_descriptor=descriptor_path,
            services=sorted(public_methods()),
            convert_grpc_status=True,
            print_options={
                "add_whitespace": False,
                "always_print_primitive_fields": True,
                "always_print_enums_as_ints": False,
                "preserve_proto_field_names": False,
            },
            request_validation_options={
                "reject_unknown_method": True,
                "reject_unknown_query_parameters": True,
                "reject_binding_body_field_collisions": True,
            },
        ),
    }


def upstream_tls(service: str, tls: TlsFiles) -> dict[str, Any]:
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": _typed(
            "extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            sni=dns_name(service),
            common_tls_context={
                "alpn_protocols": ["h2"],
                "tls_certificates": [
                    {
                        "certificate_chain": {"filename": str(tls.cert)},
                        "private_key": {"filename": str(tls.key)},
                    }
                ],
                "validation_context": {
                    "trusted_ca": {"filename": str(tls.ca)},
                    "match_typed_subject_alt_names": [
                        {"san_type": "URI", "matcher": {"exact": spiffe_id(service)}}
                    ],
                },
            },
        ),
    }


def cluster(name: str, address: str, port: int, tls: TlsFiles | None = None) -> dict[str, Any]:
    tls_socket = {"transport_socket": upstream_tls(name, tls)} if tls else {}
    return {
        "name": name,
        **tls_socket,
        "type": "STATIC" if address[0].isdigit() else "STRICT_DNS",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": _typed(
                "extensions.upstreams.http.v3.HttpProtocolOptions",
                explicit_http_config={"http2_protocol_options": {}},
            ),
        },
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {"socket_address": {"address": address, "port_value": port}}
                            },
                        }
                    ]
                }
            ],
        },
    }


def envoy_config(profile: Profile, certs: Path | None = None) -> dict[str, Any]:
    """The gateway of `profile`, calling services with the gateway certificate in `certs`
    (by default the profile's, from scripts/certs.py) unless INTERPAY_PLAINTEXT=1."""
    if certs is None and not plaintext():
        certs = ROOT / ".data" / profile.name / "certs"
    tls = TlsFiles.in_directory(certs, GATEWAY) if certs else None
    access_log = {
        "name": "envoy.access_loggers.stdout",
        "typed_config": _typed(
            "extensions.access_loggers.stream.v3.StdoutAccessLog",
            log_format={
                "json_format": {
                    "time": "%START_TIME%",
                    "method": "%REQ(:METHOD)%",
                    "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
                    "grpc_path": "%REQ(:PATH)%",
                    "status": "%RESPONSE_CODE%",
                    "grpc_status": "%GRPC_STATUS%",
                    "duration_ms": "%DURATION%",
                    "traceparent": "%REQ(TRACEPARENT)%",
                    "client_ip": _REMOTE_ADDRESS,
                }
            },
        ),
    }
    manager = _typed(
        "extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        stat_prefix="gateway",
        codec_type="AUTO",
        access_log=[access_log],
        **client_address(),
        route_config={
            "name": "gateway",
            "virtual_hosts": [
                {
                    "name": "interpay",
                    "domains": ["*"],
                    "routes": routes(),
                    "request_headers_to_add": client_address_headers(),
                }
            ],
        },
        http_filters=[
            transcoder(str(DESCRIPTORS)),
            {
                "name": "envoy.filters.http.router",
                "typed_config": _typed("extensions.filters.http.router.v3.Router"),
            },
        ],
    )
    loopback = "127.0.0.1"
    return {
        "admin": {
            "address": {"socket_address": {"address": loopback, "port_value": profile.envoy_admin_port}}
        },
        "static_resources": {
            "listeners": [
                {
                    "name": "gateway",
                    "address": {"socket_address": {"address": loopback, "port_value": profile.gateway_port}},
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": manager,
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": [cluster(s.name, loopback, profile.service_port(s.name), tls) for s in SERVICES],
        },
    }
