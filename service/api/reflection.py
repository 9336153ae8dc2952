"""Server reflection under both names: ``grpc.reflection.v1`` (asked first by buf curl and other
newer tools) and ``grpc.reflection.v1alpha`` (grpcurl 1.8).

grpcio-reflection ships only the v1alpha service. The v1 protocol is the same protocol under a
new package name: every message has the same fields and numbers, so the v1alpha servicer also
answers v1 callers byte for byte. It is registered a second time under the v1 method path, and
a v1 descriptor (the v1alpha one renamed) is added to the pool so that reflection can describe
its own v1 service too.
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

from service.api.decoding import parsing_itself, register_decoding

V1ALPHA = "grpc.reflection.v1alpha"
V1 = "grpc.reflection.v1"
V1_SERVICE_NAME = f"{V1}.ServerReflection"


def enable_reflection(service_names: Sequence[str], server: grpc.aio.Server) -> None:
    """Serves reflection v1 and v1alpha for ``service_names`` (and for reflection itself)."""
    _add_v1_descriptor(descriptor_pool.Default())
    names = (*service_names, reflection.SERVICE_NAME, V1_SERVICE_NAME)
    servicer = reflection.aio.ReflectionServicer(names)
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                V1_SERVICE_NAME,
                {
                    "ServerReflectionInfo": parsing_itself(
                        grpc.stream_stream_rpc_method_handler(
                            servicer.ServerReflectionInfo,
                            request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
                            response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
                        )
                    )
                },
            ),
        )
    )
    # enable_server_reflection, with undecodable bytes answered INVALID_ARGUMENT.
    register_decoding(reflection_pb2_grpc.add_ServerReflectionServicer_to_server, servicer, server)


def _add_v1_descriptor(pool: descriptor_pool.DescriptorPool) -> None:
    name = "grpc/reflection/v1/reflection.proto"
    try:
        pool.FindFileByName(name)
        return  # a second server in this process
    except KeyError:
        pass
    file = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(file)
    file.name = name
    file.package = V1
    file.options.Clear()
    old, new = f".{V1ALPHA}.", f".{V1}."
    for message in file.message_type:
        for field in message.field:
            if field.HasField("type_name"):  # assigning "" would mark a scalar as typed
                field.type_name = field.type_name.replace(old, new)
    for service in file.service:
        for method in service.method:
            method.input_type = method.input_type.replace(old, new)
            method.output_type = method.output_type.replace(old, new)
    pool.Add(file)
