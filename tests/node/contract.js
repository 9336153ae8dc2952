// The gateway's service, loaded in Node.js from the .proto contract alone (no generated code),
// for the Node clients of the tests (client.js, content.js).
//
// proto-loader resolves google/protobuf/*.proto (Struct, Timestamp) from the copies bundled
// with protobufjs, and google/api/field_behavior.proto from proto/google.
'use strict';

const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTO_ROOT = path.resolve(__dirname, '..', '..', 'proto');

// `defaults`: whether unset fields read as their defaults (true) or stay absent (false).
function loadCompletionService({ defaults }) {
  const definition = protoLoader.loadSync('llmgateway/v1/completion_service.proto', {
    includeDirs: [PROTO_ROOT],
    keepCase: true,
    longs: String,
    enums: String,
    defaults,
    oneofs: true,
  });
  return grpc.loadPackageDefinition(definition).llmgateway.v1.CompletionService;
}

module.exports = { grpc, loadCompletionService };
