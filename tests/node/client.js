// A Node.js client of the gateway, built only from the .proto contract (no generated code):
// calls every RPC once and prints what it saw as one JSON document on stdout.
//
//   NODE_PATH=tools/node_modules node tests/node/client.js <host:port> <caller key>
//
// Used by tests/api/test_polyglot.py to prove the contract works for a second language,
// including the rich error status (google.rpc.Status in the grpc-status-details-bin trailer).
'use strict';

const { grpc, loadCompletionService } = require('./contract');

const CompletionService = loadCompletionService({ defaults: true });

// --- a minimal protobuf reader, enough for google.rpc.Status and google.rpc.ErrorInfo ---------

function readFields(buffer) {
  const fields = [];
  let at = 0;
  const varint = () => {
    let value = 0n;
    let shift = 0n;
    for (;;) {
      const byte = buffer[at++];
      value |= BigInt(byte & 0x7f) << shift;
      if ((byte & 0x80) === 0) return value;
      shift += 7n;
    }
  };
  while (at < buffer.length) {
    const key = Number(varint());
    const number = key >> 3;
    const wireType = key & 7;
    if (wireType === 0) {
      fields.push([number, Number(varint())]);
    } else if (wireType === 2) {
      const length = Number(varint());
      fields.push([number, buffer.subarray(at, at + length)]);
      at += length;
    } else {
      throw new Error(`unexpected wire type ${wireType}`);
    }
  }
  return fields;
}

function decodeStatus(bytes) {
  const status = { code: 0, message: '', details: [] };
  for (const [number, value] of readFields(bytes)) {
    if (number === 1) status.code = value;
    if (number === 2) status.message = value.toString('utf8');
    if (number === 3) {
      const any = { type: '', value: Buffer.alloc(0) };
      for (const [n, v] of readFields(value)) {
        if (n === 1) any.type = v.toString('utf8');
        if (n === 2) any.value = v;
      }
      status.details.push(any);
    }
  }
  return status;
}

function decodeErrorInfo(bytes) {
  const info = { reason: '', domain: '', metadata: {} };
  for (const [number, value] of readFields(bytes)) {
    if (number === 1) info.reason = value.toString('utf8');
    if (number === 2) info.domain = value.toString('utf8');
    if (number === 3) {
      const entry = Object.fromEntries(readFields(value).map(([n, v]) => [n, v.toString('utf8')]));
      info.metadata[entry[1]] = entry[2];
    }
  }
  return info;
}

// --- calls -------------------------------------------------------------------------------

function metadataFor(key, requestId) {
  const metadata = new grpc.Metadata();
  metadata.set('authorization', `Bearer ${key}`);
  if (requestId) metadata.set('x-request-id', requestId);
  return metadata;
}

function complete(client, request, metadata) {
  return new Promise((resolve) => {
    const result = {};
    const call = client.Complete(request, metadata, (error, reply) => {
      result.error = error || null;
      result.reply = reply || null;
    });
    call.on('status', (status) => {
      result.trailers = status.metadata;
      resolve(result);
    });
  });
}

function streamComplete(client, request, metadata) {
  return new Promise((resolve) => {
    const messages = [];
    const call = client.StreamComplete(request, metadata);
    call.on('data', (message) => messages.push(message));
    call.on('error', () => {}); // the status below carries the outcome
    call.on('status', (status) => resolve({ messages, status }));
  });
}

function listModels(client, metadata) {
  return new Promise((resolve, reject) => {
    client.ListModels({}, metadata, (error, reply) => (error ? reject(error) : resolve(reply)));
  });
}

function describeError(error, trailers) {
  const raw = trailers.get('grpc-status-details-bin')[0];
  const described = {
    code: error.code,
    details: error.details,
    has_status_details: Buffer.isBuffer(raw) && raw.length > 0,
    request_id: trailers.get('x-request-id')[0] || null,
  };
  if (described.has_status_details) {
    const status = decodeStatus(raw);
    described.status_code = status.code;
    described.detail_types = status.details.map((d) => d.type);
    const info = status.details.find((d) => d.type.endsWith('/google.rpc.ErrorInfo'));
    if (info) described.error_info = decodeErrorInfo(info.value);
  }
  return described;
}

async function main() {
  const [address, key] = process.argv.slice(2);
  if (!address || !key) {
    process.stderr.write('usage: node client.js <host:port> <caller key>\n');
    process.exit(2);
  }
  const client = new CompletionService(address, grpc.credentials.createInsecure());
  const user = (content) => ({ role: 'ROLE_USER', content });
  const out = {};

  const unary = await complete(
    client,
    { messages: [user('Hello from Node [[sim:tokens=5]]')], sampling: { temperature: 0.5 } },
    metadataFor(key, 'node-req-1'),
  );
  if (unary.error) throw unary.error;
  out.complete = {
    id: unary.reply.id,
    model: unary.reply.model,
    content: unary.reply.content,
    finish_reason: unary.reply.finish_reason,
    completion_tokens: unary.reply.usage.completion_tokens,
    request_id: unary.trailers.get('x-request-id')[0] || null,
  };

  const streamed = await streamComplete(
    client,
    { messages: [user('Hello from Node [[sim:tokens=5]]')] },
    metadataFor(key),
  );
  const end = streamed.messages.find((m) => m.event === 'end');
  out.stream = {
    code: streamed.status.code,
    events: streamed.messages.map((m) => m.event),
    start_id: streamed.messages[0] && streamed.messages[0].start ? streamed.messages[0].start.id : null,
    content: streamed.messages.filter((m) => m.delta).map((m) => m.delta.content).join(''),
    finish_reason: end ? end.end.finish_reason : null,
    completion_tokens: end ? end.end.usage.completion_tokens : null,
  };

  const models = await listModels(client, metadataFor(key));
  out.list_models = {
    ids: models.models.map((m) => m.id),
    default_model: models.default_model,
    prices: Object.fromEntries(models.models.map((m) => [m.id, m.pricing.prompt_usd_per_token])),
  };

  const unauthenticated = await complete(
    client,
    { messages: [user('Hello')] },
    metadataFor(`${key}-not-a-key`, 'node-req-err'),
  );
  out.unauthenticated = describeError(unauthenticated.error, unauthenticated.trailers);

  const invalid = await complete(client, { messages: [] }, metadataFor(key));
  out.invalid = describeError(invalid.error, invalid.trailers);

  client.close();
  process.stdout.write(`${JSON.stringify(out)}\n`);
}

main().catch((error) => {
  process.stderr.write(`${error.stack || error}\n`);
  process.exit(1);
});
