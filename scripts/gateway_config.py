"""The Envoy gateway's configuration, generated from the contracts and the topology.

Only public RPCs (those with a `google.api.http` rule) get a route, matched on their
exact gRPC path after transcoding, so internal RPCs are unreachable through the gateway
over HTTP/JSON and native gRPC alike. The same generator serves the local mesh and the
Kubernetes gateway, so both transcode identically.

Envoy calls every service over mTLS as the `gateway` identity, and accepts a service only
if its certificate carries that service's SPIFFE id. Under the development switch
INTERPAY_PLAINTEXT=1 it calls them in plaintext.
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
                }
            },
        ),
    }
    manager = _typed(
        "extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        stat_prefix="gateway",
        codec_type="AUTO",
        access_log=[access_log],
        route_config={
            "name": "gateway",
            "virtual_hosts": [{"name": "interpay", "domains": ["*"], "routes": routes()}],
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
